"""Connecting to NATS for the JetStream log: a bounded first connect, JetStream checked."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
import nats.js.errors

from garrison.core import TransportError, get_logger

from ._jetstream_config import JetStreamOptions

__all__ = ["connect"]

log = get_logger("streams.jetstream")


async def connect(
    servers: list[str], o: JetStreamOptions, opened: Callable[[], bool], name: str
) -> tuple[Any, Any]:
    """The connection and its JetStream context; ``TransportError`` naming the servers when
    none answers within twice ``connect_timeout`` or the server has no JetStream.

    Later connection trouble (nats-py reconnects by itself) is logged once per distinct error,
    once ``opened()`` says the log is open.
    """
    last_error = [""]

    async def on_error(exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if text != last_error[0]:
            last_error[0] = text
            if opened():  # before, the failure is raised from here with the reason
                log.warning("JetStream connection %s: %s", name, text)

    where = ", ".join(servers)
    try:
        # nats-py retries a failing first connect as long as it would reconnect later:
        # bound the first one, so a wrong URL or a server that is down fails promptly.
        nc = await asyncio.wait_for(
            nats.connect(
                servers=servers,
                name=o.name,
                connect_timeout=o.connect_timeout,
                allow_reconnect=o.max_reconnect != 0,
                max_reconnect_attempts=o.max_reconnect if o.max_reconnect > 0 else -1,
                reconnect_time_wait=0.5,
                error_cb=on_error,
            ),
            o.connect_timeout * 2,
        )
    except TimeoutError as exc:
        raise TransportError(
            f"cannot connect to NATS at {where} within {o.connect_timeout * 2:g}s "
            f"({last_error[0] or 'no answer'})"
        ) from exc
    except Exception as exc:
        raise TransportError(
            f"cannot connect to NATS at {where}: {type(exc).__name__}: {exc}"
        ) from exc
    js = nc.jetstream(timeout=o.ack_timeout, publish_async_max_pending=o.max_pending)
    try:
        await js.account_info()
    except (nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError) as exc:
        await nc.close()
        raise TransportError(
            f"NATS at {where} answers but has no JetStream (start nats-server with -js)"
        ) from exc
    except (nats.errors.Error, TimeoutError) as exc:
        await nc.close()
        raise TransportError(f"JetStream at {where}: {type(exc).__name__}: {exc}") from exc
    return nc, js
