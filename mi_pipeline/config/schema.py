"""The run configuration's schema: frozen dataclasses, every key with its type, default and bounds.

Validation lives with each section (``__post_init__``): a bad value is one line that says what to
do. Reading YAML into these is ``loading.py``; what a stage's result depends on is ``fingerprints.py``.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from mi_pipeline.config.compat import AMP_FROM_BOOL

# Mixed precision: off (float32), bf16 (bfloat16 autocast, no loss scaling) or fp16 (float16 autocast +
# GradScaler). YAML reads a bare ``off`` as false, and configs before this version wrote ``amp: true``,
# which meant float16 + GradScaler: booleans map here (true -> fp16, false -> off).
AmpMode = Literal["off", "bf16", "fp16"]
AMP_MODES: tuple[str, ...] = typing.get_args(AmpMode)

# Bounds past any real use: a value beyond them is a typo, refused with one line before it costs anything.
MAX_THREADS = 1024
MAX_FOLDS = 100
MAX_EPOCHS = 1_000_000
MAX_BATCH = 65_536
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True, kw_only=True)
class PhantomConfig:
    """The built-in synthetic dataset (used when ``data.format`` is ``phantom``).

    A randomisation engine: with ``vary: true`` every subject draws its own grid (slices, frames,
    in-plane spacing, field of view, slice thickness, LGE spacing) from the ``*_range`` fields; with
    ``vary: false`` (default: the demo and the tests) the fixed ``size``/``slices``/``frames``/
    ``spacing_mm``/``slice_thickness_mm`` are used. Breath-hold motion, LGE nulling, noise and heart
    position are always drawn from their ranges. Ranges are [low, high] (uniform); a breath-hold
    shift/rotation range is the magnitude, in a random direction/sign. An independent phantom
    (3-4 slices of 8 mm, 18-25 frames, 1.5 mm cine / 1.25 mm LGE, shifts up to 6 mm, rotations up to
    9 deg, remote myocardium nulled) falls inside the ranges configs/phantom.yaml trains with.
    """

    subjects: int = 12
    seed: int = 0
    size: int = 96  # in-plane matrix (pixels)
    slices: int = 6
    frames: int = 16  # frames per cardiac cycle
    spacing_mm: float = 1.6  # in-plane
    slice_thickness_mm: float = 8.0
    cine_labels: bool = True  # false: write no cine_label.nii.gz (only LGE labels, as a site's data)
    rv_label: bool = False  # true: the cine labels also mark the RV blood pool (code 5), as ACDC / M&Ms do
    # ``vary`` only: two papillary muscles in the LV cavity of the mid slices, dark as myocardium and labelled
    # cavity, as real cines and expert contours have them (docs/QUALITY.md, generator version 6)
    papillary_muscles: bool = False
    vary: bool = False  # per-subject grids from the ranges below
    slices_range: tuple[int, int] = (3, 14)
    frames_range: tuple[int, int] = (12, 35)
    spacing_range_mm: tuple[float, float] = (1.25, 1.9)  # cine in-plane
    fov_range_mm: tuple[float, float] = (140.0, 190.0)  # cine in-plane field of view (cropped around the chest)
    slice_thickness_range_mm: tuple[float, float] = (6.0, 10.0)
    lge_spacing_range_mm: tuple[float, float] = (1.1, 1.9)  # LGE in-plane, its own grid
    heart_offset_mm: float = 8.0  # heart centre off the FOV centre, up to this, each in-plane axis (``vary``:
    # plus up to 60 mm more where the FOV leaves room, as real stacks place the heart; data/phantom.py)
    breath_hold_shift_mm: tuple[float, float] = (0.0, 6.0)  # in-plane LGE-vs-cine shift magnitude
    breath_hold_rotation_deg: tuple[float, float] = (0.0, 5.0)  # in-plane LGE-vs-cine rotation magnitude
    lge_slice_offset: float = 0.375  # through-plane LGE stack offset, up to this fraction of a slice
    lge_remote_signal: tuple[float, float] = (0.03, 0.08)  # nulled remote myocardium (scar ~0.9-1, blood ~0.5-0.65)
    lge_fat_signal: tuple[float, float] = (0.45, 0.6)  # (epicardial) fat in LGE
    noise_range: tuple[float, float] = (0.015, 0.04)  # Rician sigma, relative to bright blood ~1

    def __post_init__(self) -> None:
        _positive(self, "subjects", "size", "slices", "frames", "spacing_mm", "slice_thickness_mm")
        if self.frames < 4:
            raise ValueError("frames must be >= 4 (a cardiac cycle needs ED, ES and frames between)")
        if self.size * self.spacing_mm < 90:
            raise ValueError("size * spacing_mm must be >= 90 mm (the field of view must hold the heart)")
        for name in ("slices_range", "frames_range", "spacing_range_mm", "fov_range_mm", "slice_thickness_range_mm",
                     "lge_spacing_range_mm", "breath_hold_shift_mm", "breath_hold_rotation_deg", "lge_remote_signal",
                     "lge_fat_signal", "noise_range"):
            pair = getattr(self, name)
            if len(pair) != 2:
                raise ValueError(f"{name} must be [low, high] (two numbers), got {list(pair)}")
            lo, hi = pair
            if not 0 <= lo <= hi:
                raise ValueError(f"{name} must be [low, high] with 0 <= low <= high, got [{lo}, {hi}]")
        if self.slices_range[0] < 1 or self.frames_range[0] < 4 or self.spacing_range_mm[0] <= 0:
            raise ValueError("slices_range starts at >= 1, frames_range at >= 4, spacing_range_mm above 0")
        if self.vary and self.fov_range_mm[0] < 90:
            raise ValueError("fov_range_mm must start at >= 90 mm (the field of view must hold the heart)")
        if not 0 <= self.lge_slice_offset <= 1:
            raise ValueError("lge_slice_offset is a fraction of a slice, between 0 and 1")


CINE_ONLY_FORMATS = ("acdc", "mnms")  # datasets without LGE: the stages that need it are left out


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the data is and how step 1 prepares it."""

    # phantom | generic | manifest (CSV/YAML of paths) | acdc | mnms (cine + ED/ES masks: motion only) | emidec (LGE side)
    # | dicom (<subject>/cine/, lge/ DICOM series + lge_label.nii.gz)
    format: Literal["phantom", "generic", "manifest", "acdc", "mnms", "emidec", "dicom"] = "phantom"
    root: str = ""  # dataset folder (manifest: the manifest file); empty with format=phantom means <run>/data/phantom
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    spacing_mm: float = 1.6  # in-plane spacing after resampling
    crop: int = 64  # square crop around the LV, in pixels after resampling
    frames: int = 8  # cine frames kept per cycle (resampled from ED onwards)
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_seed: int = 0
    exclude: tuple[str, ...] = ()  # subject ids left out (recorded with the reason in data/splits/excluded.json)
    on_bad_subject: Literal["stop", "exclude"] = "stop"  # exclude: go on without subjects that fail validation
    workers: int = 1  # processes preparing subjects side by side, at most the CPUs allotted (same cache for any count)
    cache_budget_mb: int = 256  # cached subjects a stage keeps in memory at once (least recently used go first)

    def __post_init__(self) -> None:
        _positive(self, "spacing_mm", "crop", "frames", "workers", "cache_budget_mb")
        _at_most(self, 1024, "crop", "frames", "workers")
        _at_most(self, 20.0, "spacing_mm")
        if len(set(self.exclude)) != len(self.exclude):
            raise ValueError("exclude lists a subject more than once")
        if self.crop % 16:
            raise ValueError("crop must be a multiple of 16 (the networks downsample 4 times)")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            raise ValueError("val_fraction and test_fraction must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave subjects for training")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """What every trained stage shares: how long, how big, how fast."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    grad_clip: float = 0.0  # 0 disables clipping
    # this stage's mixed precision: None (null) = performance.amp; off | bf16 | fp16 (true/false: fp16/off)
    amp: AmpMode | None = None
    # epochs whose validation metric is averaged to choose best_model.pth (the last epoch of the best
    # window is kept); 1 = each epoch on its own. >1 steadies the choice when validation is a few subjects
    best_window: int = 1
    # validation and best_model.pth use an exponential moving average of the weights, updated after every
    # step with this decay (memory ~1/(1 - decay) steps, after a warm-up of ~(10d - 1)/(1 - d) steps); 0 = off.
    # Steadies the chosen model (engine/ema.py)
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        _positive(self, "epochs", "batch_size", "lr", "best_window")
        _non_negative(self, "weight_decay", "grad_clip")
        _at_most(self, MAX_EPOCHS, "epochs", "best_window")
        _at_most(self, MAX_BATCH, "batch_size")
        _at_most(self, 10.0, "lr")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = off; e.g. 0.99), got {self.ema_decay!r}")
        _check_amp(self)


@dataclass(frozen=True, kw_only=True)
class MotionConfig(OptimConfig):
    """Step 2: unsupervised ED -> frame-t deformable registration (VoxelMorph-style)."""

    channels: tuple[int, ...] = (16, 32, 32, 32)  # VoxelMorph UNet encoder/decoder pairs (even length)
    similarity: Literal["lncc", "mse"] = "lncc"
    smooth_weight: float = 0.5
    smooth_loss: Literal["diffusion", "bending"] = "diffusion"  # 1st- or 2nd-derivative regulariser
    lncc_kernel: int = 9  # LNCC window (pixels, odd)
    # Dice of the warped ED myocardium against the ES myocardium, added to the loss of the ED -> ES
    # training pairs when every training subject carries cine labels (ACDC, M&Ms, a labelled phantom;
    # ED and ES are the frames such datasets annotate); ignored, and said so in the log, without them
    label_dice_weight: float = 1.0
    # weight of a penalty on folding (the mean of max(0, -det J) of each training pair's field): real hearts
    # move more between ED and ES than the smoothness term alone keeps free of folds (0 = off)
    fold_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _non_negative(self, "smooth_weight", "label_dice_weight", "fold_weight")
        _positive(self, "lncc_kernel")
        if len(self.channels) < 2 or len(self.channels) % 2:
            raise ValueError("channels must list an even number (>= 2) of widths: (down, up) pairs per level")


@dataclass(frozen=True, kw_only=True)
class RegistrationConfig(OptimConfig):
    """Step 3: cine (ED) <-> LGE alignment, affine + deformable, mutual information."""

    channels: int = 8  # initial channels of the deformable net
    affine_lr: float = 1e-5
    smooth_weight: float = 1.0
    mask_dice_weight: float = 0.0  # optional Dice on masks (needs labels in both spaces)
    affine_weight: float = 1.0  # weight of the MI term on the affine-only alignment (guides GlobalNet)
    levels: int = 3  # down-sampling levels of GlobalNet and LocalNet (crop must divide by 2**levels)
    augment: bool = True  # random flips of each (cine, LGE) pair
    augment_shift_px: float = 4.0  # extra random in-plane shift of the LGE, up to this many pixels (0 = off)
    # test-time refinement whenever the model is applied (segmentation targets, evaluate): this many Adam
    # steps on a per-slice translation + residual field, same MI + bending loss, from the network's field
    refine_steps: int = 0
    refine_lr: float = 0.05  # pixels per step (Adam)
    # bending weight of the refinement, separate from training's smooth_weight: one slice pair's MI is
    # noisy, and a weakly held per-pixel residual fits that noise (phantom, unseen subjects: weight 1
    # lowers the myocardium Dice below the network's own; 100 is best of 1-1000; affine parts are free)
    refine_smooth_weight: float = 100.0
    # registration QA and per-subject fallback (stages/registration_qa.py): identity, rigid (exhaustive
    # search within these ranges), affine or deformable, whichever has the best edge alignment after a
    # penalty of qa_margin per level of flexibility; deformable is ineligible above qa_max_folding_percent
    qa_max_shift_mm: float = 12.0
    qa_max_rotation_deg: float = 10.0
    qa_margin: float = 0.01
    qa_max_folding_percent: float = 0.5
    # a subject's registered target supervises segmentation only when the chosen and the runner-up
    # candidate agree on the myocardium at least this well (Dice); 0 = every target supervises
    qa_min_agreement: float = 0.7

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "channels", "affine_lr", "levels", "refine_lr")
        _non_negative(self, "smooth_weight", "mask_dice_weight", "affine_weight", "augment_shift_px", "refine_steps",
                      "refine_smooth_weight", "qa_max_shift_mm", "qa_max_rotation_deg", "qa_margin",
                      "qa_max_folding_percent", "qa_min_agreement")
        if self.qa_min_agreement > 1:
            raise ValueError("qa_min_agreement is a Dice, between 0 and 1")


@dataclass(frozen=True, kw_only=True)
class SegmentationConfig(OptimConfig):
    """Step 4: UNet on cine frames + motion features -> background / myocardium / infarct."""

    channels: tuple[int, ...] = (16, 32, 64, 128)
    num_res_units: int = 2  # >= 1 keeps thin myocardium/infarct (UNet's first layer downsamples)
    motion_features: bool = True
    augment: bool = True  # random flips (fields flipped consistently)
    # random gamma of the cine frames, log-uniform in [1/g, g] per sample (1 = off): contrast a site's
    # scanner may have that training did not (the motion channels are left as they are)
    augment_gamma: float = 1.0
    # random zoom about the crop centre, log-uniform in [1/s, s] per sample (1 = off): hearts larger or
    # smaller in their crop than training's (the crop is sized from a pool radius that can be off); motion
    # channels are resampled and scaled with it (displacements are in pixels)
    augment_scale: float = 1.0
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    # a 4th class, the RV blood pool, learnt from the RV of the cine ED labels (code 5: ACDC, M&Ms, the
    # phantom's rv_label; beside LGE-registered targets too) where subjects have it; predict then numbers the
    # AHA segments from the RV the model finds (the RV is background in every output)
    learn_rv: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _non_negative(self, "dice_weight", "ce_weight", "num_res_units")
        if not 1.0 <= self.augment_scale <= 2.0:
            raise ValueError(f"augment_scale must be in [1, 2] (1 = off), got {self.augment_scale}")
        if not 1.0 <= self.augment_gamma <= 4.0:
            raise ValueError(f"augment_gamma must be in [1, 4] (1 = off), got {self.augment_gamma}")
        if len(self.channels) < 2:
            raise ValueError("channels must list at least 2 widths")


@dataclass(frozen=True, kw_only=True)
class SlurmResources:
    """SLURM resources for one stage's job; None inherits the ``slurm`` section's value."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int | None = None
    nodes: int | None = None
    gpus_per_node: int | None = None
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    constraint: str | None = None


