"""GPU speed switches (``performance:``): config, what applies where, and that none breaks exact resume on CPU.

The resume tests run the toy tasks through the real engine in their own processes
(``tests/engine/toy_task.py``'s ``main``); what needs CUDA is named "cuda" and skipped without a GPU.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mi_pipeline.config import (
    OptimConfig,
    PerformanceConfig,
    from_dict,
    load_config,
    stage_hash,
)
from mi_pipeline.engine import performance
from mi_pipeline.engine.distributed import World
from mi_pipeline.engine.trainer import BatchBuilder, TrainState
from tests.engine.toy_task import ConvToyTask, ToyTask
from tests.helpers import REPO, assert_same_weights, env, model_weights

TOY = Path(__file__).with_name("toy_task.py")
CPU = torch.device("cpu")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible here)")
ON = ["performance.num_workers=2", "performance.pin_memory=true"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


# --- config -------------------------------------------------------------------------------------


def test_defaults_are_off_and_default_yaml_turns_everything_on() -> None:
    assert load_config(None).performance == PerformanceConfig(amp="off", channels_last=False, compile=False,
                                                              cudnn_benchmark=False, num_workers=0, pin_memory=False)
    perf = load_config(REPO / "configs" / "default.yaml").performance
    assert perf.amp in ("bf16", "fp16")
    assert perf.channels_last and perf.compile and perf.cudnn_benchmark and perf.pin_memory and perf.num_workers > 0


@pytest.mark.parametrize(("text", "stage_amp", "resolved"), [
    ("motion:\n  amp: true\n", "fp16", "fp16"),  # what amp: true meant before amp had modes
    ("motion:\n  amp: false\n", "off", "off"),
    ("performance:\n  amp: bf16\nmotion:\n  amp: off\n", "off", "off"),  # YAML reads a bare off as false
    ("performance:\n  amp: bf16\n", None, "bf16"),  # no stage value: inherits
    ("performance:\n  amp: 'off'\nmotion:\n  amp: fp16\n", "fp16", "fp16"),
])
def test_amp_modes_and_legacy_booleans_load(tmp_path: Path, text: str, stage_amp: str | None, resolved: str) -> None:
    cfg = load_config(write(tmp_path, text))
    assert cfg.motion.amp == stage_amp
    assert cfg.performance_for("motion").amp == resolved
    assert cfg.performance_for("segmentation").amp == cfg.performance.amp


def test_python_callers_and_stored_old_configs_keep_the_booleans() -> None:
    assert OptimConfig(amp=True).amp == "fp16" and OptimConfig(amp=False).amp == "off"  # type: ignore[arg-type]
    old = from_dict({"motion": {"amp": False}, "segmentation": {"amp": True}}, source="last.pth")
    assert (old.motion.amp, old.segmentation.amp) == ("off", "fp16")
    with pytest.raises(ValueError, match="amp must be one of"):
        PerformanceConfig(amp="fp8")  # type: ignore[arg-type]


def test_stage_hash_counts_what_changes_results_not_who_builds_batches() -> None:
    base = load_config(None)
    assert stage_hash(base, "motion") == "fd60d254bcfbddf0", "hashes of runs started before this version must hold"

    def motion_hash(*sets: str) -> str:
        return stage_hash(load_config(None, list(sets)), "motion")

    for same in ("performance.num_workers=4", "performance.pin_memory=true", "performance.prefetch_factor=8",
                 "performance.cudnn_benchmark=true", "motion.amp=off", "registration.amp=bf16"):
        assert motion_hash(same) == stage_hash(base, "motion"), same
    for other in ("performance.amp=bf16", "performance.amp=fp16", "motion.amp=bf16", "performance.channels_last=true",
                  "performance.compile=true"):
        assert motion_hash(other) != stage_hash(base, "motion"), other
    assert motion_hash("performance.amp=fp16") == motion_hash("motion.amp=true")  # one meaning, one hash
    assert motion_hash("performance.amp=bf16", "motion.amp=off") == stage_hash(base, "motion")
    data = load_config(None, ["performance.amp=bf16", "performance.channels_last=true", "performance.compile=true"])
    assert stage_hash(data, "data") == stage_hash(base, "data")


# --- what applies where ------------------------------------------------------------------------


def test_cuda_features_are_ignored_on_cpu_with_one_line_each() -> None:
    perf = PerformanceConfig(amp="bf16", cudnn_benchmark=True, pin_memory=True, channels_last=True)
    notes = performance.apply_process_switches(perf, CPU)
    assert len(notes) == 3 and all("\n" not in n for n in notes)
    assert any("amp=bf16 ignored on cpu" in n for n in notes)
    assert isinstance(performance.autocast(perf, CPU), contextlib.nullcontext)
    assert not performance.make_grad_scaler(PerformanceConfig(amp="fp16"), CPU).is_enabled()
    assert performance.amp_dtype(PerformanceConfig(amp="fp16"), torch.device("cuda")) == torch.float16
    assert performance.apply_process_switches(PerformanceConfig(), CPU) == []


def test_deterministic_wins_over_cudnn_benchmark_mocked_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the flag is set (no CUDA call), so the rule is checked with a cuda device object on any machine."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    notes = performance.apply_process_switches(PerformanceConfig(cudnn_benchmark=True), cuda)
    assert torch.backends.cudnn.benchmark is False
    assert len(notes) == 1 and "deterministic: true wins" in notes[0]
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: False)
    assert performance.apply_process_switches(PerformanceConfig(cudnn_benchmark=True), cuda) == []
    assert torch.backends.cudnn.benchmark is True


def test_channels_last_model_and_batch_on_cpu() -> None:
    task = ConvToyTask()
    task.setup(CPU)
    model = task.build_model()
    perf = PerformanceConfig(channels_last=True)
    assert performance.apply_model_switches(model, perf, CPU) is model  # no compile: the model itself is called
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    batch = performance.batch_to_device(task.make_batch([0, 1], torch.Generator().manual_seed(0), CPU), perf, CPU)
    assert batch["x"].is_contiguous(memory_format=torch.channels_last)
    assert batch["y"].shape == (2, 1)  # not 4D: left alone
    plain = task.make_batch([0, 1], torch.Generator().manual_seed(0), CPU)
    assert torch.equal(batch["x"], plain["x"])  # same values, other layout


# --- background batch building ------------------------------------------------------------------


def _stream_batches(build: BatchBuilder, positions, perf: PerformanceConfig) -> list[dict[str, torch.Tensor]]:
    with performance.BatchStream(build, positions, perf, CPU) as stream:
        return [stream.next(p) for p in positions]


def _assert_same_batches(a: list[dict[str, torch.Tensor]], b: list[dict[str, torch.Tensor]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), key


@pytest.mark.parametrize("task_cls", [ToyTask, ConvToyTask])
def test_workers_and_pinning_build_the_same_batches_without_touching_global_rng(task_cls) -> None:
    task = task_cls(samples=36)
    task.setup(CPU)
    build = BatchBuilder(task, seed=3, batch_size=8, world=World())
    positions = build.positions(TrainState(epoch=1, batch=2), epochs=4)  # resume mid-epoch: 3 + 5 + 5 batches
    assert positions[0] == (1, 2) and len(positions) == 13
    plain = _stream_batches(build, positions, PerformanceConfig())
    rng = torch.get_rng_state()
    workers = _stream_batches(build, positions, PerformanceConfig(num_workers=2, pin_memory=True, prefetch_factor=3))
    assert torch.equal(torch.get_rng_state(), rng), "the loader must not draw from the global RNG"
    _assert_same_batches(plain, workers)
    _assert_same_batches(plain, _stream_batches(build, positions, PerformanceConfig(pin_memory=True)))


def test_workers_build_the_same_registration_batches(tmp_path: Path) -> None:
    """A real stage (random flips and sub-pixel shifts via grid_sample) built by 1-thread workers."""
    from mi_pipeline.stages.registry import make_task
    from tests.stages.conftest import TINY, write_synthetic_cache

    write_synthetic_cache(tmp_path)
    task = make_task("registration", load_config(None, TINY), tmp_path)
    task.setup(CPU)
    build = BatchBuilder(task, seed=0, batch_size=3, world=World())
    positions = build.positions(TrainState(), epochs=2)
    _assert_same_batches(_stream_batches(build, positions, PerformanceConfig()),
                         _stream_batches(build, positions, PerformanceConfig(num_workers=2, pin_memory=True)))


def test_stream_refuses_to_get_out_of_step() -> None:
    task = ToyTask(samples=16)
    task.setup(CPU)
    build = BatchBuilder(task, seed=0, batch_size=8, world=World())
    with performance.BatchStream(build, [(0, 0), (0, 1)], PerformanceConfig(), CPU) as stream, \
            pytest.raises(RuntimeError, match="out of step"):
        stream.next((0, 1))


# --- whole runs in their own processes ----------------------------------------------------------


def run_toy(run_dir: Path, epochs: int, *args: str, extra_env: dict[str, str] | None = None,
            expect: int = 0) -> str:
    proc = subprocess.run([sys.executable, str(TOY), str(run_dir), str(epochs), *args], env={**env(), **(extra_env or {})},
                          capture_output=True, text=True, timeout=300, start_new_session=True, check=False)
    assert proc.returncode == expect, proc.stderr[-3000:]
    return proc.stderr


def last(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "toy" / "last.pth"


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "logs" / "toy" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train_loss"] for line in lines]


def fit_in_process(run_dir: Path, perf: PerformanceConfig, task, epochs: int,
                   device: torch.device = CPU, stop_after: int = 0) -> TrainState:
    """The real engine in this process (for comparisons within one process; no signals, no exactness
    against the subprocess runs, which pin their threads)."""
    from mi_pipeline.engine.runlog import StageLog
    from mi_pipeline.engine.trainer import FitContext, fit

    checks = {"n": 0}

    def stop() -> bool:
        checks["n"] += 1
        return checks["n"] == stop_after

    ctx = FitContext(ckpt_dir=run_dir / "checkpoints" / "toy", log=StageLog(run_dir / "logs" / "toy", "toy"), seed=7,
                     config_hash="toyhash", config={}, device=device, performance=perf, stop_requested=stop)
    return fit(task, OptimConfig(epochs=epochs, batch_size=8, lr=1e-2), ctx)


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def interrupted_then_resumed(run_dir: Path, epochs: int, *args: str) -> dict:
    """Stop at the 12th stop check (epoch 2, batch 3 of 8) by SIGUSR2 to the whole process group, resume."""
    err = run_toy(run_dir, epochs, *args, "--signal-after", "12", expect=75)
    assert "saved exact position" in err and "Traceback" not in err
    assert err.count("received SIGUSR2") == 1, "only the main process handles the stop; workers ignore it"
    saved = torch.load(last(run_dir), weights_only=True)["state"]
    assert (saved["epoch"], saved["batch"]) == (1, 3), "the stop should land inside epoch 2"
    log = run_toy(run_dir, epochs, *args)
    assert "resuming from last.pth at epoch 2, batch 4" in log
    return saved


@pytest.mark.slow
def test_sigusr2_mid_epoch_with_workers_resumes_bit_exact(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    run_toy(plain, 4)
    resumed = tmp_path / "workers"
    interrupted_then_resumed(resumed, 4, "--sleep", "0.01", *sets(*ON))
    assert_same_weights(model_weights(last(resumed)), model_weights(last(plain)))
    assert losses(resumed) == losses(plain)


def test_channels_last_on_cpu_same_loss_trajectory(tmp_path: Path) -> None:
    """Without dropout (whose mask is drawn in memory order, so NHWC drops other units) the
    trajectories of both memory formats agree to float rounding."""
    for name, perf in (("plain", PerformanceConfig()), ("nhwc", PerformanceConfig(channels_last=True))):
        fit_in_process(tmp_path / name, perf, ConvToyTask(samples=32, dropout=0.0), epochs=4)
    assert losses(tmp_path / "nhwc") == pytest.approx(losses(tmp_path / "plain"), rel=1e-5, abs=1e-7)


@pytest.mark.slow
def test_channels_last_with_workers_on_cpu_resumes_bit_exact(tmp_path: Path) -> None:
    """With dropout, a channels_last run stopped mid-epoch by SIGUSR2 and resumed (batches built by
    workers) is bit-identical to a channels_last run never stopped (batches built inline)."""
    nhwc, resumed = tmp_path / "nhwc", tmp_path / "nhwc_resumed"
    run_toy(nhwc, 4, "--conv", *sets("performance.channels_last=true"))
    interrupted_then_resumed(resumed, 4, "--conv", *sets("performance.channels_last=true", *ON))
    assert_same_weights(model_weights(last(resumed)), model_weights(last(nhwc)))
    assert losses(resumed) == losses(nhwc)
    model = ConvToyTask().build_model()  # a plain (contiguous) model loads the weights as they are
    model.load_state_dict(model_weights(resumed / "checkpoints" / "toy" / "best_model.pth"))


def test_compiled_training_saves_the_plain_modules_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint contract of ``compile``, fast: Dynamo with its eager backend (no C++ build), in process."""
    import functools

    monkeypatch.setattr(performance, "check_compile_works", lambda device: None)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    compiled = []
    real = performance.compile_model
    monkeypatch.setattr(performance, "compile_model", lambda *a: compiled.append(real(*a)) or compiled[-1])
    for name, perf in (("eager", PerformanceConfig()), ("compiled", PerformanceConfig(compile=True))):
        fit_in_process(tmp_path / name, perf, ConvToyTask(samples=24, dropout=0.0), epochs=2)
    assert type(compiled[-1]).__name__ == "OptimizedModule", "the training module was compiled"
    for name in ("last.pth", "best_model.pth"):
        keys = model_weights(tmp_path / "compiled" / "checkpoints" / "toy" / name).keys()
        assert keys == model_weights(tmp_path / "eager" / "checkpoints" / "toy" / name).keys()
        assert not any(k.startswith("_orig_mod.") for k in keys)
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MI_PIPELINE_TEST_COMPILE"),
                    reason="real Inductor build: 15-75 s on 2 busy cores; set MI_PIPELINE_TEST_COMPILE=1 to run")
