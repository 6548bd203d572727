"""JWT / OIDC access tokens: the resolver of ``Authorization: Bearer <jws>`` for several issuers.

Theory of operation
-------------------
``find`` takes a bearer token that looks like a JWS (two dots) and does nothing else.
``resolve`` then:

1. parses the token with :func:`~._jws.parse_compact` (limits, structure, header policy; no
   crypto) and decodes the payload as a strict JSON object (duplicate members refused);
2. peeks at the *unverified* ``iss`` for one purpose only: to pick the issuer's configuration.
   Everything after uses that issuer's allow-list and that issuer's keys, so a token claiming
   issuer A but signed with issuer B's key finds no key (or a failing signature) and is refused;
3. checks ``alg`` against the issuer's allow-list, the optional ``typ`` policy, fetches the key
   by ``kid`` from the issuer's key provider (a JWKS cache or a configured shared secret) and
   verifies the signature;
4. only then reads the claims: ``iss`` exact, ``aud`` (a string or a list) intersecting the
   configured audiences, ``exp`` required, ``nbf``, ``iat`` not in the future, all with the
   issuer's leeway (at most five minutes), and maps them into a :class:`Resolution`.

Every refusal is :class:`~garrison.core.Unauthenticated` with a precise ``reason``. An issuer
whose key set could never be loaded raises :class:`~garrison.core.ServiceUnavailable` instead:
its outage must answer 503, not log users out with a 401.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from garrison.core import (
    Clock,
    ConfigError,
    GarrisonConfig,
    SystemClock,
    Unauthenticated,
    convert_section,
)

from ._jwks import (
    FileKeySource,
    HttpKeySource,
    JwksCache,
    KeyProvider,
    StaticKeys,
    check_jwks_url,
)
from ._jws import (
    DEFAULT_LIMITS,
    REASON_BAD_PAYLOAD,
    JwsLimits,
    VerificationKey,
    check_algorithm,
    decode_json_object,
    parse_compact,
    verify_signature,
)
from ._model import (
    Assurance,
    Authentication,
    Credential,
    CredentialKind,
    DeviceIdentity,
    RequestCredentials,
    Resolution,
    TrustLevel,
    UserIdentity,
)
from ._secrets import read_secret

__all__ = [
    "ClaimMapping",
    "JwtConfig",
    "JwtIssuer",
    "JwtIssuerConfig",
    "JwtResolver",
    "REASON_BAD_CLAIM",
    "REASON_EXPIRED",
    "REASON_FUTURE_IAT",
    "REASON_MISSING_CLAIM",
    "REASON_NOT_YET_VALID",
    "REASON_UNKNOWN_ISSUER",
    "REASON_WRONG_AUDIENCE",
    "REASON_WRONG_ISSUER",
    "REASON_WRONG_TYPE",
    "VerifiedJwt",
]

REASON_UNKNOWN_ISSUER: Final = "unknown_issuer"
"""``iss`` names no configured issuer."""
REASON_WRONG_ISSUER: Final = "wrong_issuer"
"""``iss`` differs from the issuer whose keys verified the token."""
REASON_WRONG_AUDIENCE: Final = "wrong_audience"
"""``aud`` names none of the configured audiences."""
REASON_MISSING_CLAIM: Final = "missing_claim"
"""A required claim (``iss``, ``exp``, ``aud``, the subject ...) is absent."""
REASON_BAD_CLAIM: Final = "bad_claim"
"""A claim has the wrong type or an out-of-range value."""
REASON_EXPIRED: Final = "expired"
"""``exp`` has passed (beyond the leeway)."""
REASON_NOT_YET_VALID: Final = "not_yet_valid"
"""``nbf`` is in the future (beyond the leeway)."""
REASON_FUTURE_IAT: Final = "issued_in_future"
"""``iat`` is in the future (beyond the leeway)."""
REASON_WRONG_TYPE: Final = "wrong_type"
"""The header's ``typ`` is not one the issuer is configured to accept, or a nested JWT."""

Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
    "HS256", "HS384", "HS512",
]  # fmt: skip
_HMAC_MIN = {"HS256": 32, "HS384": 48, "HS512": 64}
_MAX_TIME = 253_402_300_799.0  # 9999-12-31: anything later is not a time but an attack
_MAX_LIST = 256
_MAX_TEXT = 256
_BAD_TEXT = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_Text = Annotated[str, msgspec.Meta(min_length=1)]


