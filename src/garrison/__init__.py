"""garrison: a Python runtime for resilient, stateful microservices.

The most used names are re-exported here; each pillar has its own package
(``garrison.core``, ``garrison.service``, ``garrison.resilience`` ...).
"""

from .core import (
    ConfigError,
    DeadlineExceeded,
    GarrisonError,
    InvalidInput,
    NotFound,
    RemoteError,
    RemoteStatusError,
    ServiceUnavailable,
    TransportError,
    UsageError,
    load_config,
)
from .durable import WorkflowContext
from .identity import Passport, Requires
from .service import Body, ClientResponse, Header, Service, ServiceClient

__version__ = "0.1.0"

__all__ = [
    "Body",
    "ClientResponse",
    "ConfigError",
    "DeadlineExceeded",
    "GarrisonError",
    "Header",
    "InvalidInput",
    "NotFound",
    "Passport",
    "RemoteError",
    "RemoteStatusError",
    "Requires",
    "Service",
    "ServiceClient",
    "ServiceUnavailable",
    "TransportError",
    "UsageError",
    "WorkflowContext",
    "__version__",
    "load_config",
]
