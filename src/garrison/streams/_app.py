"""``StreamApp``: processors, topics and a producer over one log, started and stopped together.

::

    app = StreamApp("sqlite:///streams.db", topics={"telemetry": 8, "alerts": 1})

    @app.processor("telemetry", group="alerting", stores={"last": float}, outputs=["alerts"])
    async def alert(ctx: ProcessorContext, rec: StoredRecord) -> None:
        ...

    async with app:                         # opens the log, creates topics, runs processors
        await app.producer.send("telemetry", b"...", key=b"battery-7")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from garrison.core import Clock, InvalidInput, UsageError

from ._backends import open_log
from ._backends.base import LogBackend, TopicSpec
from ._processor import Handler, Processor
from ._producer import Producer
from ._table import Table, table_processor
from ._windowed import window_processor

__all__ = ["StreamApp"]


class StreamApp:
    """A log (given open or as a URL), the topics to create, and the processors to run."""

    def __init__(
        self,
        log: str | LogBackend = "sqlite:///streams.db",
        *,
        topics: Mapping[str, int | TopicSpec] | None = None,
        clock: Clock | None = None,
        lease: float = 10.0,
        max_records: int = 500,
    ) -> None:
        self._url = log if isinstance(log, str) else None
        self._log: LogBackend | None = None if isinstance(log, str) else log
        self._owns_log = isinstance(log, str)
        if self._url is not None:
            open_log(self._url, clock=clock)  # validate the URL now, not at start
        self._clock = clock
        self._topics: list[TopicSpec] = []
        for name, spec in (topics or {}).items():
            self.topic(name, spec)
        self.lease = lease
        self.max_records = max_records
        self.processors: list[Processor] = []
        self._pending: list[Callable[[LogBackend], Processor]] = []
        self._producer: Producer | None = None
        self._running = False

    def topic(self, name: str, spec: int | TopicSpec = 1) -> None:
        """Declare a topic to create at start (``spec``: a partition count or a spec)."""
        if isinstance(spec, TopicSpec):
            if spec.name != name:
                raise InvalidInput(f"topic {name!r}: its spec names {spec.name!r}")
            ts = spec
        elif isinstance(spec, int) and not isinstance(spec, bool):
            ts = TopicSpec(name=name, partitions=spec)
        else:
            raise InvalidInput(f"topic {name!r}: expected a partition count or TopicSpec")
        self._topics.append(ts.validate())

    def processor(
        self,
        topic: str | Sequence[str],
        *,
        group: str,
        **options: Any,
    ) -> Callable[[Handler], Handler]:
        """Run the decorated handler over ``topic`` as a member of ``group`` (options: see
        :class:`Processor`)."""

        def register(handler: Handler) -> Handler:
            self._pending.append(
                lambda log: Processor(log, topic, handler, group=group, **self._defaults(options))
            )
            return handler

        return register

    def window(self, topic: str, *, group: str, **options: Any) -> None:
        """Run a window aggregation processor (see :func:`window_processor`)."""
        self._pending.append(
            lambda log: window_processor(log, topic, group=group, **self._defaults(options))
        )

    def table(self, topic: str, *, group: str, **options: Any) -> Table:
        """Materialize ``topic`` as a table (latest value per key, see :func:`table_processor`)
        and return it; its lookups work while the app runs."""
        table = Table(_LateLog(self), topic, group=group)
        self._pending.append(
            lambda log: table_processor(log, topic, group=group, **self._defaults(options))
        )
        return table

    def _defaults(self, options: dict[str, Any]) -> dict[str, Any]:
        return {"lease": self.lease, "max_records": self.max_records, **options}

    @property
    def log(self) -> LogBackend:
        """The log (open while the app runs)."""
        if self._log is None:
            raise UsageError("the stream app is not started")
        return self._log

    @property
    def producer(self) -> Producer:
        """A producer on the app's log (while the app runs)."""
        if self._producer is None:
            raise UsageError("the stream app is not started")
        return self._producer

    async def start(self) -> None:
        """Open the log, create the declared topics, start every processor."""
        if self._running:
            return
        if self._log is None:
            assert self._url is not None
            self._log = open_log(self._url, clock=self._clock)
        if self._owns_log:
            await self._log.open()
        try:
            for spec in self._topics:
                await self._log.create_topic(spec)
            self._producer = Producer(self._log)
            self.processors = [make(self._log) for make in self._pending]
            for p in self.processors:
                await p.start()
        except BaseException:
            await self._teardown()
            raise
        self._running = True

    async def stop(self) -> None:
        """Stop the processors, flush the producer, close the log if the app opened it."""
        if not self._running:
            return
        self._running = False
        await self._teardown()

    async def _teardown(self) -> None:
        for p in reversed(self.processors):
            await p.stop()
        if self._producer is not None:
            await self._producer.close()
            self._producer = None
        if self._owns_log and self._log is not None:
            await self._log.close()
            self._log = None

    async def __aenter__(self) -> StreamApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _LateLog:
    """The app's log, looked up at each call: a table made before start works once it runs."""

    def __init__(self, app: StreamApp) -> None:
        self._app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self._app.log, name)
