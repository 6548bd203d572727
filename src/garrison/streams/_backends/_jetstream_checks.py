"""Argument checks of the JetStream backend, worded like the SQLite backend's."""

from __future__ import annotations

from collections.abc import Sequence

from garrison.core import InvalidInput
from garrison.streams._errors import RecordTooLarge

from .base import MAX_RECORD_BYTES, Record, record_size

__all__ = ["check_lease", "check_offset", "check_records"]

_RESERVED = ("nats-", "garrison-")


def check_records(topic: str, records: Sequence[Record]) -> None:
    """The same checks, in the same words, as the SQLite backend's."""
    if isinstance(records, Record | bytes | str):
        raise InvalidInput(f"topic {topic!r}: records must be a list of Record")
    for i, r in enumerate(records):
        if not isinstance(r, Record):
            raise InvalidInput(
                f"topic {topic!r}: record {i} must be a Record, got {type(r).__name__}",
                [{"loc": ["records", i], "msg": "not a Record"}],
            )
        if not isinstance(r.value, bytes) or not (r.key is None or isinstance(r.key, bytes)):
            raise InvalidInput(
                f"topic {topic!r}: record {i}: key and value must be bytes",
                [{"loc": ["records", i], "msg": "not bytes"}],
            )
        for name in r.headers:
            if not name or name.lower().startswith(_RESERVED):
                raise InvalidInput(
                    f"topic {topic!r}: record {i} has a reserved or empty header name {name!r}",
                    [{"loc": ["records", i, "headers", name], "msg": "reserved header"}],
                )
        size = record_size(r)
        if size > MAX_RECORD_BYTES:
            raise RecordTooLarge(
                f"topic {topic!r}: record {i} is {size} bytes (limit {MAX_RECORD_BYTES})",
                [{"loc": ["records", i], "msg": "too large"}],
            )


def check_offset(offset: object, what: str = "offset") -> int:
    """``offset`` (or a partition number: ``what``), a non-negative int."""
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidInput(
            f"{what} must be a non-negative int, got {offset!r}", [{"loc": [what], "msg": "bad"}]
        )
    return offset


def check_lease(lease: object) -> None:
    """A lease: a positive number of seconds."""
    if not isinstance(lease, int | float) or isinstance(lease, bool) or not lease > 0:
        raise InvalidInput(f"lease must be a positive number of seconds, got {lease!r}")
