"""Rebuild the real-data folders ``benchmarks.real`` reads, from public repositories' snapshots.

    python -m benchmarks.real_sources --mirror-root MIRRORS --out /tmp/real

MIRRORS holds bare git snapshots named ``owner+name/repo`` (one per source below; any tool that
clones a repository bare will do). Nothing here is redistributed: docs/QUALITY.md, "Sources", gives
each source's commit and licence. Writes ``acdc/`` (ACDC training patients 001-100, ED + ES with
labels), ``mnms/`` (six M&Ms-1 subjects) and ``mnms_more/`` (M&Ms-2 subject 001) in the layouts of
``mi_pipeline/data/adapters/acdc.py`` and ``mnms.py``, ED and ES as the cine's only two frames.
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

ACDC_REPO = "antares0811+3DCardiac"  # data/ACDC/data/*.h5: image (slices, rows, cols) scaled to 1, labels 1 RV 2 MYO 3 LV
ACDC_SPACING_MM = (1.5625, 1.5625, 10.0)  # the h5 files carry none; ACDC's in-plane spacing is 1.37-1.68 mm
MNMS_REPO = "MarioProjects+MnMsCardiac"  # attempts/test/ox/{better,worse}_<ID>_sa_{ED,ES}[_gt].nii.gz
MNMS_IDS = ("B5F8L9", "C8O0P2", "G1K1V3", "G8R0Z9", "H1N8S6", "L8N7Z0")
MNMS2_REPO = "masadcv+ScribblesSampleData"  # 001/001_SA_{ED,ES}[_gt].nii.gz


class Mirror:
    """Files of one bare snapshot, read with git (no work tree needed)."""

    def __init__(self, root: Path, name: str) -> None:
        self.git_dir = root / name / "repo"
        if not self.git_dir.is_dir():
            raise SystemExit(f"error: {self.git_dir}: no snapshot of {name.replace('+', '/')} (fetch it first)")
        self.names = subprocess.run(["git", "--git-dir", str(self.git_dir), "ls-tree", "-r", "--name-only", "HEAD"],
                                    capture_output=True, text=True, check=True).stdout.splitlines()

    def read(self, path: str) -> bytes:
        return subprocess.run(["git", "--git-dir", str(self.git_dir), "show", f"HEAD:{path}"], capture_output=True,
                              check=True).stdout


def _h5_volume(mirror: Mirror, paths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) as NIfTI arrays (cols, rows, slices) from one volume file or its slice files in order."""
    import h5py

    images, labels = [], []
    for path in paths:
        with h5py.File(io.BytesIO(mirror.read(path)), "r") as f:
            image, label = np.asarray(f["image"]), np.asarray(f["label"])
        images.append(image if image.ndim == 3 else image[None])
        labels.append(label if label.ndim == 3 else label[None])
    # h5 arrays are (slices, rows, cols) as SimpleITK reads NIfTI; the NIfTI order is the reverse
    return np.concatenate(images).transpose(2, 1, 0), np.concatenate(labels).transpose(2, 1, 0)


def build_acdc(mirror: Mirror, out: Path) -> int:
    pattern = re.compile(r"data/ACDC/data/(patient\d{3})_frame(\d{2})(?:_slice_(\d+))?\.h5$")
    frames: dict[str, dict[int, list[tuple[int, str]]]] = {}
    for name in mirror.names:
        match = pattern.match(name)
        if match:
            patient, frame, piece = match.group(1), int(match.group(2)), int(match.group(3) or 0)
            frames.setdefault(patient, {}).setdefault(frame, []).append((piece, name))
    affine = np.diag([*ACDC_SPACING_MM, 1.0])
    for patient, by_frame in sorted(frames.items()):
        if len(by_frame) != 2:
            print(f"skip {patient}: {len(by_frame)} annotated frames, not 2", file=sys.stderr)
            continue
        (ed, ed_paths), (es, es_paths) = sorted(by_frame.items())  # ACDC's ED is its first annotated frame
        volumes = [_h5_volume(mirror, [p for _, p in sorted(paths)]) for paths in (ed_paths, es_paths)]
        folder = out / patient
        folder.mkdir(parents=True, exist_ok=True)
        cine = np.stack([volumes[0][0], volumes[1][0]], axis=-1).astype(np.float32)
        nib.save(nib.Nifti1Image(cine, affine), folder / f"{patient}_4d.nii.gz")
        for index, (_, label) in enumerate(volumes, start=1):
            nib.save(nib.Nifti1Image(label.astype(np.uint8), affine), folder / f"{patient}_frame{index:02d}_gt.nii.gz")
        (folder / "Info.cfg").write_text(f"ED: 1\nES: 2\nSourceFrames: {ed} {es}\n")
    return len(list(out.glob("patient*")))


def _nifti(data: bytes) -> nib.Nifti1Image:
    with tempfile.NamedTemporaryFile(suffix=".nii.gz") as handle:
        handle.write(data)
        handle.flush()
        image = nib.load(handle.name)
        return nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine, image.header)


def _two_frames(out: Path, subject: str, images: list[nib.Nifti1Image], labels: list[nib.Nifti1Image]) -> None:
    """``<subject>/<subject>_sa.nii.gz`` and ``_sa_gt.nii.gz``: ED and ES stacked as frames 0 and 1."""
    folder = out / subject
    folder.mkdir(parents=True, exist_ok=True)
    affine = images[0].affine
    cine = np.stack([np.asarray(i.dataobj, dtype=np.float32).squeeze() for i in images], axis=-1)
    gt = np.stack([np.asarray(i.dataobj).squeeze().astype(np.uint8) for i in labels], axis=-1)
    nib.save(nib.Nifti1Image(cine, affine), folder / f"{subject}_sa.nii.gz")
    nib.save(nib.Nifti1Image(gt, affine), folder / f"{subject}_sa_gt.nii.gz")


def build_mnms(mirror: Mirror, out: Path) -> int:
    for subject in MNMS_IDS:
        stem = next((n[: -len("_sa_ED.nii.gz")] for n in mirror.names if n.endswith(f"_{subject}_sa_ED.nii.gz")), None)
        if stem is None:
            print(f"skip {subject}: not in the snapshot", file=sys.stderr)
            continue
        images = [_nifti(mirror.read(f"{stem}_sa_{p}.nii.gz")) for p in ("ED", "ES")]
        labels = [_nifti(mirror.read(f"{stem}_sa_{p}_gt.nii.gz")) for p in ("ED", "ES")]
        _two_frames(out, subject, images, labels)
    return len([p for p in out.iterdir() if p.is_dir()])


def build_mnms2(mirror: Mirror, out: Path) -> int:
    images = [_nifti(mirror.read(f"001/001_SA_{p}.nii.gz")) for p in ("ED", "ES")]
    labels = [_nifti(mirror.read(f"001/001_SA_{p}_gt.nii.gz")) for p in ("ED", "ES")]
    _two_frames(out, "001", images, labels)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_sources", description=__doc__.splitlines()[0])
    parser.add_argument("--mirror-root", type=Path, required=True, help="folder of owner+name/repo snapshots")
    parser.add_argument("--out", type=Path, required=True, help="where acdc/, mnms/, mnms_more/ are written")
    args = parser.parse_args(argv)
    for folder, repo, build in (("acdc", ACDC_REPO, build_acdc), ("mnms", MNMS_REPO, build_mnms),
                                ("mnms_more", MNMS2_REPO, build_mnms2)):
        count = build(Mirror(args.mirror_root, repo), args.out / folder)
        print(f"{args.out / folder}: {count} subject(s) from {repo.replace('+', '/')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
