"""``[resilience]`` of garrison.toml: layers, their merge, and errors that name the full key."""

from __future__ import annotations

import tomllib
from typing import Any

import msgspec
import pytest

from garrison.core import ConfigError, DeadlineExceeded, TransportError, parse_config
from garrison.resilience import (
    BreakerConfig,
    BulkheadConfig,
    ResilienceSettings,
    RetryPolicy,
    edge_key,
)

EXAMPLE = """
[resilience.defaults]
timeout = 2.0
retry = { max_attempts = 3 }
breaker = { failure_rate_threshold = 0.5 }

[resilience.edges."dispatch->devices"]
bulkhead = { max_concurrent_calls = 32, max_queue = 64 }
outlier = { consecutive_5xx = 3 }

[resilience.edges."dispatch->devices".routes."/devices/{id}/commands"]
timeout = 0.5
breaker = false

[resilience.inbound.devices]
limiter = { limit = { algorithm = "gradient2" } }
"""


def settings(raw: dict[str, Any]) -> ResilienceSettings:
    return ResilienceSettings.from_raw(raw)


def error_of(raw: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        settings(raw)
    return info.value


# -- what the layers say -----------------------------------------------------------------------


def test_the_documented_example() -> None:
    s = ResilienceSettings.from_config(parse_config(tomllib.loads(EXAMPLE)))
    edge = s.policy("dispatch", "devices")
    assert edge.timeout == 2.0
    assert edge.retry == RetryPolicy(max_attempts=3)
    assert edge.breaker == BreakerConfig(failure_rate_threshold=0.5)
    assert edge.bulkhead == BulkheadConfig(max_concurrent_calls=32, max_queue=64)
    assert edge.outlier is not None
    assert edge.outlier.consecutive_5xx == 3
    route = s.policy("dispatch", "devices", "/devices/{id}/commands")
    assert (route.timeout, route.breaker) == (0.5, None)  # `false` switched the breaker off
    assert route.bulkhead == edge.bulkhead
    other = s.policy("billing", "devices")
    assert other.bulkhead is None
    assert other.timeout == 2.0
    door = s.inbound_policy("devices")
    assert door.limiter is not None
    assert door.retry is None
    assert s.has_route_policies("dispatch", "devices", "/devices/{id}/commands")
    assert not s.has_route_policies("dispatch", "devices", "/other")


def test_merge_precedence_from_defaults_to_route() -> None:
    s = settings(
        {
            "defaults": {"timeout": 1},
            "edges": {
                "*->b": {"timeout": 2, "routes": {"/r": {"timeout": 6}}},
                "a->*": {"timeout": 3},
                "a->b": {"timeout": 4, "routes": {"/r": {"timeout": 5}}},
                "x->*": {"timeout": 7},
            },
        }
    )

    def timeout(caller: str, callee: str, route: str | None = None) -> float | None:
        return s.policy(caller, callee, route).timeout

    assert timeout("z", "y") == 1  # defaults
    assert timeout("z", "b") == 2  # "*->callee"
    assert timeout("a", "y") == 3  # "caller->*"
    assert timeout("x", "b") == 7  # "caller->*" over "*->callee"
    assert timeout("a", "b") == 4  # "caller->callee" over both
    assert timeout("a", "b", "/r") == 5  # its route over everything
    assert timeout("z", "b", "/r") == 6  # a route of "*->b"
    assert timeout("a", "b", "/unknown") == 4
    keys = [k for k, _ in s.layers("a", "b", "/r")]
    assert keys == [
        "resilience.defaults",
        "resilience.edges.*->b",
        "resilience.edges.a->*",
        "resilience.edges.a->b",
        "resilience.edges.*->b.routes./r",
        "resilience.edges.a->b.routes./r",
    ]


def test_a_policy_table_replaces_the_inherited_one_whole() -> None:
    s = settings(
        {
            "defaults": {"breaker": {"failure_rate_threshold": 0.3, "minimum_number_of_calls": 7}},
            "edges": {"a->b": {"breaker": {"minimum_number_of_calls": 3}}},
        }
    )
    assert s.policy("a", "b").breaker == BreakerConfig(minimum_number_of_calls=3)


def test_false_removes_an_inherited_policy_timeout_included() -> None:
    s = settings(
        {
            "defaults": {"timeout": 1.0, "breaker": {}, "shadow": ["breaker"]},
            "edges": {"a->b": {"timeout": False, "breaker": False, "shadow": False}},
        }
    )
    p = s.policy("a", "b")
    assert (p.timeout, p.breaker, p.shadow) == (None, None, ())
    assert s.policy("a", "c").breaker is not None


def test_wildcard_layers_do_not_repeat() -> None:
    s = settings({"edges": {"*->b": {"timeout": 2.0}, "a->*": {"timeout": 3.0}}})
    assert [k for k, _ in s.layers("*", "b")] == ["resilience.defaults", "resilience.edges.*->b"]
    assert [k for k, _ in s.layers("a", "*")] == ["resilience.defaults", "resilience.edges.a->*"]


def test_edge_key() -> None:
    assert edge_key("a", "b") == "a->b"


def test_to_builtins_is_plain_data_even_with_retry() -> None:
    s = settings(
        {
            "defaults": {"retry": {"max_attempts": 2, "retry_on_status": [503]}},
            "edges": {"a->b": {"breaker": False, "routes": {"/r": {"timeout": 1}}}},
            "inbound": {"b": {"bulkhead": {"max_concurrent_calls": 4}}},
        }
    )
    data = s.to_builtins()
    msgspec.json.encode(data)
    retry = data["defaults"]["retry"]
    assert retry["max_attempts"] == 2
    assert retry["retry_on_status"] == [503]
    assert list(retry["retry_on"]) == ["transport", "unavailable", "timeout"]
    assert data["edges"]["a->b"] == {"breaker": False, "routes": {"/r": {"timeout": 1.0}}}
    assert data["inbound"]["b"]["bulkhead"]["max_concurrent_calls"] == 4
    # ... and what to_builtins writes reads back to the same policy (round trip).
    again = settings({"defaults": data["defaults"]})
    assert again.policy("a", "b").retry == s.policy("a", "b").retry


def test_retry_on_takes_names_from_a_closed_list() -> None:
    s = settings({"defaults": {"retry": {"retry_on": ["transport", "deadline"]}}})
    assert s.policy("a", "b").retry.retry_on == (TransportError, DeadlineExceeded)  # type: ignore[union-attr]
    for bad in (["os.system"], "transport", [1]):
        with pytest.raises(ConfigError) as info:
            settings({"defaults": {"retry": {"retry_on": bad}}})
        assert info.value.key == "resilience.defaults.retry.retry_on"


def test_an_empty_section_means_no_policies() -> None:
    s = ResilienceSettings.from_config(parse_config({}))
    p = s.policy("a", "b")
    assert p.breaker is None
    assert p.timeout is None
    assert p.retry is None
    assert ResilienceSettings().policy("a", "b") == p


# -- every bad input names the full dotted key -------------------------------------------------

BAD_FIELDS: list[tuple[str, Any, str]] = [
    # (policy, table, field the error must name)
    ("breaker", {"failure_rate_threshold": 2}, "failure_rate_threshold"),
    ("breaker", {"sliding_window_type": "sliding"}, "sliding_window_type"),
    ("breaker", {"failure_rate": 0.5}, "failure_rate"),  # unknown field
    ("bulkhead", {"max_concurrent_calls": 0}, "max_concurrent_calls"),
    ("bulkhead", {"queue_timeout": -1}, "queue_timeout"),
    ("limiter", {"default_fraction": 3}, "default_fraction"),
    ("limiter", {"limit": {"algorithm": "fixed", "limit": 0}}, "limit.limit"),
    ("limiter", {"limit": {"algorithm": "nope"}}, "limit.algorithm"),
    ("limiter", {"window": {"nope": 1}}, "window.nope"),
    ("rate_limit", {"rate": 0}, "rate"),
    ("throttle", {"k": 0.5}, "k"),
    ("retry", {"max_attempts": 0}, "max_attempts"),
    ("retry", {"retry_on_status": [99]}, "retry_on_status"),
    ("retry_budget", {"ratio": -1}, "ratio"),
    ("hedge", {"percentile": 1.5}, "percentile"),
    ("hedge", {"budget": {"ratio": -1}}, "budget.ratio"),
    ("outlier", {"max_ejection_percent": 200}, "max_ejection_percent"),
]


@pytest.mark.parametrize(("policy", "table", "field"), BAD_FIELDS)
@pytest.mark.parametrize(
    ("layer", "where"),
    [
        ("defaults", "resilience.defaults"),
        ("edge", "resilience.edges.a->b"),
        ("route", "resilience.edges.a->b.routes./r"),
    ],
)
def test_a_bad_field_is_named_with_layer_policy_and_field(
    policy: str, table: Any, field: str, layer: str, where: str
) -> None:
    raw: dict[str, Any]
    if layer == "defaults":
        raw = {"defaults": {policy: table}}
    elif layer == "edge":
        raw = {"edges": {"a->b": {policy: table}}}
    else:
        raw = {"edges": {"a->b": {"routes": {"/r": {policy: table}}}}}
    exc = error_of(raw)
    assert exc.key == f"{where}.{policy}.{field}"
    assert f"[{exc.key}]" in str(exc)


@pytest.mark.parametrize(
    ("raw", "key", "match"),
    [
        ({"defaults": {"breakr": {}}}, "resilience.defaults.breakr", "unknown policy 'breakr'"),
        ({"default": {}}, "resilience.default", "unknown key"),
        ({"defaults": []}, "resilience.defaults", "table of policies"),
        ({"defaults": {"breaker": 3}}, "resilience.defaults.breaker", "object"),
        ({"defaults": {"timeout": -1}}, "resilience.defaults.timeout", "seconds > 0"),
        ({"defaults": {"timeout": 0}}, "resilience.defaults.timeout", "seconds > 0"),
        ({"defaults": {"timeout": float("inf")}}, "resilience.defaults.timeout", "seconds > 0"),
        ({"defaults": {"timeout": "2s"}}, "resilience.defaults.timeout", "float"),
        ({"defaults": {"timeout": True}}, "resilience.defaults.timeout", "float"),
        ({"defaults": {"shadow": "breaker"}}, "resilience.defaults.shadow", "array"),
        ({"defaults": {"shadow": ["retry"]}}, "resilience.defaults.shadow", "cannot shadow"),
        ({"edges": []}, "resilience.edges", "table of edges"),
        ({"inbound": []}, "resilience.inbound", "table of services"),
        # routes live under an edge, nowhere else
        ({"defaults": {"routes": {}}}, "resilience.defaults.routes", "unknown policy"),
        (
            {"edges": {"a->b": {"routes": {"/r": {"routes": {}}}}}},
            "resilience.edges.a->b.routes./r.routes",
            "unknown policy",
        ),
        ({"edges": {"a->b": {"routes": []}}}, "resilience.edges.a->b.routes", "table of routes"),
        (
            {"edges": {"a->b": {"routes": {"devices": {}}}}},
            "resilience.edges.a->b.routes.devices",
            "starts with '/'",
        ),
    ],
)
def test_structural_errors_name_the_key(raw: dict[str, Any], key: str, match: str) -> None:
    exc = error_of(raw)
    assert exc.key == key
    assert match in str(exc)


@pytest.mark.parametrize(
    "edge", ["a-b", "a->", "->b", "*->*", "a->b->c", "A->b", "a ->b", "a->b c", "1a->b", ""]
)
def test_bad_edge_names(edge: str) -> None:
    exc = error_of({"edges": {edge: {"timeout": 1.0}}})
    assert exc.key == f"resilience.edges.{edge}"
    assert "caller->callee" in str(exc)


@pytest.mark.parametrize("edge", ["a->b", "*->b", "a->*", "site-agg->devices-2"])
def test_good_edge_names(edge: str) -> None:
    assert edge in settings({"edges": {edge: {"timeout": 1.0}}}).edges


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"retry": {}}, "resilience.inbound.devices.retry"),
        ({"timeout": 1.0, "limiter": {}}, "resilience.inbound.devices.timeout"),
        ({"breaker": False}, "resilience.inbound.devices.breaker"),
        ({"routes": {"/r": {}}}, "resilience.inbound.devices.routes"),
        (
            {"limiter": {"default_fraction": 0}},
            "resilience.inbound.devices.limiter.default_fraction",
        ),
        ({"shadow": ["bulkhead"]}, "resilience.inbound.devices.shadow"),  # absent policy
    ],
)
def test_inbound_takes_only_door_policies(body: dict[str, Any], key: str) -> None:
    exc = error_of({"inbound": {"devices": body}})
    assert exc.key == key


