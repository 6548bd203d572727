"""``[streams]`` in garrison.toml: the event log every service of an app shares, and its topics.

::

    [streams]
    url = "sqlite:///{data_dir}/streams.db"   # the default; nats://127.0.0.1:4222 for JetStream
    lease_seconds = 10.0                      # consumer group leases
    max_records = 500                         # records per processor batch

    [streams.topics.telemetry]                # created at start if missing
    partitions = 8
    retention_ms = 86_400_000

Every key is optional. ``url`` may use ``{data_dir}`` (``[app] data_dir``) and ``{host}``; a
relative ``sqlite:///`` path is resolved against the application root, so every process of an
app opens the same file. Errors name the dotted key and where it was set.
"""

from __future__ import annotations

import socket
import string
from pathlib import Path
from typing import Annotated

import msgspec

from garrison.core import ConfigError, GarrisonConfig, convert_section

from ._backends.base import MAX_PARTITIONS, TopicSpec, validate_name

__all__ = ["StreamsSettings", "TopicSettings"]

DEFAULT_URL = "sqlite:///{data_dir}/streams.db"
_PLACEHOLDERS = frozenset({"data_dir", "host"})
_SCHEMES = ("sqlite", "memory", "nats", "tls")
_Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600, description="seconds in (0, 3600]")]
_Positive = Annotated[int, msgspec.Meta(ge=1, description="an integer >= 1")]


class TopicSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[streams.topics.NAME]``: a topic to create at start (an existing one is left as is)."""

    partitions: Annotated[int, msgspec.Meta(ge=1, le=MAX_PARTITIONS)] = 1
    retention_ms: _Positive | None = None
    retention_bytes: _Positive | None = None


class StreamsSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole ``[streams]`` section, validated by :meth:`from_config`."""

    url: str = DEFAULT_URL
    """The log URL template (see the module docstring)."""
    lease_seconds: _Seconds = 10.0
    """Consumer group member leases; a dead member's partitions move after this long."""
    max_records: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 500
    """Most records a processor handles per batch (one transaction)."""
    topics: dict[str, TopicSettings] = {}
    """Topics to create at start."""

    @classmethod
    def from_config(cls, config: GarrisonConfig) -> StreamsSettings:
        """Parse and validate ``config.streams``; :class:`ConfigError` naming the key."""
        try:
            s = convert_section(config.streams, cls, key="streams", config=config)
        except ConfigError as exc:
            if not str(exc).endswith(": unknown key"):
                raise
            known = ", ".join(sorted(cls.__struct_fields__))
            raise ConfigError(
                f"unknown key; expected one of: {known}", source=exc.source, key=exc.key
            ) from None
        for name in s.topics:
            try:
                validate_name("topic", name)
            except Exception as exc:
                raise ConfigError(
                    str(exc), source=config.source, key=f"streams.topics.{name}"
                ) from None
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(s.url) if f is not None}
        except ValueError as exc:
            raise ConfigError(
                f"bad template {s.url!r}: {exc}", source=config.source, key="streams.url"
            ) from None
        unknown = fields - _PLACEHOLDERS
        if unknown:
            raise ConfigError(
                f"unknown placeholder(s) {sorted(unknown)} in {s.url!r}; expected some of "
                f"{sorted(_PLACEHOLDERS)}",
                source=config.source,
                key="streams.url",
            )
        scheme = s.url.partition("://")[0].lower() if "://" in s.url else ""
        if scheme not in _SCHEMES:
            raise ConfigError(
                f"expected a log URL (sqlite:///path.db, nats://host:port, memory://), "
                f"got {s.url!r}",
                source=config.source,
                key="streams.url",
            )
        return s

    def resolved_url(self, config: GarrisonConfig | None = None) -> str:
        """``url`` with its placeholders filled in and a relative SQLite path made absolute
        against the application root."""
        data_dir = config.app.data_dir if config is not None else ".garrison"
        url = self.url.format(data_dir=data_dir, host=socket.gethostname())
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            rel, _, query = url[len("sqlite:///") :].partition("?")
            root = Path(config.root if config is not None else ".").resolve()
            path = (root / rel).resolve()
            path.parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{path}" + (f"?{query}" if query else "")
        return url

    def topic_specs(self) -> list[TopicSpec]:
        """The declared topics as specs."""
        return [
            TopicSpec(
                name=n,
                partitions=t.partitions,
                retention_ms=t.retention_ms,
                retention_bytes=t.retention_bytes,
            )
            for n, t in sorted(self.topics.items())
        ]
