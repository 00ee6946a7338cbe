"""Check a run's resource requests against the cluster before anything is submitted.

A job asking for more than any node of its partition has (8 CPUs on 2-CPU nodes, a GPU where there
is no GPU gres, more memory or time than the partition allows) pends forever or is refused after
its upstream jobs were already submitted. Asked here first, from ``scontrol show partition`` and
``scontrol show node``, such a request is one error line naming the config key to change.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from mi_pipeline.config import Config
from mi_pipeline.errors import ConfigError


@dataclass(frozen=True)
class Partition:
    name: str
    default: bool
    nodes: tuple[str, ...]
    max_time_min: int | None  # None: unlimited
    max_cpus: int  # CPUs of the largest node
    max_mem_mb: int  # memory of the largest node
    max_gpus: int  # GPUs (gres gpu) of the best-equipped node


def _scontrol(*args: str) -> list[dict[str, str]]:
    out = subprocess.run(["scontrol", "show", *args, "-o"], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


def _minutes(value: str) -> int | None:
    """SLURM time limit (``UNLIMITED``, ``MM``, ``HH:MM:SS``, ``D-HH:MM:SS``) in minutes."""
    if value.upper() in ("UNLIMITED", "INFINITE", ""):
        return None
    days, _, rest = value.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
    return (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0)


def _gpus(gres: str) -> int:
    return sum(int(n) for n in re.findall(r"gpu(?::[^:,()]+)?:(\d+)", gres or ""))


def _expand(nodelist: str) -> tuple[str, ...]:
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60)
    return tuple(out.stdout.split()) if out.returncode == 0 else (nodelist,)


def cluster_partitions() -> dict[str, Partition] | None:
    """The cluster's partitions, or None when scontrol cannot tell (then nothing is checked)."""
    try:
        nodes = {n["NodeName"]: n for n in _scontrol("node")}
        partitions = {}
        for p in _scontrol("partition"):
            members = [nodes[n] for n in _expand(p.get("Nodes", "")) if n in nodes]
            partitions[p["PartitionName"]] = Partition(
                name=p["PartitionName"], default=p.get("Default") == "YES", nodes=tuple(n["NodeName"] for n in members),
                max_time_min=_minutes(p.get("MaxTime", "UNLIMITED")),
                max_cpus=max((int(n.get("CPUTot", 0)) for n in members), default=0),
                max_mem_mb=max((int(n.get("RealMemory", 0)) for n in members), default=0),
                max_gpus=max((_gpus(n.get("Gres", "")) for n in members), default=0))
        return partitions
    except (OSError, subprocess.SubprocessError, KeyError, ValueError):
        return None


def check_resources(cfg: Config, stages: list[str], partitions: dict[str, Partition] | None) -> None:
    """ConfigError (one line, naming the key) for the first request no node of its partition can meet."""
    if not partitions:
        return
    for stage in stages:
        res = cfg.slurm.for_stage(stage)

        def key(name: str) -> str:
            own = getattr(getattr(cfg.slurm, stage), name) is not None
            return f"slurm.{stage}.{name}" if own else f"slurm.{name} (or slurm.{stage}.{name})"

        name = res["partition"] or next((p.name for p in partitions.values() if p.default), None)
        if name is None:
            raise ConfigError(f"{key('partition')}: empty and the cluster has no default partition; "
                              f"set it to one of {', '.join(partitions)}")
        if name not in partitions:
            raise ConfigError(f"{key('partition')}: partition {name!r} does not exist on this cluster "
                              f"(partitions: {', '.join(partitions)})")
        part = partitions[name]
        tasks = res["tasks_per_node"] or max(1, res["gpus_per_node"])
        cpus = tasks * res["cpus_per_task"]
        if cpus > part.max_cpus:
            raise ConfigError(f"{key('cpus_per_task')}: the {stage} job asks for {cpus} CPUs per node, the nodes of "
                              f"partition {name!r} have at most {part.max_cpus}; lower it")
        if res["mem_gb"] * 1024 > part.max_mem_mb:
            raise ConfigError(f"{key('mem_gb')}: the {stage} job asks for {res['mem_gb']} GB, the nodes of partition "
                              f"{name!r} have at most {part.max_mem_mb // 1024} GB; lower it")
        if res["gpus_per_node"] > part.max_gpus:
            have = f"at most {part.max_gpus} GPU(s)" if part.max_gpus else "no GPUs (no gpu gres)"
            raise ConfigError(f"{key('gpus_per_node')}: the {stage} job asks for {res['gpus_per_node']} GPU(s), "
                              f"the nodes of partition {name!r} have {have}; set it to {part.max_gpus}")
        if part.max_time_min is not None and res["time_min"] > part.max_time_min:
            raise ConfigError(f"{key('time_min')}: the {stage} job asks for {res['time_min']} min, partition {name!r} "
                              f"allows at most {part.max_time_min} min; lower it (jobs requeue and resume anyway)")
