"""Passport keys: ids, algorithms, a keyring with rotation, and where key material comes from.

A :class:`Keyring` holds at most one *active* key, the one new passports are signed with, and
any number of *verification-only* keys. Rotating without a single failed request takes three
steps, each rolled out everywhere before the next starts:

1. ``add`` the new key (verify-only) to every keyring, the minting edge's and the services';
2. ``activate`` it at the edge: new passports carry its kid, and every service already knows it;
3. once the longest passport lifetime (ttl + leeway) has passed, ``retire`` the old key.

HS256 keys are shared secrets: whoever verifies could also mint. Where a service must verify
but must not be able to mint, use Ed25519 and give it the public keys only (``can_sign`` is
then False, and so is it cryptographically).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from hmac import compare_digest
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from garrison.core import ConfigError, get_logger

from ._secrets import read_secret, secret_reference

__all__ = ["Alg", "KeysConfig", "Keyring", "PassportKey"]

_log = get_logger("identity")

Alg = Literal["HS256", "EdDSA"]
"""A passport signing algorithm."""

#: The algorithm byte of the wire format, per algorithm.
ALG_IDS: dict[str, int] = {"HS256": 1, "EdDSA": 2}
#: Tag length in bytes, per algorithm.
TAG_SIZES: dict[str, int] = {"HS256": 32, "EdDSA": 64}

MIN_HMAC_SECRET = 32
"""Shortest HS256 secret accepted, in bytes (the hash's output size, as RFC 7518 asks)."""
MAX_KID = 16
_KID_RE = re.compile(r"^[A-Za-z0-9._-]{1,16}\Z")
_KID_HELP = "a key id: 1 to 16 of the characters A-Z a-z 0-9 . _ -"

DEV_KEY_FILE = "passport.key"
DEV_KID = "dev"

_Material = bytes | Ed25519PrivateKey | Ed25519PublicKey


@dataclass(frozen=True, slots=True, eq=False)
class PassportKey:
    """One passport key: an id, an algorithm and its material.

    ``material`` is the secret for ``HS256`` (at least 32 bytes), and for ``EdDSA`` an
    :class:`Ed25519PrivateKey` (signs and verifies) or an :class:`Ed25519PublicKey` (verifies
    only). The material never appears in ``repr``.
    """

    kid: str
    """The key id carried in every passport's header; 1 to 16 ASCII letters, digits, ``._-``."""
    alg: Alg
    """``HS256`` or ``EdDSA``."""
    material: _Material = field(repr=False)
    """The secret, private or public key."""

    # Derived once, so that the per-hop verify does no work it can avoid.
    _kid_bytes: bytes = field(init=False, repr=False)
    _hmac: crypto_hmac.HMAC | None = field(init=False, repr=False)
    _private: Ed25519PrivateKey | None = field(init=False, repr=False)
    _public: Ed25519PublicKey | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kid, str) or not _KID_RE.match(self.kid):
            raise ValueError(f"bad key id {self.kid!r}; expected {_KID_HELP}")
        hmac_ctx = private = public = None
        if self.alg == "HS256":
            if not isinstance(self.material, bytes):
                raise TypeError(f"key {self.kid!r}: an HS256 key needs bytes")
            if len(self.material) < MIN_HMAC_SECRET:
                raise ValueError(
                    f"key {self.kid!r}: an HS256 secret needs at least {MIN_HMAC_SECRET} bytes, "
                    f"got {len(self.material)}"
                )
            hmac_ctx = crypto_hmac.HMAC(self.material, hashes.SHA256())
        elif self.alg == "EdDSA":
            if isinstance(self.material, Ed25519PrivateKey):
                private, public = self.material, self.material.public_key()
            elif isinstance(self.material, Ed25519PublicKey):
                public = self.material
            else:
                raise TypeError(
                    f"key {self.kid!r}: an EdDSA key needs an Ed25519PrivateKey or Ed25519PublicKey"
                )
        else:
            raise ValueError(
                f"key {self.kid!r}: unknown algorithm {self.alg!r}; expected HS256 or EdDSA"
            )
        object.__setattr__(self, "_kid_bytes", self.kid.encode("ascii"))
        object.__setattr__(self, "_hmac", hmac_ctx)
        object.__setattr__(self, "_private", private)
        object.__setattr__(self, "_public", public)

    @property
    def can_sign(self) -> bool:
        """Whether this key can sign (an HS256 secret or an Ed25519 private key)."""
        return self._hmac is not None or self._private is not None

    @property
    def alg_id(self) -> int:
        """The algorithm byte of the wire format."""
        return ALG_IDS[self.alg]

    @property
    def tag_size(self) -> int:
        """Length of this key's tag in bytes: 32 for HS256, 64 for EdDSA."""
        return TAG_SIZES[self.alg]

    def sign(self, data: bytes) -> bytes:
        """The tag of ``data``; :class:`ValueError` for a verify-only key."""
        if self._hmac is not None:
            h = self._hmac.copy()
            h.update(data)
            return h.finalize()
        if self._private is not None:
            return self._private.sign(data)
        raise ValueError(f"key {self.kid!r} is verify-only (an Ed25519 public key)")

    def verify(self, data: bytes, tag: bytes) -> bool:
        """Whether ``tag`` is this key's tag of ``data``; HMAC tags compare in constant time."""
        if self._hmac is not None:
            h = self._hmac.copy()
            h.update(data)
            return compare_digest(h.finalize(), tag)
        assert self._public is not None
        try:
            self._public.verify(tag, data)
        except InvalidSignature:
            return False
        return True

    def public(self) -> PassportKey:
        """This key for verification only: an Ed25519 key's public half; an HS256 key as is
        (a shared secret has no public half)."""
        if self._private is not None:
            return PassportKey(self.kid, self.alg, self._private.public_key())
        return self

    @classmethod
    def hmac(cls, kid: str, secret: bytes) -> PassportKey:
        """An HS256 key."""
        return cls(kid, "HS256", secret)

    @classmethod
    def ed25519(cls, kid: str, key: Ed25519PrivateKey | Ed25519PublicKey) -> PassportKey:
        """An EdDSA (Ed25519) key: signing with a private key, verify-only with a public one."""
        return cls(kid, "EdDSA", key)


