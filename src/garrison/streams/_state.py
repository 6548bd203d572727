"""Keyed state stores of a processor: a committed cache per input partition, and the changes of
the batch being processed, which commit with its input offsets (or vanish with it).

Three layers answer a ``get``: the changes of the record being handled (dropped if its handler
fails), those of the batch (committed by the processor's transaction), and the committed
values loaded from the log when the partition was assigned. Values are msgpack, decoded to the
store's declared type.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from garrison.core import InvalidInput

from ._backends.base import StateChange, validate_name

__all__ = ["PartitionState", "StateStore", "encode_key"]

_MISSING: Any = object()
_DELETED: Any = object()
_enc = msgspec.msgpack.Encoder()


def encode_key(key: str | bytes) -> bytes:
    """A state key as bytes (str keys are UTF-8)."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    raise InvalidInput(f"state keys must be str or bytes, got {type(key).__name__}")


class PartitionState:
    """One store's state for one input partition (committed + pending layers)."""

    __slots__ = ("batch", "committed", "dec", "name", "partition", "record")

    def __init__(self, name: str, partition: int, value_type: Any) -> None:
        self.name = name
        self.partition = partition
        self.dec = msgspec.msgpack.Decoder(value_type)
        self.committed: dict[bytes, Any] = {}
        self.batch: dict[bytes, Any] = {}
        self.record: dict[bytes, Any] = {}

    def load(self, items: list[tuple[bytes, bytes]]) -> None:
        """Replace the committed layer with what the log holds."""
        self.committed = {k: self.dec.decode(v) for k, v in items}
        self.batch.clear()
        self.record.clear()

    def get(self, key: bytes) -> Any:
        for layer in (self.record, self.batch, self.committed):
            v = layer.get(key, _MISSING)
            if v is not _MISSING:
                return _MISSING if v is _DELETED else v
        return _MISSING

    def end_record(self, ok: bool) -> None:
        """Fold the record's changes into the batch (ok) or drop them (its handler failed)."""
        if ok:
            self.batch.update(self.record)
        self.record.clear()

    def changes(self) -> list[StateChange]:
        """The batch's changes as the transaction carries them."""
        return [
            StateChange(self.name, self.partition, k, None if v is _DELETED else _enc.encode(v))
            for k, v in self.batch.items()
        ]

    def end_batch(self, committed: bool) -> None:
        """After the transaction: make the batch's changes the committed values, or drop them."""
        if committed:
            for k, v in self.batch.items():
                if v is _DELETED:
                    self.committed.pop(k, None)
                else:
                    self.committed[k] = v
        self.batch.clear()
        self.record.clear()


class StateStore:
    """A keyed state store as a handler sees it: the partition of the record being handled.

    ``get``/``set``/``delete`` act on that partition's state; changes commit with the input
    offset of the batch (exactly once on SQLite) and are restored after a crash or rebalance.
    """

    __slots__ = ("_part",)

    def __init__(self, part: PartitionState) -> None:
        self._part = part

    @property
    def name(self) -> str:
        """The store's name."""
        return self._part.name

    def get(self, key: str | bytes, default: Any = None) -> Any:
        """The value of ``key``, or ``default``."""
        v = self._part.get(encode_key(key))
        return default if v is _MISSING else v

    def __contains__(self, key: str | bytes) -> bool:
        return self._part.get(encode_key(key)) is not _MISSING

    def set(self, key: str | bytes, value: Any) -> None:
        """Set ``key`` (the value must be msgpack-encodable)."""
        try:
            _enc.encode(value)
        except (TypeError, msgspec.EncodeError) as exc:
            raise InvalidInput(f"state store {self.name!r}: value not encodable: {exc}") from None
        self._part.record[encode_key(key)] = value

    def delete(self, key: str | bytes) -> None:
        """Remove ``key``."""
        self._part.record[encode_key(key)] = _DELETED

    def items(self) -> Iterator[tuple[bytes, Any]]:
        """Every (key, value) of this partition, with pending changes applied."""
        merged = dict(self._part.committed)
        merged.update(self._part.batch)
        merged.update(self._part.record)
        for k, v in merged.items():
            if v is not _DELETED:
                yield k, v


def check_store_name(name: str) -> str:
    """Validate a store name (the log's name rules)."""
    return validate_name("store", name)
