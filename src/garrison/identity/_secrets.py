"""Secret references in the configuration: ``env:VAR`` and ``file:PATH``, read one way.

Every secret garrison reads from ``garrison.toml`` (passport keys, cookie keys, HMAC secrets,
peppers, client secrets) goes through :func:`read_secret`, so the rules are the same
everywhere: a relative ``file:`` path is resolved against the application root (the folder of
``garrison.toml``), never the working directory, so a service finds its secrets whatever folder
it was started from; a file that others can read is reported; surrounding whitespace (the
trailing newline of a file or a variable) is stripped; an empty secret is an error.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from garrison.core import ConfigError, GarrisonConfig, get_logger

__all__ = ["read_secret", "secret_reference"]

_log = get_logger("identity")


def secret_reference(ref: str) -> bool:
    """Whether ``ref`` is a reference (``env:`` / ``file:``) rather than a literal."""
    return ref.startswith(("env:", "file:"))


def read_secret(
    ref: str,
    *,
    key: str,
    env: Mapping[str, str] | None = None,
    root: str | os.PathLike[str] | None = None,
    source: str = "",
    app: GarrisonConfig | None = None,
) -> bytes:
    """The secret ``ref`` points at: ``env:VAR`` (an environment variable) or ``file:PATH``
    (relative to ``root``, the application root; the working directory when ``root`` is
    ``None``).

    Secrets are never written in the configuration, so a literal is refused (the passport
    keyring alone accepts literals, for development). Errors are :class:`ConfigError` naming
    ``key`` (and ``source``, the configuration file). ``app`` supplies ``root`` and ``source``
    when they are not given.
    """
    env = os.environ if env is None else env
    if app is not None:
        root = app.root if root is None else root
        source = source or app.source
    if ref.startswith("env:"):
        name = ref[4:]
        if not name:
            raise ConfigError("empty variable name after 'env:'", source=source, key=key)
        value = env.get(name)
        if value is None:
            raise ConfigError(f"environment variable {name!r} is not set", source=source, key=key)
        data = value.strip().encode()
    elif ref.startswith("file:"):
        if not ref[5:]:
            raise ConfigError("empty path after 'file:'", source=source, key=key)
        path = Path(root if root is not None else ".") / ref[5:]  # an absolute path stays
        try:
            mode = path.stat().st_mode
            data = path.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read secret file {str(path)!r}: {exc.strerror or exc}",
                source=source,
                key=key,
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            _log.warning("secret file %s (%s) is readable by others; chmod 600 it", path, key)
    else:
        raise ConfigError(
            "expected a secret reference 'env:VAR' or 'file:PATH' "
            "(secrets are never written in the configuration)",
            source=source,
            key=key,
        )
    if not data:
        raise ConfigError(f"the secret {ref!r} is empty", source=source, key=key)
    return data
