"""The passport on a service: verify what arrives, hand it to handlers, forward it onwards.

Theory of operation
-------------------
Three pieces, all owned by one :class:`ServiceIdentity` per service:

* :class:`PassportMiddleware` (inbound, inside the deadline/metrics middleware) looks for the
  ``garrison-passport`` header. Absent: the request goes on with no identity. Present: it is
  verified *at once*, whatever the route, and a forged, tampered, truncated, expired or
  unknown-key passport is a 401 naming the reason; a valid one is kept, with its token, in a
  context variable for the rest of the request. Verifying every passport that arrives (rather
  than only where a handler asks) costs a few µs with HS256 and a dict lookup for a token seen
  before (see :class:`~garrison.identity._verify.PassportVerifier`), and buys two guarantees:
  no request carrying a forged identity is ever served, and what the client forwards has been
  verified here.
* The ``Passport`` / ``Passport | None`` handler parameters and the routes' ``requires=`` read
  that context variable; an absent passport is a 401 only where identity is required.
* :meth:`ServiceIdentity.forward` (an inter-service client interceptor) copies the token, as
  received, onto every outbound call made while the request is handled, so a chain A -> B -> C
  keeps the identity with no code in A or B. A call made outside a request carries none; an
  explicit ``garrison-passport`` header given by the caller is left alone.

Keys come from ``[identity.passport]``, else the development key (never in production,
``GARRISON_ENV=production``). A production service with no keys cannot verify: it passes the
header through untouched (the next hop verifies it) and answers 500 where a handler or route
needs the identity, logging why once.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from garrison.core import ConfigError, GarrisonConfig, Unauthenticated, get_logger
from garrison.identity import Passport, Requires
from garrison.identity._passport import PASSPORT_HEADER, PassportCodec
from garrison.identity._verify import PassportVerifier, is_production, load_passport_codec

from ._client import CallNext, ClientRequest, ClientResponse
from ._http_errors import error_body, error_response
from ._middleware import PROBE_PATHS, ROUTE_SCOPE_KEY

if TYPE_CHECKING:
    from ._service import Service

__all__ = ["PassportMiddleware", "ServiceIdentity", "current_passport"]

_log = get_logger("identity")
_HEADER = PASSPORT_HEADER.encode("ascii")
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class _Inbound:
    token: str
    """The header as received (forwarded as is)."""
    passport: Passport | None
    """The verified passport; None when this service has no keys to verify with."""


_CURRENT: contextvars.ContextVar[_Inbound | None] = contextvars.ContextVar(
    "garrison_passport", default=None
)


def current_passport() -> Passport | None:
    """The verified passport of the request being handled; None outside a request, when the
    request carries none, or when this service has no keys to verify it with."""
    inbound = _CURRENT.get()
    return None if inbound is None else inbound.passport


def _unauthenticated(reason: str, message: str) -> Response:
    detail = [{"loc": ["header", PASSPORT_HEADER], "reason": reason}]
    return Response(
        error_body("unauthenticated", message, detail),
        status_code=401,
        media_type="application/json",
        headers={"www-authenticate": "Bearer"},
    )


class ServiceIdentity:
    """The passport side of one service (``svc.identity``): which keys verify inbound
    passports, the ``Passport`` handler parameters, route requirements and forwarding.

    Keys are found in the service's configuration at the first passport (see
    :func:`~garrison.identity._verify.load_passport_codec`), or set with :meth:`use`.
    """

    def __init__(self, service: Service) -> None:
        self._service = service
        self._explicit: PassportVerifier | None = None
        self._explicit_set = False
        self._for: GarrisonConfig | None = None
        self._verifier: PassportVerifier | None = None
        self._warned = False
        service.inject(Passport, self._passport)
        service.inject(Passport | None, self._optional_passport)
        service.add_client_interceptor(self.forward)
        service.on_startup(self._startup)

    # -- keys ----------------------------------------------------------------------------------

    def use(self, verifier: PassportCodec | PassportVerifier | None) -> None:
        """Verify with ``verifier`` (a codec is wrapped in a caching verifier) instead of the
        configuration's keys; None means "no keys" (pass passports through unverified)."""
        if isinstance(verifier, PassportCodec):
            verifier = PassportVerifier(verifier)
        self._explicit = verifier
        self._explicit_set = True

    @property
    def verifier(self) -> PassportVerifier | None:
        """The verifier in use, built from the configuration on first use; None if this service
        has no keys (production without ``[identity.passport]``)."""
        if self._explicit_set:
            return self._explicit
        config = self._service._config()
        if config is not self._for:
            # Once per configuration: reads (or, in development, creates) a small key file.
            codec = load_passport_codec(config)
            self._verifier = None if codec is None else PassportVerifier(codec)
            self._for = config
        return self._verifier

    async def _startup(self) -> None:
        # Fail at startup, not at the first request, when [identity.passport] is invalid. The
        # development key is left to the first passport: most test services never see one.
        config = self._service.config
        if self._explicit_set or config is None:
            return
        raw = config.identity.get("passport", {})
        if isinstance(raw, dict) and (raw.get("keys") or raw.get("public_keys")):
            await asyncio.to_thread(lambda: self.verifier)
        elif is_production():
            _log.warning(
                "service %s: no [identity.passport] keys and GARRISON_ENV is production: "
                "passports are passed through unverified, and routes that need one answer 500",
                self._service.name,
            )

    def _no_keys(self) -> ConfigError:
        message = (
            f"service {self._service.name} cannot verify passports: configure "
            "[identity.passport] keys (the development key is refused in production)"
        )
        if not self._warned:
            self._warned = True
            _log.error("%s", message)
        return ConfigError(message, key="identity.passport")

    # -- inbound -------------------------------------------------------------------------------

    def middleware(self, app: ASGIApp) -> PassportMiddleware:
        """The inbound middleware verifying passports in front of ``app``."""
        return PassportMiddleware(app, self)

    def _required(self) -> Passport:
        inbound = _CURRENT.get()
        if inbound is None:
            raise Unauthenticated("this route requires a passport", reason="passport_required")
        if inbound.passport is None:
            raise self._no_keys()
        return inbound.passport

    async def _passport(self, request: Request) -> Passport:
        return self._required()

    async def _optional_passport(self, request: Request) -> Passport | None:
        inbound = _CURRENT.get()
        if inbound is not None and inbound.passport is None:
            raise self._no_keys()
        return None if inbound is None else inbound.passport

    def guard(self, endpoint: Endpoint, requires: Requires, template: str) -> Endpoint:
        """``endpoint`` behind ``requires``: checked before any parameter is read, so a request
        without the identity gets its 401/403 before a 422 about its body."""
        if not isinstance(requires, Requires):
            raise TypeError(f"requires= takes a Requires(...), got {requires!r}")
        evaluate = requires._evaluate

        async def guarded(request: Request) -> Response:
            inbound = _CURRENT.get()
            passport = None if inbound is None else inbound.passport
            if inbound is not None and passport is None:
                request.scope[ROUTE_SCOPE_KEY] = template
                return error_response(self._no_keys())
            denial = evaluate(passport)
            if denial is None:
                return await endpoint(request)
            request.scope[ROUTE_SCOPE_KEY] = template  # counted on its route, not <unmatched>
            detail: dict[str, Any] = {"reason": denial.reason}
            if denial.missing:
                detail["missing"] = list(denial.missing)
            code = "unauthenticated" if denial.status == 401 else "forbidden"
            headers = {"www-authenticate": "Bearer"} if denial.status == 401 else None
            return Response(
                error_body(code, denial.message, [detail]),
                status_code=denial.status,
                media_type="application/json",
                headers=headers,
            )

        guarded.__name__ = getattr(endpoint, "__name__", "endpoint")
        return guarded

    # -- outbound ------------------------------------------------------------------------------

    async def forward(self, request: ClientRequest, call_next: CallNext) -> ClientResponse:
        """Client interceptor: carry the current request's passport, as received, onwards."""
        inbound = _CURRENT.get()
        if inbound is not None and PASSPORT_HEADER not in request.headers:
            request.headers[PASSPORT_HEADER] = inbound.token
        return await call_next(request)


