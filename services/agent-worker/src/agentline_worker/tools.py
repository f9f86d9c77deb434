"""The agent's tools as livekit-agents function tools: HTTP webhooks from the agent's config, and the
built-in end_call.

A webhook failure of any kind (bad arguments, a missing signing secret, timeout, connection refused,
non-2xx) becomes a ToolError, whose message livekit-agents hands to the model as the tool's result:
the model tells the caller, the session goes on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import structlog
from agentline_common.agents import WebhookTool
from livekit.agents import FunctionTool, RunContext, ToolError, function_tool
from livekit.agents.llm import RawFunctionTool
from pydantic import SecretStr
from yarl import URL

from agentline_worker.service import (
    argument_errors,
    tool_failure_text,
    tool_result_text,
    tool_unconfigured_text,
    webhook_request,
)

log = structlog.get_logger()

END_CALL_DESCRIPTION = (
    "End the call. Use it only when the caller clearly wants to finish (for example they say "
    "goodbye, or that is all). The call ends once your goodbye has been spoken."
)
END_CALL_INSTRUCTIONS = "Say a short goodbye to the caller; the call ends after it."


def webhook_tool(
    tool: WebhookTool,
    *,
    http: aiohttp.ClientSession,
    secrets: Mapping[str, SecretStr],
    agent_id: uuid.UUID,
    session_id: uuid.UUID | None,
) -> RawFunctionTool[..., Any]:
    """A raw function tool that validates its arguments, then calls `tool`'s URL, signed."""
    secret = _secret_for(tool, secrets)
    unsigned = tool.secret_ref is not None and secret is None

    async def call(raw_arguments: dict[str, object]) -> str:
        if unsigned:
            # Fail closed: an unsigned call would reach a receiver that trusts it, or be refused.
            raise ToolError(tool_unconfigured_text(tool.name))
        problems = argument_errors(tool.parameters, raw_arguments)
        if problems is not None:
            log.info("tool.arguments_invalid", tool=tool.name, problems=problems)
            raise ToolError(f"Invalid arguments for {tool.name}: {problems}. Fix them and retry.")
        request = webhook_request(
            tool,
            raw_arguments,
            secret=secret,
            timestamp=int(time.time()),
            session_id=session_id,
            agent_id=agent_id,
        )
        started = time.perf_counter()
        try:
            async with http.request(
                request.method,
                URL(request.url, encoded=True),  # the signed bytes, not re-quoted
                data=request.body,
                headers=request.headers,
                timeout=aiohttp.ClientTimeout(total=tool.timeout_seconds),
                allow_redirects=False,
            ) as response:
                body = await response.text(errors="replace")
                status = response.status
        except TimeoutError as error:
            log.warning("tool.timed_out", tool=tool.name, timeout_seconds=tool.timeout_seconds)
            raise ToolError(
                f"The tool {tool.name} did not answer within {tool.timeout_seconds:g} seconds. "
                "Tell the caller it is unavailable right now."
            ) from error
        except aiohttp.ClientError as error:
            log.warning("tool.unreachable", tool=tool.name, error=type(error).__name__)
            raise ToolError(tool_failure_text(tool.name, status=None)) from error
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        if not 200 <= status < 300:
            log.warning("tool.failed", tool=tool.name, status=status, elapsed_ms=elapsed_ms)
            raise ToolError(tool_failure_text(tool.name, status=status, body=body))
        log.info("tool.called", tool=tool.name, status=status, elapsed_ms=elapsed_ms)
        return tool_result_text(status=status, body=body)

    return function_tool(
        call,
        raw_schema={
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    )


def _secret_for(tool: WebhookTool, secrets: Mapping[str, SecretStr]) -> bytes | None:
    if tool.secret_ref is None:
        return None
    secret = secrets.get(tool.secret_ref)
    if secret is None:
        # The tool cannot be called at all (see `webhook_tool`); say so loudly, once per call.
        log.error("tool.secret_missing", tool=tool.name, secret_ref=tool.secret_ref)
        return None
    return secret.get_secret_value().encode()


def end_call_tool(on_called: Callable[[], None]) -> FunctionTool[..., Any]:
    """The built-in end_call: the session closes once the speech that called it has played out."""

    async def end_call(context: RunContext[Any]) -> str:
        on_called()
        session = context.session

        def close_after_goodbye(_: object) -> None:
            session.shutdown(drain=True)

        context.speech_handle.add_done_callback(close_after_goodbye)
        log.info("tool.end_call")
        return END_CALL_INSTRUCTIONS

    return function_tool(end_call, name="end_call", description=END_CALL_DESCRIPTION)
