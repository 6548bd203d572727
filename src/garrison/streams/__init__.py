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
"""

from ._aggregates import AGGREGATES, Aggregation, aggregate, window_status
from ._due import DueIndex
from ._operator import OperatorStats, WindowOperator
from ._outputs import TooLate, WindowClosed, WindowOutput, WindowResult, WindowRetracted
from ._sample import AggregateValue, Provenance, Sample
from ._status import Limit, Severity, StatusCode
from ._windows import BoundedOutOfOrderness, Hopping, Session, Tumbling, Window, WindowKind

__all__ = [
    "AGGREGATES",
    "AggregateValue",
    "Aggregation",
    "BoundedOutOfOrderness",
    "DueIndex",
    "Hopping",
    "Limit",
    "OperatorStats",
    "Provenance",
    "Sample",
    "Session",
    "Severity",
    "StatusCode",
    "TooLate",
    "Tumbling",
    "Window",
    "WindowClosed",
    "WindowKind",
    "WindowOperator",
    "WindowOutput",
    "WindowResult",
    "WindowRetracted",
    "aggregate",
    "window_status",
]
