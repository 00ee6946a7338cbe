"""How far to trust a predicted number: what the model learnt from, and whether the result looks like a heart.

Why its own module: the same verdict must travel with the number wherever it appears (report.json,
the console line, the QC figure, the bull's-eye, the DICOM SEG's description, the cohort table), so
it is worked out once, here, and every output copies it.

* **Provenance** (``model_provenance``): read from the segmentation ``best_model.pth`` itself (the
  config it was trained with: ``data.format``, ``data.root``, ``cv.folds``) and the split lists of
  the run it sits in (``<run>/data/splits/*.txt``), so a copied checkpoint folder still says what
  it is. ``phantom_only`` is true for ``data.format: phantom``; ``myocardium_only`` when the model was
  trained without LGE (its ``facts``, written by the segmentation stage): it never learnt the infarct.
* **Input origin** (``input_from_phantom``): a DICOM cine written by the phantom says so in its
  Manufacturer; a NIfTI cine is the phantom's when its dataset folder holds the phantom's marker.
* **Verdict** (``verdict``): ``not_a_measurement`` when a phantom-only model reads a cine that is
  not a phantom (its numbers are not measurements of that heart) or the model is myocardium only
  (``INFARCT_NOT_ESTIMATED``: its infarct number is no estimate at all), else ``implausible`` when the
  plausibility check (``stages/seg_confidence``) failed, else ``plausible``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from mi_pipeline.data import cache
from mi_pipeline.data.phantom import MARKER
from mi_pipeline.engine import checkpoint as ckpt
from mi_pipeline.errors import InputError
from mi_pipeline.layout import RunLayout

PHANTOM_MANUFACTURER = "mi_pipeline phantom"
VERDICTS = ("plausible", "implausible", "not_a_measurement")
INFARCT_NOT_ESTIMATED = "infarct not estimated: segmentation trained without LGE (myocardium only)"
SHORT_MAX = 64  # a DICOM LO value (SeriesDescription) holds 64 characters


def _split_sizes(run_root: Path) -> dict[str, int] | None:
    try:
        return {name: len(cache.read_split(run_root, name)) for name in cache.SPLITS}
    except InputError:
        return None


@lru_cache(maxsize=8)
def _provenance(path: str, fingerprint: str) -> dict[str, Any]:
    payload = ckpt.read_metadata(Path(path), required=("config",))  # plain values only: no tensors loaded
    data = (payload.get("config") or {}).get("data") or {}
    folds = int(((payload.get("config") or {}).get("cv") or {}).get("folds") or 0)
    fmt = str(data.get("format", "unknown"))
    sizes = _split_sizes(RunLayout.holding(path).root)
    phantom = fmt == "phantom"
    facts = payload.get("facts") or {}
    myocardium_only = bool(facts.get("myocardium_only"))
    what = "phantom only (synthetic hearts)" if phantom else f"{fmt} data ({data.get('root') or 'root not recorded'})"
    if myocardium_only:
        what += ", myocardium only (no LGE: trained on cine labels)"
    if sizes is not None:
        counted = f"trained on {sizes['train']} subject(s), best epoch chosen on {sizes['val']}"
    elif phantom:
        counted = f"{(data.get('phantom') or {}).get('subjects', '?')} phantom subject(s) in all (split not found)"
    else:
        counted = "subject count unknown (no split lists beside the checkpoints)"
    return {"data_format": fmt, "data_root": data.get("root") or None, "phantom_only": phantom,
            "myocardium_only": myocardium_only, "rv_subjects": int(facts.get("rv_subjects") or 0),
            "subjects": sizes, "cv_folds": folds or None, "summary": f"{what}: {counted}"}


def model_provenance(seg_checkpoint: dict[str, Any], folds: int = 0) -> dict[str, Any]:
    """What the segmentation model (``load_best``'s description of its file) was trained on."""
    out = dict(_provenance(str(seg_checkpoint["path"]), str(seg_checkpoint.get("fingerprint", ""))))
    if folds:
        out["summary"] = f"{folds}-fold ensemble; fold 0: {out['summary']}"
    return out


def input_from_phantom(cine_path: Path, dicom_stack: Any = None) -> bool:
    """Whether the cine was written by this package's phantom (see the module docstring)."""
    if dicom_stack is not None:
        try:
            return str(dicom_stack.datasets[0][0].Manufacturer) == PHANTOM_MANUFACTURER
        except (AttributeError, IndexError):
            return False
    path = Path(cine_path).resolve()
    return any((folder / MARKER).is_file() for folder in (path.parent, path.parent.parent))


def verdict(provenance: dict[str, Any], from_phantom: bool, plausibility: dict[str, Any]) -> dict[str, Any]:
    """report.json's ``trust``: the verdict, a short label (<= 64 characters) and a full line."""
    implausible = bool(plausibility.get("implausible"))
    not_estimated = bool(provenance.get("myocardium_only"))
    not_measured = (bool(provenance["phantom_only"]) and not from_phantom) or not_estimated
    name = "not_a_measurement" if not_measured else "implausible" if implausible else "plausible"
    if not_estimated:
        short = "INFARCT NOT ESTIMATED: myocardium-only model (no LGE)"
    elif not_measured:
        short = "NOT A MEASUREMENT: phantom-trained model" + (", IMPLAUSIBLE" if implausible else "")
    elif implausible:
        short = "IMPLAUSIBLE result: check the QC figure"
    else:
        short = "plausible; model: " + ("phantom only" if provenance["phantom_only"] else provenance["data_format"])
    reasons = plausibility.get("reasons") or []
    check = f"IMPLAUSIBLE ({reasons[0]})" if implausible and reasons else "IMPLAUSIBLE" if implausible else \
        "plausible (shape within what training saw)"
    line = f"model: {provenance['summary']}; result: {check}"
    if not_estimated:
        line = f"{INFARCT_NOT_ESTIMATED}; {line}"
    elif not_measured:
        line = ("NOT A MEASUREMENT: a model trained on the phantom only, applied to a cine that is not from the "
                f"phantom; {line}")
    return {"verdict": name, "implausible": implausible, "not_a_measurement": not_measured,
            "input_from_phantom": bool(from_phantom), "label": short[:SHORT_MAX], "line": line, "model": provenance}


def alarm(trust: dict[str, Any]) -> bool:
    """True when the number must not be read as a measurement (drawn in red, ``--strict`` fails)."""
    return trust["verdict"] != "plausible"
