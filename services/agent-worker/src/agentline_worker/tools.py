"""The agent's tools as livekit-agents function tools: HTTP webhooks from the agent's config, and the
built-in end_call.

A webhook failure of any kind (bad arguments, a missing signing secret, timeout, connection refused,
non-2xx) becomes a ToolError, whose message livekit-agents hands to the model as the tool's result:
the model tells the caller, the session goes on.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Any

import aiohttp
import structlog
from agentline_common.agents import WebhookTool
from livekit.agents import FunctionTool, RunContext, ToolError, function_tool
from livekit.agents.llm import RawFunctionTool
from pydantic import SecretStr
from yarl import URL

from agentline_worker.service import (
    MAX_TOOL_RESPONSE_BYTES,
    argument_errors,
    destination_refusal,
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

Networks = Sequence[IPv4Network | IPv6Network]


class DestinationRefused(OSError):
    """A tool's host is, or resolves to, an address tools may not call (see `destination_refusal`)."""


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """aiohttp's resolver, refusing names that resolve to addresses tools may not call.

    The check sits where the connection's addresses are chosen, so a name that resolves to a public
    address when checked and to an internal one when connecting (DNS rebinding) gains nothing.
    """

    def __init__(self, allowed: Networks) -> None:
        self._allowed = allowed
        self._resolver = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        for result in results:
            refusal = destination_refusal(ip_address(result["host"]), allowed=self._allowed)
            if refusal is not None:
                raise DestinationRefused(f"{host}: {refusal}")
        return results

    async def close(self) -> None:
        await self._resolver.close()


def tool_http_session(allowed: Networks) -> aiohttp.ClientSession:
    """The HTTP session tools call through: it connects only where `destination_refusal` allows."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(resolver=GuardedResolver(allowed)))


def webhook_tool(
    tool: WebhookTool,
    *,
    http: aiohttp.ClientSession,
    allowed: Networks,
    secrets: Mapping[str, SecretStr],
    agent_id: uuid.UUID,
    session_id: uuid.UUID | None,
) -> RawFunctionTool[..., Any]:
    """A raw function tool that validates its arguments, then calls `tool`'s URL, signed.

    `http` must come from `tool_http_session(allowed)`: it refuses names that resolve to addresses
    tools may not call; an address written in the URL itself is checked here.
    """
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
        _refuse_literal_destination(tool, request.url, allowed)
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
                body, cut = await _read_bounded(response)
                status = response.status
        except TimeoutError as error:
            log.warning("tool.timed_out", tool=tool.name, timeout_seconds=tool.timeout_seconds)
            raise ToolError(
                f"The tool {tool.name} did not answer within {tool.timeout_seconds:g} seconds. "
                "Tell the caller it is unavailable right now."
            ) from error
        except aiohttp.ClientError as error:
            if isinstance(error.__cause__, DestinationRefused):
                log.warning("tool.destination_refused", tool=tool.name, detail=str(error.__cause__ or error))
            else:
                log.warning("tool.unreachable", tool=tool.name, error=type(error).__name__)
            raise ToolError(tool_failure_text(tool.name, status=None)) from error
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        if not 200 <= status < 300:
            log.warning("tool.failed", tool=tool.name, status=status, elapsed_ms=elapsed_ms)
            raise ToolError(tool_failure_text(tool.name, status=status, body=body))
        log.info("tool.called", tool=tool.name, status=status, elapsed_ms=elapsed_ms, cut=cut)
        return tool_result_text(status=status, body=body, cut=cut)

    return function_tool(
        call,
        raw_schema={
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    )


async def _read_bounded(response: aiohttp.ClientResponse) -> tuple[str, bool]:
    """The first `MAX_TOOL_RESPONSE_BYTES` of the answer, decoded, and whether there was more.

    The model sees only the first `MAX_TOOL_RESULT_CHARS` anyway; read whole, an answer streaming
    gigabytes within the tool's timeout would fill the worker's memory, and end every call in it.
    """
    data = bytearray()
    while len(data) <= MAX_TOOL_RESPONSE_BYTES:
        chunk = await response.content.read(MAX_TOOL_RESPONSE_BYTES + 1 - len(data))
        if not chunk:
            break
        data += chunk
    kept = bytes(data[:MAX_TOOL_RESPONSE_BYTES])
    try:
        text = kept.decode(response.charset or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        text = kept.decode("utf-8", errors="replace")
    return text, len(data) > MAX_TOOL_RESPONSE_BYTES


def _refuse_literal_destination(tool: WebhookTool, url: str, allowed: Networks) -> None:
    """aiohttp does not resolve an address written in the URL, so the resolver never sees it."""
    try:
        address = ip_address(URL(url, encoded=True).host or "")
    except ValueError:
        return  # a name: GuardedResolver checks what it resolves to
    refusal = destination_refusal(address, allowed=allowed)
    if refusal is not None:
        log.warning("tool.destination_refused", tool=tool.name, detail=refusal)
        raise ToolError(tool_failure_text(tool.name, status=None))


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