class Keyring:
    """The keys a process signs and verifies passports with.

    One *active* key signs; every key verifies. ``add`` / ``activate`` / ``retire`` rotate keys
    in place (see the module docstring for the order), so a codec holding this keyring sees
    each change at its next call. Each change swaps whole dicts, so a reader never sees a
    half-made one.
    """

    __slots__ = ("_active", "_by_kid")

    def __init__(self, keys: Iterable[PassportKey] = (), *, active: str | None = None) -> None:
        self._by_kid: dict[bytes, PassportKey] = {}
        self._active: PassportKey | None = None
        for key in keys:
            self.add(key)
        if active is not None:
            self.activate(active)

    # -- lookup ------------------------------------------------------------------------------

    def get(self, kid: str | bytes) -> PassportKey | None:
        """The key with id ``kid``, or None."""
        return self._by_kid.get(kid.encode("latin-1") if isinstance(kid, str) else kid)

    def __getitem__(self, kid: str) -> PassportKey:
        key = self.get(kid)
        if key is None:
            raise KeyError(kid)
        return key

    def __contains__(self, kid: object) -> bool:
        return isinstance(kid, (str, bytes)) and self.get(kid) is not None

    def __iter__(self) -> Iterator[PassportKey]:
        return iter(tuple(self._by_kid.values()))

    def __len__(self) -> int:
        return len(self._by_kid)

    def __repr__(self) -> str:
        return f"Keyring(kids={self.kids!r}, active={self.active_kid!r})"

    @property
    def kids(self) -> tuple[str, ...]:
        """Every key id, in the order the keys were added."""
        return tuple(k.kid for k in self._by_kid.values())

    @property
    def active(self) -> PassportKey | None:
        """The key new passports are signed with, or None for a verify-only keyring."""
        return self._active

    @property
    def active_kid(self) -> str | None:
        """The id of the active key, or None."""
        return None if self._active is None else self._active.kid

    @property
    def can_sign(self) -> bool:
        """Whether this keyring can mint passports (it has an active key)."""
        return self._active is not None

    # -- rotation ----------------------------------------------------------------------------

    def add(self, key: PassportKey) -> None:
        """Add ``key`` for verification (rotation step 1); :class:`ValueError` if the kid is
        taken."""
        if key._kid_bytes in self._by_kid:
            raise ValueError(f"key id {key.kid!r} is already in the keyring")
        self._by_kid = {**self._by_kid, key._kid_bytes: key}

    def activate(self, kid: str) -> None:
        """Sign new passports with key ``kid`` (rotation step 2); it must be present and able
        to sign."""
        key = self.get(kid)
        if key is None:
            raise ValueError(f"cannot activate key {kid!r}: not in the keyring {self.kids}")
        if not key.can_sign:
            raise ValueError(f"cannot activate key {kid!r}: it is verify-only (a public key)")
        self._active = key

    def retire(self, kid: str) -> None:
        """Remove key ``kid`` (rotation step 3): passports it signed stop verifying. The active
        key cannot be retired; activate its successor first."""
        key = self.get(kid)
        if key is None:
            raise ValueError(f"cannot retire key {kid!r}: not in the keyring {self.kids}")
        if key is self._active:
            raise ValueError(f"cannot retire key {kid!r}: it is the active key")
        self._by_kid = {b: k for b, k in self._by_kid.items() if k is not key}

    def verify_only(self) -> Keyring:
        """A copy without an active key, Ed25519 keys reduced to their public halves."""
        return Keyring([k.public() for k in self._by_kid.values()])

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def hmac(cls, keys: Mapping[str, bytes], *, active: str | None = None) -> Keyring:
        """A keyring of HS256 keys, ``{kid: secret}``; ``active`` names the signing key (None
        makes the keyring verify-only, by policy: a holder of a secret could still sign)."""
        return cls([PassportKey.hmac(kid, s) for kid, s in keys.items()], active=active)

    @classmethod
    def ed25519(
        cls,
        *,
        private_keys: Mapping[str, Ed25519PrivateKey | bytes] | None = None,
        public_keys: Mapping[str, Ed25519PublicKey | bytes] | None = None,
        active: str | None = None,
    ) -> Keyring:
        """A keyring of Ed25519 keys; raw keys are 32 bytes (RFC 8032 seed / public key).

        A keyring with public keys only verifies and cannot mint (``can_sign`` is False).
        """
        keys: list[PassportKey] = []
        for kid, priv in (private_keys or {}).items():
            key = _raw_private(kid, priv) if isinstance(priv, bytes) else priv
            keys.append(PassportKey.ed25519(kid, key))
        for kid, pub in (public_keys or {}).items():
            keys.append(
                PassportKey.ed25519(kid, _raw_public(kid, pub) if isinstance(pub, bytes) else pub)
            )
        return cls(keys, active=active)

    @classmethod
    def from_config(
        cls,
        cfg: KeysConfig,
        env: Mapping[str, str] | None = None,
        *,
        root: str | os.PathLike[str] | None = None,
        key: str = "identity.passport",
        source: str = "",
    ) -> Keyring:
        """Build the keyring ``[identity.passport]`` describes.

        Each entry of ``keys`` / ``public_keys`` is ``env:VAR``, ``file:PATH`` (relative to
        ``root``) or a base64url literal (development only: it lives in the file). Errors are
        :class:`ConfigError` naming the key; no keys at all is an error too (``garrison dev``
        falls back to :meth:`dev_default`).
        """
        env = os.environ if env is None else env
        base = Path(root) if root is not None else Path(".")
        if not cfg.keys and not cfg.public_keys:
            raise ConfigError(
                "no passport keys configured; expected at least one entry "
                '(kid = "env:VAR", "file:PATH" or a base64url secret)',
                source=source,
                key=f"{key}.keys",
            )
        out: list[PassportKey] = []
        for table, private in (("keys", True), ("public_keys", False)):
            for kid, spec in getattr(cfg, table).items():
                where = f"{key}.{table}.{kid}"
                try:
                    material = _load_material(spec, env, base, key=where, source=source)
                    out.append(_make_key(kid, cfg.alg, material, private=private))
                except (ValueError, TypeError, OSError) as exc:
                    raise ConfigError(str(exc), source=source, key=where) from None
        try:
            return cls(out, active=cfg.active)
        except ValueError as exc:
            raise ConfigError(str(exc), source=source, key=f"{key}.active") from None

    @classmethod
    def dev_default(
        cls, app_root: str | os.PathLike[str], *, data_dir: str = ".garrison"
    ) -> Keyring:
        """The development keyring: one HS256 key ``dev``, its secret created once at random in
        ``<app_root>/.garrison/passport.key`` (mode 0600) and read from there afterwards.

        For ``garrison dev`` only: every process of the app on this machine shares the file;
        production configures ``[identity.passport]`` instead.
        """
        folder = Path(app_root) / data_dir
        path = folder / DEV_KEY_FILE
        if not path.exists():
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_once(path, base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"="))
            _log.info("created the development passport key %s", path)
        try:
            secret = _b64decode(path.read_text(encoding="ascii").strip())
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot read the development passport key: {exc}", source=str(path)
            ) from None
        if len(secret) < MIN_HMAC_SECRET:
            raise ConfigError(
                f"the development passport key holds {len(secret)} bytes; expected at least "
                f"{MIN_HMAC_SECRET} (delete the file to make a new one)",
                source=str(path),
            )
        return cls.hmac({DEV_KID: secret}, active=DEV_KID)


class KeysConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[identity.passport]``: the passport's keys and limits.

    .. code-block:: toml

        [identity.passport]
        alg = "HS256"
        active = "2025-06"
        keys = { "2025-06" = "env:PASSPORT_KEY_2025_06", "2025-01" = "file:/run/keys/k1" }
    """

    alg: Alg = "HS256"
    """Signing algorithm of every key in this table."""
    active: str | None = None
    """The kid new passports are signed with; unset, this process verifies but does not mint."""
    keys: dict[str, str] = {}
    """kid -> ``env:VAR`` | ``file:PATH`` | base64url literal (development only). HS256:
    secrets of at least 32 bytes; EdDSA: private keys (32-byte seed, or PKCS#8 PEM)."""
    public_keys: dict[str, str] = {}
    """EdDSA only: kid -> public key (32 bytes raw, or PEM), for services that verify but must
    not be able to mint."""
    ttl: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0
    """Passport lifetime in seconds (never beyond the credential's own expiry)."""
    leeway: Annotated[float, msgspec.Meta(ge=0, le=10)] = 2.0
    """Clock skew tolerated when checking expiry and issue time, in seconds."""
    max_size: Annotated[int, msgspec.Meta(ge=256, le=65536)] = 4096
    """Largest encoded passport accepted or minted, in characters."""

    def __post_init__(self) -> None:
        # ValueError, so msgspec reports it at this table's path wherever it is nested. Key ids
        # are checked by Keyring.from_config, whose errors name the very entry.
        if self.public_keys and self.alg != "EdDSA":
            raise ValueError("public_keys is for alg = 'EdDSA' only")
        overlap = sorted(set(self.keys) & set(self.public_keys))
        if overlap:
            raise ValueError(f"key ids in both keys and public_keys: {', '.join(overlap)}")
        if self.active is not None and self.active not in self.keys:
            raise ValueError(
                f"active key {self.active!r} is not in keys "
                f"(known: {', '.join(sorted(self.keys)) or 'none'})"
            )


# -- helpers ---------------------------------------------------------------------------------


def _b64decode(text: str) -> bytes:
    """base64url (or standard base64), padding optional; ValueError when it is not."""
    data = text.encode("ascii")
    try:
        return base64.b64decode(data + b"=" * (-len(data) % 4), altchars=b"-_", validate=True)
    except binascii.Error:
        raise ValueError("not valid base64url") from None


def _load_material(
    spec: str, env: Mapping[str, str], root: Path, *, key: str, source: str
) -> bytes:
    if secret_reference(spec):
        return read_secret(spec, key=key, env=env, root=root, source=source)
    _log.warning(
        "a passport key is written into the configuration: fine for development, "
        "use env: or file: in production"
    )
    return spec.strip().encode("ascii", "replace")


def _make_key(kid: str, alg: Alg, text: bytes, *, private: bool) -> PassportKey:
    if not _KID_RE.match(kid):
        raise ValueError(f"bad key id {kid!r}; expected {_KID_HELP}")
    if alg == "HS256":
        return PassportKey.hmac(kid, _b64decode(text.decode("ascii", "replace")))
    if text.startswith(b"-----BEGIN"):
        loaded = (
            serialization.load_pem_private_key(text, password=None)
            if private
            else serialization.load_pem_public_key(text)
        )
        want = Ed25519PrivateKey if private else Ed25519PublicKey
        if not isinstance(loaded, want):
            raise ValueError(f"expected an Ed25519 {'private' if private else 'public'} key PEM")
        return PassportKey.ed25519(kid, loaded)
    raw = _b64decode(text.decode("ascii", "replace"))
    return PassportKey.ed25519(kid, _raw_private(kid, raw) if private else _raw_public(kid, raw))


def _raw_private(kid: str, raw: bytes) -> Ed25519PrivateKey:
    if len(raw) != 32:
        raise ValueError(f"key {kid!r}: a raw Ed25519 private key has 32 bytes, got {len(raw)}")
    return Ed25519PrivateKey.from_private_bytes(raw)


def _raw_public(kid: str, raw: bytes) -> Ed25519PublicKey:
    if len(raw) != 32:
        raise ValueError(f"key {kid!r}: a raw Ed25519 public key has 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def _create_once(path: Path, content: bytes) -> None:
    """Create ``path`` holding ``content`` (mode 0600) unless it exists; atomic, so processes
    starting together all end up reading the same, complete file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content + b"\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race: use its file
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
