import json
import logging
import sys
import threading
from collections.abc import Iterator

import pytest
import structlog
from agentline_common.logging import (
    REDACTED,
    bind_correlation_id,
    configure_logging,
    current_correlation_id,
    redact_secrets,
)

pytestmark = pytest.mark.unit


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo `configure_logging`. Tests call it themselves: its handlers keep the stderr of that
    moment, and only in the test's own body is that capsys's."""
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root = logging.getLogger()
    root.handlers = [handler for handler in root.handlers if handler.get_name() != "agentline"]


def test_secret_keys_and_url_passwords_are_redacted() -> None:
    event = redact_secrets(
        None,
        "info",
        {
            "event": "x",
            "api_secret": "s" * 40,
            "Authorization": "Bearer abc",
            "amqp": "amqp://guest:hunter2hunter2@127.0.0.1:5672/",
            "nested": {"password": "pw", "ok": 1},
            "room": "test_x",
        },
    )
    assert event["api_secret"] == REDACTED
    assert event["Authorization"] == REDACTED
    assert "hunter2" not in event["amqp"] and "guest:" in event["amqp"]
    assert event["nested"] == {"password": REDACTED, "ok": 1}
    assert event["room"] == "test_x"


def test_json_logs_carry_the_correlation_id_and_no_secret(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging(service="unit", json=True)
    try:
        cid = bind_correlation_id("abc123")
        assert current_correlation_id() == cid == "abc123"
        structlog.get_logger().info("token.issued", livekit_api_secret="x" * 32, room="r")
        line = capsys.readouterr().err.strip().splitlines()[-1]
        record = json.loads(line)
        assert record["event"] == "token.issued"
        assert record["correlation_id"] == "abc123"
        assert record["livekit_api_secret"] == REDACTED
    finally:
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()


def test_oversized_missing_or_odd_correlation_ids_are_replaced() -> None:
    assert len(bind_correlation_id(None)) == 32
    assert bind_correlation_id("x" * 500) != "x" * 500
    for odd in ("", "two words", "line\nbreak", 'quote"d', "ünïcode"):
        assert bind_correlation_id(odd) != odd
    assert bind_correlation_id("req-42.retry:1_a") == "req-42.retry:1_a"
    structlog.contextvars.clear_contextvars()


def test_library_records_are_json_with_the_calls_context_and_no_secret(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(service="unit", json=True)
    bind_correlation_id("lib123")
    logging.getLogger("aio_pika.robust_connection").warning(
        "connection to %s lost", "amqp://guest:hunter2hunter2@127.0.0.1:5672/"
    )
    record = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert record["logger"] == "aio_pika.robust_connection"
    assert record["level"] == "warning"
    assert record["correlation_id"] == "lib123"
    assert "hunter2" not in record["event"] and "127.0.0.1:5672" in record["event"]


def test_records_from_many_threads_are_one_whole_json_object_per_line(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(service="unit", json=True)
    threads, records = 6, 300
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, mid-write included

    def write(index: int) -> None:
        ours, library = structlog.get_logger(), logging.getLogger(f"lib{index}")
        for n in range(records):
            ours.info("ours", thread=index, n=n)
            library.info("library %d %d", index, n)

    try:
        workers = [threading.Thread(target=write, args=(index,)) for index in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(switch_interval)

    lines = capsys.readouterr().err.splitlines()
    parsed = [json.loads(line) for line in lines]
    assert len(parsed) == threads * records * 2
