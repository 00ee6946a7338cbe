"""report.json has one versioned schema in the package; reports predict writes satisfy it, and a report
with a field the schema does not describe, or without one it requires, does not."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from mi_pipeline.clinical.io import REPORT_SCHEMA, SCHEMA_VERSION, report_schema


def _minimal() -> dict:
    seg = {"level": "basal", "extent_percent": 12.5, "infarcted": True}
    return {
        "schema_version": SCHEMA_VERSION, "subject": "s0", "cine": "/data/s0/cine", "input": {"format": "dicom"},
        "infarct_percent": 10.0, "myocardium_ml": 100.0, "infarct_ml": 10.0,
        "frames": {"ed": 0, "ed_method": "given", "es": 9, "es_exact": 9.0, "source_frames": 25, "kept_frames": 8,
                   "es_index_kept": 3, "es_method": "info"},
        "per_slice": [{"slice": 0, "level": "basal", "myocardium_px": 10, "infarct_px": 1, "infarct_percent": 10.0}],
        "aha_segments": {str(s): seg for s in range(1, 17)},
        "aha_anchor": {"method": "rv_images", "anterior_insertion_deg": [120.0], "found_on_slice": [True],
                       "septum_direction": "counter-clockwise", "warning": None},
        "aha_note": "x", "infarct_segment_threshold_percent": 10.0, "spacing_mm": [1.5, 1.5, 8.0],
        "checkpoints": {"segmentation": {"path": "p", "fingerprint": "f"}}, "config_hash": "h",
        "warnings": [], "outputs": {"qc_figure": "qc.png", "bullseye_figure": "bullseye.png"},
    }


def test_schema_is_a_valid_json_schema_in_the_package() -> None:
    assert REPORT_SCHEMA.is_file() and REPORT_SCHEMA.parent.name == "schemas"
    schema = json.loads(REPORT_SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    jsonschema.validate(_minimal(), report_schema())


def _trust() -> dict:
    model = {"data_format": "phantom", "data_root": None, "phantom_only": True,
             "subjects": {"train": 8, "val": 2, "test": 2}, "cv_folds": None, "summary": "phantom only"}
    return {"verdict": "not_a_measurement", "implausible": False, "not_a_measurement": True,
            "input_from_phantom": False, "label": "NOT A MEASUREMENT: phantom-trained model", "line": "x",
            "model": model}


def test_schema_accepts_the_trust_section() -> None:
    jsonschema.validate({**_minimal(), "trust": _trust()}, report_schema())


@pytest.mark.parametrize("change", ["unknown_field", "missing_anchor", "segment_17", "bad_method", "percent_over_100",
                                    "bad_verdict", "long_label", "trust_without_model"])
def test_schema_rejects(change: str) -> None:
    report = copy.deepcopy(_minimal())
    if change == "unknown_field":
        report["surprise"] = 1
    elif change == "missing_anchor":
        del report["aha_anchor"]
    elif change == "segment_17":
        report["aha_segments"]["17"] = report["aha_segments"]["1"]
    elif change in ("bad_verdict", "long_label", "trust_without_model"):
        report["trust"] = _trust()
        if change == "bad_verdict":
            report["trust"]["verdict"] = "fine"
        elif change == "long_label":
            report["trust"]["label"] = "x" * 65
        else:
            del report["trust"]["model"]
    elif change == "bad_method":
        report["aha_anchor"]["method"] = "guess"
    else:
        report["infarct_percent"] = 130.0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, report_schema())
