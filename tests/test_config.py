"""Config: YAML -> frozen dataclasses; every mistake names the key path and the file."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from mi_pipeline.config import Config, load_config, stage_hash
from mi_pipeline.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["demo.yaml", "default.yaml"])
def test_shipped_configs_load(name: str) -> None:
    path = REPO / "configs" / name
    if not path.exists():
        pytest.fail(f"{path} is missing")
    assert isinstance(load_config(path), Config)


def test_config_is_frozen() -> None:
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("motion:\n  epoch: 3\n", "unknown key motion.epoch"),
        ("motoin:\n  epochs: 3\n", "unknown key motoin"),
        ("motion:\n  epochs: three\n", "motion.epochs must be an integer"),
        ("motion:\n  epochs: -1\n", "epochs must be > 0"),
        ("data:\n  format: nrrd\n", "data.format must be one of"),
        ("data:\n  phantom:\n    subjects: 2.5\n", "data.phantom.subjects must be an integer"),
        ("segmentation:\n  channels: 16\n", "segmentation.channels must be a list"),
        ("motion: [1, 2]\n", "motion must be a mapping"),
        ("seed: true\n", "seed must be an integer"),
        ("motion:\n  epochs: [\n", "is not valid YAML"),
        # performance switches
        ("performance:\n  amp: fp8\n", "performance.amp must be one of off | bf16 | fp16, got 'fp8'"),
        ("motion:\n  amp: half\n", "motion.amp must be one of"),
        ("performance:\n  num_workers: -1\n", "performance: num_workers must be >= 0"),
        ("performance:\n  num_workers: 2.5\n", "performance.num_workers must be an integer"),
        ("performance:\n  prefetch_factor: 0\n", "prefetch_factor must be > 0"),
        ("performance:\n  compile: maybe\n", "performance.compile must be true or false"),
        ("performance:\n  workers: 2\n", "unknown key performance.workers"),
        ("performance: fast\n", "performance must be a mapping"),
    ],
)
def test_bad_config_names_key_and_file(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert expected in message
    assert str(path) in message
    assert "\n" not in message


def test_set_overrides_are_typed_and_validated(tmp_path: Path) -> None:
    path = write(tmp_path, "motion:\n  epochs: 3\n")
    cfg = load_config(path, ["motion.epochs=5", "data.root=/data/x", "segmentation.channels=[8,16]"])
    assert cfg.motion.epochs == 5 and cfg.data.root == "/data/x" and cfg.segmentation.channels == (8, 16)
    with pytest.raises(ConfigError, match="unknown key motion.epoks"):
        load_config(path, ["motion.epoks=5"])
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(path, ["motion.epochs"])


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_stage_hash_is_stable_and_scoped() -> None:
    base = load_config(None)
    assert stage_hash(base, "motion") == stage_hash(load_config(None), "motion")
    other = load_config(None, ["segmentation.lr=0.5"])
    assert stage_hash(base, "motion") == stage_hash(other, "motion"), "motion does not depend on segmentation"
    assert stage_hash(base, "segmentation") != stage_hash(other, "segmentation")
    assert stage_hash(base, "motion") != stage_hash(load_config(None, ["data.crop=96"]), "motion")


def test_exponent_without_dot_is_a_number(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "motion:\n  lr: 1e-3\n"), ["registration.affine_lr=3e-5"])
    assert cfg.motion.lr == 0.001 and cfg.registration.affine_lr == 3e-5
    with pytest.raises(ConfigError, match="motion.lr must be a number"):
        load_config(write(tmp_path, "motion:\n  lr: fast\n"))


@pytest.mark.parametrize("override, says", [
    ("threads=100000", "threads must be <= 1024"),
    ("cv.folds=1000", "folds must be <= 100"),
    ("motion.lr=.inf", "motion.lr must be a number, and finite"),
    ("registration.lr=-.inf", "registration.lr must be a number, and finite"),
    ("segmentation.epochs=1000000000", "epochs must be <= 1000000"),
    ("data.crop=4096", "crop must be <= 1024"),
    ("segmentation.best_window=0", "best_window must be > 0"),
    ("segmentation.augment_gamma=0.5", "augment_gamma must be in [1, 4]"),
    ("segmentation.augment_scale=0.8", "augment_scale must be in [1, 2]"),
    ("segmentation.ema_decay=1", "ema_decay must be in [0, 1)"),
    ("motion.ema_decay=-0.5", "ema_decay must be in [0, 1)"),
])
def test_absurd_or_non_finite_values_are_refused_with_one_line(override: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(None, [override])


@pytest.mark.parametrize("path", ["/dev/zero", "/tmp"])
def test_a_config_that_is_not_a_regular_file_is_refused_at_once(path: str) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        load_config(path)