def test_compile_on_cpu_with_inductor_saves_uncompiled_keys(tmp_path: Path) -> None:
    """torch.compile with its C++ backend (g++ is installed here): checkpoints keep the plain module's
    keys and, without dropout (compiled dropout draws its masks from Inductor's own generator), the
    losses match eager within float tolerance. Skipped when this machine cannot compile."""
    started = time.monotonic()
    args = ["--conv", "--dropout", "0"]
    proc = subprocess.run([sys.executable, str(TOY), str(tmp_path / "compiled"), "2", *args,
                           *sets("performance.compile=true")],
                          env=env(), capture_output=True, text=True, timeout=300, check=False)
    if proc.returncode == 2 and "performance.compile" in proc.stderr:
        pytest.skip(f"no working torch.compile here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_toy(tmp_path / "eager", 2, *args)
    for name in ("last.pth", "best_model.pth"):
        keys = model_weights(tmp_path / "compiled" / "checkpoints" / "toy" / name).keys()
        assert keys == model_weights(tmp_path / "eager" / "checkpoints" / "toy" / name).keys()
        assert not any(k.startswith("_orig_mod.") for k in keys)
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), rel=1e-4)
    print(f"compile run took {time.monotonic() - started:.0f}s")


@pytest.mark.slow
def test_compile_without_a_working_cxx_compiler_fails_in_one_line(tmp_path: Path) -> None:
    """What a node without a C++ compiler sees (CXX points nowhere, empty inductor cache): one error
    line that names performance.compile, before any training, and no traceback."""
    err = run_toy(tmp_path, 2, *sets("performance.compile=true"), expect=2,
                  extra_env={"CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")})
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("error: performance.compile: torch.compile does not work on this cpu machine")
    assert "performance.compile: false" in last_line and "Traceback" not in err
    assert not last(tmp_path).exists()


