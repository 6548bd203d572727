"""garrison.toml and GARRISON_* overrides: typed results, and errors that say where and what."""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from garrison.core import (
    AppConfig,
    ClientConfig,
    ConfigError,
    DevConfig,
    GarrisonConfig,
    LogConfig,
    ServiceConfig,
    UsageError,
    load_config,
    parse_config,
)

API = """
[services.api]
app = "svc.api:service"
port = 8000
"""


def write(folder: Path, text: str, name: str = "garrison.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_error(path: Path, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env or {})
    return info.value


def env_error(env: dict[str, str], data: dict[str, object] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data or {}, source="garrison.toml", env=env)
    return info.value


def assert_names(err: ConfigError, *, source: str, key: str, expected: str) -> None:
    """The error names where the value came from, the dotted key and what was expected."""
    text = str(err)
    assert err.source == source
    assert err.key == key
    assert text.startswith(f"{source} [{key}]: ") if key else text.startswith(f"{source}: ")
    assert expected in text


def api_service(**fields: object) -> dict[str, object]:
    return {"services": {"api": {"app": "svc.api:service", "port": 8000, **fields}}}


# --- defaults and successful loads -----------------------------------------------------------


def test_config_error_is_a_usage_error() -> None:
    assert issubclass(ConfigError, UsageError)


def test_defaults_when_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={})
    assert cfg == GarrisonConfig(root=str(tmp_path.resolve()), source="garrison.toml")
    assert cfg.app == AppConfig(name="app", data_dir=".garrison")
    assert cfg.services == {}
    assert cfg.client == ClientConfig()
    assert cfg.client.load_balancer == "p2c"
    assert cfg.log == LogConfig(level="INFO", format="text")
    assert cfg.dev == DevConfig()


def test_parse_config_of_nothing_is_the_defaults() -> None:
    assert parse_config({}) == GarrisonConfig()


def test_no_file_reads_os_environ_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("GARRISON_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GARRISON_LOG__LEVEL", "DEBUG")
    assert load_config().log.level == "DEBUG"


def test_garrison_root_locates_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, API)
    monkeypatch.chdir(tmp_path.parent)
    cfg = load_config(env={"GARRISON_ROOT": str(tmp_path)})
    assert cfg.service("api").port == 8000
    assert cfg.root == str(tmp_path.resolve())


