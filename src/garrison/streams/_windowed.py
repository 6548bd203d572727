"""Window aggregation as a processor: a :class:`WindowOperator` per input partition, its state
checkpointed in the processor's transaction together with the input offsets it reflects.

Each batch feeds the operator, drains its outputs (results, revisions, retractions, closings,
too-late reports) into the output topic as tagged JSON, and checkpoints the operator in the
``window`` state store *incrementally*: the operator's meta state (watermark, counters) and the
state of each key the batch changed — a key changes only when a sample is fed for it or an
output is drained for it — so a batch costs in proportion to its keys, not to all keys. After a
crash or a rebalance the operator is rebuilt from the checkpoint of the last committed batch
and the records after it are fed again, so on SQLite every window output is produced exactly
once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ._aggregates import Aggregation
from ._backends.base import LogBackend, StoredRecord
from ._operator import WindowOperator
from ._processor import BadInput, Processor, ProcessorContext
from ._sample import Sample
from ._windows import BoundedOutOfOrderness, WindowKind

__all__ = ["window_processor"]

_STORE = "window"
_META = b"m"  # the operator's meta state; key states live under b"k:" + key
_KEY = b"k:"
_sample_json = msgspec.json.Decoder(Sample)
_out = msgspec.json.Encoder()


def _default_decode(rec: StoredRecord) -> tuple[str, Sample]:
    if rec.key is None:
        raise BadInput("a window record needs a key (the series it belongs to)")
    try:
        key = rec.key.decode()
    except UnicodeDecodeError:
        raise BadInput("the record key is not UTF-8") from None
    return key, _sample_json.decode(rec.value)


def window_processor(
    log: LogBackend,
    topic: str,
    *,
    group: str,
    windows: WindowKind,
    output: str,
    aggregation: Aggregation | None = None,
    watermark: BoundedOutOfOrderness | None = None,
    allowed_lateness: int = 0,
    decode: Callable[[StoredRecord], tuple[str, Sample]] | None = None,
    **options: Any,
) -> Processor:
    """A processor aggregating ``topic`` over event-time windows into ``output``.

    Records are ``(key, Sample)``: by default the record key (UTF-8) and the value as a JSON
    sample ``[ts, value, status, u, flags]``; ``decode`` (record -> (key, Sample)) changes that.
    A record that does not decode goes to the dead-letter topic. ``options`` are
    :class:`Processor` options (``dlq``, ``lease``, ``max_records`` ...).
    """
    to_sample = decode or _default_decode
    # Build one operator now: a bad window configuration fails here, not in the running loop.
    WindowOperator(windows, aggregation, watermark=watermark, allowed_lateness=allowed_lateness)
    ops: dict[int, tuple[int, WindowOperator, set[str]]] = {}

    def operator(ctx: ProcessorContext) -> tuple[WindowOperator, set[str]]:
        got = ops.get(ctx.partition)
        if got is not None and got[0] == ctx.load_epoch:
            return got[1], got[2]
        # (Re)build from the last committed checkpoint: after a restart, a rebalance, or a
        # batch whose transaction failed (the operator had been fed past the checkpoint).
        op = WindowOperator(
            windows, aggregation, watermark=watermark, allowed_lateness=allowed_lateness
        )
        store = ctx.state(_STORE)
        meta = store.get(_META)
        if meta is not None:
            op.restore_parts(meta, [v for k, v in store.items() if k.startswith(_KEY)])
        dirty: set[str] = set()
        ops[ctx.partition] = (ctx.load_epoch, op, dirty)
        return op, dirty

    def handle(ctx: ProcessorContext, rec: StoredRecord) -> None:
        try:
            key, sample = to_sample(rec)
        except BadInput:
            raise
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError, TypeError) as exc:
            raise BadInput(f"not a sample: {exc}") from None
        op, dirty = operator(ctx)
        op.feed(key, sample)
        dirty.add(key)

    def after_batch(ctx: ProcessorContext) -> None:
        op, dirty = operator(ctx)
        for out in op.drain():
            ctx.emit(output, _out.encode(out), key=out.key)
            dirty.add(out.key)
        store = ctx.state(_STORE)
        for key in dirty:
            blob = op.snapshot_key(key)
            if blob is None:
                store.delete(_KEY + key.encode())
            else:
                store.set(_KEY + key.encode(), blob)
        store.set(_META, op.snapshot_meta())
        dirty.clear()

    return Processor(
        log,
        topic,
        handle,
        group=group,
        stores={_STORE: bytes},
        outputs=(output,),
        after_batch=after_batch,
        **options,
    )