def test_inbound_service_names_are_service_names() -> None:
    assert error_of({"inbound": {"Devices": {}}}).key == "resilience.inbound.Devices"
    s = settings({"inbound": {"devices": {"limiter": {}, "bulkhead": {}, "shadow": ["limiter"]}}})
    door = s.inbound_policy("devices")
    assert door.shadow == ("limiter",)
    assert door.bulkhead is not None


@pytest.mark.parametrize(
    ("raw", "key", "match"),
    [
        # hedging and retries in one layer
        ({"edges": {"a->b": {"hedge": {}, "retry": {}}}}, "resilience.edges.a->b.hedge", "hedge"),
        # ... or brought together by merging
        ({"defaults": {"retry": {}}, "edges": {"a->b": {"hedge": {}}}}, None, "hedge"),
        # ... by two wildcard layers that meet on a->b, though no layer names a->b
        ({"edges": {"*->b": {"hedge": {}}, "a->*": {"retry": {}}}}, None, "hedge"),
        # ... in a route of a wildcard edge
        (
            {"edges": {"a->*": {"retry": {}}, "*->b": {"routes": {"/r": {"hedge": {}}}}}},
            "resilience.edges.*->b.routes./r.hedge",
            "hedge",
        ),
        # shadowing a policy that is not there
        ({"defaults": {"shadow": ["breaker"]}}, "resilience.defaults.shadow", "not configured"),
        (
            {
                "defaults": {"breaker": {}, "shadow": ["breaker"]},
                "edges": {"a->b": {"routes": {"/r": {"breaker": False}}}},
            },
            "resilience.edges.a->b.routes./r.shadow",
            "not configured",
        ),
    ],
)
def test_impossible_combinations_fail_at_load(
    raw: dict[str, Any], key: str | None, match: str
) -> None:
    exc = error_of(raw)
    assert match in str(exc)
    assert exc.key.startswith("resilience.")
    if key is not None:
        assert exc.key == key