def test_loads_a_full_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [app]
        name = "fleet"
        data_dir = "state"

        [services.api]
        app = "fleet.api:service"
        port = 8000
        replicas = 2
        env = { MODE = "fast" }

        [services.site-agg]
        app = "fleet.sites:service"
        port = 8100
        host = "0.0.0.0"

        [client]
        timeout = 5          # an integer is fine for a float setting
        connect_timeout = 0.5
        load_balancer = "round_robin"
        max_connections = 16

        [log]
        level = "DEBUG"
        format = "json"

        [dev]
        restart_initial_backoff = 0.1
        restart_max_backoff = 2.0
        stop_timeout = 1.0
        """,
    )
    cfg = load_config(path, env={})
    assert cfg.app == AppConfig(name="fleet", data_dir="state")
    assert cfg.services["api"] == ServiceConfig(
        app="fleet.api:service", port=8000, replicas=2, env={"MODE": "fast"}
    )
    assert cfg.service("site-agg").host == "0.0.0.0"
    assert cfg.client == ClientConfig(
        timeout=5.0, connect_timeout=0.5, load_balancer="round_robin", max_connections=16
    )
    assert isinstance(cfg.client.timeout, float)
    assert cfg.log == LogConfig(level="DEBUG", format="json")
    assert cfg.dev == DevConfig(
        restart_initial_backoff=0.1, restart_max_backoff=2.0, stop_timeout=1.0
    )
    assert cfg.root == str(tmp_path.resolve())


def test_path_may_be_the_folder(tmp_path: Path) -> None:
    write(tmp_path, API)
    assert load_config(tmp_path, env={}).service("api").port == 8000
    assert load_config(str(tmp_path), env={}).root == str(tmp_path.resolve())


def test_path_may_be_a_file_with_any_name(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, API, "prod.toml"), env={}).service("api").port == 8000
    # a file without a suffix is a file, not a folder to look into
    assert load_config(write(tmp_path, API, "config"), env={}).service("api").port == 8000


def test_config_is_frozen() -> None:
    cfg = parse_config(api_service())
    with pytest.raises(AttributeError):
        cfg.log = LogConfig()  # type: ignore[misc]
    with pytest.raises(AttributeError):
        cfg.service("api").port = 1  # type: ignore[misc]


def test_parse_config_does_not_change_its_input() -> None:
    data = api_service()
    parse_config(data, env={"GARRISON_SERVICES__API__PORT": "9000"})
    assert data == api_service()


def test_service_lookup_names_the_declared_services() -> None:
    cfg = parse_config(api_service())
    with pytest.raises(ConfigError) as info:
        cfg.service("billing")
    assert info.value.key == "services.billing"
    assert "no service named 'billing'" in str(info.value)
    assert "declared: api" in str(info.value)


# --- ServiceConfig.urls ------------------------------------------------------------------------


def test_urls_one_per_replica() -> None:
    svc = ServiceConfig(app="m:s", port=8000, replicas=3)
    assert svc.urls() == ["http://127.0.0.1:8000", "http://127.0.0.1:8001", "http://127.0.0.1:8002"]


def test_urls_use_the_host() -> None:
    assert ServiceConfig(app="m:s", port=9000, host="10.0.0.7").urls() == ["http://10.0.0.7:9000"]


def test_urls_explicit_instances_win() -> None:
    instances = ["http://a.internal:80", "http://b.internal:80"]
    svc = ServiceConfig(app="m:s", port=8000, replicas=5, instances=instances)
    urls = svc.urls()
    assert urls == instances
    urls.append("http://c.internal:80")  # a copy: the frozen config is not changed through it
    assert svc.urls() == instances


def test_urls_from_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, API + "replicas = 2\n")
    assert load_config(path, env={}).service("api").urls() == [
        "http://127.0.0.1:8000",
        "http://127.0.0.1:8001",
    ]


# --- file errors -------------------------------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'colour = "blue"\n')
    err = load_error(path)
    assert_names(err, source=str(path), key="colour", expected="unknown key")
    expected = (
        "expected one of: app, client, dev, durable, gateway, identity, log, resilience, "
        "services, streams"
    )
    assert expected in str(err)


def test_unknown_key_in_a_section(tmp_path: Path) -> None:
    path = write(tmp_path, '[log]\nlevle = "DEBUG"\n')
    err = load_error(path)
    assert_names(err, source=str(path), key="log.levle", expected="unknown key")
    assert "expected one of: format, level" in str(err)


def test_unknown_key_in_a_service(tmp_path: Path) -> None:
    path = write(tmp_path, API + "replica = 2\n")
    err = load_error(path)
    assert_names(err, source=str(path), key="services.api.replica", expected="unknown key")
    assert "replicas" in str(err)


def test_unknown_section(tmp_path: Path) -> None:
    path = write(tmp_path, "[clinet]\ntimeout = 1.0\n")
    assert_names(load_error(path), source=str(path), key="clinet", expected="unknown key")


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('[client]\ntimeout = "fast"\n', "client.timeout", "Expected `float`, got `str`"),
        ("[client]\nmax_connections = 2.5\n", "client.max_connections", "Expected `int`"),
        ("[log]\nlevel = 10\n", "log.level", "got `int`"),
        ("[app]\nname = 3\n", "app.name", "Expected `str`, got `int`"),
        ("log = 3\n", "log", "Expected `object`, got `int`"),
        ("[services]\napi = 3\n", "services.api", "Expected `object`, got `int`"),
        (API.replace("8000", '"8000"'), "services.api.port", "Expected `int`, got `str`"),
        (API.replace("8000", "8000.0"), "services.api.port", "Expected `int`, got `float`"),
        (API + 'instances = ["http://a", 1]\n', "services.api.instances.1", "Expected `str`"),
        (API + 'instances = "http://a"\n', "services.api.instances", "Expected `array`"),
        (API + "env = { GOOD = 'x', BAD = 1 }\n", "services.api.env.BAD", "Expected `str`"),
    ],
)
def test_wrong_type(tmp_path: Path, text: str, key: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert_names(load_error(path), source=str(path), key=key, expected=expected)


def test_services_must_be_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'services = ["api"]\n')
    err = load_error(path)
    assert_names(err, source=str(path), key="services", expected="expected a table of services")


@pytest.mark.parametrize("missing", ["app", "port"])
def test_missing_required_key(tmp_path: Path, missing: str) -> None:
    lines = [line for line in API.splitlines() if not line.startswith(missing)]
    path = write(tmp_path, "\n".join(lines))
    err = load_error(path)
    assert_names(err, source=str(path), key=f"services.api.{missing}", expected="missing required")


@pytest.mark.parametrize(
    ("text", "key", "allowed"),
    [
        (
            '[log]\nlevel = "TRACE"\n',
            "log.level",
            "'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'",
        ),
        ('[log]\nlevel = "debug"\n', "log.level", "'DEBUG', 'INFO'"),
        ('[log]\nformat = "yaml"\n', "log.format", "'text', 'json'"),
        (
            '[client]\nload_balancer = "random"\n',
            "client.load_balancer",
            "'p2c', 'least_outstanding', 'round_robin'",
        ),
    ],
)
def test_bad_enum_lists_the_allowed_values(
    tmp_path: Path, text: str, key: str, allowed: str
) -> None:
    path = write(tmp_path, text)
    err = load_error(path)
    assert_names(err, source=str(path), key=key, expected=f"expected one of {allowed}")
    bad = text.split('"')[1]
    assert f"got {bad!r}" in str(err)


@pytest.mark.parametrize(
    ("port", "expected"), [(0, ">= 1; got 0"), (-1, ">= 1; got -1"), (65536, "<= 65535; got 65536")]
)
def test_port_out_of_range(tmp_path: Path, port: int, expected: str) -> None:
    path = write(tmp_path, API.replace("8000", str(port)))
    assert_names(load_error(path), source=str(path), key="services.api.port", expected=expected)


def test_edge_ports_are_fine(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, API.replace("8000", "1")), env={}).service("api").port == 1
    top = load_config(write(tmp_path, API.replace("8000", "65535")), env={})
    assert top.service("api").urls() == ["http://127.0.0.1:65535"]


def test_replicas_must_fit_below_the_last_port(tmp_path: Path) -> None:
    path = write(tmp_path, API.replace("8000", "65534") + "replicas = 3\n")
    err = load_error(path)
    assert_names(err, source=str(path), key="services.api", expected="need ports up to 65536")
    # explicit instances do not use port + i
    ok = parse_config(
        api_service(port=65534, replicas=3, instances=["http://a:1", "http://b:1", "http://c:1"])
    )
    assert len(ok.service("api").urls()) == 3


@pytest.mark.parametrize("replicas", [0, 65])
def test_replicas_out_of_range(tmp_path: Path, replicas: int) -> None:
    path = write(tmp_path, API + f"replicas = {replicas}\n")
    assert_names(
        load_error(path), source=str(path), key="services.api.replicas", expected="Expected"
    )


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("client", "timeout", "0"),
        ("client", "connect_timeout", "-1.5"),
        ("client", "timeout", "nan"),
        ("dev", "stop_timeout", "0.0"),
        ("client", "max_connections", "0"),
    ],
)
def test_non_positive_numbers(tmp_path: Path, section: str, key: str, value: str) -> None:
    path = write(tmp_path, f"[{section}]\n{key} = {value}\n")
    err = load_error(path)
    assert_names(err, source=str(path), key=f"{section}.{key}", expected="Expected")
    assert "got" in str(err)


@pytest.mark.parametrize("name", ["Api", "site_agg", "9lives", "-api", "a" * 64, "api.v2", ""])
def test_bad_service_name(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, API.replace("[services.api]", f'[services."{name}"]'))
    err = load_error(path)
    assert_names(
        err,
        source=str(path),
        key=f"services.{name}",
        expected="lowercase letters, digits and '-', starting with a letter",
    )
    assert repr(name) in str(err)


@pytest.mark.parametrize("name", ["a", "api", "site-agg", "a1-b2", "a" * 63])
def test_good_service_names(name: str) -> None:
    cfg = parse_config({"services": {name: {"app": "m:s", "port": 1}}})
    assert list(cfg.services) == [name]


@pytest.mark.parametrize("name", ["Fleet", "fleet_app", "1fleet"])
def test_bad_app_name(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f'[app]\nname = "{name}"\n')
    err = load_error(path)
    assert_names(err, source=str(path), key="app.name", expected="expected lowercase letters")
    assert repr(name) in str(err)


@pytest.mark.parametrize(
    "app", ["svc.api", "svc.api:", ":service", "svc api:service", "svc.api:1st", "svc-api:x", ""]
)
def test_bad_app_import_path(tmp_path: Path, app: str) -> None:
    path = write(tmp_path, API.replace('"svc.api:service"', f'"{app}"'))
    err = load_error(path)
    assert_names(
        err,
        source=str(path),
        key="services.api.app",
        expected="expected an import path 'module.path:attribute'",
    )
    assert f"got {app!r}" in str(err)


@pytest.mark.parametrize("app", ["svc:service", "fleet.sites.v2:svc", "_m._n:_x"])
def test_good_app_import_paths(app: str) -> None:
    assert parse_config(api_service(app=app)).service("api").app == app


def test_not_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[services.api\nport = \n")
    assert_names(load_error(path), source=str(path), key="", expected="not valid TOML")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "garrison.toml"
    path.write_bytes(b'[app]\nname = "\xff\xfe"\n')
    assert_names(load_error(path), source=str(path), key="", expected="cannot read")


def test_missing_file_when_a_path_is_given(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    err = load_error(path)
    assert_names(err, source=str(path), key="", expected="configuration file not found")


def test_folder_without_a_config_file(tmp_path: Path) -> None:
    err = load_error(tmp_path)
    expected = "configuration file not found"
    assert_names(err, source=str(tmp_path / "garrison.toml"), key="", expected=expected)


def test_config_file_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "garrison.toml").mkdir()
    source = str(tmp_path / "garrison.toml")
    assert_names(load_error(tmp_path), source=source, key="", expected="is a folder")


def test_config_file_that_is_a_folder_without_a_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "garrison.toml").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(env={})


def test_root_is_not_a_setting(tmp_path: Path) -> None:
    path = write(tmp_path, 'root = "/elsewhere"\n')
    assert_names(load_error(path), source=str(path), key="root", expected="set by the loader")


# --- environment overrides ---------------------------------------------------------------------


def test_env_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, API + '\n[log]\nlevel = "INFO"\nformat = "json"\n')
    cfg = load_config(
        path, env={"GARRISON_SERVICES__API__PORT": "9001", "GARRISON_LOG__LEVEL": "DEBUG"}
    )
    assert cfg.service("api").port == 9001
    assert cfg.service("api").app == "svc.api:service"  # the rest of the table is kept
    assert cfg.log == LogConfig(level="DEBUG", format="json")


def test_env_adds_keys_the_file_lacks(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, API), env={"GARRISON_CLIENT__TIMEOUT": "2.5"})
    assert cfg.client.timeout == 2.5


def test_env_can_declare_a_whole_service() -> None:
    cfg = parse_config(
        {},
        env={
            "GARRISON_SERVICES__SITE_AGG__APP": "fleet.sites:service",
            "GARRISON_SERVICES__SITE_AGG__PORT": "8100",
            "GARRISON_SERVICES__SITE_AGG__ENV__DATABASE_URL": "postgres://db/fleet",
        },
    )
    assert cfg.service("site-agg") == ServiceConfig(
        app="fleet.sites:service", port=8100, env={"DATABASE_URL": "postgres://db/fleet"}
    )


def test_env_inline_table_sets_a_whole_table() -> None:
    cfg = parse_config({}, env={"GARRISON_SERVICES__API": '{ app = "m:s", port = 7000 }'})
    assert cfg.service("api").urls() == ["http://127.0.0.1:7000"]


def test_env_later_keys_apply_inside_an_env_table() -> None:
    env = {
        "GARRISON_SERVICES__API": '{ app = "m:s", port = 7000 }',
        "GARRISON_SERVICES__API__PORT": "7001",
    }
    assert parse_config({}, env=env).service("api").port == 7001


def test_env_ignores_other_variables() -> None:
    env = {
        "GARRISON_ROOT": "/somewhere",  # no "__": not a setting
        "OTHER_LOG__LEVEL": "nonsense",
        "garrison_log__level": "nonsense",  # the prefix is case-sensitive
        "PATH": "/usr/bin",
    }
    assert parse_config({}, env=env) == GarrisonConfig()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("9001", 9001),
        ("0x2329", 9001),
        ("9_001", 9001),
    ],
)
def test_env_integers(raw: str, expected: int) -> None:
    cfg = parse_config(api_service(), env={"GARRISON_SERVICES__API__PORT": raw})
    assert cfg.service("api").port == expected


def test_env_toml_literals() -> None:
    cfg = parse_config(
        api_service(),
        env={
            "GARRISON_CLIENT__TIMEOUT": "2.5",
            "GARRISON_CLIENT__CONNECT_TIMEOUT": "1e-1",
            "GARRISON_SERVICES__API__INSTANCES": '["http://a:1", "http://b:2"]',
            "GARRISON_SERVICES__API__ENV": '{ A = "1", B = "two" }',
            "GARRISON_LOG__LEVEL": '"ERROR"',  # a quoted TOML string
            "GARRISON_LOG__FORMAT": "json",  # not TOML: taken as text
        },
    )
    assert cfg.client.timeout == 2.5
    assert cfg.client.connect_timeout == 0.1
    assert cfg.service("api").urls() == ["http://a:1", "http://b:2"]
    assert cfg.service("api").env == {"A": "1", "B": "two"}
    assert cfg.log == LogConfig(level="ERROR", format="json")


@pytest.mark.parametrize("raw", ["127.0.0.1", "localhost", "::1", "10.0.0.7"])
def test_env_text_that_is_not_toml(raw: str) -> None:
    cfg = parse_config(api_service(), env={"GARRISON_SERVICES__API__HOST": raw})
    assert cfg.service("api").host == raw


@pytest.mark.parametrize("raw", ["1", "true", "inf", "2024-01-01", "[1, 2]"])
def test_env_text_setting_takes_the_text_as_written(raw: str) -> None:
    # TOML would read these as a number, a boolean, a date, an array: a text setting wants text
    cfg = parse_config(
        api_service(),
        env={"GARRISON_APP__DATA_DIR": raw, "GARRISON_SERVICES__API__ENV__WORKERS": raw},
    )
    assert cfg.app.data_dir == raw
    assert cfg.service("api").env == {"WORKERS": raw}


def test_env_value_with_a_newline_is_not_cut() -> None:
    # "5\nmax_connections = 1" parses as TOML, but it is not one literal
    err = env_error({"GARRISON_CLIENT__TIMEOUT": "5\nmax_connections = 1"})
    assert_names(
        err,
        source="environment GARRISON_CLIENT__TIMEOUT",
        key="client.timeout",
        expected="Expected `float`, got `str`",
    )
    cfg = parse_config({}, env={"GARRISON_APP__DATA_DIR": "a\nb = 1"})
    assert cfg.app.data_dir == "a\nb = 1"


@pytest.mark.parametrize(
    "name",
    [
        "GARRISON_SERVICES__SITE_AGG__PORT",
        "GARRISON_SERVICES__site-agg__PORT",
        "GARRISON_SERVICES__Site_Agg__port",
        "GARRISON_services__SITE-AGG__Port",
    ],
)
def test_env_segments_match_case_insensitively_and_dash_underscore(name: str) -> None:
    data = {"services": {"site-agg": {"app": "m:s", "port": 8000}}}
    cfg = parse_config(data, env={name: "9000"})
    assert list(cfg.services) == ["site-agg"]
    assert cfg.service("site-agg").port == 9000


@pytest.mark.parametrize(
    "name",
    [
        "GARRISON_CLIENT__LOAD_BALANCER",
        "GARRISON_client__load-balancer",
        "GARRISON_Client__Load_Balancer",
    ],
)
def test_env_segments_match_fields_absent_from_the_file(name: str) -> None:
    assert parse_config({}, env={name: "round_robin"}).client.load_balancer == "round_robin"


def test_env_matches_an_existing_env_entry_case_insensitively() -> None:
    cfg = parse_config(
        api_service(env={"Mode": "slow"}),
        env={"GARRISON_SERVICES__API__ENV__MODE": "fast", "GARRISON_SERVICES__API__ENV__new": "x"},
    )
    assert cfg.service("api").env == {"Mode": "fast", "new": "x"}


def test_env_wrong_type() -> None:
    err = env_error({"GARRISON_CLIENT__TIMEOUT": "fast"})
    assert_names(
        err,
        source="environment GARRISON_CLIENT__TIMEOUT",
        key="client.timeout",
        expected="Expected `float`, got `str`",
    )


def test_env_bad_enum() -> None:
    err = env_error({"GARRISON_LOG__LEVEL": "LOUD"}, {"log": {"level": "INFO"}})
    assert_names(
        err,
        source="environment GARRISON_LOG__LEVEL",
        key="log.level",
        expected="expected one of 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'; got 'LOUD'",
    )


def test_env_bad_nested_service_key() -> None:
    err = env_error({"GARRISON_SERVICES__API__PORT": "0"}, api_service())
    assert_names(
        err,
        source="environment GARRISON_SERVICES__API__PORT",
        key="services.api.port",
        expected=">= 1; got 0",
    )


def test_env_unknown_service_key() -> None:
    err = env_error({"GARRISON_SERVICES__API__PROT": "9000"}, api_service())
    assert_names(
        err,
        source="environment GARRISON_SERVICES__API__PROT",
        key="services.api.prot",
        expected="unknown key",
    )


def test_env_unknown_section() -> None:
    err = env_error({"GARRISON_LGO__LEVEL": "DEBUG"})
    assert_names(err, source="environment GARRISON_LGO__LEVEL", key="lgo", expected="unknown key")


def test_env_bad_service_name() -> None:
    err = env_error({"GARRISON_SERVICES__API.V2__PORT": "1"})
    assert_names(
        err,
        source="environment GARRISON_SERVICES__API.V2__PORT",
        key="services.api.v2",
        expected="starting with a letter",
    )


def test_env_service_missing_a_required_key() -> None:
    # the environment created the service, so it is the one to blame for what is missing
    err = env_error({"GARRISON_SERVICES__API__PORT": "8000"})
    assert_names(
        err,
        source="environment GARRISON_SERVICES__API__PORT",
        key="services.api.app",
        expected="missing required key",
    )


def test_file_is_blamed_for_its_own_errors_even_with_env_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, API.replace("8000", '"x"'))
    err = load_error(path, env={"GARRISON_SERVICES__API__HOST": "0.0.0.0"})
    assert_names(err, source=str(path), key="services.api.port", expected="got `str`")


def test_env_key_inside_a_non_table() -> None:
    err = env_error({"GARRISON_LOG__LEVEL__COLOUR": "red"}, {"log": {"level": "INFO"}})
    assert_names(
        err,
        source="environment GARRISON_LOG__LEVEL__COLOUR",
        key="log.level",
        expected="cannot set a key inside a str",
    )


def test_env_key_inside_a_list() -> None:
    err = env_error(
        {"GARRISON_SERVICES__API__INSTANCES__FIRST": "http://a"},
        api_service(instances=["http://b"]),
    )
    assert_names(
        err,
        source="environment GARRISON_SERVICES__API__INSTANCES__FIRST",
        key="services.api.instances",
        expected="cannot set a key inside a list",
    )


def test_env_key_below_a_setting_the_file_lacks() -> None:
    err = env_error({"GARRISON_LOG__LEVEL__COLOUR": "red"})
    assert_names(
        err,
        source="environment GARRISON_LOG__LEVEL__COLOUR",
        key="log.level",
        expected="Expected `str`, got `object`",
    )


def test_env_empty_key_segment() -> None:
    err = env_error({"GARRISON_LOG____LEVEL": "DEBUG"})
    assert_names(err, source="environment GARRISON_LOG____LEVEL", key="", expected="empty key")


def test_env_cannot_set_root() -> None:
    err = env_error({"GARRISON_ROOT__PATH": '"/x"'})
    assert_names(err, source="environment GARRISON_ROOT__PATH", key="root", expected="loader")


# --- properties ----------------------------------------------------------------------------------


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


no_surrogates = st.characters(exclude_categories=["Cs"])


@given(st.integers(min_value=1, max_value=65535))
def test_env_port_round_trips(port: int) -> None:
    cfg = parse_config(api_service(), env={"GARRISON_SERVICES__API__PORT": str(port)})
    assert cfg.service("api").port == port


@given(st.floats(min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False))
def test_env_float_round_trips(value: float) -> None:
    cfg = parse_config({}, env={"GARRISON_CLIENT__TIMEOUT": repr(value)})
    assert cfg.client.timeout == value


@given(st.text(alphabet=no_surrogates))
def test_env_quoted_string_round_trips(text: str) -> None:
    cfg = parse_config({}, env={"GARRISON_APP__DATA_DIR": toml_string(text)})
    assert cfg.app.data_dir == text


@given(st.text().filter(lambda s: not s.lstrip(" \t").startswith(('"', "'"))))
def test_env_unquoted_text_for_a_text_setting_is_taken_as_written(text: str) -> None:
    cfg = parse_config(api_service(), env={"GARRISON_SERVICES__API__ENV__VALUE": text})
    assert cfg.service("api").env == {"VALUE": text}


@given(st.lists(st.text(alphabet=no_surrogates), max_size=5))
def test_env_array_round_trips(urls: list[str]) -> None:
    raw = "[" + ", ".join(toml_string(u) for u in urls) + "]"
    cfg = parse_config(api_service(), env={"GARRISON_SERVICES__API__INSTANCES": raw})
    assert cfg.service("api").instances == urls


segment_spelling = st.sampled_from(["SITE_AGG", "site-agg", "Site_Agg", "SITE-agg", "sItE_aGg"])


@given(segment_spelling, st.sampled_from(["PORT", "port", "Port"]))
def test_env_any_spelling_reaches_the_service(service: str, field: str) -> None:
    data = {"services": {"site-agg": {"app": "m:s", "port": 8000}}}
    cfg = parse_config(data, env={f"GARRISON_SERVICES__{service}__{field}": "9000"})
    assert cfg.service("site-agg").port == 9000


def test_timeout_accepts_infinity_but_not_nan() -> None:
    assert math.isinf(parse_config({}, env={"GARRISON_CLIENT__TIMEOUT": "inf"}).client.timeout)
    with pytest.raises(ConfigError, match=r"\[client.timeout\]"):
        parse_config({}, env={"GARRISON_CLIENT__TIMEOUT": "nan"})


def test_config_round_trips_through_msgspec() -> None:
    cfg = parse_config(api_service(replicas=2, env={"A": "b"}))
    again = msgspec.convert(msgspec.to_builtins(cfg), GarrisonConfig)
    assert again == cfg
