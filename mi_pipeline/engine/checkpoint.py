"""The only code that touches torch.save / torch.load.

Saving is atomic (see fsio); loading uses ``weights_only=True`` so a checkpoint can never run code,
and every failure becomes one CheckpointError line that names the file and says what to do.
torch is imported on first use, not with this module: ``status`` and a fresh ``submit`` only need
the file names and fingerprints here, and importing torch is most of their start-up (~2 s).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import pickle
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mi_pipeline.engine import packing
from mi_pipeline.errors import CheckpointError
from mi_pipeline.fsio import atomic_path

FORMAT_VERSION = 2  # 2: tensors packed per dtype (engine/packing.py); 1: one record per tensor
READABLE_VERSIONS = (1, 2)  # 1 is read as it is: see mi_pipeline/compat.py
LAST = "last.pth"
BEST = "best_model.pth"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically; a failed write (disk full, quota, I/O error) leaves the previous file untouched
    and becomes one CheckpointError line that says why."""
    write_record(path, to_record(payload))


def to_record(payload: dict[str, Any]) -> dict[str, Any]:
    """What goes to disk: ``payload`` with its tensors copied into per-dtype buffers. Taking it is the
    snapshot the background writer needs (the originals may change right after) and cheap to pickle."""
    return {"format_version": FORMAT_VERSION, **packing.pack(payload)}


def write_record(path: Path, record: dict[str, Any]) -> None:
    """:func:`save_checkpoint`'s write of a record from :func:`to_record` (the writer thread's half)."""
    import torch

    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:  # a Python file object: a full disk surfaces as OSError(ENOSPC)
                torch.save(record, handle)
    except OSError as exc:
        raise CheckpointError(f"{path}: could not write checkpoint ({_os_reason(exc)}); "
                              "the previous file is unchanged; free space and run again to resume") from None
    except RuntimeError as exc:  # torch's own writer reports failed writes this way
        reason = _free_space_hint(Path(path).parent) or (str(exc).strip().splitlines() or ["write failed"])[0][:160]
        raise CheckpointError(f"{path}: could not write checkpoint ({reason}); "
                              "the previous file is unchanged; free space and run again to resume") from None


def _first_line(exc: BaseException) -> str:
    """An exception as one short line for a CheckpointError (its type when it has no message)."""
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on device"
    if exc.errno == errno.EDQUOT:
        return "disk quota exceeded"
    return exc.strerror or str(exc)


def _free_space_hint(directory: Path) -> str | None:
    with contextlib.suppress(OSError):
        if shutil.disk_usage(directory).free < (1 << 20):
            return "no space left on device"
    return None


def verify_archive(path: Path) -> None:
    """Check every member's CRC-32: ``torch.load`` alone reads silently past flipped bits in tensor data."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint, truncated or corrupted ({_first_line(exc)})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: corrupted checkpoint (checksum mismatch in {bad}); "
                              "the file was damaged after it was written")


def load_checkpoint(path: Path, required: tuple[str, ...] = ("model",)) -> dict[str, Any]:
    """Load a checkpoint safely, or raise CheckpointError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint missing")
    verify_archive(path)
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe content"
        raise CheckpointError(f"{path}: refused to load, it holds objects a weights-only load does not allow "
                              f"({first[:160]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint, truncated or corrupted ({_first_line(exc)})") from None
    payload = _checked_payload(path, payload, required)
    try:
        return packing.unpack(payload) if packing.PACKED in payload else payload
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint, its tensor index is damaged ({_first_line(exc)})") from None


class TensorStub:
    """What :func:`read_metadata` puts where a checkpoint holds a tensor: its presence, not its data."""

    def __init__(self, *args: Any) -> None:
        self.args = args


_TORCH_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
                  ("torch", "Size"), ("torch", "device"), ("torch.storage", "UntypedStorage"),
                  ("torch.storage", "TypedStorage")}
_SAFE_GLOBALS = {("collections", "OrderedDict"): __import__("collections").OrderedDict}


class _MetadataUnpickler(pickle.Unpickler):
    """Reads a torch checkpoint's structure and plain values without torch: tensors become stubs.

    It allows what ``weights_only`` loading allows of torch (tensor rebuilding, storages, dtypes) and
    refuses every other global, so a file it accepts holds no code either.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if (module, name) in _TORCH_GLOBALS or (module == "torch" and (name.endswith("Storage") or name in _DTYPES)):
            return TensorStub
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")

    def persistent_load(self, pid: Any) -> Any:
        return None


_DTYPES = {"float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool",
           "complex64", "complex128", "half", "float", "double", "long", "int", "short"}


def read_metadata(path: Path, required: tuple[str, ...] = ("model",)) -> dict[str, Any]:
    """A checkpoint's plain values (metric, epoch, config, hashes) without importing torch.

    Checked like :func:`load_checkpoint` (every member's CRC, a safe unpickler, the format version,
    the required keys), so ``status``, the menu and ``submit --dry-run`` answer "does it load?" the
    same way in a fraction of a second; tensors come back as :class:`TensorStub`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint missing")
    verify_archive(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(names) != 1:
                raise CheckpointError(f"{path}: unreadable checkpoint, truncated or corrupted (no data.pkl)")
            payload = _MetadataUnpickler(io.BytesIO(archive.read(names[0]))).load()
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused to load, it holds objects a weights-only load does not allow "
                              f"({str(exc)[:160]})") from None
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint, truncated or corrupted ({_first_line(exc)})") from None
    return _stubbed(_checked_payload(path, payload, required))


def _stubbed(payload: dict[str, Any]) -> dict[str, Any]:
    """A packed record's tree with a :class:`TensorStub` at each tensor's place, as a format-1 file reads."""
    if packing.PACKED not in payload:
        return payload
    return {key: packing.replace_refs(value, lambda _number: TensorStub())
            for key, value in payload.items() if key != packing.PACKED}


def _checked_payload(path: Path, payload: Any, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path}: not a mi_pipeline checkpoint (format_version missing or unknown)")
    missing = [key for key in required if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: incomplete checkpoint, missing {', '.join(missing)}")
    return payload


def file_fingerprint(path: Path) -> str:
    """Short content hash of a file: identifies which upstream model a stage was trained on."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


# --- RNG state, in a form weights_only=True accepts ------------------------------------------


def capture_rng() -> dict[str, Any]:
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    random.setstate(_as_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_python_state(value: Any) -> tuple[Any, ...]:
    version, internal, gauss = value
    return (version, tuple(internal), gauss)
