import uuid

import pytest
from agentline_common.agents import AgentConfig, WebhookTool
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
