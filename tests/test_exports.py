"""Pin the public face of each package, so that nothing leaks into it or vanishes by accident.

To pin another package, add its sorted export list to ``EXPORTS``.
"""

from __future__ import annotations
import __future__

import importlib
import inspect
import types

import pytest

EXPORTS: dict[str, list[str]] = {
    "garrison.core": [
        "AppConfig",
        "ClientConfig",
        "Clock",
        "ConfigError",
        "DEADLINE_HEADER",
        "Deadline",
        "DeadlineExceeded",
        "DevConfig",
        "FakeClock",
        "GarrisonConfig",
        "GarrisonError",
        "InvalidInput",
        "JsonFormatter",
        "LogConfig",
        "NotFound",
        "PermissionDenied",
        "RemoteError",
        "RemoteProtocolError",
        "RemoteStatusError",
        "ServiceConfig",
        "ServiceUnavailable",
        "SystemClock",
        "TimeoutWheel",
        "TransportError",
        "Unauthenticated",
        "UsageError",
        "configure_logging",
        "convert_section",
        "current_deadline",
        "deadline_scope",
        "default_wheel",
        "from_builtins",
        "get_logger",
        "json_decode",
        "json_encode",
        "load_config",
        "msgpack_decode",
        "msgpack_encode",
        "new_id",
        "new_uuid7",
        "parse_config",
        "pop_deadline",
        "push_deadline",
        "remaining",
        "uuid7_time",
    ],
    "garrison.durable": [
        "ActivityError",
        "ActivityInfo",
        "ActivityOptions",
        "ActorConfig",
        "ActorContext",
        "ActorError",
        "ActorRef",
        "ActorStats",
        "ActorSystem",
        "Batch",
        "ChildWorkflowError",
        "Cron",
        "DEFAULT_ACTIVITY_RETRY",
        "DEFAULT_VERSION",
        "DurableSettings",
        "Engine",
        "EngineConfig",
        "EngineStats",
        "FailureInfo",
        "History",
        "HistoryTooLong",
        "LeaseLost",
        "Limits",
        "MemoryStore",
        "NonDeterminismError",
        "PayloadTooLarge",
        "ReplayReport",
        "Saga",
        "Schedule",
        "ServiceDurableSettings",
        "StateTooLarge",
        "Status",
        "Store",
        "StoreStats",
        "WaitTimeout",
        "WorkflowCancelled",
        "WorkflowContext",
        "WorkflowError",
        "WorkflowFailed",
        "WorkflowHandle",
        "WorkflowInfo",
        "WorkflowNotFound",
        "WorkflowTerminated",
        "activity",
        "activity_info",
        "actor",
        "open_store",
        "replay_check",
    ],
    "garrison.gateway": [
        "AiohttpUpstream",
        "Gateway",
        "GatewayConfig",
        "INTERNAL_PREFIX",
        "LimitsConfig",
        "RecordedRequest",
        "RecordingUpstream",
        "RouteConfig",
        "Upstream",
        "UpstreamResponse",
        "gateway_url",
        "run_gateway",
    ],
    "garrison.identity": [
        "AccessRule",
        "ApiKeyConfig",
        "ApiKeyResolver",
        "ApiKeyStore",
        "Assurance",
        "AuthMode",
        "Authentication",
        "CacheConfig",
        "CachedResolver",
        "ClaimMapping",
        "ClientCertConfig",
        "ClientCertResolver",
        "Credential",
        "CredentialKind",
        "DeviceIdentity",
        "DeviceTokenConfig",
        "DeviceTokenResolver",
        "EdgeResult",
        "IDENTITY_ACTION_HEADER",
        "IdentityAction",
        "IdentityConfig",
        "IdentityEdge",
        "IntrospectionConfig",
        "IntrospectionResolver",
        "IssuedKey",
        "JwksCache",
        "JwtConfig",
        "JwtIssuerConfig",
        "JwtResolver",
        "Keyring",
        "KeysConfig",
        "MemoryApiKeyStore",
        "MemorySessionStore",
        "NewSession",
        "PASSPORT_HEADER",
        "Passport",
        "PassportCodec",
        "PassportKey",
        "PassportVerifier",
        "RedisSessionStore",
        "RequestCredentials",
        "Requires",
        "Resolution",
        "Resolver",
        "Session",
        "SessionCookieConfig",
        "SessionCookieResolver",
        "SessionStore",
        "SqliteApiKeyStore",
        "SqliteSessionStore",
        "StoreUnavailable",
        "TokenInfo",
        "TrustLevel",
        "UserIdentity",
        "VerifiedCredentialCache",
        "build_resolvers",
        "inspect_token",
        "load_passport_codec",
    ],
    "garrison.resilience": [
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
    ],
    "garrison.service": [
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
    ],
    "garrison.streams": [
        "AGGREGATES",
        "AggregateValue",
        "Aggregation",
        "BoundedOutOfOrderness",
        "DueIndex",
        "Hopping",
        "Limit",
        "OperatorStats",
        "Provenance",
        "Sample",
        "Session",
        "Severity",
        "StatusCode",
        "TooLate",
        "Tumbling",
        "Window",
        "WindowClosed",
        "WindowKind",
        "WindowOperator",
        "WindowOutput",
        "WindowResult",
        "WindowRetracted",
        "aggregate",
        "window_status",
    ],
}

PACKAGES = sorted(EXPORTS)


def public_names(module: types.ModuleType) -> set[str]:
    """Names a user could import: not private, not a submodule, not a ``__future__`` feature."""
    return {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType | __future__._Feature)
    }


def test_pinned_lists_are_sorted_and_unique() -> None:
    for names in EXPORTS.values():
        assert names == sorted(set(names))


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_pinned(package: str) -> None:
    module = importlib.import_module(package)
    assert len(module.__all__) == len(set(module.__all__)), "duplicates in __all__"
    assert sorted(module.__all__) == EXPORTS[package]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_all_exists(package: str) -> None:
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


@pytest.mark.parametrize("package", PACKAGES)
def test_nothing_public_is_missing_from_all(package: str) -> None:
    module = importlib.import_module(package)
    assert public_names(module) - set(module.__all__) == set()


@pytest.mark.parametrize("package", PACKAGES)
def test_exported_classes_and_functions_are_documented_and_defined_inside(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{package}.{name} has no docstring"
            assert value.__module__.startswith(package + "."), (
                f"{package}.{name} comes from {value.__module__}"
            )
