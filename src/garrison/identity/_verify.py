"""The consuming side of the passport: verify once per token, check a route's requirements.

Theory of operation
-------------------
A service verifies every passport it receives (``PassportCodec.verify``: a few µs with HS256,
about a hundred with Ed25519). One passport often reaches the same process many times: a
fan-out calls the same service once per item, every retry sends it again. So
:class:`PassportVerifier` keeps each verified token, keyed by its exact bytes (the encoding is
canonical, so one passport has one spelling), until the passport expires:

* a hit costs a dict lookup, a clock read and an identity check: the keyring must not have
  changed since the token was verified. A keyring swaps its dict of keys on every ``add`` and
  ``retire``, and an entry made under another dict is verified afresh, so retiring a key stops
  its cached passports at the next request, as it stops uncached ones;
* the cache is bounded (``max_entries``), oldest first out (an ``OrderedDict``: O(1) eviction):
  passports share one lifetime, so insertion order is expiry order;
* failures are not cached: they cost no more than a miss, and a rejected token must keep being
  rejected for the reason the codec gives.

:class:`Requires` is what a route asks of the passport; :meth:`Requires.check` is sans-I/O and
raises :class:`~garrison.core.Unauthenticated` (401: no passport, no user, no device: present
one and retry) or :class:`~garrison.core.PermissionDenied` (403: known, but not enough), with a
``reason`` code and a message naming what is missing.

:func:`load_passport_codec` finds the keys a process of an application verifies with:
``[identity.passport]``, else the development key, never in production.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias

import msgspec

from garrison.core import (
    Clock,
    ConfigError,
    GarrisonConfig,
    PermissionDenied,
    Unauthenticated,
    convert_section,
    get_logger,
)

from ._keys import DEV_KEY_FILE, Keyring, KeysConfig
from ._model import Assurance, Passport, TrustLevel
from ._passport import PassportCodec

__all__ = [
    "ENV_VAR",
    "PassportVerifier",
    "Requires",
    "dev_key_path",
    "is_production",
    "load_passport_codec",
]

_log = get_logger("identity")

ENV_VAR = "GARRISON_ENV"
"""Set to ``production`` (or ``prod``) to forbid the development passport key."""
_PRODUCTION = frozenset({"production", "prod"})


def is_production(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``GARRISON_ENV`` says this is production (``production`` or ``prod``)."""
    env = os.environ if env is None else env
    return env.get(ENV_VAR, "").strip().lower() in _PRODUCTION


# -- the verifier ----------------------------------------------------------------------------


# (passport, the keyring's dict of keys when it was verified, valid until): a plain tuple, as
# cheap to make and to unpack as anything in Python.
_Entry: TypeAlias = tuple[Passport, object, float]


class PassportVerifier:
    """Verifies passports with ``codec``, remembering each verified token until it expires.

    ``verify`` returns what ``codec.verify`` would, or raises the same
    :class:`~garrison.core.Unauthenticated`; see the module docstring for why a cached answer is
    as safe as a fresh one.
    """

    __slots__ = (
        "_cache", "_codec", "_keyring", "_leeway", "_max", "_now", "_verify", "hits", "misses",
    )  # fmt: skip

    def __init__(self, codec: PassportCodec, *, max_entries: int = 4096) -> None:
        if not (isinstance(max_entries, int) and max_entries >= 0):
            raise ValueError(f"max_entries must be an int >= 0, got {max_entries!r}")
        self._codec = codec
        self._verify = codec.verify
        self._max = max_entries
        self._keyring = codec.keyring
        self._leeway = codec.leeway
        self._now = codec._now  # the codec's clock, bound once (time.time for the system clock)
        self._cache: OrderedDict[str | bytes, _Entry] = OrderedDict()
        self.hits = 0
        """Tokens answered from the cache."""
        self.misses = 0
        """Tokens verified by the codec (whatever the outcome)."""

    @property
    def codec(self) -> PassportCodec:
        """The codec that verifies a token the first time."""
        return self._codec

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Forget every cached passport."""
        self._cache.clear()

    def verify(self, token: str | bytes) -> Passport:
        """The passport ``token`` carries; :class:`Unauthenticated` with the codec's reason."""
        cache = self._cache
        entry = cache.get(token)
        if entry is not None:
            passport, keys, valid_until = entry
            if keys is self._keyring._by_kid and self._now() <= valid_until:
                self.hits += 1
                return passport
            cache.pop(token, None)
        self.misses += 1
        # Read before verifying: should the keyring change meanwhile, the entry is stale at once.
        keys = self._keyring._by_kid
        passport = self._verify(token)
        if self._max:
            if len(cache) >= self._max:
                cache.popitem(last=False)
            cache[token] = (passport, keys, passport.expires_at + self._leeway)
        return passport


# -- route requirements ----------------------------------------------------------------------


class _Denial(NamedTuple):
    status: int  # 401 or 403
    reason: str
    message: str
    missing: tuple[str, ...] = ()

    def error(self) -> Unauthenticated | PermissionDenied:
        if self.status == 401:
            return Unauthenticated(self.message, reason=self.reason)
        return PermissionDenied(self.message, reason=self.reason)


