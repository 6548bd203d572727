"""Transports: the one place where bytes meet the network.

The client's interceptor chain ends in a :class:`Transport`. Two real ones are provided, aiohttp
(the default: measured fastest in ``bench/service_client.py``) and httpx, plus
:class:`MockTransport` for tests, which answers from a function without any socket.
A transport sends one request to one absolute URL with a total timeout and returns status,
headers and the whole body; it raises :class:`~garrison.core.TransportError` or
:class:`~garrison.core.DeadlineExceeded`, never a library-specific exception.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from garrison.core import DeadlineExceeded, TimeoutWheel, TransportError, default_wheel

if TYPE_CHECKING:
    import aiohttp

__all__ = ["AiohttpTransport", "HttpxTransport", "MockTransport", "RawResponse", "Transport"]

RawResponse = tuple[int, Mapping[str, str], bytes]
"""(status, headers, body) as returned by a transport."""


class Transport(Protocol):
    """Sends one HTTP request and returns the whole response."""

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        content: bytes | None,
        timeout: float,
    ) -> RawResponse:
        """Send the request; raise TransportError / DeadlineExceeded on failure."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class AiohttpTransport:
    """An aiohttp session with a bounded keep-alive pool, created on first use.

    The call's budget is enforced by the event loop's :class:`~garrison.core.TimeoutWheel`, not
    by aiohttp: a per-request ``ClientTimeout(total=...)`` costs a timer per call (scheduled
    and cancelled every time), where the wheel adds an entry to a shared bucket. The session's
    only aiohttp timeout is ``sock_connect``, which runs only when a new connection is opened.
    A budget fires at most one wheel resolution (5 ms) late, never early.
    """

    def __init__(self, *, max_connections: int = 256, connect_timeout: float = 2.0) -> None:
        self._max = max_connections
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._client_error: type[Exception] = Exception
        self._wheel: TimeoutWheel | None = None

    @property
    def connected(self) -> bool:
        """Whether the session (and its pool) has been created by a first request."""
        return self._session is not None

    def _get(self) -> aiohttp.ClientSession:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
                auto_decompress=True,
                # No skip_auto_headers=("User-Agent",): skipping costs aiohttp 6-7 µs per call
                # (it rebuilds the skip set and copies the headers), sending it a few bytes.
            )
            self._client_error = aiohttp.ClientError
            self._wheel = default_wheel()  # the session is bound to this loop, and so is this
        return self._session

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        content: bytes | None,
        timeout: float,
    ) -> RawResponse:
        """Send through the pooled aiohttp session."""
        session = self._session or self._get()
        wheel = self._wheel
        assert wheel is not None
        entry = wheel.enter(timeout)
        try:
            async with session.request(
                method, url, headers=headers, data=content, allow_redirects=False
            ) as resp:
                body = await resp.read()
                status, rheaders = resp.status, resp.headers
        except BaseException as exc:
            # The wheel cancelled this task: its CancelledError (or whatever aiohttp made of it)
            # is our deadline, unless the task was also cancelled from outside.
            if entry.fired:
                if wheel.leave(entry, True):
                    raise DeadlineExceeded(
                        f"{method} {url}: no answer within {timeout:.3f}s"
                    ) from None
                raise
            wheel.leave(entry, False)
            if isinstance(exc, TimeoutError):  # aiohttp's connect timeout
                raise DeadlineExceeded(
                    f"{method} {url}: no connection within {self._connect_timeout:.3f}s"
                ) from None
            if isinstance(exc, self._client_error):
                raise TransportError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
            raise
        wheel.leave(entry, False)
        return status, rheaders, body

    async def aclose(self) -> None:
        """Close the session and its connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


class HttpxTransport:
    """An httpx.AsyncClient with a bounded keep-alive pool."""

    def __init__(self, *, max_connections: int = 256, connect_timeout: float = 2.0) -> None:
        import httpx

        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=max_connections),
            timeout=httpx.Timeout(10.0, connect=connect_timeout),
        )
        self._connect_timeout = connect_timeout

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        content: bytes | None,
        timeout: float,
    ) -> RawResponse:
        """Send through the pooled httpx client."""
        import httpx

        t = httpx.Timeout(timeout, connect=min(self._connect_timeout, timeout))
        try:
            resp = await self._client.request(
                method, url, headers=headers, content=content, timeout=t
            )
        except httpx.TimeoutException:
            raise DeadlineExceeded(f"{method} {url}: no answer within {timeout:.3f}s") from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise TransportError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        return resp.status_code, resp.headers, resp.content

    async def aclose(self) -> None:
        """Close the client and its connections."""
        await self._client.aclose()


Handler = Callable[
    [str, str, Mapping[str, str], bytes | None], RawResponse | Awaitable[RawResponse]
]


class MockTransport:
    """Answers every request from ``handler(method, url, headers, body)``; no sockets.

    The handler may be sync or async and may raise :class:`TransportError` to simulate a
    network failure. ``requests`` records what was sent, for assertions.
    """

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self.requests: list[tuple[str, str, dict[str, str], bytes | None]] = []

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        content: bytes | None,
        timeout: float,
    ) -> RawResponse:
        """Record the request and answer it from the handler, within ``timeout``."""
        self.requests.append((method, url, dict(headers), content))
        result = self._handler(method, url, headers, content)
        if inspect.isawaitable(result):
            try:
                result = await asyncio.wait_for(result, timeout)
            except TimeoutError:
                raise DeadlineExceeded(f"{method} {url}: no answer within {timeout:.3f}s") from None
        status, rheaders, body = result
        if not all(k.islower() for k in rheaders):
            # Case-insensitive like the real transports' headers, so code tested here works there.
            import httpx

            rheaders = httpx.Headers(rheaders)
        return status, rheaders, body

    async def aclose(self) -> None:
        """Nothing to release."""