@dataclass(frozen=True, kw_only=True)
class SlurmConfig:
    """How stage jobs are submitted through submitit (executor ``slurm``)."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    time_min: int = 240
    nodes: int = 1
    gpus_per_node: int = 1  # > 1 runs one data-parallel task per GPU (DDP)
    tasks_per_node: int = 0  # 0 = one per GPU (or 1); set it for CPU-only data parallelism (gloo)
    cpus_per_task: int = 8
    mem_gb: int = 32
    constraint: str = ""
    signal_delay_s: int = 120  # USR2 this long before the time limit: save the exact position, requeue
    max_requeues: int = 20  # preemptions + timeouts per stage before the job fails
    extra: tuple[str, ...] = ()  # more sbatch options as "key=value", e.g. "reservation=abc"
    setup: tuple[str, ...] = ()  # shell lines run before the stage (module load ..., source venv)
    job_dir: str = "logs/slurm"  # submitit's pickles and job output, relative to the run root
    data: SlurmResources = field(default_factory=lambda: SlurmResources(gpus_per_node=0, time_min=60))
    motion: SlurmResources = field(default_factory=SlurmResources)
    registration: SlurmResources = field(default_factory=SlurmResources)
    segmentation: SlurmResources = field(default_factory=SlurmResources)

    def __post_init__(self) -> None:
        _positive(self, "time_min", "nodes", "cpus_per_task", "mem_gb", "signal_delay_s")
        _non_negative(self, "gpus_per_node", "tasks_per_node", "max_requeues")
        for item in self.extra:
            if "=" not in item or item.startswith("-"):
                raise ValueError(f"extra entries must look like key=value (no leading dashes), got {item!r}")

    def for_stage(self, stage: str) -> dict[str, Any]:
        """Resolved resources of one stage (stage overrides win)."""
        names = [f.name for f in dataclasses.fields(SlurmResources)]
        override = getattr(self, stage)
        return {n: getattr(override, n) if getattr(override, n) is not None else getattr(self, n) for n in names}


@dataclass(frozen=True, kw_only=True)
class ContainerConfig:
    """Run every SLURM stage job inside an Apptainer/Singularity or podman image (see mi_pipeline/orchestration/container.py).

    With ``image`` empty (the default) jobs run with the submitter's own Python. The run root, the
    config file's folder and ``data.root`` are bound automatically; ``binds`` adds more.
    """

    # apptainer/singularity: path of the .sif on a filesystem the compute nodes see;
    # podman: an image name in the nodes' podman storage (localhost/mi_pipeline:0.1.0-cpu); empty = no container
    image: str = ""
    runtime: Literal["apptainer", "singularity", "podman"] = "apptainer"
    binds: tuple[str, ...] = ()  # extra bind mounts "src[:dest[:ro|rw]]", src an absolute path
    nv: bool = True  # GPUs inside the container: --nv (apptainer), --device=nvidia.com/gpu=all (podman, CDI)
    extra_args: tuple[str, ...] = ()  # more "<runtime> exec" / "podman run" options, e.g. "--env=A=b"

    def __post_init__(self) -> None:
        _check_container(self)


@dataclass(frozen=True, kw_only=True)
class PerformanceConfig:
    """GPU speed switches of every trained stage (see mi_pipeline/engine/performance.py).

    None of them changes what a checkpoint holds. ``amp``, ``channels_last`` and ``compile`` change
    the arithmetic, so they are part of the stage config hash (resuming under other values needs
    --force); the loading switches only change who builds a batch, never its content, so they are
    not (resuming with more workers is allowed). Exact resume is promised on CPU, where
    ``amp``, ``cudnn_benchmark`` and ``pin_memory`` do nothing (one log line says so).
    """

    amp: AmpMode = "off"  # mixed precision on CUDA: off | bf16 | fp16 (fp16 adds a GradScaler); ignored on CPU
    channels_last: bool = False  # NHWC memory format for the model's convolutions and 4D inputs
    compile: bool = False  # torch.compile the model for training (needs a C++ compiler on CPU, Triton on GPU)
    cudnn_benchmark: bool = False  # cuDNN autotuning (CUDA); ignored while deterministic is true
    num_workers: int = 0  # background processes building batches (0 = in the training loop)
    pin_memory: bool = False  # page-locked batches, copied to the GPU with non_blocking=True (CUDA)
    prefetch_factor: int = 2  # batches each worker builds ahead (with num_workers > 0)
    async_checkpoint: bool = True  # write checkpoints on a background thread (engine/checkpoint_writer.py)
    # mid-epoch last.pth (bounds what a kill -9 loses); 0 = epoch ends only. Not hashed: a cadence is not a result
    checkpoint_every_s: float = 300.0  # at most this many seconds of steps redone (stretched to keep a save < 1 %)
    checkpoint_every_steps: int = 0  # also every N optimizer steps (0 = off)

    def __post_init__(self) -> None:
        _check_amp(self)
        _non_negative(self, "num_workers", "checkpoint_every_s", "checkpoint_every_steps")
        _positive(self, "prefetch_factor")


@dataclass(frozen=True, kw_only=True)
class CvConfig:
    """k-fold cross-validation: ``folds`` 0 trains one split as before; K >= 2 trains K folds.

    Not part of any stage hash: a fold's identity is its folder (``folds/<k>/``) and the split file
    ``data/splits/folds.json``, which is written once and checked, never silently changed.
    """

    folds: int = 0

    def __post_init__(self) -> None:
        if self.folds == 1 or self.folds < 0:
            raise ValueError(f"folds must be 0 (one split, no cross-validation) or >= 2, got {self.folds}")
        _at_most(self, MAX_FOLDS, "folds")


@dataclass(frozen=True, kw_only=True)
class Config:
    """A whole run. ``seed`` and ``threads`` are part of what makes CPU runs bit-exact."""

    seed: int = 0
    threads: int = 2  # torch CPU threads, pinned: 1 vs 2 threads give different weights
    device: Literal["auto", "cpu", "cuda"] = "auto"
    deterministic: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    container: ContainerConfig = field(default_factory=ContainerConfig)
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)
    cv: CvConfig = field(default_factory=CvConfig)

    def __post_init__(self) -> None:
        _positive(self, "threads")
        _at_most(self, MAX_THREADS, "threads")

    def performance_for(self, stage: str) -> PerformanceConfig:
        """The performance switches of one trained stage (its own ``amp`` wins when set)."""
        return resolve_performance(self.performance, getattr(self, stage))


def resolve_performance(perf: PerformanceConfig, optim: OptimConfig) -> PerformanceConfig:
    """``perf`` with the stage's ``amp`` override applied (None inherits ``perf.amp``)."""
    return perf if optim.amp is None or optim.amp == perf.amp else dataclasses.replace(perf, amp=optim.amp)


