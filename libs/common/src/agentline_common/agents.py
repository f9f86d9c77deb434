"""What a service learns about an agent from the registry's look-ups: the shared agent contract."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any, Literal
from uuid import UUID

import re2
from jsonschema import SchemaError
from jsonschema.validators import validator_for
from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from agentline_common.rooms import require_e164

TOOL_NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]{0,63}$"
RESERVED_TOOL_NAMES = frozenset({"end_call"})
MAX_SCHEMA_NESTING = 32
"""How deep objects and lists may nest in a tool's arguments schema. jsonschema checks a schema
recursively, and about 100 levels exhaust Python's stack (a RecursionError, not a validation error);
this bound keeps well clear of that in every service that checks the schema, however deep its own
stack already is when it does."""


class WebhookTool(BaseModel):
    """An HTTP tool the model may call: the worker POSTs the validated arguments, signed with HMAC."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["webhook"] = "webhook"
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str = Field(min_length=1, max_length=1024)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON Schema (draft 2020-12) of the arguments; must describe an object.",
    )
    url: HttpUrl
    method: Literal["POST", "PUT", "PATCH", "GET"] = "POST"
    timeout_seconds: float = Field(default=5.0, gt=0, le=30)
    secret_ref: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Name of the signing secret the worker holds; never the secret itself.",
    )

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in RESERVED_TOOL_NAMES:
            raise ValueError(f"{name!r} is a built-in tool name")
        return name

    @field_validator("parameters")
    @classmethod
    def _valid_json_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if nests_deeper_than(schema, MAX_SCHEMA_NESTING):
            raise ValueError(
                f"the arguments schema nests objects and lists more than {MAX_SCHEMA_NESTING} levels "
                "deep; flatten it"
            )
        try:
            validator_for(schema).check_schema(schema)
        except SchemaError as error:
            raise ValueError(f"not a valid JSON Schema: {error.message}") from error
        if schema.get("type") != "object":
            raise ValueError('the arguments schema must have "type": "object"')
        check_linear_time(schema)
        return schema


class UncheckableSchema(ValueError):
    """A tool's arguments schema the worker cannot check in time linear in the arguments."""


def check_linear_time(schema: dict[str, Any]) -> None:
    """Raise UncheckableSchema unless every pattern in `schema` runs on RE2.

    The worker matches arguments the model chose (which a caller can talk it into) against these
    patterns, on RE2 (`linear_time_pattern`): Python's `re` backtracks holding the GIL, and
    ``^(a+)+$`` against 40 characters froze every call of a worker for minutes. RE2 has no
    look-arounds or back-references, so a pattern with them is refused here, with the reason,
    rather than failing every call of the tool. `unevaluatedProperties` is refused beside
    `patternProperties`, because jsonschema evaluates those patterns with `re` for it.
    """
    patterns = list(_patterns_in(schema))
    for pattern in patterns:
        linear_time_pattern(pattern)
    if patterns and any(True for _ in _keys_in(schema, "unevaluatedProperties")):
        raise UncheckableSchema(
            '"unevaluatedProperties" cannot be checked beside "patternProperties"; use "additionalProperties"'
        )


@cache
def linear_time_pattern(pattern: str) -> re2._Regexp:
    """`pattern` compiled by RE2, which matches in time linear in the text; UncheckableSchema if RE2
    cannot run it (a look-around or a back-reference)."""
    options = re2.Options()
    options.log_errors = False  # the reason goes to whoever configured the tool, not to stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as error:
        raise UncheckableSchema(
            f"the pattern {pattern!r} cannot be checked in linear time: {error}"
        ) from error


def _patterns_in(schema: dict[str, Any]) -> Iterator[str]:
    for value in _keys_in(schema, "pattern"):
        if isinstance(value, str):
            yield value
    for value in _keys_in(schema, "patternProperties"):
        if isinstance(value, dict):
            yield from (name for name in value if isinstance(name, str))


def _keys_in(value: Any, key: str) -> Iterator[Any]:
    """The values under `key` anywhere in `value`."""
    for node, _ in _containers(value):
        if isinstance(node, dict) and key in node:
            yield node[key]


def nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether dicts and lists nest more than `limit` levels in `value`."""
    return any(depth > limit for _, depth in _containers(value))


def _containers(value: Any) -> Iterator[tuple[Any, int]]:
    """Every dict and list in `value`, with how deep it nests (`value` itself is 1); walked with a
    stack of its own, not by recursion, because schemas deep enough to exhaust Python's stack are
    what `nests_deeper_than` is there to refuse."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, dict):
            children = list(node.values())
        elif isinstance(node, list):
            children = node
        else:
            continue
        yield node, depth
        pending.extend((child, depth + 1) for child in children)


AgentTool = WebhookTool


class AgentConfig(BaseModel):
    """Everything a worker or gateway needs to serve calls for one agent."""

    model_config = ConfigDict(frozen=True)

    id: UUID
    org_id: UUID
    name: str
    active: bool
    instructions: str
    first_message: str
    language: str = "en"
    voice: str = "alloy"
    stt_model: str = "whisper-1"
    llm_model: str = "gpt-4o-mini"
    tts_model: str = "tts-1"
    temperature: float = 0.7
    tools: list[AgentTool] = Field(default_factory=list)
    phone_numbers: list[str] = Field(default_factory=list)

    @field_validator("phone_numbers")
    @classmethod
    def _e164_numbers(cls, numbers: list[str]) -> list[str]:
        return [require_e164(number) for number in numbers]
