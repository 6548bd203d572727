"""Resilience: timeouts, retries with budgets, circuit breakers, bulkheads, adaptive concurrency
limits, load shedding, throttling, rate limits, hedging and outlier detection, composed into one
pipeline per edge and replaceable while the system runs.

Each policy's decisions live in a sans-I/O core driven by an injectable clock; the
:class:`Pipeline` composes them in a documented order; :class:`PolicyRegistry` holds the live
pipelines of a process; the service layer plugs them into the inter-service client and the
inbound side of every service. ``@resilient`` protects any function: async ones through the
:class:`Pipeline`, plain ``def`` ones through a :class:`SyncPipeline` (decided at decoration).
"""

from ._base import Criticality, Listener, PolicyEvent, Rejected, emit
from ._breaker import BreakerConfig, BreakerMetrics, BreakerState, CircuitBreaker
from ._budget import RetryBudget, RetryBudgetConfig
from ._bulkhead import AsyncBulkhead, Bulkhead, BulkheadConfig, BulkheadMetrics
from ._decorator import resilient
from ._hedge import HedgeConfig, Hedger, LatencyWindow
from ._limiter import ConcurrencyLimiter, LimiterConfig, LimiterSnapshot, Token
from ._limits import (
    AIMDConfig,
    AIMDLimit,
    EnvoyGradientConfig,
    EnvoyGradientLimit,
    FixedConfig,
    FixedLimit,
    Gradient2Config,
    Gradient2Limit,
    Limit,
    LimitConfig,
    VegasConfig,
    VegasLimit,
    WindowConfig,
    WindowedLimit,
    make_limit,
)
from ._outlier import OutlierConfig, OutlierDetector
from ._pipeline import POLICY_NAMES, Outcome, Pipeline, PolicyConfig
from ._ratelimit import (
    RateLimitConfig,
    RedisTokenBucket,
    SharedRateLimit,
    TokenBucket,
    close_shared_redis_clients,
    shared_redis_client,
)
from ._registry import PolicyRegistry
from ._retry import (
    ATTEMPT_HEADER,
    NO_RETRY_HEADER,
    GiveUp,
    Retrier,
    RetryDecision,
    RetryPolicy,
    RetryState,
    may_retry,
    parse_retry_after,
    response_forbids_retry,
    retry_headers,
)
from ._settings import ResilienceSettings, edge_key
from ._sync import SyncBulkhead, SyncPipeline
from ._throttle import AdaptiveThrottle, ThrottleConfig, ThrottleSnapshot

__all__ = [
    "AIMDConfig",
    "AIMDLimit",
    "ATTEMPT_HEADER",
    "AdaptiveThrottle",
    "AsyncBulkhead",
    "BreakerConfig",
    "BreakerMetrics",
    "BreakerState",
    "Bulkhead",
    "BulkheadConfig",
    "BulkheadMetrics",
    "CircuitBreaker",
    "ConcurrencyLimiter",
    "Criticality",
    "EnvoyGradientConfig",
    "EnvoyGradientLimit",
    "FixedConfig",
    "FixedLimit",
    "GiveUp",
    "Gradient2Config",
    "Gradient2Limit",
    "HedgeConfig",
    "Hedger",
    "LatencyWindow",
    "Limit",
    "LimitConfig",
    "LimiterConfig",
    "LimiterSnapshot",
    "Listener",
    "NO_RETRY_HEADER",
    "Outcome",
    "OutlierConfig",
    "OutlierDetector",
    "POLICY_NAMES",
    "Pipeline",
    "PolicyConfig",
    "PolicyEvent",
    "PolicyRegistry",
    "RateLimitConfig",
    "RedisTokenBucket",
    "Rejected",
    "ResilienceSettings",
    "Retrier",
    "RetryBudget",
    "RetryBudgetConfig",
    "RetryDecision",
    "RetryPolicy",
    "RetryState",
    "SharedRateLimit",
    "SyncBulkhead",
    "SyncPipeline",
    "ThrottleConfig",
    "ThrottleSnapshot",
    "Token",
    "TokenBucket",
    "VegasConfig",
    "VegasLimit",
    "WindowConfig",
    "WindowedLimit",
    "close_shared_redis_clients",
    "edge_key",
    "emit",
    "make_limit",
    "may_retry",
    "parse_retry_after",
    "resilient",
    "response_forbids_retry",
    "retry_headers",
    "shared_redis_client",
]
