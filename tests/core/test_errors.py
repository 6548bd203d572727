"""The one exception tree: what the caller caused apart from what a peer caused."""

from __future__ import annotations

import pickle
import re

import pytest

import garrison.core
from garrison.core import (
    ConfigError,
    DeadlineExceeded,
    GarrisonError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    RemoteError,
    RemoteProtocolError,
    RemoteStatusError,
    ServiceUnavailable,
    TransportError,
    Unauthenticated,
    UsageError,
    _errors,
)

PARENT = {
    UsageError: GarrisonError,
    ConfigError: UsageError,
    InvalidInput: UsageError,
    Unauthenticated: UsageError,
    PermissionDenied: UsageError,
    RemoteError: GarrisonError,
    DeadlineExceeded: RemoteError,
    ServiceUnavailable: RemoteError,
    TransportError: RemoteError,
    RemoteProtocolError: RemoteError,
    RemoteStatusError: RemoteError,
    NotFound: GarrisonError,
}


def exported_errors() -> list[type[BaseException]]:
    names = garrison.core.__all__
    objs = [getattr(garrison.core, n) for n in names]
    return [o for o in objs if isinstance(o, type) and issubclass(o, BaseException)]


def test_root_is_an_exception() -> None:
    assert GarrisonError.__bases__ == (Exception,)


@pytest.mark.parametrize("error", exported_errors(), ids=lambda e: e.__name__)
def test_every_exported_error_is_a_garrison_error(error: type[BaseException]) -> None:
    assert issubclass(error, GarrisonError)


def test_the_tree_is_pinned() -> None:
    exported = set(exported_errors()) - {GarrisonError}
    assert exported == set(PARENT)
    for error, parent in PARENT.items():
        assert error.__bases__ == (parent,), error


def test_the_docstring_draws_the_tree() -> None:
    # the module docstring is the map users read: keep it true
    doc = _errors.__doc__
    assert doc is not None
    drawn: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in doc.splitlines():
        m = re.match(r"^ {4}([ │├└─]*)(\w+)", line)  # the drawing is indented by four
        if not m:
            continue
        depth, name = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        if stack:
            drawn[name] = stack[-1][1]
        stack.append((depth, name))
    assert drawn == {e.__name__: p.__name__ for e, p in PARENT.items()}


@pytest.mark.parametrize("error", [ConfigError, InvalidInput], ids=lambda e: e.__name__)
def test_caller_errors_are_not_remote(error: type[GarrisonError]) -> None:
    assert issubclass(error, UsageError)
    assert not issubclass(error, RemoteError)


@pytest.mark.parametrize(
    "error",
    [DeadlineExceeded, ServiceUnavailable, TransportError, RemoteStatusError],
    ids=lambda e: e.__name__,
)
def test_peer_errors_are_not_usage_errors(error: type[GarrisonError]) -> None:
    assert issubclass(error, RemoteError)
    assert not issubclass(error, UsageError)


def test_not_found_is_neither() -> None:
    assert not issubclass(NotFound, UsageError | RemoteError)


@pytest.mark.parametrize(
    ("source", "key", "text"),
    [
        ("garrison.toml", "log.level", "garrison.toml [log.level]: bad"),
        ("garrison.toml", "", "garrison.toml: bad"),
        ("", "log.level", "[log.level]: bad"),
        ("", "", "bad"),
    ],
)
def test_config_error_message(source: str, key: str, text: str) -> None:
    err = ConfigError("bad", source=source, key=key)
    assert str(err) == text
    assert (err.source, err.key) == (source, key)


def test_invalid_input_lists_its_problems() -> None:
    assert InvalidInput("bad body").errors == [{"loc": [], "msg": "bad body"}]
    problems = [{"loc": ["items", "0", "qty"], "msg": "Expected `int`"}]
    err = InvalidInput("bad body", problems)
    assert err.errors == problems
    assert str(err) == "bad body"


def test_service_unavailable_is_retryable_unless_said() -> None:
    assert ServiceUnavailable("all instances ejected").retryable is True
    assert ServiceUnavailable("shed", retryable=False).retryable is False


def test_remote_status_error_carries_status_and_body() -> None:
    err = RemoteStatusError(503, b'{"error": "overloaded"}', service="devices", path="/devices/7")
    assert err.status == 503
    assert err.body == b'{"error": "overloaded"}'
    assert (err.service, err.path) == ("devices", "/devices/7")
    assert str(err) == 'devices/devices/7 answered 503: {"error": "overloaded"}'


def test_remote_status_error_message_shows_a_snippet_of_the_body() -> None:
    err = RemoteStatusError(500, b"x" * 1000 + b"\xff")
    assert err.body == b"x" * 1000 + b"\xff"
    assert str(err) == "peer answered 500: " + "x" * 200
    assert str(RemoteStatusError(502, b"\xffbad")) == "peer answered 502: \ufffdbad"


ERRORS = [
    GarrisonError("root"),
    ConfigError("bad", source="garrison.toml", key="log.level"),
    InvalidInput("bad", [{"loc": ["a"], "msg": "bad"}]),
    NotFound("no workflow 'w1'"),
    DeadlineExceeded("request: deadline exceeded"),
    ServiceUnavailable("shed", retryable=False),
    TransportError("connection refused"),
    RemoteStatusError(404, b"missing", service="devices", path="/devices/9"),
]


@pytest.mark.parametrize("err", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_survive_pickling(err: GarrisonError) -> None:
    # errors cross process boundaries (process pools, stored workflow failures)
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err)
    assert str(again) == str(err)
    assert vars(again) == vars(err)
