"""Opaque OAuth2 access tokens, resolved by RFC 7662 token introspection.

Theory of operation
-------------------
An opaque token means nothing to the edge: the authorization server (AS) must be asked.
``resolve`` POSTs ``token=...`` (form-encoded, client credentials in HTTP Basic or in the
form) to the configured endpoint, bounded by a timeout and a response size limit, and maps
the answer: ``active`` must be ``true``; ``exp`` / ``nbf`` are re-checked with a bounded
leeway; ``iss`` and ``aud`` must match when configured; ``sub`` becomes the subject (a token
without ``sub`` acts for its client, ``client:<client_id>``); ``scope`` the scopes. Personal
fields (``username``) are ignored: a passport carries ids only.

Asking the AS on every request would put it on every request's critical path, so answers are
cached in a :class:`~garrison.identity._cache.VerifiedCredentialCache`:

* an active token for at most ``cache_max_ttl``, and never past its ``exp``;
* an inactive (or otherwise rejected) token for the short ``negative_ttl``, in a separate
  bounded LRU, so a flood of garbage tokens costs at most one AS call per token per
  ``negative_ttl`` and evicts no good entry;
* concurrent requests with the same uncached token share one AS call (single flight).

A revoked token therefore stays accepted for up to ``cache_max_ttl``: keep it short where
revocation matters. When the AS is unreachable (timeout, connection error, 5xx, malformed or
oversized answer), a token whose cached answer went stale less than ``stale_if_error`` ago, and
which has not expired, is still accepted, marked ``degraded``; otherwise
:class:`~garrison.core.ServiceUnavailable` is raised (an outage is not the client's fault and
must not look like a 401).
"""

from __future__ import annotations

import base64
import math
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

import httpx
import msgspec

from garrison.core import (
    Clock,
    ConfigError,
    GarrisonConfig,
    ServiceUnavailable,
    SystemClock,
    Unauthenticated,
    convert_section,
)

from ._cache import CacheConfig, SingleFlight, VerifiedCredentialCache, credential_digest
from ._model import (
    Assurance,
    Authentication,
    Credential,
    CredentialKind,
    RequestCredentials,
    Resolution,
    UserIdentity,
)
from ._secrets import read_secret

__all__ = ["IntrospectionConfig", "IntrospectionResolver"]

_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\Z")
_TOKEN = re.compile(r"^[\x21-\x7e]+\Z")  # visible ASCII, RFC 6750 b64token and more
_MAX_SCOPES = 256
_MAX_FIELD = 1024


class IntrospectionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[identity.introspection]``: opaque tokens checked at an RFC 7662 endpoint."""

    endpoint: str
    """The introspection URL (``https://``; ``http://`` only to a loopback address unless
    ``allow_insecure_http``)."""
    client_id: str
    """This edge's client id at the authorization server."""
    client_secret: str
    """Secret reference (``env:VAR`` / ``file:/path``) to the client secret."""
    auth_method: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    """How the client authenticates: HTTP Basic (default) or form fields."""
    name: str = "introspection"
    """The resolver's name."""
    issuer: str | None = None
    """Expected ``iss``; when set, an answer naming another issuer is rejected."""
    audience: str | None = None
    """Required ``aud``; when set, the answer's ``aud`` must contain it."""
    timeout: float = 2.0
    """Budget of one introspection call, seconds."""
    max_response_bytes: int = 65_536
    """Larger answers are refused."""
    max_token_length: int = 4096
    """Longer tokens are rejected without calling the AS."""
    leeway: float = 30.0
    """Clock skew tolerated on ``exp`` / ``nbf``, seconds (at most 300)."""
    cache_max_ttl: float = 60.0
    """Longest an active answer is reused, seconds (bounded by the token's ``exp``)."""
    cache_max_entries: int = 10_000
    """Most cached active tokens."""
    negative_ttl: float = 5.0
    """How long a rejected token is remembered, seconds (at most 60)."""
    negative_max_entries: int = 1_000
    """Most remembered rejections."""
    stale_if_error: float = 300.0
    """How long past its cache time an answer may be reused *degraded* while the AS is
    unreachable, seconds; never past the token's ``exp``. 0 disables it."""
    accept_jwt_shaped: bool = False
    """Also take Bearer tokens shaped like a JWT (by default those are left to the JWT
    resolver)."""
    exclude_prefixes: list[str] = []
    """Bearer tokens starting with one of these are left to other resolvers (e.g. ``gk_``)."""
    allow_insecure_http: bool = False
    """Permit a plain ``http://`` endpoint that is not on loopback (do not)."""

    def __post_init__(self) -> None:
        url = urllib.parse.urlsplit(self.endpoint)
        loopback = url.hostname in ("127.0.0.1", "::1", "localhost")
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ConfigError(f"expected an https:// URL, got {self.endpoint!r}", key="endpoint")
        if url.scheme == "http" and not loopback and not self.allow_insecure_http:
            raise ConfigError(
                "plain http would send tokens and the client secret in clear; use https "
                "(or set allow_insecure_http)",
                key="endpoint",
            )
        if not self.client_id:
            raise ConfigError("expected a client id", key="client_id")
        _positive(self.timeout, "timeout", high=60.0)
        _positive(self.leeway, "leeway", high=300.0, zero=True)
        _positive(self.cache_max_ttl, "cache_max_ttl", high=86400.0)
        _positive(self.negative_ttl, "negative_ttl", high=60.0, zero=True)
        _positive(self.stale_if_error, "stale_if_error", high=86400.0, zero=True)
        for field in (
            "max_response_bytes",
            "max_token_length",
            "cache_max_entries",
            "negative_max_entries",
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"expected an integer >= 1, got {value!r}", key=field)