#: ``exec`` options that would break a job: they drop SLURM_* variables, which submitit needs.
FORBIDDEN_CONTAINER_ARGS = ("--cleanenv", "-e", "--containall", "-C")
CONTAINER_BIND_OPTIONS = ("ro", "rw")


def _check_container(c: ContainerConfig) -> None:
    """Raise ValueError (turned into a ConfigError naming the key) for an unusable ``container`` section."""
    for name, value in (("image", c.image), *((f"binds[{i}]", b) for i, b in enumerate(c.binds)),
                        *((f"extra_args[{i}]", a) for i, a in enumerate(c.extra_args))):
        if any(ch in value for ch in "\n\r\0"):
            raise ValueError(f"{name} must be one line, got {value!r}")
    if c.runtime == "podman":
        _check_podman(c)
    elif c.image.startswith("-"):
        raise ValueError(f"image must be a path to a .sif file, got {c.image!r}")
    elif "://" in c.image:
        raise ValueError(f"image must be a local .sif file (build one first: apptainer build mi_pipeline.sif "
                         f"apptainer.def), got {c.image!r}")
    for i, spec in enumerate(c.binds):
        _check_bind(spec, f"binds[{i}]")
    for i, arg in enumerate(c.extra_args):
        if not arg.startswith("-"):
            raise ValueError(f"extra_args[{i}] must be an option starting with '-', got {arg!r} "
                             f"(give an option's value in the same item: '--opt=value')")
        if arg.split("=", 1)[0] in FORBIDDEN_CONTAINER_ARGS:
            raise ValueError(f"extra_args[{i}] {arg!r} would drop the SLURM_* environment the job needs")
    if (c.binds or c.extra_args) and not c.image:
        raise ValueError("binds / extra_args are set but image is empty (no container would be used)")


