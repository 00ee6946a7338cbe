"""Process-wide settings that make a CPU run bit-exact and a GPU run fast."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        from mi_pipeline.errors import ConfigError

        raise ConfigError("device: cuda requested but no CUDA device is visible (set device: auto or cpu)")
    return torch.device(requested)


def setup_determinism(seed: int, threads: int, deterministic: bool, device: torch.device) -> None:
    """Pin threads and seed every RNG; exactness is promised on CPU only (see README)."""
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # grid_sample's backward has no deterministic CUDA kernel: warn there instead of failing.
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        use_deterministic_algorithms(warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False


def use_deterministic_algorithms(warn_only: bool) -> None:
    """``torch.use_deterministic_algorithms(True)`` without its import of ``torch._inductor`` (~2 s in
    every stage process, a third of a demo stage's start-up) only to set Inductor's own flag, which
    matters to ``torch.compile`` alone: ``inductor_follows_determinism`` sets it when a model is compiled."""
    set_flag = getattr(torch._C, "_set_deterministic_algorithms", None)
    if set_flag is None or "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
    else:
        set_flag(True, warn_only=warn_only)


def inductor_follows_determinism() -> None:
    """Give Inductor the process's deterministic setting (call before ``torch.compile``)."""
    torch.use_deterministic_algorithms(torch.are_deterministic_algorithms_enabled(),
                                       warn_only=torch.is_deterministic_algorithms_warn_only_enabled())
