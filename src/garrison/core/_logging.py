"""Logging through stdlib :mod:`logging`: one logger per pillar, text or JSON lines."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal

__all__ = ["JsonFormatter", "configure_logging", "get_logger"]

_PILLARS = frozenset(
    {
        "core",
        "identity",
        "resilience",
        "durable",
        "streams",
        "chaos",
        "service",
        "gateway",
        "control",
        "cli",
        "dev",
    }
)


def get_logger(pillar: str) -> logging.Logger:
    """The logger of a pillar, ``garrison.<pillar>``."""
    if pillar not in _PILLARS and not pillar.startswith(tuple(p + "." for p in _PILLARS)):
        raise ValueError(f"unknown pillar {pillar!r}; expected one of {sorted(_PILLARS)}")
    return logging.getLogger(f"garrison.{pillar}")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any ``extra`` fields."""

    _STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as one JSON line."""
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", fmt: Literal["text", "json"] = "text") -> None:
    """Send garrison's logs to stderr at ``level`` in ``fmt``; idempotent."""
    root = logging.getLogger("garrison")
    root.setLevel(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    for old in list(root.handlers):
        if getattr(old, "_garrison", False):
            root.removeHandler(old)
    handler._garrison = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.propagate = False
