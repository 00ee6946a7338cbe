"""Write the built-in synthetic dataset (phantom hearts) in the generic layout, or as DICOM.

``python -m mi_pipeline.phantom --out DIR [--subjects N] [--seed S] [--dicom series]``

For trying the pipeline, or a site's tooling, without real data. Same generator as
``data.format: phantom``; the same arguments give the same voxel arrays. ``--dicom`` writes the
DICOM dataset layout instead (``data.format: dicom``: cine and LGE as DICOM series, labels as NIfTI).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mi_pipeline.cli.common import command_parser
from mi_pipeline.cli.helptext import full_help
from mi_pipeline.config import PhantomConfig
from mi_pipeline.errors import UserError


def _parser() -> argparse.ArgumentParser:
    d = PhantomConfig()
    p = full_help(command_parser("phantom", __doc__), __doc__)
    p.add_argument("--out", required=True, type=Path, help="dataset folder to write (<out>/<subject>/...)")
    p.add_argument("--subjects", type=int, default=d.subjects, help=f"number of subjects (default {d.subjects})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--size", type=int, default=d.size, help=f"in-plane matrix (default {d.size})")
    p.add_argument("--slices", type=int, default=d.slices, help=f"short-axis slices (default {d.slices})")
    p.add_argument("--frames", type=int, default=d.frames, help=f"frames per cycle (default {d.frames})")
    p.add_argument("--dicom", choices=("series", "series-per-slice"), default=None,
                   help="write cine and LGE as DICOM (data.format: dicom): one series per stack, or one per slice")
    p.add_argument("--no-cine-labels", action="store_true",
                   help="write no cine_label.nii.gz (LGE labels only, as a site's data arrives)")
    p.add_argument("--vary", action="store_true",
                   help="each subject its own grid (slices, frames, spacing, FOV, LGE grid) from the config ranges")
    return p


def _write_dicom(out: Path, params: PhantomConfig, per_slice_series: bool) -> list[str]:
    from mi_pipeline.data.dicom_export import write_subject_dicom
    from mi_pipeline.data.phantom import generate_subject, subject_id

    for index in range(params.subjects):
        write_subject_dicom(generate_subject(params, index), out / subject_id(index), per_slice_series=per_slice_series,
                            seed=params.seed)
    return [subject_id(i) for i in range(params.subjects)]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        params = PhantomConfig(subjects=args.subjects, seed=args.seed, size=args.size, slices=args.slices,
                               frames=args.frames, cine_labels=not args.no_cine_labels, vary=args.vary)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.monotonic()
    try:
        if args.dicom:
            ids = _write_dicom(args.out, params, per_slice_series=args.dicom == "series-per-slice")
        else:
            from mi_pipeline.data.phantom import generate_dataset  # nibabel and scipy: after --help

            ids = generate_dataset(args.out, params)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"error: {args.out}: cannot write ({exc.strerror or exc})", file=sys.stderr)
        return 2
    print(f"wrote {len(ids)} subject(s) to {args.out} in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