class PassportMiddleware:
    """Pure-ASGI: verify the ``garrison-passport`` header of every request that carries one
    (401 naming the reason when it does not verify) and keep it for the handler and the
    clients."""

    def __init__(self, app: ASGIApp, identity: ServiceIdentity) -> None:
        self.app = app
        self.identity = identity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        raw: bytes | None = None
        for key, value in scope["headers"]:
            if key == _HEADER:
                if raw is not None:
                    response = _unauthenticated("malformed", "more than one passport header")
                    await response(scope, receive, send)
                    return
                raw = value
        inbound: _Inbound | None = None
        if raw is not None:
            try:
                verifier = self.identity.verifier
            except ConfigError as exc:  # the service's fault: a 500, logged, not a 401
                await error_response(exc)(scope, receive, send)
                return
            passport: Passport | None = None
            if verifier is not None:
                try:
                    passport = verifier.verify(raw)
                except Unauthenticated as exc:
                    await _unauthenticated(exc.reason, str(exc))(scope, receive, send)
                    return
            inbound = _Inbound(raw.decode("latin-1"), passport)
        # Set even when absent: an in-process callee (ASGI transport) runs in its caller's
        # context and must not see the caller's passport as its own.
        token = _CURRENT.set(inbound)
        try:
            await self.app(scope, receive, send)
        finally:
            _CURRENT.reset(token)
