import uuid
from typing import Any

import pytest
from agentline_common.agents import MAX_SCHEMA_NESTING, AgentConfig, WebhookTool
from pydantic import ValidationError

pytestmark = pytest.mark.unit


def tool(**overrides: object) -> dict[str, object]:
    return {
        "name": "lookup_order",
        "description": "Find an order",
        "parameters": {"type": "object", "properties": {"id": {"type": "string"}}},
        "url": "http://127.0.0.1:9000/hook",
        **overrides,
    }


def test_valid_tool() -> None:
    parsed = WebhookTool.model_validate(tool(secret_ref="orders"))
    assert parsed.method == "POST" and parsed.timeout_seconds == 5.0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": "has space"}, "name"),
        ({"name": "end_call"}, "name"),
        ({"parameters": {"type": "array"}}, "parameters"),
        ({"parameters": {"type": "object", "properties": 3}}, "parameters"),
        ({"url": "not a url"}, "url"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": 31}, "timeout_seconds"),
        ({"method": "DELETE"}, "method"),
        ({"secret": "inline secrets are refused"}, "secret"),
    ],
)
def test_invalid_tools_name_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        WebhookTool.model_validate(tool(**overrides))
    assert field in {str(loc) for error in caught.value.errors() for loc in error["loc"]}


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        (
            {"type": "object", "properties": {"code": {"type": "string", "pattern": "^(?!0)[0-9]+$"}}},
            "cannot be checked in linear time",
        ),
        (
            {"type": "object", "patternProperties": {"^(?<=x)y$": {}}},
            "cannot be checked in linear time",
        ),
        (
            {"type": "object", "patternProperties": {"^(b+)+$": {}}, "unevaluatedProperties": False},
            '"unevaluatedProperties" cannot be checked beside "patternProperties"',
        ),
    ],
)
def test_a_schema_the_worker_cannot_check_in_linear_time_is_refused_with_the_reason(
    parameters: dict[str, Any], reason: str
) -> None:
    """Accepted, every call of the tool would fail at the worker (or, for the last, freeze it)."""
    with pytest.raises(ValidationError, match=reason):
        WebhookTool.model_validate(tool(parameters=parameters))


def test_patterns_that_backtrack_in_pythons_re_are_accepted_as_re2_runs_them() -> None:
    parameters = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^(a+)+$"}}}
    assert WebhookTool.model_validate(tool(parameters=parameters)).parameters == parameters


def nested_schema(levels: int) -> dict[str, Any]:
    """An object schema nesting `levels` objects in properties: 2 * levels + 1 dicts deep."""
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"inner": schema}}
    return schema


def validated_under(frames: int, schema: dict[str, Any]) -> WebhookTool:
    """The tool validated with `frames` calls already on the stack, as deep in a service's own code."""
    if frames:
        return validated_under(frames - 1, schema)
    return WebhookTool.model_validate(tool(parameters=schema))


def test_a_schema_at_the_nesting_cap_is_checked_even_deep_in_a_stack() -> None:
    deepest = nested_schema((MAX_SCHEMA_NESTING - 1) // 2)
    assert validated_under(600, deepest).parameters == deepest


@pytest.mark.parametrize("levels", [MAX_SCHEMA_NESTING // 2, 100, 1000])
def test_a_schema_nested_past_the_cap_is_a_validation_error(levels: int) -> None:
    with pytest.raises(ValidationError, match="flatten it"):
        WebhookTool.model_validate(tool(parameters=nested_schema(levels)))


def test_agent_config_rejects_non_e164_numbers() -> None:
    base = {
        "id": uuid.uuid4(),
        "org_id": uuid.uuid4(),
        "name": "a",
        "active": True,
        "instructions": "i",
        "first_message": "hi",
    }
    assert AgentConfig.model_validate({**base, "phone_numbers": ["+15551234567"]}).phone_numbers
    with pytest.raises(ValidationError, match=r"E\.164"):
        AgentConfig.model_validate({**base, "phone_numbers": ["555"]})
