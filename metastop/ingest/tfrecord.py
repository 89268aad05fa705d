"""The TFRecord framing of TensorBoard event files, checked in pure Python.

An event file is a run of records: an 8-byte little-endian length, the masked CRC32C of
those 8 bytes, the data, and the masked CRC32C of the data. TensorBoard's reader stops at
the first record that is cut short or fails a checksum and says nothing, so a flipped byte
in the middle of a file silently shortens a curve. ``first_damage`` finds that record, so
that the reader can say where (a file still being written is cut short at its end too).

Example:
    >>> first_damage(Path("runs/events.out.tfevents.1.host"))  # doctest: +SKIP
    (1204, 'the data of record 17 fails its CRC32C check')
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path
from typing import Callable

_HEADER = 12  # length (8) + its masked CRC (4)
_MASK_DELTA = 0xA282EAD8
_POLY = 0x82F63B78  # CRC32C (Castagnoli), reflected


@functools.lru_cache(maxsize=1)
def _table() -> tuple[int, ...]:
    rows = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        rows.append(crc)
    return tuple(rows)


def crc32c(data: bytes) -> int:
    """CRC32C of ``data``: by ``google_crc32c`` or ``crc32c`` where one is installed, else in
    pure Python with a table (a few MB a second: enough for eval logs)."""
    fast = _fast_crc32c()
    if fast is not None:
        return fast(data)
    table, crc = _table(), 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@functools.lru_cache(maxsize=1)
def _fast_crc32c() -> Callable[[bytes], int] | None:
    try:
        import google_crc32c
        return google_crc32c.value
    except ImportError:
        pass
    try:
        import crc32c as module
        return module.crc32c
    except ImportError:
        return None


def masked_crc32c(data: bytes) -> int:
    """The masked CRC32C TFRecord stores: rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def first_damage(path: Path) -> tuple[int, str] | None:
    """``(byte offset, what)`` of the first record of an event file that is cut short or
    fails a CRC32C check, else None (``OSError`` if the file cannot be read). Reads one
    record at a time."""
    offset, number = 0, 0
    with open(path, "rb") as handle:
        while header := handle.read(_HEADER):
            if len(header) < _HEADER:
                return offset, f"record {number} is cut short in its length field"
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc32c(header[:8]) != length_crc:
                return offset, f"the length of record {number} fails its CRC32C check"
            data = handle.read(length)
            footer = handle.read(4)
            if len(data) < length or len(footer) < 4:
                return offset, f"record {number} is cut short ({length} bytes declared)"
            if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                return offset, f"the data of record {number} fails its CRC32C check"
            offset, number = offset + _HEADER + length + 4, number + 1
    return None
