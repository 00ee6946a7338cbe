"""Real DICOM exports through ``predict --cohort``: every subject gets a row, a report and a valid SEG (or the warning).

    python benchmarks/real_dicom.py FOLDER --run-dir runs/demo [--out DIR]

FOLDER holds one DICOM cine per sub-folder (or is one), as exported by a scanner, a PACS, an
anonymiser or a CD: files nobody here wrote, so they stay out of the repository and out of CI
(public sets such as the Sunnybrook Cardiac Data, CC0, are the intended input). Runs cohort predict
over it, then prints per subject: status, ED frame and how it was found, what the reader skipped, the
SEG or the warning why not, and dciodvfy's error/warning counts on the SEG (dicom3tools; skipped with
a note when it is not installed). A SEG must reference its sources' UIDs unchanged, so errors on
values that are the source's own (public exports carry UIDs with leading zeros) are counted apart.
Exit status 0 when every subject has a row, none failed, and no SEG has a dciodvfy error of its own.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mi_pipeline import cohort, inference  # noqa: E402
from mi_pipeline.cli import predict  # noqa: E402
from mi_pipeline.cli.common import run_main  # noqa: E402
from mi_pipeline.data import dicom_files  # noqa: E402

SUMMARY_ERROR = "Dicom dataset contains invalid data values"


def source_uids(folder: Path) -> set[str]:
    """Every UID value in the source headers (what a SEG must reference unchanged, valid or not)."""
    uids: set[str] = set()

    def collect(_ds, elem) -> None:
        if elem.VR == "UI" and elem.value:
            uids.update(str(v) for v in (elem.value if elem.VM > 1 else [elem.value]))

    for _, ds in dicom_files.find_images(folder).headers:
        ds.walk(collect)
    return uids


def dciodvfy_counts(path: Path, inherited_values: set[str]) -> tuple[int, int, int] | None:
    """(errors, of which on values copied from the source, warnings) dciodvfy reports on ``path``;
    None when dciodvfy is not installed."""
    if shutil.which("dciodvfy") is None:
        return None
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    errors = [ln for ln in lines if ln.startswith("Error")]
    inherited = [ln for ln in errors if re.search(r"= <([^>]*)>", ln) and
                 re.search(r"= <([^>]*)>", ln).group(1) in inherited_values]  # type: ignore[union-attr]
    if inherited and all(ln in inherited or SUMMARY_ERROR in ln for ln in errors):
        inherited = errors  # the summary line is about those values too
    return len(errors), len(inherited), sum(ln.startswith("Warning") for ln in lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path, help="DICOM cines, one per sub-folder (or one cine)")
    p.add_argument("--run-dir", type=Path, required=True, help="a trained run (predict's --run-dir)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary one)")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="real_dicom_"))
    subjects = inference.find_cines(args.folder)
    code = run_main(predict.main, ["--cohort", "--cine", str(args.folder), "--out", str(out),
                                   "--run-dir", str(args.run_dir)])
    with open(out / cohort.TABLE) as handle:
        rows = {r["subject"]: r for r in csv.DictReader(handle)}
    ok = code == 0 and len(rows) == len(subjects)
    if shutil.which("dciodvfy") is None:
        print("note: dciodvfy not installed (apt-get install dicom3tools): SEGs not validated")
    print(f"{'subject':12} {'status':8} {'ED':>3} {'ED from':40} {'SEG':16} dciodvfy")
    for sid, _ in subjects:
        row = rows.get(sid)
        if row is None or row["flags"].startswith("failed"):
            ok = False
            print(f"{sid:12} failed   {(row or {}).get('flags', 'no row')}")
            continue
        report = json.loads((out / sid / "report.json").read_text())
        segs = report["outputs"].get("dicom_seg", [])
        uids = source_uids(Path(report["cine"])) if segs else set()
        checks = [dciodvfy_counts(out / sid / name, uids) for name in segs]
        ok &= all(c is None or c[0] == c[1] for c in checks)  # errors only on the source's own values
        seg_text = ", ".join(segs) or "none (see warning)"
        counts = "; ".join(f"{c[0]} errors ({c[1]} on source values), {c[2]} warnings" if c else "-"
                           for c in checks) or "-"
        print(f"{sid:12} ok       {report['frames']['ed']:>3} {report['frames']['ed_method'][:40]:40} "
              f"{seg_text[:16]:16} {counts}")
        for warning in report["warnings"]:
            print(f"{'':12} - {warning}")
    print(f"results in {out}; {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
