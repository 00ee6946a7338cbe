"""GPU speed switches (``performance:`` in the config), applied the same way by the trainer and the benchmark.

Every switch either keeps a CPU run bit-identical (it does nothing on CPU, or only changes who builds
a batch) or is part of the stage config hash (``amp``, ``channels_last``, ``compile``): a resumed run
never silently mixes arithmetic. What each function does with a ``PerformanceConfig`` on a device:

* ``apply_process_switches(perf, device)`` -- cuDNN autotuning (process-wide); returns notes to log;
* ``apply_model_switches(model, perf, device)`` -- channels_last in place, then the module to *call*
  (``torch.compile``'d when asked); save ``model.state_dict()``, never the returned wrapper's;
* ``autocast(perf, device)`` -- the mixed-precision context for forward + loss;
* ``make_grad_scaler(perf, device)`` -- a GradScaler, enabled for fp16 on CUDA only;
* ``batch_to_device(batch, perf, device)`` -- the host->device copy (non_blocking from pinned memory,
  channels_last for 4D floating tensors);
* ``BatchStream`` -- builds upcoming batches in background worker processes (pinned), in order.

Rules: mixed precision, cuDNN autotuning and pinned memory are CUDA features and are ignored on CPU
with one log line each (CPU results stay identical to the switch being off); ``deterministic: true``
wins over ``cudnn_benchmark``; bf16 on a GPU without native bfloat16 and a ``compile`` that cannot
build code are one-line ConfigErrors before training starts.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from mi_pipeline.config import PerformanceConfig
from mi_pipeline.engine.determinism import inductor_follows_determinism
from mi_pipeline.errors import ConfigError

Batch = dict[str, torch.Tensor]
Position = tuple[int, int]  # (epoch, batch index)
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_COMPILE_CHECKED: set[str] = set()


def describe(perf: PerformanceConfig, device: torch.device) -> str:
    """One line: what actually applies on ``device``."""
    amp = amp_dtype(perf, device)
    parts = [f"amp={'off' if amp is None else perf.amp}", f"channels_last={'on' if perf.channels_last else 'off'}",
             f"compile={'on' if perf.compile else 'off'}",
             f"cudnn_benchmark={'on' if device.type == 'cuda' and torch.backends.cudnn.benchmark else 'off'}",
             f"workers={perf.num_workers}", f"pinned={'on' if pins(perf, device) else 'off'}"]
    return f"performance on {device.type}: " + " ".join(parts)


def ignored_on(perf: PerformanceConfig, device: torch.device) -> list[str]:
    """One note per switch that was asked for but does nothing on ``device``."""
    if device.type == "cuda":
        return []
    notes = []
    if perf.amp != "off":
        notes.append(f"amp={perf.amp} ignored on {device.type}: mixed precision is used on CUDA only "
                     "(results stay identical to amp off)")
    if perf.cudnn_benchmark:
        notes.append(f"performance.cudnn_benchmark ignored on {device.type} (a cuDNN setting)")
    if perf.pin_memory:
        notes.append(f"performance.pin_memory ignored on {device.type}: pinned memory only speeds host->GPU copies")
    return notes


# --- process ------------------------------------------------------------------------------------


def apply_process_switches(perf: PerformanceConfig, device: torch.device) -> list[str]:
    """Set cuDNN autotuning for ``device``; returns the notes worth logging (one line each).

    ``deterministic: true`` (``torch.use_deterministic_algorithms``) wins: autotuning picks kernels by
    timing, so two runs may compute differently, which is what deterministic mode rules out.
    """
    notes = ignored_on(perf, device)
    if device.type != "cuda":
        return notes
    wanted = perf.cudnn_benchmark
    if wanted and torch.are_deterministic_algorithms_enabled():
        notes.append("performance.cudnn_benchmark ignored: deterministic: true wins (autotuned kernels differ "
                     "from run to run); set deterministic: false to autotune")
        wanted = False
    torch.backends.cudnn.benchmark = wanted
    return notes


# --- precision ----------------------------------------------------------------------------------


def amp_dtype(perf: PerformanceConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype on ``device``, or None (amp off, or not CUDA)."""
    if perf.amp == "off" or device.type != "cuda":
        return None
    if perf.amp == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ConfigError(f"amp: bf16 (performance.amp or the stage's amp) needs a GPU with native bfloat16 (Ampere or newer), "
                          f"{torch.cuda.get_device_name(device)} has none; use amp: fp16 or off")
    return AMP_DTYPES[perf.amp]


