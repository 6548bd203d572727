"""Logging: one logger per pillar; JSON lines that a collector can parse."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from garrison.core import JsonFormatter, configure_logging, get_logger

PILLARS = [
    "core",
    "identity",
    "resilience",
    "durable",
    "streams",
    "chaos",
    "service",
    "gateway",
    "control",
    "cli",
    "dev",
]


@pytest.fixture
def garrison_root() -> Iterator[logging.Logger]:
    """The ``garrison`` logger, restored after the test."""
    root = logging.getLogger("garrison")
    saved = (list(root.handlers), root.level, root.propagate)
    try:
        yield root
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        root.propagate = saved[2]


@pytest.fixture
def json_lines(garrison_root: logging.Logger) -> io.StringIO:
    """A stream receiving garrison's logs through a JsonFormatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    garrison_root.addHandler(handler)
    garrison_root.setLevel(logging.DEBUG)
    garrison_root.propagate = False
    return stream


def records(stream: io.StringIO) -> list[dict[str, object]]:
    lines = stream.getvalue().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("pillar", PILLARS)
def test_get_logger_per_pillar(pillar: str) -> None:
    logger = get_logger(pillar)
    assert logger.name == f"garrison.{pillar}"
    assert logger is get_logger(pillar)


def test_get_logger_accepts_a_child_of_a_pillar() -> None:
    assert get_logger("durable.sqlite").name == "garrison.durable.sqlite"


@pytest.mark.parametrize("pillar", ["", "nope", "Core", "coreutils", "garrison.core", ".core"])
def test_get_logger_rejects_unknown_pillars(pillar: str) -> None:
    with pytest.raises(ValueError, match="unknown pillar") as info:
        get_logger(pillar)
    assert "resilience" in str(info.value)  # the message lists what is allowed


def test_json_formatter_emits_one_object_with_extra_fields(json_lines: io.StringIO) -> None:
    get_logger("resilience").warning(
        "breaker %s opened", "devices", extra={"edge": "api->devices", "failures": 5}
    )
    assert "\n" not in json_lines.getvalue().rstrip("\n")
    [rec] = records(json_lines)
    assert rec["level"] == "WARNING"
    assert rec["logger"] == "garrison.resilience"
    assert rec["msg"] == "breaker devices opened"
    assert rec["edge"] == "api->devices"
    assert rec["failures"] == 5
    assert set(rec) == {"ts", "level", "logger", "msg", "edge", "failures"}


def test_json_timestamp_is_utc_iso8601(json_lines: io.StringIO) -> None:
    get_logger("core").info("hello")
    [rec] = records(json_lines)
    ts = rec["ts"]
    assert isinstance(ts, str)
    assert ts.endswith("Z")
    parsed = dt.datetime.fromisoformat(ts)
    assert parsed.utcoffset() == dt.timedelta(0)


def test_json_formatter_stringifies_what_json_cannot_hold(json_lines: io.StringIO) -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque!"

    get_logger("core").info("x", extra={"thing": Opaque(), "when": dt.date(2024, 1, 2)})
    [rec] = records(json_lines)
    assert rec["thing"] == "opaque!"
    assert rec["when"] == "2024-01-02"


def test_json_formatter_keeps_a_multiline_message_on_one_line(json_lines: io.StringIO) -> None:
    get_logger("core").info("line one\nline two")
    assert len(json_lines.getvalue().splitlines()) == 1
    assert records(json_lines)[0]["msg"] == "line one\nline two"


def test_json_formatter_includes_the_exception(json_lines: io.StringIO) -> None:
    try:
        raise RuntimeError("kaboom")
    except RuntimeError:
        get_logger("durable").exception("activity failed")
    assert len(json_lines.getvalue().splitlines()) == 1
    [rec] = records(json_lines)
    assert rec["level"] == "ERROR"
    exc = rec["exc"]
    assert isinstance(exc, str)
    assert "Traceback" in exc
    assert "RuntimeError: kaboom" in exc


def test_json_formatter_on_a_bare_record() -> None:
    record = logging.makeLogRecord({"name": "garrison.core", "msg": "hi %d", "args": (3,)})
    rec = json.loads(JsonFormatter().format(record))
    assert rec["msg"] == "hi 3"
    assert rec["logger"] == "garrison.core"


def test_configure_logging_is_idempotent(
    garrison_root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("debug", "json")
    configure_logging("debug", "json")
    ours = [h for h in garrison_root.handlers if getattr(h, "_garrison", False)]
    assert len(ours) == 1
    assert garrison_root.level == logging.DEBUG
    assert garrison_root.propagate is False

    get_logger("core").debug("configured", extra={"n": 1})
    err = capsys.readouterr().err
    [line] = err.splitlines()
    rec = json.loads(line)
    assert (rec["msg"], rec["n"], rec["level"]) == ("configured", 1, "DEBUG")


def test_configure_logging_text(
    garrison_root: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("WARNING", "text")
    get_logger("chaos").info("hidden")
    get_logger("chaos").warning("shown")
    err = capsys.readouterr().err
    assert "hidden" not in err
    assert "WARNING garrison.chaos: shown" in err
    [handler] = [h for h in garrison_root.handlers if getattr(h, "_garrison", False)]
    assert isinstance(handler, logging.StreamHandler)
    assert handler.stream is sys.stderr
