"""``python -m benchmarks.gpu_check``: what the engine costs a GPU, in a few minutes on a lent node.

Measures, on a synthetic 2D conv net (no data preparation: the point is the loop, not the model),
through the real ``engine.trainer.fit`` unless said otherwise:

* steps/s of a bare hand-written loop vs ours (same model, batches, AdamW), twice: ``loop`` with
  full-size batches built on the CPU as the stages build theirs, and ``loop_gpu_bound`` with tiny
  CPU batches upsampled on the device, so that the GPU is the bottleneck and any host stall shows;
* ours with AMP bf16 on vs off, and with ``torch.compile`` on vs off;
* the checkpoint stall: how long the loop waits at a save (snapshot hand-over) and what a save adds
  to the steps beside it (ours with a mid-epoch ``last.pth`` every few steps vs none);
* host syncs per step (benchmarks/peers/syncs.py: reads of tensor values; on CUDA each one drains
  the GPU's queue), ours vs the bare loop;
* 2-GPU DDP scaling of the bare loop (NCCL), when two GPUs are visible.

``--device cpu --quick`` runs every section tiny on the CPU (compile and DDP skipped, AMP is ignored
on CPU by design): a dry run that proves the script starts and its plumbing works (CI runs it).
Prints one JSON object (also to ``--json``); exit 0, or 2 for ``--device cuda`` without CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.peers.syncs import SyncCounter
from mi_pipeline.config import OptimConfig, PerformanceConfig
from mi_pipeline.engine.task import Batch, TrainTask
from mi_pipeline.engine.trainer import FitContext, Interrupted, batch_seed, fit

COUNTER = SyncCounter()


@dataclass(frozen=True)
class Size:
    channels: int
    crop: int
    batch: int
    samples: int
    steps: int  # timed steps per run (after warm-up)
    warmup: int
    repeats: int


QUICK_CPU = Size(channels=4, crop=16, batch=4, samples=48, steps=4, warmup=2, repeats=1)
FULL_GPU = Size(channels=64, crop=128, batch=32, samples=4096, steps=60, warmup=10, repeats=3)
QUICK_GPU = Size(channels=32, crop=96, batch=16, samples=1024, steps=30, warmup=8, repeats=2)
SIZES = (QUICK_CPU, FULL_GPU, QUICK_GPU)
GPU_BOUND_INPUT_PX = 8  # the GPU-bound loop's CPU-built input side (upsampled to the crop on the device)


def fits_one_epoch(size: Size) -> bool:
    """``ours`` times warm-up + steps + the stop's call inside one epoch (an epoch end would be timed too)."""
    return size.warmup + size.steps + 1 <= size.samples // size.batch


def conv_net(channels: int) -> nn.Module:
    """A small U-Net-sized stack of 3x3 convolutions (what the stages' networks spend their time in)."""
    layers: list[nn.Module] = [nn.Conv2d(2, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.LeakyReLU()]
    for _ in range(6):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.LeakyReLU()]
    return nn.Sequential(*layers, nn.Conv2d(channels, 2, 1))


