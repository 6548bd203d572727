"""Device credentials: HMAC device tokens and client certificates forwarded by a TLS terminator.

Theory of operation
-------------------
**Device tokens** (trust ``REGISTERED``, assurance AAL1) are
``<device_id>.<expiry>.<kid>.<tag>`` where ``tag`` is base64url(HMAC-SHA256(key[kid],
"garrison-device-token" ‖ device_id.expiry.kid)). They are presented in a token header
together with the device id header, which must name the same device: a token copied to
another device's requests is refused (``device_mismatch``).

Why HMAC tokens rather than random tokens with a stored hash: a fleet has very many devices,
each sending telemetry often, and an HMAC check costs about a microsecond with no store read
on the hot path; the expiry is inside the token; keys rotate by id (new tokens with the active
key, old ones accepted until their key is retired). The price is revocation: a token cannot
be recalled one by one, so revoking a *device* goes through a deny list (``revoked_devices``
in the configuration, :meth:`DeviceTokenResolver.revoke_device` at run time) checked on every
request, and tokens are kept short-lived (``max_lifetime``) so that re-provisioning is routine.

**Client certificates** (trust ``ATTESTED``, assurance AAL3) arrive in a header set by the TLS
terminator in front of the edge: nginx's ``$ssl_client_escaped_cert`` (URL-encoded PEM) or
Envoy's ``x-forwarded-client-cert`` (``Cert="<URL-encoded PEM>"``; the *last* element is the
one our own proxy added). The leaf must be issued directly by one of the configured CAs (issuer
name and signature checked), be within its validity dates, not be a CA itself, allow client
authentication when it lists key usages, and name the device in its subject CN or in a SAN URI
under a configured prefix.

The threat: a certificate is public. The header only proves anything because the TLS
terminator checked, during the handshake, that the client holds the certificate's private key,
and because it *overwrites* whatever header the client sent. If requests can reach the edge
without passing through that proxy, anyone holding a copy of a device's certificate can claim
to be the device. So forwarded certificates are refused (``untrusted_proxy``) unless the
deployment says the edge is only reachable through the proxy (``trusted_proxy = true``) and,
optionally, the proxy also proves itself on every request with a shared secret header
(``proxy_secret_header`` / ``proxy_secret``), compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from garrison.core import (
    Clock,
    ConfigError,
    GarrisonConfig,
    SystemClock,
    Unauthenticated,
    convert_section,
)

from ._cache import CacheConfig, VerifiedCredentialCache
from ._model import (
    Assurance,
    Authentication,
    Credential,
    CredentialKind,
    DeviceIdentity,
    RequestCredentials,
    Resolution,
    TrustLevel,
)
from ._secrets import read_secret

__all__ = [
    "ClientCertConfig",
    "ClientCertResolver",
    "DeviceTokenConfig",
    "DeviceTokenResolver",
]

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_:-]{0,127}\Z")
_KID = re.compile(r"^[A-Za-z0-9_-]{1,16}\Z")
_HEADER = re.compile(r"^[a-z0-9-]{1,64}\Z")
_EXPIRY = re.compile(r"^[0-9]{1,12}\Z")
_TAG = re.compile(r"^[A-Za-z0-9_-]{43}\Z")
_MAX_TOKEN = 256
_MIN_KEY = 32
_UNTRUSTED = ""  # the credential value find() hands on for a header not vouched for by the proxy


def _check_header(value: str, key: str) -> None:
    if not _HEADER.match(value):
        raise ConfigError(f"expected a lowercase header name, got {value!r}", key=key)


def _check_devices(values: Sequence[str], key: str) -> None:
    for d in values:
        if not _DEVICE_ID.match(d):
            raise ConfigError(f"bad device id {d!r}", key=key)


# -- device tokens ------------------------------------------------------------------------------


class DeviceTokenConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[identity.device_tokens]``: HMAC device tokens."""

    keys: dict[str, str]
    """HMAC keys by key id: secret references (``env:VAR`` / ``file:/path``), 32+ bytes."""
    active_key: str
    """The key id that signs new tokens."""
    retired_keys: list[str] = []
    """Key ids no longer accepted (reason ``retired_key``)."""
    name: str = "device_token"
    """The resolver's name."""
    token_header: str = "x-device-token"
    """Header carrying the token."""
    device_header: str = "x-device-id"
    """Header carrying the device id; must match the token's."""
    device_type: str = "unknown"
    """The device type reported in passports."""
    max_lifetime: float = 90 * 86400.0
    """Longest validity a token may have, seconds; a token claiming more is refused."""
    revoked_devices: list[str] = []
    """Devices whose tokens are refused whatever their expiry."""
    issuer: str = "device-tokens"
    """The ``issuer`` reported in passports."""

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigError("expected at least one key", key="keys")
        for kid in self.keys:
            if not _KID.match(kid):
                raise ConfigError(f"bad key id {kid!r}", key=f"keys.{kid}")
        if self.active_key not in self.keys or self.active_key in self.retired_keys:
            raise ConfigError(
                f"{self.active_key!r} is not a current key ({', '.join(sorted(self.keys))})",
                key="active_key",
            )
        _check_header(self.token_header, "token_header")
        _check_header(self.device_header, "device_header")
        if not (isinstance(self.max_lifetime, int | float) and 0 < self.max_lifetime < math.inf):
            raise ConfigError(
                f"expected a number > 0, got {self.max_lifetime!r}", key="max_lifetime"
            )
        _check_devices(self.revoked_devices, "revoked_devices")