def autocast(perf: PerformanceConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Mixed-precision context for forward + loss (a no-op unless amp applies on ``device``)."""
    dtype = amp_dtype(perf, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_grad_scaler(perf: PerformanceConfig, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling for fp16 on CUDA (bf16 has float32's range and needs none); disabled otherwise.

    A disabled scaler passes ``backward``/``step`` straight through and has an empty state_dict.
    """
    return torch.amp.GradScaler("cuda", enabled=amp_dtype(perf, device) == torch.float16)


# --- model --------------------------------------------------------------------------------------


def apply_model_switches(model: nn.Module, perf: PerformanceConfig, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device`` (channels_last when asked, in place) and return the module to call.

    With ``compile`` the returned module is ``torch.compile(model)``; ``model`` itself is unchanged,
    and its ``state_dict()`` (no ``_orig_mod.`` prefix) is what checkpoints hold. Call this on the
    module that is run (after DistributedDataParallel wrapping, when there is one): see ``compile_model``.
    """
    to_memory_format(model, perf, device)
    return compile_model(model, perf, device)


def to_memory_format(model: nn.Module, perf: PerformanceConfig, device: torch.device) -> nn.Module:
    if perf.channels_last:
        return model.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload,no-any-return]
    return model.to(device)


def compile_model(module: nn.Module, perf: PerformanceConfig, device: torch.device) -> nn.Module:
    if not perf.compile:
        return module
    inductor_follows_determinism()
    check_compile_works(device)
    return torch.compile(module)  # type: ignore[return-value]  # an OptimizedModule: a Module that runs compiled


def check_compile_works(device: torch.device) -> None:
    """Compile and run a tiny function once per device type: a machine without a C++ compiler (CPU)
    or Triton (GPU) fails here, in one line, before training starts instead of at the first batch."""
    if device.type in _COMPILE_CHECKED:
        return
    with torch.random.fork_rng(devices=[]):  # the check must not move any RNG a run depends on
        try:
            probe = torch.compile(lambda x: x * 2.0 + 1.0)
            probe(torch.ones(4, device=device))
        except Exception as exc:  # noqa: BLE001 - inductor raises many types; all mean "no compile here"
            raise ConfigError(f"performance.compile: torch.compile does not work on this {device.type} machine "
                              f"({first_line(exc)}); install a C++ compiler (CPU) or Triton (GPU), "
                              "or set performance.compile: false") from None
    _COMPILE_CHECKED.add(device.type)


def is_compile_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith(("torch._dynamo", "torch._inductor"))


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


# --- batches ------------------------------------------------------------------------------------


def pins(perf: PerformanceConfig, device: torch.device) -> bool:
    return perf.pin_memory and device.type == "cuda"


def batch_to_device(batch: Batch, perf: PerformanceConfig, device: torch.device) -> Batch:
    """Copy a CPU batch to ``device``: asynchronous from pinned memory; 4D floating tensors channels_last
    when asked. On CPU without channels_last the tensors are returned as they are."""
    non_blocking = device.type == "cuda" and all(v.is_pinned() for v in batch.values())
    out = {}
    for key, value in batch.items():
        if perf.channels_last and value.dim() == 4 and value.is_floating_point():
            value = value.to(device, non_blocking=non_blocking, memory_format=torch.channels_last)
        else:
            value = value.to(device, non_blocking=non_blocking)
        out[key] = value
    return out


class _Positions(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Map-style view of the positions to build: item i is (position, batch) of ``positions[i]``."""

    def __init__(self, build: Callable[[int, int], Batch], positions: Sequence[Position]) -> None:
        self.build, self.positions = build, list(positions)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[Position, Batch]:
        epoch, index = self.positions[i]
        return (epoch, index), self.build(epoch, index)


def _quiet_worker(_worker_id: int) -> None:
    """Workers leave stop signals to the main process, which saves the exact position and then shuts
    them down; SLURM and Ctrl-C signal the whole process group, and a worker that died of it would
    turn the clean stop into a crash."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


class BatchStream:
    """The batches at ``positions`` in order, on ``device``.

    ``build(epoch, index)`` must be a pure function of its arguments (the engine seeds augmentation
    from them), so who builds a batch and when cannot change its content: with ``num_workers`` > 0 a
    torch DataLoader builds upcoming batches in background processes (pinned on CUDA when asked),
    across epoch ends too, so the next epoch's first batches are ready while rank 0 validates.
    With no workers and no pinning the batch is built inline when asked for, as it always was.
    The loader gets its own generator: drawing its base seed from the global RNG would change
    dropout and every later random number of the run.
    """

    def __init__(self, build: Callable[[int, int], Batch], positions: Sequence[Position], perf: PerformanceConfig,
                 device: torch.device) -> None:
        self.build, self.positions, self.perf, self.device = build, list(positions), perf, device
        self._next = 0
        self._iter: Iterator[tuple[Position, Batch]] | None = None
        if perf.num_workers > 0 or pins(perf, device):
            loader = torch.utils.data.DataLoader(
                _Positions(build, self.positions), batch_size=None, shuffle=False, num_workers=perf.num_workers,
                pin_memory=pins(perf, device), prefetch_factor=perf.prefetch_factor if perf.num_workers else None,
                worker_init_fn=_quiet_worker if perf.num_workers else None,
                generator=torch.Generator().manual_seed(0))
            self._iter = iter(loader)

    def next(self, position: Position) -> Batch:
        """The batch at ``position``, which must be the next one of ``positions``."""
        expected = self.positions[self._next] if self._next < len(self.positions) else None
        if position != expected:
            raise RuntimeError(f"batch stream out of step: asked for {position}, next is {expected}")
        self._next += 1
        if self._iter is None:
            batch = self.build(*position)
        else:
            built_at, batch = next(self._iter)
            if tuple(built_at) != position:
                raise RuntimeError(f"batch stream out of step: built {tuple(built_at)}, expected {position}")
        return batch_to_device(batch, self.perf, self.device)

    def close(self) -> None:
        """Stop the workers (idempotent). Workers ignore SIGTERM, so one that outlives torch's own
        shutdown (join, then terminate) is killed here rather than left for interpreter exit to wait on."""
        it, self._iter = self._iter, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        for worker in getattr(it, "_workers", ()):
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=5)

    def __enter__(self) -> BatchStream:  # noqa: PYI034 - typing.Self needs Python 3.11
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
