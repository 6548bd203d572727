"""Sortable unique ids (UUIDv7, RFC 9562).

The first 48 bits are the Unix time in milliseconds, so ids sort by creation time, which keeps
store indexes append-mostly. Within one millisecond a 12-bit counter keeps ids from one process
strictly increasing; the remaining 62 bits are random.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

__all__ = ["new_id", "new_uuid7", "uuid7_time"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_uuid7() -> uuid.UUID:
    """A new UUIDv7; strictly increasing within this process."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF  # leave headroom to count up
        else:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
            ms = _last_ms
        counter = _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= counter << 64
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand
    return uuid.UUID(int=value)


def new_id() -> str:
    """A new sortable id as a 32-character lowercase hex string."""
    return new_uuid7().hex


def uuid7_time(value: uuid.UUID | str) -> float:
    """The creation time (seconds since the epoch) encoded in a UUIDv7."""
    u = value if isinstance(value, uuid.UUID) else uuid.UUID(value)
    if u.version != 7:
        raise ValueError(f"not a UUIDv7: {u}")
    return (u.int >> 80) / 1000.0