class DeviceTokenResolver:
    """Resolves HMAC device tokens bound to the device id header; issues them.

    Rejections raise :class:`~garrison.core.Unauthenticated` with the reason
    ``malformed_device_token``, ``unknown_key``, ``retired_key``, ``bad_signature``,
    ``device_missing``, ``device_mismatch``, ``token_expired``, ``expiry_too_far`` or
    ``device_revoked``.
    """

    def __init__(
        self,
        config: DeviceTokenConfig,
        *,
        keys: Mapping[str, bytes],
        clock: Clock | None = None,
    ) -> None:
        for kid, k in keys.items():
            if len(k) < _MIN_KEY:
                raise ConfigError(
                    f"expected a key of at least {_MIN_KEY} bytes, got {len(k)}", key=kid
                )
        if config.active_key not in keys:
            raise ConfigError(f"no key {config.active_key!r}", key="active_key")
        self.config = config
        self.name = config.name
        self._clock = clock or SystemClock()
        self._retired = frozenset(config.retired_keys)
        self._keys = {kid: k for kid, k in keys.items() if kid not in self._retired}
        self._revoked = set(config.revoked_devices)
        self._revocations = 0

    @classmethod
    def from_config(
        cls,
        config: DeviceTokenConfig | Mapping[str, Any],
        *,
        app: GarrisonConfig | None = None,
        key: str = "identity.device_tokens",
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
    ) -> DeviceTokenResolver:
        """Validate ``config`` and read its keys."""
        if not isinstance(config, DeviceTokenConfig):
            config = convert_section(config, DeviceTokenConfig, key=key, config=app)
        keys: dict[str, bytes] = {}
        for kid, ref in config.keys.items():
            if kid in config.retired_keys:
                continue
            secret = read_secret(ref, key=f"{key}.keys.{kid}", env=env, app=app)
            if len(secret) < _MIN_KEY:
                raise ConfigError(
                    f"expected a key of at least {_MIN_KEY} bytes, got {len(secret)}",
                    key=f"{key}.keys.{kid}",
                )
            keys[kid] = secret
        return cls(config, keys=keys, clock=clock)

    @property
    def generation(self) -> tuple[int, int]:
        """Changes whenever a device is revoked at run time: a cache generation."""
        return (len(self._keys), self._revocations)

    def issue(self, device_id: str, *, lifetime: float | None = None) -> str:
        """A token for ``device_id``, signed with the active key."""
        if not _DEVICE_ID.match(device_id):
            raise ValueError(f"bad device id {device_id[:32]!r}")
        life = self.config.max_lifetime if lifetime is None else lifetime
        if not 0 < life <= self.config.max_lifetime:
            raise ValueError(f"lifetime must be > 0 and <= {self.config.max_lifetime:g}")
        expiry = math.floor(self._clock.time() + life)
        kid = self.config.active_key
        body = f"{device_id}.{expiry}.{kid}"
        return f"{body}.{self._tag(self._keys[kid], body)}"

    def revoke_device(self, device_id: str) -> None:
        """Refuse every token of ``device_id`` from now on (in this process)."""
        self._revoked.add(device_id)
        self._revocations += 1

    def find(self, request: RequestCredentials) -> Credential | None:
        """The token header, with the device id header."""
        value = request.headers.get(self.config.token_header)
        if value is None:
            return None
        return Credential(
            kind=CredentialKind.DEVICE_TOKEN,
            value=value.strip(),
            resolver=self.name,
            device_id=request.headers.get(self.config.device_header),
        )

    async def resolve(self, credential: Credential) -> Resolution:
        """Verify the tag, the device binding, the expiry and the deny list."""
        return self.verify(credential)

    def verify(self, credential: Credential) -> Resolution:
        """The synchronous check behind :meth:`resolve` (no I/O)."""
        token = credential.value
        parts = token.split(".") if len(token) <= _MAX_TOKEN else []
        if len(parts) != 4:
            raise Unauthenticated(
                "expected <device_id>.<expiry>.<kid>.<tag>", reason="malformed_device_token"
            )
        device_id, expiry_text, kid, tag = parts
        if not (_DEVICE_ID.match(device_id) and _EXPIRY.match(expiry_text) and _TAG.match(tag)):
            raise Unauthenticated(
                "a part of the device token is malformed", reason="malformed_device_token"
            )
        if kid in self._retired:
            raise Unauthenticated(f"the key {kid!r} is retired", reason="retired_key")
        key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated(f"unknown key id {kid[:16]!r}", reason="unknown_key")
        expected = self._tag(key, f"{device_id}.{expiry_text}.{kid}")
        if not hmac.compare_digest(expected.encode(), tag.encode()):
            raise Unauthenticated("the device token signature is wrong", reason="bad_signature")
        if credential.device_id is None:
            raise Unauthenticated(f"no {self.config.device_header} header", reason="device_missing")
        if not hmac.compare_digest(credential.device_id.encode(), device_id.encode()):
            raise Unauthenticated("the token belongs to another device", reason="device_mismatch")
        now = self._clock.time()
        expiry = float(expiry_text)
        if now >= expiry:
            raise Unauthenticated("the device token has expired", reason="token_expired")
        if expiry - now > self.config.max_lifetime + 1:
            raise Unauthenticated(
                "the device token claims a longer life than allowed", reason="expiry_too_far"
            )
        if device_id in self._revoked:
            raise Unauthenticated(f"device {device_id} is revoked", reason="device_revoked")
        return Resolution(
            auth=Authentication(
                credential=CredentialKind.DEVICE_TOKEN,
                issuer=self.config.issuer,
                method="device_token",
                assurance=Assurance.AAL1,
            ),
            expires_at=expiry,
            device=DeviceIdentity(
                id=device_id, type=self.config.device_type, trust=TrustLevel.REGISTERED
            ),
        )

    @staticmethod
    def _tag(key: bytes, body: str) -> str:
        mac = hmac.new(key, b"garrison-device-token\0" + body.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()


# -- client certificates ------------------------------------------------------------------------


class ClientCertConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[identity.client_certs]``: client certificates forwarded by the TLS terminator."""

    ca_certs: list[str]
    """PEM files of the CAs that issue device certificates (relative to the app root)."""
    trusted_proxy: bool = False
    """Set to true only when the edge is reachable solely through the TLS terminator, which
    overwrites the header on every request. While false every forwarded certificate is
    refused (``untrusted_proxy``)."""
    proxy_secret_header: str | None = None
    """A header the proxy adds to every request, carrying ``proxy_secret``."""
    proxy_secret: str | None = None
    """Secret reference (``env:VAR`` / ``file:/path``) to the value of that header."""
    name: str = "client_cert"
    """The resolver's name."""
    header: str = "x-forwarded-client-cert"
    """The header with the certificate: URL-encoded PEM (nginx ``$ssl_client_escaped_cert``)
    or an Envoy XFCC value with ``Cert="..."``."""
    device_id_from: Literal["cn", "san_uri"] = "cn"
    """Where the device id is: the subject common name, or a SAN URI."""
    san_uri_prefix: str = ""
    """With ``san_uri``: the URI prefix before the device id, e.g.
    ``spiffe://fleet.example/device/``."""
    device_type: str = "unknown"
    """The device type reported in passports."""
    max_header_bytes: int = 16_384
    """Larger headers are refused before parsing."""
    revoked_devices: list[str] = []
    """Devices whose certificates are refused."""
    cache_max_entries: int = 10_000
    """Verified certificates remembered (parsing and signature checks are skipped on a hit)."""
    cache_max_ttl: float = 300.0
    """Longest a verification is reused, seconds."""

    def __post_init__(self) -> None:
        if not self.ca_certs:
            raise ConfigError("expected at least one CA certificate file", key="ca_certs")
        _check_header(self.header, "header")
        if (self.proxy_secret_header is None) != (self.proxy_secret is None):
            raise ConfigError(
                "proxy_secret_header and proxy_secret go together", key="proxy_secret"
            )
        if self.proxy_secret_header is not None:
            _check_header(self.proxy_secret_header, "proxy_secret_header")
        if self.device_id_from == "san_uri" and not self.san_uri_prefix:
            raise ConfigError(
                "expected the URI prefix before the device id when device_id_from = 'san_uri'",
                key="san_uri_prefix",
            )
        if not (isinstance(self.max_header_bytes, int) and self.max_header_bytes >= 256):
            raise ConfigError(
                f"expected an integer >= 256, got {self.max_header_bytes!r}",
                key="max_header_bytes",
            )
        _check_devices(self.revoked_devices, "revoked_devices")


class ClientCertResolver:
    """Resolves a client certificate forwarded by a trusted TLS terminator.

    Rejections raise :class:`~garrison.core.Unauthenticated` with the reason
    ``untrusted_proxy``, ``malformed_certificate``, ``unknown_issuer``, ``issuer_expired``,
    ``bad_certificate_signature``, ``certificate_not_yet_valid``, ``certificate_expired``,
    ``not_a_leaf_certificate``, ``wrong_key_usage``, ``no_device_id``, ``bad_device_id`` or
    ``device_revoked``.

    Verified certificates are cached internally, *after* the proxy check: do not wrap this
    resolver in a :class:`~garrison.identity._cache.CachedResolver`.
    """

    def __init__(
        self,
        config: ClientCertConfig,
        *,
        ca_certs: Sequence[x509.Certificate],
        proxy_secret: bytes | None = None,
        clock: Clock | None = None,
        cache: VerifiedCredentialCache | None = None,
    ) -> None:
        if not ca_certs:
            raise ConfigError("expected at least one CA certificate", key="ca_certs")
        if (config.proxy_secret_header is None) != (proxy_secret is None):
            raise ConfigError("a proxy secret header needs its secret", key="proxy_secret")
        self.config = config
        self.name = config.name
        self._clock = clock or SystemClock()
        self._cas: dict[bytes, list[x509.Certificate]] = {}
        for ca in ca_certs:
            self._cas.setdefault(ca.subject.public_bytes(), []).append(ca)
        self._proxy_secret = proxy_secret
        self._revoked = set(config.revoked_devices)
        self.cache = cache or VerifiedCredentialCache(
            CacheConfig(
                max_entries=config.cache_max_entries,
                max_ttl=config.cache_max_ttl,
                max_negative_entries=0,
            ),
            clock=self._clock,
        )

    @classmethod
    def from_config(
        cls,
        config: ClientCertConfig | Mapping[str, Any],
        *,
        app: GarrisonConfig | None = None,
        key: str = "identity.client_certs",
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
    ) -> ClientCertResolver:
        """Validate ``config``, load the CA certificates and read the proxy secret."""
        if not isinstance(config, ClientCertConfig):
            config = convert_section(config, ClientCertConfig, key=key, config=app)
        root = Path(app.root) if app is not None else Path(".")
        cas: list[x509.Certificate] = []
        for i, name in enumerate(config.ca_certs):
            path = root / name
            try:
                cas.extend(x509.load_pem_x509_certificates(path.read_bytes()))
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"cannot load CA certificates from {str(path)!r}: {exc}",
                    key=f"{key}.ca_certs.{i}",
                ) from None
        secret = None
        if config.proxy_secret is not None:
            secret = read_secret(config.proxy_secret, key=f"{key}.proxy_secret", env=env, app=app)
        return cls(config, ca_certs=cas, proxy_secret=secret, clock=clock)

    def revoke_device(self, device_id: str) -> None:
        """Refuse the certificates of ``device_id`` from now on (in this process)."""
        self._revoked.add(device_id)

    def find(self, request: RequestCredentials) -> Credential | None:
        """The forwarded certificate, if the header is set and not empty.

        The proxy proof is checked here, where the headers are: a request without it yields a
        credential with an empty value, which :meth:`resolve` refuses as ``untrusted_proxy``.
        (An empty value can come from nowhere else, and keeps such a request from ever
        matching the cache entry of a real certificate.)
        """
        value = request.headers.get(self.config.header)
        if not value:
            return None
        if not self._via_proxy(request):
            value = _UNTRUSTED
        return Credential(kind=CredentialKind.CLIENT_CERT, value=value, resolver=self.name)

    async def resolve(self, credential: Credential) -> Resolution:
        """Verify the forwarded certificate."""
        return self.verify(credential)

    def verify(self, credential: Credential) -> Resolution:
        """The synchronous check behind :meth:`resolve` (no I/O)."""
        if credential.value == _UNTRUSTED or not self.config.trusted_proxy:
            raise Unauthenticated(
                "a forwarded client certificate is only accepted from the trusted proxy",
                reason="untrusted_proxy",
            )
        resolution = self.cache.get(credential)
        if resolution is None:
            resolution = self._verify_certificate(credential.value)
            self.cache.put(credential, resolution)
        assert resolution.device is not None
        if resolution.device.id in self._revoked:
            raise Unauthenticated(
                f"device {resolution.device.id} is revoked", reason="device_revoked"
            )
        return resolution

    def _via_proxy(self, request: RequestCredentials) -> bool:
        if self.config.proxy_secret_header is None or self._proxy_secret is None:
            return True
        presented = request.headers.get(self.config.proxy_secret_header, "")
        return hmac.compare_digest(presented.encode(), self._proxy_secret)

    def _verify_certificate(self, value: str) -> Resolution:
        if len(value) > self.config.max_header_bytes:
            raise Unauthenticated(
                "the forwarded certificate header is too large", reason="malformed_certificate"
            )
        leaf = _load_leaf(value)
        now = self._clock.time()
        cas = self._cas.get(leaf.issuer.public_bytes())
        if not cas:
            raise Unauthenticated(
                "the certificate is not issued by a configured CA", reason="unknown_issuer"
            )
        ca = None
        for candidate in cas:
            try:
                leaf.verify_directly_issued_by(candidate)
            except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
                continue
            ca = candidate
            break
        if ca is None:
            raise Unauthenticated(
                "the certificate's signature does not verify against its CA",
                reason="bad_certificate_signature",
            )
        if not _within(ca, now):
            raise Unauthenticated("the issuing CA is not valid now", reason="issuer_expired")
        if now < leaf.not_valid_before_utc.timestamp():
            raise Unauthenticated(
                "the certificate is not valid yet", reason="certificate_not_yet_valid"
            )
        if now > leaf.not_valid_after_utc.timestamp():
            raise Unauthenticated("the certificate has expired", reason="certificate_expired")
        _check_usage(leaf)
        device_id = self._device_id(leaf)
        return Resolution(
            auth=Authentication(
                credential=CredentialKind.CLIENT_CERT,
                issuer=ca.subject.rfc4514_string()[:256],
                method="mtls",
                assurance=Assurance.AAL3,
            ),
            expires_at=min(
                leaf.not_valid_after_utc.timestamp(), ca.not_valid_after_utc.timestamp()
            ),
            device=DeviceIdentity(
                id=device_id, type=self.config.device_type, trust=TrustLevel.ATTESTED
            ),
        )

    def _device_id(self, leaf: x509.Certificate) -> str:
        candidates: list[str] = []
        if self.config.device_id_from == "cn":
            for attr in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
                v = attr.value
                candidates.append(v if isinstance(v, str) else v.decode("latin-1"))
        else:
            try:
                san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            except x509.ExtensionNotFound:
                san = None
            prefix = self.config.san_uri_prefix
            if san is not None:
                for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier):
                    if uri.startswith(prefix):
                        candidates.append(uri[len(prefix) :])
        if len(candidates) != 1:
            where = "subject CN" if self.config.device_id_from == "cn" else "SAN URI"
            raise Unauthenticated(
                f"expected exactly one device id in the {where}, found {len(candidates)}",
                reason="no_device_id",
            )
        if not _DEVICE_ID.match(candidates[0]):
            raise Unauthenticated(
                f"bad device id {candidates[0][:32]!r} in the certificate", reason="bad_device_id"
            )
        return candidates[0]