def _fail(reason: str, message: str) -> Unauthenticated:
    return Unauthenticated(message, reason=reason)


class ClaimMapping(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[identity.jwt.issuers.NAME.claims]``: which top-level claims fill the passport."""

    subject: _Text = "sub"
    """The user's id."""
    account: str | None = None
    """Account / profile id, if the issuer has one."""
    tenant: str | None = None
    """Tenant / organisation id, e.g. ``tid`` (Entra ID) or ``org_id`` (Auth0)."""
    roles: str | None = "roles"
    """A list of role names (or one space-separated string)."""
    scopes: tuple[_Text, ...] = ("scope", "scp")
    """Where scopes are, first present wins: a space-separated string (``scope``, RFC 9068)
    or a list (``scp``)."""
    device_id: str | None = None
    """A claim naming the device the token was issued to, if any."""
    device_type: str | None = None
    """A claim naming the device type."""


class JwtIssuerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[identity.jwt.issuers.NAME]``: one trusted token issuer.

    Keys come from exactly one of ``jwks_url``, ``jwks_file`` or ``hmac_secret``.
    """

    issuer: _Text
    """The exact ``iss`` of its tokens."""
    audiences: Annotated[tuple[_Text, ...], msgspec.Meta(min_length=1)]
    """Accepted audiences: a token's ``aud`` must name at least one."""
    algorithms: Annotated[list[Algorithm], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["RS256"]
    )
    """The allow-list of ``alg`` (case-sensitive). HS* only with ``hmac_secret``."""
    jwks_url: str | None = None
    """The issuer's JWK set URL (https, or http to a loopback host)."""
    jwks_file: str | None = None
    """A JWK set file, relative to the application root."""
    hmac_secret: str | None = None
    """A shared secret for HS* tokens: ``env:VARIABLE`` or ``file:/path`` (its UTF-8 bytes,
    surrounding whitespace stripped)."""
    leeway: Annotated[float, msgspec.Meta(ge=0, le=300)] = 30.0
    """Clock skew allowed on ``exp``/``nbf``/``iat``, in seconds (at most 300)."""
    min_refresh_interval: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    """At most one JWKS fetch per this many seconds, whatever the unknown kids arriving."""
    refresh_interval: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    """Age after which the JWK set is refreshed in the background, in seconds."""
    fetch_timeout: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0
    """Total budget of one JWKS fetch, in seconds."""
    max_jwks_bytes: Annotated[int, msgspec.Meta(ge=1024, le=4 * 1024 * 1024)] = 256 * 1024
    """Largest JWK set document accepted."""
    token_types: tuple[_Text, ...] = ()
    """Accepted header ``typ`` values (e.g. ``at+jwt``), compared case-insensitively with an
    optional ``application/`` prefix; empty: any or none."""
    require_iat: bool = False
    """Refuse tokens without ``iat``."""
    acr_levels: dict[str, Annotated[int, msgspec.Meta(ge=1, le=3)]] = {}
    """Assurance level (1-3) of ``acr`` values; without a match, ``amr`` decides (MFA: 2)."""
    claims: ClaimMapping = ClaimMapping()
    """Claim names for the passport."""

    def __post_init__(self) -> None:
        if self.hmac_secret is not None and not self.hmac_secret.startswith(("env:", "file:")):
            raise ConfigError(
                "expected 'env:VARIABLE' or 'file:/path' (a secret is never written in the file)",
                key="hmac_secret",
            )
        sources = [
            n for n in ("jwks_url", "jwks_file", "hmac_secret") if getattr(self, n) is not None
        ]
        if len(sources) != 1:
            raise ConfigError(
                f"set exactly one of jwks_url, jwks_file, hmac_secret (got {sources or 'none'})",
                key=sources[1] if len(sources) > 1 else "jwks_url",
            )
        hs = [a for a in self.algorithms if a.startswith("HS")]
        if self.hmac_secret is not None and len(hs) != len(self.algorithms):
            raise ConfigError("with hmac_secret, only HS256/HS384/HS512", key="algorithms")
        if self.hmac_secret is None and hs:
            raise ConfigError(
                f"{hs[0]} needs hmac_secret: keys from a JWK set are public", key="algorithms"
            )
        if self.jwks_url is not None:
            problem = check_jwks_url(self.jwks_url)
            if problem:
                raise ConfigError(f"{problem}; got {self.jwks_url!r}", key="jwks_url")
        if self.refresh_interval < self.min_refresh_interval:
            raise ConfigError(
                f"must be >= min_refresh_interval ({self.min_refresh_interval})",
                key="refresh_interval",
            )


class JwtConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[identity.jwt]``: the JWT resolver."""

    name: _Text = "jwt"
    """The resolver's name (routes name the resolvers they accept)."""
    issuers: dict[str, dict[str, Any]] = {}
    """The trusted issuers by name, each a :class:`JwtIssuerConfig`."""


@dataclass(frozen=True, slots=True)
class JwtIssuer:
    """A trusted issuer at run time: its configuration and where its keys come from."""

    config: JwtIssuerConfig
    """Its settings."""
    keys: KeyProvider
    """Its keys (a :class:`JwksCache`, or :class:`StaticKeys` for a shared secret)."""

    @classmethod
    def from_config(
        cls,
        config: JwtIssuerConfig,
        *,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
        root: str | Path = ".",
        key: str = "",
        source: str = "<config>",
    ) -> JwtIssuer:
        """Build the key provider named by ``config``; ``key`` is the dotted config key, for
        errors. An ``env:`` secret is read from ``env`` (default: the process environment)."""
        if config.hmac_secret is not None:
            where = f"{key}.hmac_secret" if key else "hmac_secret"
            secret = read_secret(config.hmac_secret, key=where, env=env, root=root, source=source)
            need = max(_HMAC_MIN[a] for a in config.algorithms)
            if len(secret) < need:
                raise ConfigError(
                    f"the secret has {len(secret)} bytes; {', '.join(config.algorithms)} need "
                    f"at least {need}",
                    source=source,
                    key=where,
                )
            return cls(config, StaticKeys([VerificationKey(secret)]))
        if config.jwks_url is not None:
            src: HttpKeySource | FileKeySource = HttpKeySource(
                config.jwks_url, timeout=config.fetch_timeout, max_bytes=config.max_jwks_bytes
            )
        else:
            assert config.jwks_file is not None
            src = FileKeySource(Path(root) / config.jwks_file, max_bytes=config.max_jwks_bytes)
        cache = JwksCache(
            src,
            clock=clock,
            min_refresh_interval=config.min_refresh_interval,
            refresh_interval=config.refresh_interval,
        )
        return cls(config, cache)


@dataclass(frozen=True, slots=True)
class VerifiedJwt:
    """A token whose signature and registered claims passed every check."""

    issuer: JwtIssuerConfig
    """The issuer that vouched for it."""
    header: Mapping[str, Any]
    """The protected header."""
    claims: Mapping[str, Any]
    """All its claims."""


def _number(claims: Mapping[str, Any], name: str, *, required: bool = False) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise _fail(REASON_MISSING_CLAIM, f"the token has no '{name}'")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(REASON_BAD_CLAIM, f"'{name}' must be a number of seconds")
    if not 0 <= value <= _MAX_TIME:
        raise _fail(REASON_BAD_CLAIM, f"'{name}' is out of range")
    return float(value)


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TEXT or _BAD_TEXT.search(value):
        raise _fail(
            REASON_BAD_CLAIM, f"'{name}' must be text of 1-{_MAX_TEXT} printable characters"
        )
    return value


def _texts(value: Any, name: str) -> tuple[str, ...]:
    items = value.split() if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or len(items) > _MAX_LIST:
        raise _fail(REASON_BAD_CLAIM, f"'{name}' must be a list of at most {_MAX_LIST} names")
    return tuple(dict.fromkeys(_text(v, name) for v in items))


def _optional_text(claims: Mapping[str, Any], name: str | None) -> str | None:
    if name is None or claims.get(name) is None:
        return None
    return _text(claims[name], name)


class JwtResolver:
    """Resolves ``Authorization: Bearer <JWT>`` for a set of trusted issuers.

    Implements the :class:`~garrison.identity.Resolver` protocol. Build it with
    :meth:`from_config` from ``[identity.jwt]``, or from :class:`JwtIssuer` objects.
    Call :meth:`aclose` when done (it closes the JWKS connections).
    """

    def __init__(
        self,
        issuers: Iterable[JwtIssuer],
        *,
        name: str = "jwt",
        clock: Clock | None = None,
        limits: JwsLimits = DEFAULT_LIMITS,
    ) -> None:
        self.name = name
        self._clock: Clock = clock or SystemClock()
        self._limits = limits
        self._issuers: dict[str, JwtIssuer] = {}
        for issuer in issuers:
            iss = issuer.config.issuer
            if iss in self._issuers:
                raise ConfigError(f"issuer {iss!r} is configured twice")
            self._issuers[iss] = issuer
        self._algs = {iss: frozenset(i.config.algorithms) for iss, i in self._issuers.items()}

    @classmethod
    def from_config(
        cls,
        config: JwtConfig | Mapping[str, Any],
        *,
        app: GarrisonConfig | None = None,
        key: str = "identity.jwt",
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
    ) -> JwtResolver:
        """Build the resolver from ``[identity.jwt]`` (found at dotted ``key`` of ``app``);
        :class:`ConfigError` names the offending key."""
        top = (
            config
            if isinstance(config, JwtConfig)
            else convert_section(config, JwtConfig, key=key, config=app)
        )
        if not top.issuers:
            raise ConfigError("no issuer configured", key=f"{key}.issuers")
        source = app.source if app is not None else "<config>"
        root = app.root if app is not None else "."
        issuers: list[JwtIssuer] = []
        seen: dict[str, str] = {}
        for name, raw in top.issuers.items():
            ikey = f"{key}.issuers.{name}"
            cfg = convert_section(raw, JwtIssuerConfig, key=ikey, config=app)
            if cfg.issuer in seen:
                raise ConfigError(
                    f"issuer {cfg.issuer!r} is already configured as {seen[cfg.issuer]!r}",
                    source=source,
                    key=f"{ikey}.issuer",
                )
            seen[cfg.issuer] = name
            issuers.append(
                JwtIssuer.from_config(cfg, clock=clock, env=env, root=root, key=ikey, source=source)
            )
        return cls(issuers, name=top.name, clock=clock)

    @property
    def issuers(self) -> Mapping[str, JwtIssuer]:
        """The trusted issuers by ``iss``."""
        return self._issuers

    @property
    def generation(self) -> int:
        """Changes whenever any issuer's key set changes (for caches of verified tokens)."""
        return sum(i.keys.version for i in self._issuers.values())

    def find(self, request: RequestCredentials) -> Credential | None:
        """The bearer token of ``request`` when it looks like a JWS (two dots); no I/O."""
        value = request.headers.get("authorization")
        if not value:
            return None
        scheme, _, token = value.partition(" ")
        token = token.strip(" ")
        if scheme.lower() != "bearer" or token.count(".") != 2:
            return None
        return Credential(kind=CredentialKind.JWT, value=token, resolver=self.name)

    async def verify(self, token: str) -> VerifiedJwt:
        """Verify ``token`` (signature and registered claims); raise :class:`Unauthenticated`."""
        jws = parse_compact(token, self._limits)
        claims = decode_json_object(jws.payload, "claims", REASON_BAD_PAYLOAD)
        iss = claims.get("iss")
        if iss is None:
            raise _fail(REASON_MISSING_CLAIM, "the token has no 'iss'")
        if not isinstance(iss, str):
            raise _fail(REASON_BAD_CLAIM, "'iss' must be a string")
        issuer = self._issuers.get(iss)  # unverified: it only picks whose keys to use
        if issuer is None:
            raise _fail(REASON_UNKNOWN_ISSUER, f"issuer {iss[:120]!r} is not trusted")
        cfg = issuer.config
        check_algorithm(jws, self._algs[iss])
        self._check_type(jws.header, cfg)
        key = await issuer.keys.get(jws.kid)
        verify_signature(jws, key)
        self._check_claims(claims, cfg)
        return VerifiedJwt(cfg, jws.header, claims)

    async def resolve(self, credential: Credential) -> Resolution:
        """Verify the bearer token and map its claims; raise :class:`Unauthenticated`."""
        verified = await self.verify(credential.value)
        return self._resolution(verified)

    async def aclose(self) -> None:
        """Close every issuer's key provider."""
        for issuer in self._issuers.values():
            await issuer.keys.aclose()

    @staticmethod
    def _check_type(header: Mapping[str, Any], cfg: JwtIssuerConfig) -> None:
        cty = header.get("cty")
        if isinstance(cty, str) and cty.lower() in ("jwt", "application/jwt"):
            raise _fail(REASON_WRONG_TYPE, "nested JWTs are not accepted")
        if not cfg.token_types:
            return
        typ = header.get("typ")
        norm = typ.lower().removeprefix("application/") if isinstance(typ, str) else None
        if norm not in {t.lower().removeprefix("application/") for t in cfg.token_types}:
            raise _fail(REASON_WRONG_TYPE, f"typ {typ!r} is not accepted for this issuer")

    def _check_claims(self, claims: Mapping[str, Any], cfg: JwtIssuerConfig) -> None:
        if claims.get("iss") != cfg.issuer:  # pragma: no cover - the issuer was picked by iss
            raise _fail(REASON_WRONG_ISSUER, "'iss' does not match the issuer")
        now, leeway = self._clock.time(), cfg.leeway
        exp = _number(claims, "exp", required=True)
        assert exp is not None
        if now >= exp + leeway:
            raise _fail(REASON_EXPIRED, f"the token expired {now - exp:.0f} s ago")
        nbf = _number(claims, "nbf")
        if nbf is not None and now + leeway < nbf:
            raise _fail(REASON_NOT_YET_VALID, f"the token is valid only in {nbf - now:.0f} s")
        iat = _number(claims, "iat", required=cfg.require_iat)
        if iat is not None and iat > now + leeway:
            raise _fail(REASON_FUTURE_IAT, f"the token is issued {iat - now:.0f} s in the future")
        aud = claims.get("aud")
        if aud is None:
            raise _fail(REASON_MISSING_CLAIM, "the token has no 'aud'")
        auds = (aud,) if isinstance(aud, str) else aud
        if (
            not isinstance(auds, list | tuple)
            or not auds
            or len(auds) > _MAX_LIST
            or not all(isinstance(a, str) for a in auds)
        ):
            raise _fail(REASON_BAD_CLAIM, "'aud' must be a string or a list of strings")
        if not any(a in cfg.audiences for a in auds):
            raise _fail(REASON_WRONG_AUDIENCE, "'aud' names none of the accepted audiences")

    def _resolution(self, verified: VerifiedJwt) -> Resolution:
        claims, cfg = verified.claims, verified.issuer
        m = cfg.claims
        if claims.get(m.subject) is None:
            raise _fail(REASON_MISSING_CLAIM, f"the token has no '{m.subject}'")
        scopes: tuple[str, ...] = ()
        for name in m.scopes:
            if claims.get(name) is not None:
                scopes = _texts(claims[name], name)
                break
        roles = claims.get(m.roles) if m.roles is not None else None
        user = UserIdentity(
            subject=_text(claims[m.subject], m.subject),
            account=_optional_text(claims, m.account),
            tenant=_optional_text(claims, m.tenant),
            roles=_texts(roles, "roles") if roles is not None else (),
            scopes=scopes,
        )
        device = None
        device_id = _optional_text(claims, m.device_id)
        if device_id is not None:
            device = DeviceIdentity(
                id=device_id,
                type=_optional_text(claims, m.device_type) or "unknown",
                trust=TrustLevel.REGISTERED,
            )
        amr = _texts(claims["amr"], "amr") if claims.get("amr") is not None else ()
        acr = _optional_text(claims, "acr")
        if acr is not None and acr in cfg.acr_levels:
            assurance = Assurance(cfg.acr_levels[acr])
        elif "mfa" in amr or len(amr) > 1:
            assurance = Assurance.AAL2
        else:
            assurance = Assurance.AAL1
        auth = Authentication(
            credential=CredentialKind.JWT,
            issuer=cfg.issuer,
            method="+".join(amr)[:64],
            assurance=assurance,
            at=_number(claims, "auth_time") or 0.0,
        )
        exp = _number(claims, "exp", required=True)
        assert exp is not None
        return Resolution(auth=auth, expires_at=exp, user=user, device=device)
