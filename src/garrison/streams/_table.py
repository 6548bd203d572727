"""Tables: a processor's keyed state, queryable by key; and a topic materialized as a table.

A :class:`Table` reads the committed state of one store of one consumer group: the value of a
key lives in the state of the input partition the key hashes to (:func:`partition_for`), so a
lookup is one keyed read of that partition's state. It sees what the processor committed, never
a batch in progress.

:func:`table_processor` turns a topic into a table: the latest value per key (an empty value is
a tombstone and deletes the key), like a compacted Kafka topic read into a KTable. A
stream-table join is then a processor over the stream that looks records up in the table::

    prices = app.table("prices", group="price-table")

    @app.processor("orders", group="enrich", outputs=["priced"])
    async def enrich(ctx: ProcessorContext, rec: StoredRecord) -> None:
        price = await prices.get(rec.key)          # the latest committed price, or None
        ctx.emit("priced", {"order": rec.value.decode(), "price": price and price.decode()})
"""

from __future__ import annotations

from typing import Any

import msgspec

from garrison.core import InvalidInput

from ._backends.base import LogBackend, StoredRecord, partition_for, validate_name
from ._processor import Processor, ProcessorContext
from ._state import encode_key

__all__ = ["Table", "table_processor"]

TABLE_STORE = "table"


class Table:
    """Committed state of ``store`` of consumer group ``group`` over ``topic``, by key.

    ``value_type`` decodes values (the store's declared type); keys are str (UTF-8) or bytes.
    """

    def __init__(
        self, log: LogBackend, topic: str, *, group: str, store: str = TABLE_STORE,
        value_type: Any = bytes,
    ) -> None:  # fmt: skip
        self.log = log
        self.topic = validate_name("topic", topic)
        self.group = validate_name("group", group)
        self.store = validate_name("store", store)
        self._dec = msgspec.msgpack.Decoder(value_type)
        self._partitions: int | None = None

    async def partitions(self) -> int:
        """The input topic's partition count (read once)."""
        if self._partitions is None:
            self._partitions = (await self.log.describe_topic(self.topic)).partitions
        return self._partitions

    async def get(self, key: str | bytes, default: Any = None) -> Any:
        """The committed value of ``key``, or ``default``."""
        if key is None:
            raise InvalidInput("table lookup: the key is None")
        k = encode_key(key)
        raw = await self.log.get_state(
            self.group, self.store, partition_for(k, await self.partitions()), k
        )
        return default if raw is None else self._dec.decode(raw)

    async def items(self) -> list[tuple[bytes, Any]]:
        """Every (key, value), partition by partition (a full scan: for tools and tests)."""
        out: list[tuple[bytes, Any]] = []
        for p in range(await self.partitions()):
            for k, v in await self.log.load_state(self.group, self.store, p):
                out.append((k, self._dec.decode(v)))
        return out


def table_processor(log: LogBackend, topic: str, *, group: str, **options: Any) -> Processor:
    """A processor keeping the latest value of every key of ``topic`` (an empty value deletes
    the key; a record without a key goes to the dead-letter topic). Query it with
    ``Table(log, topic, group=group)``."""
    from ._processor import BadInput

    def upsert(ctx: ProcessorContext, rec: StoredRecord) -> None:
        if rec.key is None:
            raise BadInput("a table record needs a key")
        store = ctx.state(TABLE_STORE)
        if rec.value:
            store.set(rec.key, rec.value)
        else:
            store.delete(rec.key)

    return Processor(log, topic, upsert, group=group, stores={TABLE_STORE: bytes}, **options)