def _within(cert: x509.Certificate, now: float) -> bool:
    return cert.not_valid_before_utc.timestamp() <= now <= cert.not_valid_after_utc.timestamp()


def _check_usage(leaf: x509.Certificate) -> None:
    try:
        bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is not None and bc.ca:
        raise Unauthenticated("a CA certificate is not a device", reason="not_a_leaf_certificate")
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if (
        ExtendedKeyUsageOID.CLIENT_AUTH not in eku
        and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku
    ):
        raise Unauthenticated(
            "the certificate does not allow client authentication", reason="wrong_key_usage"
        )


def _load_leaf(value: str) -> x509.Certificate:
    """The leaf certificate from a URL-encoded PEM or an XFCC header value."""
    encoded = _xfcc_cert(value) if 'cert="' in value.lower() else value
    pem = urllib.parse.unquote(encoded.strip())
    start = pem.find("-----BEGIN CERTIFICATE-----")
    if start < 0:
        raise Unauthenticated(
            "the forwarded value holds no PEM certificate", reason="malformed_certificate"
        )
    try:
        return x509.load_pem_x509_certificate(pem[start:].encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise Unauthenticated(
            f"the forwarded certificate does not parse: {str(exc)[:120]}",
            reason="malformed_certificate",
        ) from None


def _xfcc_cert(value: str) -> str:
    """The ``Cert`` of the last element of an Envoy ``x-forwarded-client-cert`` value.

    Elements are separated by commas, pairs by semicolons; values may be quoted (and then hold
    commas and semicolons). The last element is the one the proxy in front of us added.
    """
    elements: list[dict[str, str]] = [{}]
    key, quoted, in_value = "", False, False
    buf: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if quoted:
            if c == "\\" and i + 1 < len(value):
                buf.append(value[i + 1])
                i += 1
            elif c == '"':
                quoted = False
            else:
                buf.append(c)
        elif c == '"' and in_value:
            quoted = True
        elif c == "=" and not in_value:
            key, buf, in_value = "".join(buf).strip().lower(), [], True
        elif c in ";,":
            if in_value:
                elements[-1][key] = "".join(buf)
            key, buf, in_value = "", [], False
            if c == ",":
                elements.append({})
        else:
            buf.append(c)
        i += 1
    if quoted:
        raise Unauthenticated(
            "unterminated quote in the XFCC header", reason="malformed_certificate"
        )
    if in_value:
        elements[-1][key] = "".join(buf)
    cert = elements[-1].get("cert")
    if not cert:
        raise Unauthenticated(
            "the last XFCC element carries no Cert", reason="malformed_certificate"
        )
    return cert
