"""What a stage's result depends on: ``stage_hash`` (stored in every checkpoint, so resume can refuse a
changed config), the changed keys a plan shows, and which changes only lengthen training."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from mi_pipeline.config.compat import HASHED_WHEN_CHANGED
from mi_pipeline.config.loading import to_dict
from mi_pipeline.config.schema import Config
from mi_pipeline.graph import MODEL_STAGES, config_sections

NOT_HASHED: tuple[str, ...] = ("data.workers", "data.cache_budget_mb")
"""Settings that change how fast or in how much memory a result is made, never the result itself."""


def _drop_new_defaults(relevant: dict[str, Any]) -> None:
    defaults = to_dict(Config())
    for dotted in HASHED_WHEN_CHANGED:
        *path, key = dotted.split(".")
        here, default = relevant, defaults
        for part in path:
            here, default = here.get(part, {}), default[part]
        if key in here and here[key] == default[key]:
            del here[key]
    for dotted in NOT_HASHED:
        *path, key = dotted.split(".")
        here = relevant
        for part in path:
            here = here.get(part, {})
        here.pop(key, None)


def stage_hash(cfg: Config, stage: str) -> str:
    """Stable fingerprint of everything ``stage``'s result depends on (its sections, seed, threads).

    Of the performance switches only those that change the arithmetic count: each trained section
    carries its resolved ``amp`` (off and fp16 written as the false/true of older versions, so the
    hashes of runs started before amp had modes stay the same), and ``channels_last``/``compile``
    are added when on. Worker count, pinning, cuDNN autotuning and background checkpoint writes are
    left out on purpose.
    """
    full = to_dict(cfg)
    relevant = {"seed": full["seed"], "threads": full["threads"], "deterministic": full["deterministic"]}
    sections = config_sections(stage)
    relevant.update({section: full[section] for section in sections})
    for section in sections:
        if "amp" in relevant[section]:
            amp = cfg.performance_for(section).amp
            relevant[section] = {**relevant[section], "amp": {"off": False, "fp16": True}.get(amp, amp)}
    _drop_new_defaults(relevant)
    perf = cfg.performance
    numeric = {name: True for name in ("channels_last", "compile") if getattr(perf, name)}
    if numeric and stage in MODEL_STAGES:
        relevant["performance"] = numeric
    blob = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_changes(stored: dict[str, Any], cfg: Config, stage: str) -> list[tuple[str, Any, Any]]:
    """``(key, stored value, current value)`` for each setting ``stage``'s result depends on that
    differs between a checkpoint's stored config and ``cfg`` (keys a stored config lacks are new
    settings, not changes). The plan shows these when a finished stage's config changed."""
    current = to_dict(cfg)
    changes: list[tuple[str, Any, Any]] = []
    for top in ("seed", "threads", "deterministic"):
        if top in stored and stored[top] != current[top]:
            changes.append((top, stored[top], current[top]))
    for section in config_sections(stage):
        old, new = _flatten(stored.get(section, {}), section), _flatten(current[section], section)
        changes += [(key, old[key], value) for key, value in new.items()
                    if key in old and old[key] != value and key not in NOT_HASHED]
    return changes


def only_longer_training(changes: list[tuple[str, Any, Any]], stage: str) -> bool:
    """True when ``changes`` are epoch counts only: ``stage``'s own raised, or its upstream stages'.

    Training longer is not a different experiment: resume continues from last.pth. An upstream
    stage's longer training matters only if it changed that stage's best model, which dependants
    see through its fingerprint (the upstream-change rule), not through the config.
    """
    if not changes:
        return False
    for key, old, new in changes:
        section, _, name = key.partition(".")
        if name != "epochs" or (section == stage and not new > old):
            return False
    return True


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_flatten(item, f"{prefix}.{key}"))
    return out
