"""garrison streams: values that carry their quality, event-time windows, OPC UA Part 13 aggregates.

The sans-I/O heart of the streams pillar::

    from garrison.streams import Aggregation, Sample, StatusCode, Tumbling, WindowOperator

    op = WindowOperator(Tumbling(60_000), Aggregation(("count", "mean", "time_average")),
                        allowed_lateness=30_000)
    op.feed("battery-7", Sample(ts=1_700_000_000_000, value=3.2))
    op.feed("battery-7", Sample(1_700_000_004_000, 0.0, StatusCode.BAD_SENSOR_FAILURE))
    for out in op.drain(): ...   # WindowResult / WindowRetracted / WindowClosed / TooLate

Samples carry an OPC UA status code (:class:`StatusCode`), an optional standard uncertainty
and :class:`Provenance` flags; aggregates follow OPC UA Part 13's rules for Bad and Uncertain
data (see :mod:`garrison.streams._aggregates` and ``docs/streams.md``).

Around it, the event log and what runs on it::

    from garrison.streams import StreamApp, ProcessorContext, StoredRecord

    app = StreamApp("sqlite:///streams.db", topics={"telemetry": 8, "counts": 1})

    @app.processor("telemetry", group="counter", stores={"n": int}, outputs=["counts"])
    def count(ctx: ProcessorContext, rec: StoredRecord) -> None:
        n = ctx.state("n").get(rec.key, 0) + 1
        ctx.state("n").set(rec.key, n)       # state, output and input offset commit together
        ctx.emit("counts", {"n": n})

Logs are chosen by URL (:func:`open_log`: ``sqlite:///path.db``, ``memory://``,
``nats://host:port``) behind one contract (:class:`LogBackend`); :class:`Producer` batches with
backpressure, :class:`Consumer` is an at-least-once group member, :class:`Processor` commits
input offsets, state and outputs in one transaction (exactly once on SQLite).
"""

from ._aggregates import AGGREGATES, Aggregation, aggregate, window_status
from ._app import StreamApp
from ._backends import open_log
from ._backends.base import (
    Assignment,
    Capabilities,
    GroupInfo,
    LogBackend,
    MemberInfo,
    OutputRecord,
    PartitionOffsets,
    Record,
    StateChange,
    StoredRecord,
    TopicInfo,
    TopicPartition,
    TopicSpec,
    Transaction,
    partition_for,
)
from ._consumer import Consumer
from ._due import DueIndex
from ._errors import (
    Fenced,
    GroupNotFound,
    LogClosed,
    NotAMember,
    RecordTooLarge,
    TopicExists,
    TopicNotFound,
)
from ._operator import OperatorStats, WindowOperator
from ._outputs import TooLate, WindowClosed, WindowOutput, WindowResult, WindowRetracted
from ._processor import BadInput, Processor, ProcessorContext
from ._producer import Producer
from ._sample import AggregateValue, Provenance, Sample
from ._settings import StreamsSettings, TopicSettings
from ._state import StateStore
from ._status import Limit, Severity, StatusCode
from ._table import Table, table_processor
from ._windowed import window_processor
from ._windows import BoundedOutOfOrderness, Hopping, Session, Tumbling, Window, WindowKind

__all__ = [
    "AGGREGATES",
    "AggregateValue",
    "Aggregation",
    "Assignment",
    "BadInput",
    "BoundedOutOfOrderness",
    "Capabilities",
    "Consumer",
    "DueIndex",
    "Fenced",
    "GroupInfo",
    "GroupNotFound",
    "Hopping",
    "Limit",
    "LogBackend",
    "LogClosed",
    "MemberInfo",
    "NotAMember",
    "OperatorStats",
    "OutputRecord",
    "PartitionOffsets",
    "Processor",
    "ProcessorContext",
    "Producer",
    "Provenance",
    "Record",
    "RecordTooLarge",
    "Sample",
    "Session",
    "Severity",
    "StateChange",
    "StateStore",
    "StatusCode",
    "StoredRecord",
    "StreamApp",
    "StreamsSettings",
    "Table",
    "TooLate",
    "TopicExists",
    "TopicInfo",
    "TopicNotFound",
    "TopicPartition",
    "TopicSettings",
    "TopicSpec",
    "Transaction",
    "Tumbling",
    "Window",
    "WindowClosed",
    "WindowKind",
    "WindowOperator",
    "WindowOutput",
    "WindowResult",
    "WindowRetracted",
    "aggregate",
    "open_log",
    "partition_for",
    "table_processor",
    "window_processor",
    "window_status",
]
