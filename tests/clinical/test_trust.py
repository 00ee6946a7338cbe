"""The verdict that travels with a predicted number: where the input came from, and what it makes of the
model's provenance and the plausibility check."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from mi_pipeline.clinical import trust
from mi_pipeline.data.phantom import MARKER

PHANTOM_MODEL = {"data_format": "phantom", "data_root": None, "phantom_only": True, "subjects": None,
                 "cv_folds": None, "summary": "phantom only (synthetic hearts): trained on 8 subject(s)"}
SITE_MODEL = {**PHANTOM_MODEL, "data_format": "dicom", "phantom_only": False, "summary": "dicom data (/x): 40"}


def test_input_origin_from_dicom_manufacturer_or_the_phantom_marker(tmp_path: Path) -> None:
    stack = SimpleNamespace(datasets=[[SimpleNamespace(Manufacturer=trust.PHANTOM_MANUFACTURER)]])
    assert trust.input_from_phantom(tmp_path / "cine", stack)
    assert not trust.input_from_phantom(tmp_path / "cine", SimpleNamespace(datasets=[[SimpleNamespace(
        Manufacturer="SIEMENS")]]))
    cine = tmp_path / "ds" / "s0" / "cine.nii.gz"
    cine.parent.mkdir(parents=True)
    cine.write_bytes(b"")
    assert not trust.input_from_phantom(cine)
    (tmp_path / "ds" / MARKER).write_text("{}")
    assert trust.input_from_phantom(cine)


@pytest.mark.parametrize(("model", "from_phantom", "implausible", "verdict"), [
    (PHANTOM_MODEL, False, False, "not_a_measurement"),
    (PHANTOM_MODEL, False, True, "not_a_measurement"),
    (PHANTOM_MODEL, True, True, "implausible"),
    (PHANTOM_MODEL, True, False, "plausible"),
    (SITE_MODEL, False, True, "implausible"),
    (SITE_MODEL, False, False, "plausible"),
])
def test_verdict(model: dict, from_phantom: bool, implausible: bool, verdict: str) -> None:
    plaus = {"implausible": implausible, "reasons": ["slice 2: thickness_mm 30 outside 2..16"] if implausible else []}
    out = trust.verdict(model, from_phantom, plaus)
    assert out["verdict"] == verdict and trust.alarm(out) == (verdict != "plausible")
    assert len(out["label"]) <= trust.SHORT_MAX and model["summary"] in out["line"]
    assert ("NOT A MEASUREMENT" in out["label"]) == (verdict == "not_a_measurement")
    assert ("IMPLAUSIBLE" in out["line"]) == implausible


def test_a_myocardium_only_model_says_its_infarct_is_not_estimated() -> None:
    """Trained without LGE (cine labels only), the model never learnt the infarct: whatever the input and the
    plausibility check, its number is no measurement, and the label and the line say why."""
    model = {**SITE_MODEL, "data_format": "mnms", "myocardium_only": True}
    for from_phantom, implausible in ((False, False), (True, True)):
        out = trust.verdict(model, from_phantom, {"implausible": implausible, "reasons": ["r"] if implausible else []})
        assert out["verdict"] == "not_a_measurement" and out["not_a_measurement"] and trust.alarm(out)
        assert out["label"] == "INFARCT NOT ESTIMATED: myocardium-only model (no LGE)"
        assert out["line"].startswith(trust.INFARCT_NOT_ESTIMATED) and model["summary"] in out["line"]
    assert trust.verdict(SITE_MODEL, False, {"implausible": False})["verdict"] == "plausible"