class Requires(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a route requires of the request's passport: ``@svc.post(path, requires=...)``.

    Any ``Requires`` needs a valid passport; the defaults then ask for an authenticated user and
    nothing more::

        @svc.post("/sites/{site}/dispatch", requires=Requires(scopes=("fleet:write",)))
        async def dispatch(site: str, passport: Passport) -> Ack: ...

    Unmet, the route answers 401 (no passport, no user, no device: authenticate and retry) or
    403 (the identity is known but not enough), naming what is missing.
    """

    user: bool = True
    """An authenticated user is required (an anonymous or device-only passport is a 401)."""
    device: bool = False
    """An identified device is required."""
    scopes: tuple[str, ...] = ()
    """Every one of these scopes must be granted to the user."""
    roles: tuple[str, ...] = ()
    """The user must hold every one of these roles."""
    min_assurance: Assurance = Assurance.NONE
    """The lowest authentication assurance level accepted (e.g. ``Assurance.AAL2`` for MFA)."""
    min_device_trust: TrustLevel = TrustLevel.UNKNOWN
    """The lowest device trust accepted; above ``UNKNOWN`` it implies ``device``."""
    allow_degraded: bool = True
    """Whether a degraded passport (the credential could not be refreshed) is accepted; refuse
    it on sensitive routes."""

    def __post_init__(self) -> None:
        for name in ("scopes", "roles"):
            value: Any = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, tuple | list | frozenset | set):
                raise TypeError(
                    f"Requires.{name} must be a tuple of strings, e.g. {name}=({value!r},)"
                )
            if not all(isinstance(v, str) and v for v in value):
                raise TypeError(f"Requires.{name}: every entry must be a non-empty string")
            msgspec.structs.force_setattr(self, name, tuple(value))
        msgspec.structs.force_setattr(self, "min_assurance", Assurance(self.min_assurance))
        msgspec.structs.force_setattr(self, "min_device_trust", TrustLevel(self.min_device_trust))

    def check(self, passport: Passport | None) -> None:
        """Raise :class:`Unauthenticated` or :class:`PermissionDenied` naming the first unmet
        requirement (with every missing scope or role); return when all are met."""
        denial = self._evaluate(passport)
        if denial is not None:
            raise denial.error()

    def allows(self, passport: Passport | None) -> bool:
        """Whether ``passport`` meets every requirement."""
        return self._evaluate(passport) is None

    def _evaluate(self, p: Passport | None) -> _Denial | None:
        if p is None:
            return _Denial(401, "passport_required", "this route requires a passport")
        if self.user and p.user is None:
            return _Denial(401, "user_required", "this route requires an authenticated user")
        if (self.device or self.min_device_trust) and p.device is None:
            return _Denial(401, "device_required", "this route requires an identified device")
        if p.degraded and not self.allow_degraded:
            return _Denial(
                403,
                "degraded_not_allowed",
                "this route does not accept a degraded passport (the credential could not be "
                "refreshed); sign in again",
            )
        have = p.auth.assurance
        if have < self.min_assurance:
            return _Denial(
                403,
                "insufficient_assurance",
                f"this route requires assurance {self.min_assurance.name} or higher; "
                f"the passport has {Assurance(have).name}",
                (self.min_assurance.name,),
            )
        if p.device is not None and p.device.trust < self.min_device_trust:
            return _Denial(
                403,
                "insufficient_device_trust",
                f"this route requires device trust {self.min_device_trust.name} or higher; "
                f"the device has {TrustLevel(p.device.trust).name}",
                (self.min_device_trust.name,),
            )
        granted_roles = p.user.roles if p.user is not None else ()
        missing = tuple(r for r in self.roles if r not in granted_roles)
        if missing:
            return _Denial(
                403, "missing_roles", f"this route requires role(s): {', '.join(missing)}", missing
            )
        granted_scopes = p.user.scopes if p.user is not None else ()
        missing = tuple(s for s in self.scopes if s not in granted_scopes)
        if missing:
            return _Denial(
                403,
                "missing_scopes",
                f"this route requires scope(s): {', '.join(missing)}",
                missing,
            )
        return None


# -- which keys ------------------------------------------------------------------------------


def load_passport_codec(
    config: GarrisonConfig,
    *,
    env: Mapping[str, str] | None = None,
    dev_key: bool | None = None,
    create_dev_key: bool = True,
    clock: Clock | None = None,
) -> PassportCodec | None:
    """The codec a process of ``config``'s application verifies (and maybe mints) with.

    ``[identity.passport]`` when it lists keys; otherwise the development key
    (:meth:`Keyring.dev_default` under ``[app] data_dir``), unless ``dev_key`` is False (by
    default: unless :func:`is_production` or ``[identity] allow_dev_key = false``).
    ``create_dev_key=False`` uses a development key only if its file exists. None when no key
    may be used. An invalid ``[identity.passport]`` or development key file is a
    :class:`ConfigError` naming the key.
    """
    env = os.environ if env is None else env
    cfg = convert_section(
        config.identity.get("passport", {}), KeysConfig, key="identity.passport", config=config
    )
    if cfg.keys or cfg.public_keys:
        keyring = Keyring.from_config(cfg, env, root=config.root, source=config.source)
        return PassportCodec.from_config(cfg, keyring, clock=clock)
    if dev_key is None:
        allow = config.identity.get("allow_dev_key", True)
        if not isinstance(allow, bool):
            raise ConfigError(
                f"expected true or false, got {allow!r}",
                source=config.source,
                key="identity.allow_dev_key",
            )
        dev_key = allow and not is_production(env)
    if not dev_key:
        return None
    if not create_dev_key and not dev_key_path(config).exists():
        return None
    _log.info("no [identity.passport] keys: using the development key %s", dev_key_path(config))
    keyring = Keyring.dev_default(config.root, data_dir=config.app.data_dir)
    return PassportCodec.from_config(cfg, keyring, clock=clock)


def dev_key_path(config: GarrisonConfig) -> Path:
    """Where the application's development passport key lives."""
    return Path(config.root) / config.app.data_dir / DEV_KEY_FILE
