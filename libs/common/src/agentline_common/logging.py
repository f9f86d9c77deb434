"""Structured logging: JSON in production, readable in development, secrets never printed.

A correlation id lives in a contextvar: the HTTP edge binds it from ``X-Correlation-ID`` (or makes one),
the bus copies it into each message's headers, and consumers bind it again, so one id follows a call
from the request to the event to the worker.
"""

from __future__ import annotations

import functools
import logging
import re
import sys
import uuid
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

CORRELATION_HEADER = "x-correlation-id"
REDACTED = "[redacted]"
_SECRET_KEY = re.compile(r"(secret|password|passwd|token|authorization|api_key|cookie|signature)", re.I)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@/\s]+@", re.I)


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Structlog processor: blank values under secret-looking keys and passwords inside URLs."""
    for key, value in list(event_dict.items()):
        event_dict[key] = _redact_value(key, value)
    return event_dict


@functools.lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    """Log keys are few and repeat on every line, so the pattern runs once per key name."""
    return _SECRET_KEY.search(key) is not None


def _redact_value(key: str, value: Any) -> Any:
    if value is not None and _is_secret_key(key):
        return REDACTED
    if isinstance(value, str):
        if "://" not in value:
            return value
        return _URL_CREDENTIALS.sub(rf"\g<scheme>\g<user>:{REDACTED}@", value)
    if isinstance(value, Mapping):
        return {k: _redact_value(str(k), v) for k, v in value.items()}
    return value


def configure_logging(*, service: str, json: bool, level: str = "INFO") -> None:
    """Configure structlog and the standard library once, at process start.

    Every line is written whole, in one write: structlog's default logger prints the message and
    its newline separately, so a library's record from another thread could land between them and
    fuse two records on one line (seen in the worker's log, which a log shipper then cannot parse).
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    _route_library_records(shared, renderer, level)


_HANDLER_NAME = "agentline"


def _route_library_records(shared: list[Any], renderer: Any, level: str) -> None:
    """The libraries' records (livekit-agents, uvicorn, aio-pika) in the same format as ours: one
    JSON object per line in production, with the call's context and the same redaction of secrets.

    Called again (by tests, or by an app factory and its entry point both), it replaces our handler
    and leaves other handlers, such as pytest's, in place.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [*(h for h in root.handlers if h.get_name() != _HANDLER_NAME), handler]
    root.setLevel(level.upper())


def new_correlation_id() -> str:
    return uuid.uuid4().hex


_CORRELATION_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def bind_correlation_id(correlation_id: str | None) -> str:
    """Bind `correlation_id` (or a new one) to the current context and return it.

    The id often comes from a caller's header and ends up in log lines, events and LiveKit dispatch
    metadata, so only a short run of id-like characters is taken from outside.
    """
    if correlation_id is None or not _CORRELATION_ID.fullmatch(correlation_id):
        correlation_id = new_correlation_id()
    structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
    return correlation_id


def current_correlation_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("correlation_id")
    return value if isinstance(value, str) else None