class SyntheticTask(TrainTask):
    """Images -> a smooth field; batches are pure functions of (generator), built on the CPU."""

    name = "gpu_check"
    metric_name = "neg_loss"

    def __init__(self, size: Size, input_px: int | None = None) -> None:
        self.size = size
        self.input_px = input_px or size.crop  # < crop: a small CPU batch, upsampled on the device (GPU-bound steps)
        self.stamps: list[float] = []  # time.perf_counter() at each loss call (device synced only at the ends)

    def setup(self, device: torch.device) -> None:
        self.device = device

    def build_model(self) -> nn.Module:
        return conv_net(self.size.channels)

    def num_train_samples(self) -> int:
        return self.size.samples

    def make_batch(self, indices: list[int], generator: torch.Generator, device: torch.device) -> Batch:
        x = torch.randn(len(indices), 2, self.input_px, self.input_px, generator=generator)
        return {"x": x.to(device)}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        self.stamps.append(time.perf_counter())
        x = batch["x"]
        if x.shape[-1] != self.size.crop:
            x = nn.functional.interpolate(x, size=(self.size.crop, self.size.crop), mode="bilinear")
        return nn.functional.mse_loss(model(x).float(), 0.5 * x.float()), {}

    def validate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        return {"neg_loss": 0.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(size: Size, device: torch.device, input_px: int | None = None) -> dict[str, float]:
    """Steps/s and host syncs per step of a minimal loop (forward, loss, backward, AdamW)."""
    task = SyntheticTask(size, input_px)
    torch.manual_seed(0)
    model = task.build_model().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    total = size.warmup + size.steps
    syncs = 0
    for i in range(total):
        if i == size.warmup:
            _sync(device)
            started, syncs = time.perf_counter(), COUNTER.count
        batch = task.make_batch(list(range(size.batch)), torch.Generator().manual_seed(i), device)
        loss, _ = task.loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return {"steps_per_s": size.steps / (time.perf_counter() - started),
            "syncs_per_step": (COUNTER.count - syncs) / size.steps}


def ours(size: Size, device: torch.device, folder: Path, perf: PerformanceConfig,
         input_px: int | None = None) -> dict[str, float]:
    """Steps/s (steady state: the timed window between loss calls of one epoch) through ``fit``."""
    task = SyntheticTask(size, input_px)
    total = size.warmup + size.steps + 1
    assert fits_one_epoch(size), "the timed window must fit in one epoch"
    calls = {"n": 0, "syncs": 0}

    def stop() -> bool:
        calls["n"] += 1
        if calls["n"] == size.warmup:
            calls["syncs"] = COUNTER.count
        return calls["n"] >= total

    log_dir = folder / "logs"
    from benchmarks.perf.probe import QuietLog

    ctx = FitContext(ckpt_dir=folder / "checkpoints", log=QuietLog(log_dir, task.name), seed=0, config_hash="gpu",
                     config={}, device=device, performance=perf, stop_requested=stop)
    try:
        fit(task, OptimConfig(epochs=1, batch_size=size.batch, lr=1e-3), ctx)
    except Interrupted:
        pass
    syncs = COUNTER.count - calls["syncs"]
    _sync(device)
    window = task.stamps[size.warmup:size.warmup + size.steps + 1]
    # the stop at the end reads the losses once and saves: count the per-step reads before it
    return {"steps_per_s": size.steps / (window[-1] - window[0]), "syncs_per_step": syncs / size.steps}


def _median(values: list[float]) -> float:
    return round(float(statistics.median(values)), 4)


def measure(size: Size, device: torch.device, work: Path, compile_ok: bool,
            input_px: int | None = None) -> dict[str, Any]:
    """Every variant, ``size.repeats`` times in turn. ``input_px`` < crop makes the steps GPU-bound:
    with full-size batches built on the CPU (what the stages do) a fast GPU waits for the host."""
    base = PerformanceConfig(checkpoint_every_s=0)
    variants: dict[str, PerformanceConfig | None] = {
        "bare": None, "ours": base, "ours_bf16": replace(base, amp="bf16"),
        "ours_bf16_channels_last": replace(base, amp="bf16", channels_last=True),  # configs/default.yaml's pair
        "ours_ckpt_every_5_steps": replace(base, checkpoint_every_steps=5),
    }
    if compile_ok:
        variants["ours_compile"] = replace(base, compile=True)
    if device.type == "cuda" and input_px is None:
        variants["ours_pinned_workers"] = replace(base, pin_memory=True, num_workers=2)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    syncs: dict[str, list[float]] = {name: [] for name in variants}
    errors: dict[str, str] = {}
    for r in range(size.repeats):
        for name, perf in variants.items():
            if name in errors:
                continue
            try:
                got = (bare_loop(size, device, input_px) if perf is None
                       else ours(size, device, work / f"{name}-{input_px}-{r}", perf, input_px))
            except Exception as exc:  # noqa: BLE001 - one variant failing (compile without Triton) must not end the rest
                errors[name] = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                continue
            rates[name].append(got["steps_per_s"])
            syncs[name].append(got["syncs_per_step"])
    out: dict[str, Any] = {"steps_per_s": {k: _median(v) for k, v in rates.items() if v},
                           "syncs_per_step": {k: _median(v) for k, v in syncs.items() if v}}
    def ratio(a: str, b: str) -> float | None:
        pairs = [x / y for x, y in zip(rates.get(a, []), rates.get(b, []), strict=False) if y]
        return _median(pairs) if pairs else None

    out["ratios"] = {"ours_vs_bare": ratio("ours", "bare"), "bf16_vs_fp32": ratio("ours_bf16", "ours"),
                     "bf16_channels_last_vs_fp32": ratio("ours_bf16_channels_last", "ours"),
                     "compile_vs_eager": ratio("ours_compile", "ours"),
                     "ckpt_every_5_steps_vs_none": ratio("ours_ckpt_every_5_steps", "ours")}
    if errors:
        out["errors"] = errors
    return out


def checkpoint_stall(size: Size, device: torch.device, work: Path) -> dict[str, float]:
    """The loop's wait at a save (snapshot of model + AdamW state, hand-over to the writer thread)."""
    from mi_pipeline.engine.checkpoint_writer import CheckpointWriter

    model = conv_net(size.channels).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 2, size.crop, size.crop, device=device)).square().mean().backward()
    optimizer.step()
    writer = CheckpointWriter(background=True)
    waits, costs = [], []
    try:
        for _i in range(max(3, size.repeats)):
            _sync(device)
            started = time.perf_counter()
            writer.save(work / "stall" / "last.pth", {"model": model.state_dict(), "optimizer": optimizer.state_dict()})
            waits.append(time.perf_counter() - started)
            writer.flush()
            costs.append(writer.last_cost_s)
    finally:
        writer.close()
    return {"loop_wait_ms": round(1000 * statistics.median(waits), 2),
            "save_cost_ms": round(1000 * statistics.median(costs), 2),
            "mid_epoch_floor_s": round(statistics.median(costs) / 0.01, 2)}