#: podman image names: [registry[:port]/]path[:tag][@sha256:digest], lowercase path (podman's own rule).
PODMAN_IMAGE = re.compile(r"(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*"
                          r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?")
#: ``podman run`` options that would cut the job off from srun: no signals (USR2) or output would reach it.
PODMAN_FORBIDDEN_ARGS = ("-d", "--detach", "--sig-proxy")


def _check_podman(c: ContainerConfig) -> None:
    if c.image and not PODMAN_IMAGE.fullmatch(c.image):
        raise ValueError(f"image must be a podman image name such as localhost/mi_pipeline:0.1.0-cpu "
                         f"(runtime is podman), got {c.image!r}")
    for i, arg in enumerate(c.extra_args):
        if arg.split("=", 1)[0] in PODMAN_FORBIDDEN_ARGS:
            raise ValueError(f"extra_args[{i}] {arg!r} would stop srun's signals (USR2) and output reaching the job")


def _check_bind(spec: str, name: str) -> None:
    parts = spec.split(":")
    if "," in spec or not 1 <= len(parts) <= 3:
        raise ValueError(f"{name} must be one mount 'src[:dest[:ro|rw]]' (one list item each), got {spec!r}")
    for part in parts[:2]:
        if not part.startswith("/"):
            raise ValueError(f"{name}: paths must be absolute, got {spec!r}")
    if len(parts) == 3 and parts[2] not in CONTAINER_BIND_OPTIONS:
        raise ValueError(f"{name}: option must be one of {'|'.join(CONTAINER_BIND_OPTIONS)}, got {spec!r}")


def _at_most(obj: object, limit: int | float, *names: str) -> None:
    """Values past any real use are typos (``threads: 100000``), refused before they cost anything."""
    for name in names:
        if getattr(obj, name) > limit:
            raise ValueError(f"{name} must be <= {limit}, got {getattr(obj, name)!r}")


def _positive(obj: object, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(obj, name)!r}")


def _non_negative(obj: object, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(obj, name)!r}")


def _check_amp(obj: object) -> None:
    """Accept the legacy booleans from Python callers too; reject anything but the modes (or None)."""
    value = obj.amp  # type: ignore[attr-defined]
    if isinstance(value, bool):
        object.__setattr__(obj, "amp", AMP_FROM_BOOL[value])
    elif value is not None and value not in AMP_MODES:
        raise ValueError(f"amp must be one of {' | '.join(AMP_MODES)}, got {value!r}")
