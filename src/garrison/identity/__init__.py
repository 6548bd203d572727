"""Identity: token-agnostic user and device identity, resolved once at the edge into a passport.

The public face of the identity pillar; everything else in this package is private.
"""

from ._model import (
    Assurance,
    Authentication,
    Credential,
    CredentialKind,
    DeviceIdentity,
    IdentityAction,
    Passport,
    RequestCredentials,
    Resolution,
    Resolver,
    TrustLevel,
    UserIdentity,
)

__all__ = [
    "Assurance",
    "Authentication",
    "Credential",
    "CredentialKind",
    "DeviceIdentity",
    "IdentityAction",
    "Passport",
    "RequestCredentials",
    "Resolution",
    "Resolver",
    "TrustLevel",
    "UserIdentity",
]
