import json

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


def test_oversized_or_missing_correlation_ids_are_replaced() -> None:
    assert len(bind_correlation_id(None)) == 32
    assert bind_correlation_id("x" * 500) != "x" * 500
    structlog.contextvars.clear_contextvars()