def _ddp_worker(rank: int, world: int, size: Size, port: int, results: Any) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl", rank=rank, world_size=world)
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    model = nn.parallel.DistributedDataParallel(conv_net(size.channels).to(device), device_ids=[rank])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    per_rank = size.batch // world
    for i in range(size.warmup + size.steps):
        if i == size.warmup:
            torch.cuda.synchronize(device)
            started = time.perf_counter()
        g = torch.Generator().manual_seed(batch_seed(0, 0, i) + rank)
        x = torch.randn(per_rank, 2, size.crop, size.crop, generator=g).to(device, non_blocking=True)
        loss = nn.functional.mse_loss(model(x), 0.5 * x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize(device)
    if rank == 0:
        results.put(size.steps / (time.perf_counter() - started))
    dist.destroy_process_group()


def ddp_scaling(size: Size) -> dict[str, Any]:
    """The same global batch on 1 GPU (bare loop) and split over 2 (DDP, NCCL)."""
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return {"skipped": f"needs 2 GPUs ({torch.cuda.device_count() if torch.cuda.is_available() else 0} visible)"}
    import torch.multiprocessing as mp

    one = bare_loop(size, torch.device("cuda", 0))["steps_per_s"]
    results = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_ddp_worker, args=(2, size, 29517, results), nprocs=2, join=True)
    two = results.get()
    return {"steps_per_s_1gpu": round(one, 3), "steps_per_s_2gpu": round(two, 3),
            "speedup": round(two / one, 3), "efficiency": round(two / one / 2, 3)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats (CPU: a dry run)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--work-dir", type=Path, help="scratch folder (default: a temp dir)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is visible (use --device cpu --quick for a dry run)",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    size = (QUICK_GPU if args.quick else FULL_GPU) if device.type == "cuda" else QUICK_CPU
    if device.type == "cpu":
        torch.set_num_threads(1)  # a dry run: one thread cannot spin-wait on a busy neighbour
    COUNTER.install()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    started = time.time()
    compile_ok = device.type == "cuda"  # on CPU compile needs a C++ toolchain and minutes: not in the dry run
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "size": size.__dict__, "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    sections: dict[str, Callable[[], dict[str, Any]]] = {
        "loop": lambda: measure(size, device, work, compile_ok),
        "loop_gpu_bound": lambda: measure(size, device, work, compile_ok, input_px=GPU_BOUND_INPUT_PX),
        "checkpoint": lambda: checkpoint_stall(size, device, work),
        "ddp": lambda: ddp_scaling(size) if device.type == "cuda" else {"skipped": "cpu dry run"},
    }
    for name, section in sections.items():
        result[name] = section()
        result["wall_s"] = round(time.time() - started, 1)
        if args.json:  # after every section: a lease that ends mid-run still leaves what was measured
            args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"[gpu_check {result['wall_s']:6.1f}s] {name} done", file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
