"""TensorBoard event files of scalars, written without importing TensorBoard.

Why our own writer: ``torch.utils.tensorboard`` imports the ``tensorboard`` package and protobuf, ~0.3 s of
CPU at every stage (re)start (timed import, 0.27-0.30 s on the development VM): a cost the peers in the
resume start-up race (docs/PERFORMANCE.md) did not pay. An event file of scalars is small and fixed: TFRecord framing (length,
masked CRC-32C of the length, payload, masked CRC-32C of the payload) around protobuf ``Event`` messages
(``wall_time`` = 1, ``step`` = 2, ``file_version`` = 3, ``summary`` = 5; a ``Summary.Value`` holds
``tag`` = 1 and ``simple_value`` = 2), byte for byte what TensorBoard's own protobufs serialise. TensorBoard
reads it as usual (``tensorboard --logdir``; tests read it back with TensorBoard's own loader).
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from pathlib import Path
from typing import BinaryIO

_CASTAGNOLI = 0x82F63B78  # reflected CRC-32C polynomial (TFRecord's checksum)


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CASTAGNOLI if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 two's complement, as protobuf encodes negative steps
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _float32(value: float) -> bytes:
    try:
        return struct.pack("<f", value)
    except OverflowError:  # finite in float64, beyond float32: TensorBoard shows it as infinite
        return struct.pack("<f", math.copysign(math.inf, value))


def scalar_event(tag: str, value: float, step: int, wall_time: float) -> bytes:
    """One ``Event`` with one scalar ``Summary.Value``."""
    summary_value = _field_bytes(1, tag.encode()) + b"\x15" + _float32(value)
    summary = _field_bytes(1, summary_value)
    step_field = b"\x10" + _varint(step) if step else b""  # proto3 leaves a default (0) out
    return b"\x09" + struct.pack("<d", wall_time) + step_field + _field_bytes(5, summary)


def version_event(wall_time: float) -> bytes:
    """The first event of every file: its format version, as TensorBoard expects."""
    return b"\x09" + struct.pack("<d", wall_time) + _field_bytes(3, b"brain.Event:2")


def record(payload: bytes) -> bytes:
    """TFRecord framing of one serialised event."""
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", _masked_crc(length)) + payload + struct.pack("<I", _masked_crc(payload))


class EventFile:
    """One new event file in ``directory``, appended to and flushed per batch of scalars."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        now = time.time()
        self.path = directory / f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}.0"
        self._file: BinaryIO | None = open(self.path, "wb")
        self._file.write(record(version_event(now)))
        self._file.flush()

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        if self._file is None:
            raise ValueError(f"{self.path}: event file already closed")
        now = time.time()
        self._file.write(b"".join(record(scalar_event(tag, value, step, now)) for tag, value in values.items()))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
