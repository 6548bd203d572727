"""Services: typed routes, the inter-service client, and running them.

The public face of the service layer; everything else in this package is private.
"""

from ._balancer import Balancer, Instance
from ._client import (
    CALLER_HEADER,
    CallNext,
    ClientRequest,
    ClientResponse,
    Interceptor,
    ServiceClient,
)
from ._http_errors import NO_RETRY_HEADER
from ._identity import current_passport
from ._metrics import EdgeMetrics, ServiceMetrics
from ._params import Body, Header
from ._runner import load_service, run_service
from ._service import Service
from ._tracing import TraceContext, current_trace, parse_traceparent
from ._transport import AiohttpTransport, HttpxTransport, MockTransport, Transport

__all__ = [
    "AiohttpTransport",
    "Balancer",
    "Body",
    "CALLER_HEADER",
    "CallNext",
    "ClientRequest",
    "ClientResponse",
    "EdgeMetrics",
    "Header",
    "HttpxTransport",
    "Instance",
    "Interceptor",
    "MockTransport",
    "NO_RETRY_HEADER",
    "Service",
    "ServiceClient",
    "ServiceMetrics",
    "TraceContext",
    "Transport",
    "current_passport",
    "current_trace",
    "load_service",
    "parse_traceparent",
    "run_service",
]