# --- CUDA only ----------------------------------------------------------------------------------


@CUDA
def test_cuda_fp16_saves_and_restores_grad_scaler_state(tmp_path: Path) -> None:
    from mi_pipeline.engine.trainer import Interrupted

    perf = PerformanceConfig(amp="fp16", channels_last=True, num_workers=2, pin_memory=True)
    with pytest.raises(Interrupted):
        fit_in_process(tmp_path, perf, ConvToyTask(), 2, torch.device("cuda"), stop_after=3)
    saved = torch.load(last(tmp_path), weights_only=True)
    assert saved["scaler"] and saved["scaler"]["scale"] > 0
    state = fit_in_process(tmp_path, perf, ConvToyTask(), 2, torch.device("cuda"))
    assert state.epoch == 2 and torch.load(last(tmp_path), weights_only=True)["scaler"]["_growth_tracker"] >= 0


@CUDA
def test_cuda_bf16_needs_no_scaler(tmp_path: Path) -> None:
    if not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bfloat16")
    perf = PerformanceConfig(amp="bf16")
    assert not performance.make_grad_scaler(perf, torch.device("cuda")).is_enabled()
    with performance.autocast(perf, torch.device("cuda")):
        out = torch.nn.Linear(4, 4).cuda()(torch.ones(2, 4, device="cuda"))
    assert out.dtype == torch.bfloat16
    fit_in_process(tmp_path, perf, ConvToyTask(), 1, torch.device("cuda"))
    assert torch.load(last(tmp_path), weights_only=True)["scaler"] == {}
