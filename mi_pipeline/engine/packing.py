"""A checkpoint payload's tensors packed into one buffer per dtype, and back: cheap to pickle.

Why: ``torch.save`` pickles every tensor as its own storage record through torch's Python
``persistent_id`` (called for every pickled object, ~20 per tensor) and writes each storage as a
separate, 64-byte-aligned zip member with its own CRC. A stage's ``last.pth`` holds hundreds of
small tensors (registration: 210 weights + 324 AdamW moments), so on the 2-core development VM
the write costs 35-45 ms of CPU per file, on a background thread that competes with training.
Packed, the pickler sees one buffer per dtype, one int64 index and a three-object marker per
tensor, and the copy the loop already made (the snapshot) is a single ``torch.cat`` per dtype.

The packed record holds only what a ``weights_only=True`` load accepts (dicts, lists, tuples,
strings, numbers, tensors): loading it can never run code either. Each tensor's values, dtype,
shape and strides survive (a ``channels_last`` weight stays ``channels_last``), so a resumed run
continues bit-exactly; two names for one tensor (tied weights) come back as two equal tensors,
which ``load_state_dict`` copies the same way. torch is imported on first use: ``read_metadata``
recognises the markers without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

REF = "__packed_tensor__"  # a tensor's place in the tree: {REF: its number in the index}
PACKED = "__packed__"  # the record's key holding {"buffers": [tensor per dtype], "index": int64 tensor}


def is_ref(value: Any) -> bool:
    """Whether ``value`` is the marker left where a packed tensor was."""
    return isinstance(value, dict) and len(value) == 1 and REF in value


class _Packer:
    """Walks a payload once: tensors become markers, their flat values collect per (device, dtype).

    Per tensor it does only a few attribute reads and a ``reshape`` view: it runs while the training
    loop waits (it is the snapshot), so its cost is kept near that of the per-tensor copy it replaced.
    """

    def __init__(self) -> None:
        import torch

        self.tensor_type = torch.Tensor
        self.groups: dict[tuple[Any, Any], list[torch.Tensor]] = {}  # (device, dtype) -> flat views, in order
        self.buffer_of: dict[tuple[Any, Any], int] = {}
        self.sizes: list[int] = []
        self.index: list[int] = []  # per tensor: buffer, offset, ndim, *shape, nstrides (-1: contiguous), *strides
        self.count = 0
        self.seen: dict[int, dict[str, int]] = {}

    def tree(self, value: Any) -> Any:
        if isinstance(value, self.tensor_type):
            return self.tensor(value)
        if isinstance(value, dict):
            return {key: self.tree(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            if not any(isinstance(item, dict | list | tuple | self.tensor_type) for item in value):
                return list(value) if isinstance(value, list) else tuple(value)  # plain values (RNG words)
            items = [self.tree(item) for item in value]
            return items if isinstance(value, list) else tuple(items)
        return value

    def tensor(self, tensor: torch.Tensor) -> Any:
        original = id(tensor)
        ref = self.seen.get(original)
        if ref is not None:
            return ref
        if not _packable(tensor):  # quantized, sparse, a subclass: torch.save's own path, copied as before
            return tensor.detach().to("cpu", copy=True)
        if tensor.requires_grad:
            tensor = tensor.detach()
        strides: tuple[int, ...] = ()  # () means contiguous: the index stores -1
        if tensor.is_contiguous():
            flat = tensor.reshape(-1)
        elif _dense(tensor):  # e.g. channels_last: keep the memory order and the strides
            flat, strides = tensor.as_strided((tensor.numel(),), (1,)), tuple(tensor.stride())
        else:
            flat = tensor.contiguous().reshape(-1)
        key = (tensor.device, tensor.dtype)
        buffer = self.buffer_of.get(key)
        if buffer is None:
            buffer = self.buffer_of[key] = len(self.sizes)
            self.groups[key] = []
            self.sizes.append(0)
        self.groups[key].append(flat)
        shape = tensor.shape
        self.index += (buffer, self.sizes[buffer], len(shape), *shape, len(strides) if strides else -1, *strides)
        self.sizes[buffer] += flat.numel()
        ref = self.seen[original] = {REF: self.count}
        self.count += 1
        return ref

    def buffers(self) -> list[torch.Tensor]:
        """One CPU tensor per (device, dtype): the only copy of the values that the record holds.

        A plain ``torch.cat``, with torch's threads as training set them. Setting torch to one thread
        and back around it (done until 2026-12-04, because a 2-thread copy on cores loaded by other
        jobs waits at OpenMP barriers: 43-172 ms vs 12-14 on one thread at load 6-8) cost the next
        operations more than it saved on a quiet machine: 12 real segmentation steps after a save took
        7.6 / 12.2 ms longer with the toggle and 4.8 / 8.8 ms without it (two runs of 30 and 40
        alternated rounds, docs/PERFORMANCE.md)."""
        import torch

        return [torch.cat(group).to("cpu") for group in self.groups.values()]


def pack(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with every tensor copied into per-dtype CPU buffers (the originals may change
    right after: this is also the writer's snapshot), plus those buffers and their index."""
    packer = _Packer()
    tree = packer.tree(payload)
    import torch

    index = torch.tensor(packer.index, dtype=torch.int64)
    return {**tree, PACKED: {"buffers": packer.buffers(), "index": index}}


def unpack(record: dict[str, Any]) -> dict[str, Any]:
    """The payload :func:`pack` was given: each marker replaced by its own tensor (a fresh copy, so no
    tensor keeps the whole buffer alive or shares memory with another)."""
    packed = record[PACKED]
    tensors = _tensors(packed["buffers"], packed["index"].tolist())
    return {key: replace_refs(value, tensors.__getitem__) for key, value in record.items() if key != PACKED}


def _tensors(buffers: list[torch.Tensor], index: list[int]) -> list[torch.Tensor]:
    import torch

    tensors: list[torch.Tensor] = []
    at = 0
    while at < len(index):
        buffer, offset, ndim = index[at:at + 3]
        shape = index[at + 3:at + 3 + ndim]
        at += 3 + ndim
        nstrides = index[at]
        strides = index[at + 1:at + 1 + nstrides] if nstrides >= 0 else None
        at += 1 + max(nstrides, 0)
        numel = 1
        for size in shape:
            numel *= size
        flat = buffers[buffer][offset:offset + numel]
        if strides is None:
            tensors.append(flat.reshape(shape).clone())
        else:
            tensors.append(torch.as_strided(flat, shape, strides).clone())
    return tensors


def replace_refs(value: Any, replacement: Callable[[int], Any]) -> Any:
    """``value`` with each marker replaced by ``replacement(its tensor's number)``: the tensors on
    load, a stub where only the plain values are read (``checkpoint.read_metadata``)."""
    if is_ref(value):
        return replacement(value[REF])
    if isinstance(value, dict):
        return {key: replace_refs(item, replacement) for key, item in value.items()}
    if isinstance(value, list):
        return [replace_refs(item, replacement) for item in value]
    if isinstance(value, tuple):
        return tuple(replace_refs(item, replacement) for item in value)
    return value


def _packable(tensor: torch.Tensor) -> bool:
    import torch

    return type(tensor) is torch.Tensor and tensor.layout == torch.strided and not tensor.is_quantized


def _dense(tensor: torch.Tensor) -> bool:
    """Whether the elements fill one block of memory without gaps or overlaps, in some dim order."""
    expected = 1
    for stride, size in sorted((s, n) for s, n in zip(tensor.stride(), tensor.shape) if n > 1):
        if stride != expected:
            return False
        expected *= size
    return True
