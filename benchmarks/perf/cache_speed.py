"""Item 3: an epoch's data loading from the preprocessed cache vs decoding the NIfTI files every epoch.

Cache: ``data/cache.load_split`` of the training subjects (what every stage's ``setup`` does).
Baseline: the same subjects read from the phantom's NIfTI files (the generic layout, written with
nibabel by step 1) and preprocessed again (reorient, resample, crop, normalise), as a pipeline
without a cache would do every epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.perf.timing import median, paired, peak_rss_mb, timed, traced_peak_mb
from benchmarks.perf.workspace import Bench
from mi_pipeline.data import adapters, cache
from mi_pipeline.data.prepare import dataset_root
from mi_pipeline.data.preprocess import preprocess_subject


def _size_mb(paths: list[Path]) -> float:
    return round(sum(p.stat().st_size for p in paths if p.is_file()) / 2**20, 3)


def measure(bench: Bench) -> dict[str, Any]:
    run_dir, cfg = bench.trained_run(), bench.cfg
    ids = cache.read_split(run_dir, "train")
    root = dataset_root(cfg, run_dir)

    def from_cache() -> None:
        for sid in ids:
            cache.load_subject(run_dir, sid)

    def from_nifti() -> None:
        for sid in ids:
            preprocess_subject(adapters.load_subject(cfg.data.format, root, sid), cfg.data)

    timings = paired(lambda: timed(from_cache), lambda: timed(from_nifti), bench.preset.cache_repeats)
    cache_files = [cache.cache_dir(run_dir) / f"{sid}.npz" for sid in ids]
    nifti_files = [f for sid in ids for f in (root / sid).iterdir()]
    return {
        "cache_speedup": timings.ratio,
        "cache": {
            "subjects": len(ids),
            "epoch_ms_cache": round(1000 * median(timings.baseline), 1),
            "epoch_ms_nifti": round(1000 * median(timings.subject), 1),
            "pairs": timings.to_json(scale=1000, unit="ms"),
            "cache_size_mb": _size_mb(cache_files),
            "nifti_size_mb": _size_mb(nifti_files),
            "peak_heap_mb_cache": round(traced_peak_mb(from_cache), 2),
            "peak_heap_mb_nifti": round(traced_peak_mb(from_nifti), 2),
            "process_peak_rss_mb": round(peak_rss_mb(), 1),
        },
    }
