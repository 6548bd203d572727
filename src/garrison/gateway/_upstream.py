"""Upstream transports: where the gateway's bytes meet the network.

An :class:`Upstream` opens one request to one absolute URL, streaming the request body in and
handing back the status and raw headers as soon as they arrive, with the body still to be
streamed out. Failures are garrison's errors, never a library's: :class:`TransportError`
(connect or read failure) and :class:`DeadlineExceeded` (the budget ran out).

:class:`AiohttpUpstream` is the real one: one pooled session, no cookie jar (a shared jar
would hand one user's cookies to the next), no automatic decompression or headers, so what
the client and the upstream send is relayed byte for byte. :class:`RecordingUpstream` answers
from a function, for tests.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from garrison.core import DeadlineExceeded, TransportError

__all__ = [
    "AiohttpUpstream",
    "RecordedRequest",
    "RecordingUpstream",
    "Upstream",
    "UpstreamResponse",
]

Headers = Sequence[tuple[bytes, bytes]]
Body = AsyncIterable[bytes] | bytes | None


class UpstreamResponse(Protocol):
    """An upstream's answer: status and headers now, the body as it comes."""

    status: int
    """The status code."""
    headers: Headers
    """Raw headers, duplicates and order kept (names as sent)."""

    def body(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk; raises TransportError / DeadlineExceeded."""
        ...

    async def aclose(self) -> None:
        """Release the connection (closing it if the body was not read to the end)."""
        ...


class Upstream(Protocol):
    """Opens requests to upstream instances."""

    async def open(
        self, method: str, url: str, headers: Headers, body: Body, timeout: float
    ) -> UpstreamResponse:
        """Send the request; return once the status line and headers have arrived."""
        ...

    async def aclose(self) -> None:
        """Close every connection."""
        ...


def _text(value: bytes) -> str:
    # aiohttp writes header values as UTF-8: a UTF-8 value goes out byte for byte. (Other
    # non-ASCII bytes, which no standard header holds, come out re-encoded.)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return value.decode("latin-1")


class _AiohttpResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: Any) -> None:
        self._resp = resp
        self.status: int = resp.status
        self.headers: Headers = resp.raw_headers

    async def body(self) -> AsyncIterator[bytes]:
        import aiohttp

        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except TimeoutError:
            raise DeadlineExceeded("the upstream response was cut by the deadline") from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"reading the upstream response: {exc!r}") from None

    async def aclose(self) -> None:
        if self._resp.content.at_eof():
            self._resp.release()  # read to the end: the connection goes back to the pool
        else:
            self._resp.close()  # cut short: the connection cannot be reused


class AiohttpUpstream:
    """Upstream requests through one pooled aiohttp session, made on first use."""

    def __init__(self, *, max_connections: int = 512, connect_timeout: float = 2.0) -> None:
        self._max = max_connections
        self._connect_timeout = connect_timeout
        self._session: Any = None

    def _get(self) -> Any:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max, ttl_dns_cache=300),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def open(
        self, method: str, url: str, headers: Headers, body: Body, timeout: float
    ) -> UpstreamResponse:
        """Send through the pooled session."""
        import aiohttp
        from multidict import CIMultiDict

        session = self._get()
        t = aiohttp.ClientTimeout(total=timeout, connect=min(self._connect_timeout, timeout))
        hdrs: CIMultiDict[str] = CIMultiDict((n.decode("latin-1"), _text(v)) for n, v in headers)
        try:
            resp = await session.request(
                method,
                url,
                headers=hdrs,
                data=body,
                timeout=t,
                allow_redirects=False,
                auto_decompress=False,
            )
        except TimeoutError:
            raise DeadlineExceeded(f"{method} {url}: no answer within {timeout:.3f}s") from None
        except aiohttp.ClientError as exc:
            raise TransportError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
        return _AiohttpResponse(resp)

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
        self._session = None


@dataclass
class RecordedRequest:
    """A request as :class:`RecordingUpstream` received it."""

    method: str
    """The method."""
    url: str
    """The absolute URL."""
    headers: list[tuple[bytes, bytes]]
    """The headers, as the gateway would have put them on the wire."""
    body: bytes = b""
    """The whole body."""


class _Recorded:
    def __init__(self, status: int, headers: Headers, chunks: list[bytes]) -> None:
        self.status = status
        self.headers = headers
        self.chunks = chunks

    async def body(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            yield c

    async def aclose(self) -> None:
        pass


Reply = tuple[int, list[tuple[bytes, bytes]], bytes | list[bytes]]
Handler = Callable[[RecordedRequest], Reply | Awaitable[Reply]]


class RecordingUpstream:
    """An :class:`Upstream` for tests: records each request, answers from ``handler``."""

    def __init__(self, handler: Handler | None = None) -> None:
        self._handler = handler
        self.requests: list[RecordedRequest] = []

    async def open(
        self, method: str, url: str, headers: Headers, body: Body, timeout: float
    ) -> UpstreamResponse:
        """Record the request (reading its whole body) and answer it."""
        data = b""
        if isinstance(body, bytes):
            data = body
        elif body is not None:
            data = b"".join([c async for c in body])
        req = RecordedRequest(method, url, list(headers), data)
        self.requests.append(req)
        if self._handler is None:
            return _Recorded(200, [(b"content-type", b"text/plain")], [b"ok"])
        result = self._handler(req)
        if inspect.isawaitable(result):
            try:
                result = await asyncio.wait_for(result, timeout)
            except TimeoutError:
                raise DeadlineExceeded(f"{method} {url}: no answer within {timeout}s") from None
        status, rheaders, rbody = result
        return _Recorded(status, rheaders, [rbody] if isinstance(rbody, bytes) else rbody)

    async def aclose(self) -> None:
        """Nothing to release."""
