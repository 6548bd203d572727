"""The one exception tree of garrison.

Every error garrison raises derives from :class:`GarrisonError`. Errors the *caller* caused
(bad configuration, bad input) are kept apart from errors a *remote peer* or the environment
caused (a callee that failed, a deadline that ran out), because the caller acts on them
differently: fix the input, or retry / degrade.

    GarrisonError
    ├── UsageError                  the caller did something wrong
    │   ├── ConfigError             a garrison.toml or environment value is invalid
    │   ├── InvalidInput            a request body, parameter or argument is invalid
    │   ├── Unauthenticated         no valid credential / passport (HTTP 401)
    │   └── PermissionDenied        authenticated, but not allowed (HTTP 403)
    ├── RemoteError                 a peer or the environment failed
    │   ├── DeadlineExceeded        the request's time budget ran out
    │   ├── ServiceUnavailable      no instance could take the call (none known, all failing, shed)
    │   ├── TransportError          connect / read failure talking to a peer
    │   ├── RemoteProtocolError     the peer answered something malformed (e.g. an invalid body)
    │   └── RemoteStatusError       the peer answered with an error status (carries status + body)
    └── NotFound                    a named thing (service, workflow, actor ...) does not exist
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = [
    "ConfigError",
    "DeadlineExceeded",
    "GarrisonError",
    "InvalidInput",
    "NotFound",
    "PermissionDenied",
    "RemoteError",
    "RemoteProtocolError",
    "RemoteStatusError",
    "ServiceUnavailable",
    "TransportError",
    "Unauthenticated",
    "UsageError",
]


class GarrisonError(Exception):
    """Root of every error raised by garrison."""


class UsageError(GarrisonError):
    """The caller did something wrong: fix the input, do not retry."""


class ConfigError(UsageError):
    """A configuration value is invalid.

    ``source`` names where it came from (a file path or ``environment``), ``key`` the dotted key
    (``services.api.port``) and the message what was expected.
    """

    def __init__(self, message: str, *, source: str = "", key: str = "") -> None:
        self.source = source
        self.key = key
        where = " ".join(p for p in (source, f"[{key}]" if key else "") if p)
        super().__init__(f"{where}: {message}" if where else message)


class InvalidInput(UsageError):
    """A request or argument failed validation.

    ``errors`` lists one dict per problem: ``{"loc": [...], "msg": "..."}`` so an HTTP edge can
    return them as a 4xx JSON body.
    """

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        self.errors = errors or [{"loc": [], "msg": message}]
        super().__init__(message)


class NotFound(GarrisonError):
    """A named thing does not exist."""


class Unauthenticated(UsageError):
    """The request carries no valid credential or passport (HTTP 401).

    ``reason`` is a short machine-readable code (``expired``, ``bad_signature``,
    ``unknown_key`` ...) safe to show a client; the message says more for the logs.
    """

    def __init__(self, message: str, *, reason: str = "unauthenticated") -> None:
        self.reason = reason
        super().__init__(message)


class PermissionDenied(UsageError):
    """The identity is known but lacks what the route requires (HTTP 403)."""

    def __init__(self, message: str, *, reason: str = "forbidden") -> None:
        self.reason = reason
        super().__init__(message)


class RemoteError(GarrisonError):
    """A peer or the environment failed; retrying or degrading may help."""


class DeadlineExceeded(RemoteError):
    """The request's time budget ran out before the work was done."""


class ServiceUnavailable(RemoteError):
    """No instance could take the call: none known, all ejected, or the call was shed."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        self.retryable = retryable
        super().__init__(message)


class TransportError(RemoteError):
    """Connecting to or reading from a peer failed."""


class RemoteProtocolError(RemoteError):
    """A peer answered, but not with what the protocol promised (e.g. a body that fails
    validation). The fault is the peer's, so it is not an :class:`InvalidInput` of ours."""


class RemoteStatusError(RemoteError):
    """The peer answered with an error status (4xx/5xx)."""

    def __init__(self, status: int, body: bytes, *, service: str = "", path: str = "") -> None:
        self.status = status
        self.body = body
        self.service = service
        self.path = path
        snippet = body[:200].decode("utf-8", "replace")
        who = f"{service}{path}" or "peer"
        super().__init__(f"{who} answered {status}: {snippet}")

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds from ``args`` (the message alone), which this __init__ cannot take:
        # without this, pickling the error (process pools, stored failures) breaks.
        rebuild = functools.partial(type(self), service=self.service, path=self.path)
        return (rebuild, (self.status, self.body), self.__dict__)