# -- environment overrides ---------------------------------------------------------------------

ENV = "GARRISON_RESILIENCE__DEFAULTS__TIMEOUT"


@pytest.mark.parametrize("value", ["x", "-1", "0", "inf"])
@pytest.mark.parametrize(
    "data", [{}, {"resilience": {"defaults": {"timeout": 1.0}}}], ids=["absent", "in-file"]
)
def test_a_bad_environment_override_is_reported_naming_the_variable(
    data: dict[str, Any], value: str
) -> None:
    config = parse_config(data, source="garrison.toml", env={ENV: value})
    with pytest.raises(ConfigError) as info:
        ResilienceSettings.from_config(config)
    assert info.value.key == "resilience.defaults.timeout"
    assert info.value.source == f"environment {ENV}"
    assert ENV in str(info.value)


@pytest.mark.parametrize(
    "data", [{}, {"resilience": {"defaults": {"timeout": 1.0}}}], ids=["absent", "in-file"]
)
def test_a_good_environment_override_applies(data: dict[str, Any]) -> None:
    config = parse_config(data, env={ENV: "0.25"})
    assert ResilienceSettings.from_config(config).policy("a", "b").timeout == 0.25


def test_a_nested_environment_override_is_named_too() -> None:
    var = "GARRISON_RESILIENCE__DEFAULTS__BREAKER__FAILURE_RATE_THRESHOLD"
    config = parse_config({}, env={var: "2"})
    with pytest.raises(ConfigError) as info:
        ResilienceSettings.from_config(config)
    assert info.value.key == "resilience.defaults.breaker.failure_rate_threshold"
    assert info.value.source == f"environment {var}"


def test_file_errors_name_the_file() -> None:
    config = parse_config({"resilience": {"defaults": {"breakr": {}}}}, source="/app/garrison.toml")
    with pytest.raises(ConfigError) as info:
        ResilienceSettings.from_config(config)
    assert info.value.source == "/app/garrison.toml"
    assert str(info.value).startswith("/app/garrison.toml [resilience.defaults.breakr]")