def _positive(value: object, key: str, *, high: float, zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (v >= 0 if zero else v > 0) and v <= high
    if not ok:
        low = ">= 0" if zero else "> 0"
        raise ConfigError(f"expected a number {low} and <= {high:g}, got {value!r}", key=key)


class _Unavailable(Exception):
    """The AS could not give a usable answer (not the token's fault)."""


class IntrospectionResolver:
    """Resolves opaque Bearer tokens at an RFC 7662 introspection endpoint.

    Rejections raise :class:`~garrison.core.Unauthenticated` with the reason
    ``malformed_token``, ``token_inactive``, ``token_expired``, ``token_not_yet_valid``,
    ``wrong_issuer``, ``wrong_audience`` or ``no_subject``; an unreachable AS (with nothing
    stale to fall back on) raises :class:`~garrison.core.ServiceUnavailable`.
    """

    def __init__(
        self,
        config: IntrospectionConfig,
        *,
        client_secret: str,
        clock: Clock | None = None,
        cache: VerifiedCredentialCache | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._clock = clock or SystemClock()
        self.cache = cache or VerifiedCredentialCache(
            CacheConfig(
                max_entries=config.cache_max_entries,
                max_ttl=config.cache_max_ttl,
                negative_ttl=config.negative_ttl,
                max_negative_entries=config.negative_max_entries,
                stale_ttl=config.stale_if_error,
            ),
            clock=self._clock,
        )
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(config.timeout), follow_redirects=False
        )
        self._flight: SingleFlight[bytes, Resolution] = SingleFlight()
        self._headers = {"accept": "application/json"}
        self._form_auth: dict[str, str] = {}
        if config.auth_method == "client_secret_basic":
            # RFC 6749 §2.3.1: form-urlencode both parts before joining them for Basic.
            pair = f"{_form(config.client_id)}:{_form(client_secret)}"
            self._headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            self._form_auth = {"client_id": config.client_id, "client_secret": client_secret}
        self.calls = 0
        """How many introspection requests were sent (for tests and metrics)."""

    @classmethod
    def from_config(
        cls,
        config: IntrospectionConfig | Mapping[str, Any],
        *,
        app: GarrisonConfig | None = None,
        key: str = "identity.introspection",
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
    ) -> IntrospectionResolver:
        """Validate ``config`` and read the client secret."""
        if not isinstance(config, IntrospectionConfig):
            config = convert_section(config, IntrospectionConfig, key=key, config=app)
        secret = read_secret(config.client_secret, key=f"{key}.client_secret", env=env, app=app)
        try:
            text = secret.decode()
        except UnicodeDecodeError:
            raise ConfigError(
                "the client secret is not UTF-8", key=f"{key}.client_secret"
            ) from None
        return cls(config, client_secret=text, clock=clock)

    # -- Resolver protocol ----------------------------------------------------------------------

    def find(self, request: RequestCredentials) -> Credential | None:
        """A Bearer token that is not JWT-shaped nor excluded by prefix."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return None
        if not self.config.accept_jwt_shaped and _JWT_SHAPE.match(token):
            return None
        if any(token.startswith(p) for p in self.config.exclude_prefixes):
            return None
        return Credential(kind=CredentialKind.OPAQUE, value=token, resolver=self.name)

    async def resolve(self, credential: Credential) -> Resolution:
        """A cached answer, or one introspection call shared by concurrent requests."""
        token = credential.value
        if len(token) > self.config.max_token_length or not _TOKEN.match(token):
            raise Unauthenticated(
                "the token is too long or not visible ASCII", reason="malformed_token"
            )
        hit = self.cache.lookup(credential)
        if isinstance(hit, Resolution):
            return hit
        if hit is not None:
            raise hit.error()
        return await self._flight.do(
            credential_digest(credential), lambda: self._introspect(credential)
        )

    async def aclose(self) -> None:
        """Cancel in-flight calls and close the HTTP client if this resolver made it."""
        await self._flight.aclose()
        if self._owns_http:
            await self._http.aclose()

    # -- internals ------------------------------------------------------------------------------

    async def _introspect(self, credential: Credential) -> Resolution:
        try:
            answer = await self._post(credential.value)
        except _Unavailable as exc:
            stale = self.cache.get_stale(credential)
            if stale is not None:
                return stale
            raise ServiceUnavailable(
                f"introspection at {self.config.endpoint} failed: {exc}"
            ) from None
        try:
            resolution = self._map(answer)
        except Unauthenticated as exc:
            self.cache.put_rejection(credential, exc)
            raise
        self.cache.put(credential, resolution)
        return resolution

    async def _post(self, token: str) -> dict[str, Any]:
        self.calls += 1
        form = {"token": token, "token_type_hint": "access_token", **self._form_auth}
        limit = self.config.max_response_bytes
        try:
            async with self._http.stream(
                "POST", self.config.endpoint, data=form, headers=self._headers
            ) as response:
                if response.status_code != 200:
                    raise _Unavailable(f"status {response.status_code}")
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > limit:
                    raise _Unavailable(f"answer of {declared} bytes exceeds {limit}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        raise _Unavailable(f"answer exceeds {limit} bytes")
        except httpx.HTTPError as exc:
            raise _Unavailable(f"{type(exc).__name__}: {exc}") from None
        try:
            answer = msgspec.json.decode(bytes(body))
        except msgspec.DecodeError as exc:
            raise _Unavailable(f"answer is not JSON: {exc}") from None
        if not isinstance(answer, dict):
            raise _Unavailable("answer is not a JSON object")
        return answer

    def _map(self, a: dict[str, Any]) -> Resolution:
        if a.get("active") is not True:
            raise Unauthenticated("the token is not active", reason="token_inactive")
        now = self._clock.time()
        leeway = self.config.leeway
        exp = _number(a, "exp")
        nbf = _number(a, "nbf")
        if exp is not None and now >= exp + leeway:
            raise Unauthenticated("the token has expired", reason="token_expired")
        if nbf is not None and now + leeway < nbf:
            raise Unauthenticated("the token is not valid yet", reason="token_not_yet_valid")
        iss = _text(a, "iss")
        if self.config.issuer is not None and iss is not None and iss != self.config.issuer:
            raise Unauthenticated(
                f"the token was issued by {iss[:64]!r}, expected {self.config.issuer!r}",
                reason="wrong_issuer",
            )
        if self.config.audience is not None and self.config.audience not in _audiences(a):
            raise Unauthenticated(
                f"the token is not meant for {self.config.audience!r}", reason="wrong_audience"
            )
        sub, client_id = _text(a, "sub"), _text(a, "client_id")
        if sub:
            subject = sub
        elif client_id:
            subject = f"client:{client_id}"
        else:
            raise Unauthenticated("the token names no subject nor client", reason="no_subject")
        scope = _text(a, "scope") or ""
        scopes = tuple(dict.fromkeys(scope.split()))[:_MAX_SCOPES]
        return Resolution(
            auth=Authentication(
                credential=CredentialKind.OPAQUE,
                issuer=iss or self.config.issuer or self.config.endpoint,
                method="oauth2",
                assurance=Assurance.AAL1,
                at=_number(a, "iat") or 0.0,
            ),
            expires_at=exp if exp is not None else now + self.config.cache_max_ttl,
            user=UserIdentity(subject=subject, scopes=scopes),
        )


def _form(text: str) -> str:
    return urllib.parse.quote_plus(text)


def _number(a: Mapping[str, Any], key: str) -> float | None:
    value = a.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Unauthenticated(
            f"the introspection answer has a non-numeric {key!r}", reason="malformed_token_info"
        )
    return float(value)


def _text(a: Mapping[str, Any], key: str) -> str | None:
    value = a.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > _MAX_FIELD:
        raise Unauthenticated(
            f"the introspection answer has a bad {key!r}", reason="malformed_token_info"
        )
    return value


def _audiences(a: Mapping[str, Any]) -> tuple[str, ...]:
    aud = a.get("aud")
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list):
        return tuple(x for x in aud if isinstance(x, str))
    return ()
