"""YAML -> ``Config``, validated once at the edge; ``Config`` -> plain dict and YAML.

Every key has a type and a default (``schema.py``); a YAML key that is unknown or of the wrong type is
an error that names the key path and the file. ``--set section.key=value`` overrides are parsed as
YAML scalars and validated the same way.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from mi_pipeline.config.compat import AMP_FROM_BOOL
from mi_pipeline.config.schema import MAX_CONFIG_BYTES, AmpMode, Config
from mi_pipeline.errors import ConfigError


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read ``path`` (None = all defaults), apply ``section.key=value`` overrides, validate."""
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
    for item in overrides:
        _apply_override(raw, item)
        source = f"{source} (with --set)" if "--set" not in source else source
    cfg: Config = _build(Config, raw, prefix="", source=source)
    return cfg


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        if path.exists() and not path.is_file():  # /dev/zero, a fifo or a folder would hang or read forever
            raise ConfigError(f"{path}: not a regular file; --config takes a YAML file")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes, too large for a config "
                              f"(at most {MAX_CONFIG_BYTES // 1024} KiB)")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a config is UTF-8 YAML)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    return raw


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, raw: Any, *, prefix: str, source: str) -> Any:
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key {prefix}{key} (known here: {known})")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = _coerce(hints[name], value, key=f"{prefix}{name}", source=source)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: {where}: {exc}") from None


def _coerce(tp: Any, value: Any, *, key: str, source: str) -> Any:
    """Check ``value`` against type hint ``tp``; convert where YAML is naturally loose (int->float, list->tuple)."""
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, prefix=f"{key}.", source=source)
    if origin is Literal:
        if tp == AmpMode and isinstance(value, bool):  # `amp: off` reads as false; legacy `amp: true`
            return AMP_FROM_BOOL[value]
        if value not in typing.get_args(tp):
            choices = " | ".join(map(str, typing.get_args(tp)))
            raise ConfigError(f"{source}: {key} must be one of {choices}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key=key, source=source)
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return tuple(_coerce(item_tp, v, key=f"{key}[{i}]", source=source) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string; users mean the number
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{source}: {key} must be a number, and finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: {key} has an unsupported type {tp!r}")  # a schema bug


def from_dict(raw: dict[str, Any], source: str) -> Config:
    """A config from its plain form (e.g. the one a checkpoint stores), validated like a YAML file."""
    cfg: Config = _build(Config, raw, prefix="", source=source)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, JSON/YAML-safe dict of a config (tuples become lists)."""
    plain: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(cfg)))
    return plain


def dump_yaml(cfg: Config) -> str:
    return str(yaml.safe_dump(to_dict(cfg), sort_keys=False))
