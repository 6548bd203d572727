"""Live passport key rotation: ``SIGHUP`` makes a running process re-read its passport keys.

Rotating keys with overlap (add, activate, retire; see :mod:`garrison.identity._keys`) needs
every process to pick up each step while it serves. Restarting processes one at a time does
it too, but drops the connections they hold (the gateway has no second instance to take
them); a reload keeps them. ``garrison gateway`` and ``garrison run`` therefore reload their
passport keys on ``SIGHUP``:

1. ``garrison.toml`` is read again (the same file, the same ``GARRISON_*`` overrides), and its
   ``[identity.passport]`` table is built into a new keyring and codec, exactly as at start:
   ``file:`` keys are read afresh; ``env:`` keys come from the process's environment, which
   cannot change, so a new key must be a file or have been in the environment from the start.
2. Only when all of that succeeds is the new codec swapped in, in one assignment on the event
   loop: requests see the old keys or the new ones, never a mix. On a service the passport
   verifier is replaced too, so its cache of verified passports starts empty and a retired
   key stops verifying at the next request.
3. Anything wrong (unreadable file, invalid table, a key missing, no keys at all, a gateway
   left without an active key) is logged and the process keeps the keys it has: a reload never
   falls back to the development key and never leaves the edge unable to mint.

Signals arriving during a reload are coalesced into one more reload, so the last state of the
files wins. ``SIGHUP`` is ignored from the moment the runner wraps the application until the
handler is installed (a hang-up would otherwise end the process), and the first reload runs
as the handler is installed, so a change made in that window is not lost.

Only the passport keys are reloaded: routes, resolvers and the rest need a restart. JWT issuer
keys need no signal: a token with an unknown ``kid`` makes the edge refetch the issuer's JWK
set (at most once per ``min_refresh_interval``).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from garrison.core import Clock, ConfigError, convert_section, get_logger, load_config

from ._keys import Keyring, KeysConfig
from ._passport import PassportCodec

__all__ = ["PassportKeyReloader", "reload_on_sighup"]

_log = get_logger("identity")


class PassportKeyReloader:
    """Builds a new passport codec from the configuration file and hands it to ``apply``.

    ``source`` is the ``garrison.toml`` the process started from; ``signing`` requires an
    active key (the gateway mints); ``what`` names the process in the log.
    """

    def __init__(
        self,
        source: str,
        apply: Callable[[PassportCodec], None],
        *,
        signing: bool,
        what: str,
        clock: Clock | None = None,
    ) -> None:
        self.source = source
        self._apply = apply
        self._signing = signing
        self._what = what
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.reloads = 0
        """Reloads applied so far."""
        self.failures = 0
        """Reloads refused so far (the keys in use were kept)."""

    def load(self) -> PassportCodec:
        """The codec ``[identity.passport]`` describes now; :class:`ConfigError` naming the key
        when it cannot be used. Blocking (reads files)."""
        config = load_config(Path(self.source))
        cfg = convert_section(
            config.identity.get("passport", {}), KeysConfig, key="identity.passport", config=config
        )
        if not (cfg.keys or cfg.public_keys):
            raise ConfigError(
                "no passport keys configured; a reload never falls back to the development key",
                source=config.source,
                key="identity.passport.keys",
            )
        keyring = Keyring.from_config(cfg, root=config.root, source=config.source)
        if self._signing and not keyring.can_sign:
            raise ConfigError(
                "this process mints passports: set active to a key of keys",
                source=config.source,
                key="identity.passport.active",
            )
        return PassportCodec.from_config(cfg, keyring, clock=self._clock)

    async def reload(self, *, quiet: bool = False) -> bool:
        """Load and apply the keys; False (logged, keys unchanged) when they cannot be used.

        ``quiet`` logs a successful reload at debug level only (the catch-up at start).
        """
        try:
            codec = await asyncio.to_thread(self.load)
        except (ConfigError, OSError, ValueError) as exc:
            self.failures += 1
            _log.error(
                "%s: passport keys not reloaded, keeping the current ones: %s", self._what, exc
            )
            return False
        self._apply(codec)
        self.reloads += 1
        keyring = codec.keyring
        (_log.debug if quiet else _log.info)(
            "%s: passport keys reloaded: %s, active %s",
            self._what,
            ", ".join(keyring.kids),
            keyring.active_kid or "none (verify only)",
        )
        return True

    def request(self, *, quiet: bool = False) -> None:
        """Reload soon, on the running loop; a request during a reload adds one more."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run(quiet))

    async def _run(self, quiet: bool) -> None:
        while True:
            self._again = False
            try:
                await self.reload(quiet=quiet)
            except Exception:  # the apply step: never let a reload take the process down
                self.failures += 1
                _log.exception("%s: passport key reload failed", self._what)
            if not self._again:
                return
            quiet = False

    def install(self) -> bool:
        """Reload on ``SIGHUP`` from now on (main thread, running loop) and reload once at
        once; False where signals cannot be handled (not the main thread, no Unix signals)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.request)
        except (AttributeError, NotImplementedError, RuntimeError, ValueError):
            return False
        self.request(quiet=True)
        return True


class _ReloadOnHangup:
    """Pure ASGI: installs the reloader when the server starts the app's lifespan."""

    __slots__ = ("_installed", "app", "reloader")

    def __init__(self, app: ASGIApp, reloader: PassportKeyReloader) -> None:
        self.app = app
        self.reloader = reloader
        self._installed = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and not self._installed:
            self._installed = True
            self.reloader.install()
        await self.app(scope, receive, send)


def reload_on_sighup(
    app: ASGIApp,
    source: str,
    apply: Callable[[PassportCodec], None],
    *,
    signing: bool,
    what: str,
) -> ASGIApp:
    """``app``, reloading its passport keys from ``source`` on ``SIGHUP`` (see the module
    docstring); ``SIGHUP`` is ignored from this call until the handler is installed.

    Call from the main thread before serving; the server must run the app's lifespan.
    """
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(AttributeError, ValueError):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return _ReloadOnHangup(app, PassportKeyReloader(source, apply, signing=signing, what=what))
