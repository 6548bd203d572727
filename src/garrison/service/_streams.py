"""Stream processors inside a service: ``@svc.processor(topic, group=...)`` and ``svc.streams``.

The decorator only records: a service is plain data until it is served. When it starts, after
the user's startup hooks (a handler may use what they set up), its lifespan opens the log that
``[streams]`` names (one SQLite file per app by default, shared by its services), creates the
declared topics, and starts every processor; the service reports ready only after that. They
stop before the shutdown hooks run: the batch in progress finishes (or is redone after a
restart: exactly once on SQLite), and each processor leaves its group so that its partitions
move to the other replicas at once.

A service with no processors opens the log only when ``[streams]`` is configured, to produce
with ``svc.streams.producer``. Member ids are stable per replica (``{service}-{replica}-
{handler}.{host}``): a restarted replica takes its partitions back at once, without waiting for
its previous incarnation's lease to expire.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from garrison.core import UsageError, get_logger
from garrison.streams import StreamApp, StreamsSettings

if TYPE_CHECKING:
    from ._service import Service

__all__ = ["ServiceStreams"]

F = TypeVar("F", bound=Callable[..., Any])
_log = get_logger("service")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class ServiceStreams:
    """The streams part of one service: its declared processors and, while it runs, its app."""

    def __init__(self, svc: Service) -> None:
        self._svc = svc
        self.declared: list[tuple[Callable[..., Any], tuple[str, ...], str, dict[str, Any]]] = []
        self.app: StreamApp | None = None

    def processor(
        self, topic: str | Sequence[str], *, group: str | None = None, **options: Any
    ) -> Callable[[F], F]:
        """Record the decorated handler as a processor (see :meth:`Service.processor`)."""
        topics = (topic,) if isinstance(topic, str) else tuple(topic)
        if not topics or not all(isinstance(t, str) and t for t in topics):
            raise UsageError(f"@{self._svc.name}.processor: expected topic name(s), got {topic!r}")

        def mark(fn: F) -> F:
            if not callable(fn):
                raise UsageError(f"@{self._svc.name}.processor expects a function, got {fn!r}")
            name = group or f"{self._svc.name}-{fn.__name__}"
            for other, _, other_group, _ in self.declared:
                if other_group == name and other is not fn:
                    raise UsageError(
                        f"service {self._svc.name!r} already has a processor in group {name!r}"
                    )
            self.declared.append((fn, topics, name, dict(options)))
            return fn

        return mark

    @property
    def running(self) -> StreamApp:
        """The running stream app; :class:`UsageError` when the service runs none."""
        if self.app is None:
            raise UsageError(
                f"service {self._svc.name!r} runs no streams (not started, stopped, or neither "
                "processors nor a [streams] section)"
            )
        return self.app

    async def start(self) -> None:
        """Open the log and start the processors (when there are any, or [streams] is set)."""
        config = self._svc._config()
        settings = StreamsSettings.from_config(config)  # validated even when unused
        if not self.declared and not config.streams:
            return
        url = settings.resolved_url(config)
        app = StreamApp(url, lease=settings.lease_seconds, max_records=settings.max_records)
        for spec in settings.topic_specs():
            app.topic(spec.name, spec)
        host = _UNSAFE.sub("-", socket.gethostname()) or "host"
        for fn, topics, group, options in self.declared:
            member = f"{self._svc.name}-{self._svc.replica}-{fn.__name__}.{host}"
            opts = {"member": _UNSAFE.sub("-", member)[:200], **options}
            app.processor(topics, group=group, **opts)(fn)
        await app.start()
        self.app = app
        _log.info(
            "service %s: streams on %s, %d processor(s)",
            self._svc.name, url.split("?")[0], len(self.declared),
        )  # fmt: skip

    async def stop(self) -> None:
        """Stop the processors and close the log."""
        app, self.app = self.app, None
        if app is not None:
            await app.stop()
