"""The voice pipeline in text mode: the real AgentSession of a call, driven by text against the fake
model server, with webhook tools calling a real HTTP server on loopback that checks signatures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from agentline_common.agents import AgentConfig, WebhookTool
from agentline_common.testing.fake_openai import ChatReply, FakeOpenAI
from agentline_worker.job import job_vad
from agentline_worker.pipeline import CallRecord, build_session, model_client
from agentline_worker.service import (
    MAX_TOOL_RESULT_CHARS,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    TOOL_RESULT_CUT_NOTE,
    ended_event,
    verify_signature,
)
from agentline_worker.settings import WorkerSettings
from agentline_worker.tools import tool_http_session
from aiohttp import web
from livekit import rtc
from livekit.agents import AgentSession, APIStatusError, CloseEvent, CloseReason, llm, vad
from livekit.agents.voice.run_result import (
    ChatMessageEvent,
    FunctionCallEvent,
    FunctionCallOutputEvent,
    RunResult,
)
from livekit.plugins import silero
from openai import AsyncClient
from pydantic import SecretStr

pytestmark = pytest.mark.integration

SECRET_REF = "orders"
GREETING = "Hello, you are through to Acme. How can I help?"
FLOOD_BYTES = 96 * 1024 * 1024
"""What a flooding tool would send: far more than the worker reads of an answer."""


@dataclass
class WebhookServer:
    """A tool's backend on loopback: verifies the signature and answers per `mode`."""

    secret: bytes
    mode: str = "ok"
    calls: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    flooded: int = 0
    flood_over: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/orders"

    def verified(self, request: web.Request, payload: bytes) -> bool:
        return verify_signature(
            self.secret,
            timestamp=request.headers.get(TIMESTAMP_HEADER, ""),
            payload=payload,
            header=request.headers.get(SIGNATURE_HEADER, ""),
            now=time.time(),
        )

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        verified = self.verified(request, body)
        self.calls.append({"verified": verified, "body": body, "headers": dict(request.headers)})
        if not verified:
            return web.json_response({"error": "bad signature"}, status=401)
        if self.mode == "slow":
            await asyncio.sleep(5)
        if self.mode == "error":
            return web.json_response({"error": "database on fire"}, status=500)
        if self.mode == "flood":
            return await self.flood(request)
        order = json.loads(body)["order_id"]
        return web.json_response({"order_id": order, "status": "shipped yesterday"})

    async def flood(self, request: web.Request) -> web.StreamResponse:
        """Stream up to FLOOD_BYTES, counting what went out until the worker hung up."""
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        chunk = b"x" * 65536
        try:
            while self.flooded < FLOOD_BYTES:
                await response.write(chunk)
                self.flooded += len(chunk)
            await response.write_eof()
        except ConnectionError:
            pass
        finally:
            self.flood_over.set()
        return response

    async def handle_get(self, request: web.Request) -> web.Response:
        """A GET tool's call, verified as a receiver would: over the raw query bytes received."""
        raw_query = request.raw_path.partition("?")[2].encode()
        verified = self.verified(request, raw_query)
        query = dict(request.query)
        self.calls.append({"verified": verified, "query": query, "headers": dict(request.headers)})
        if not verified:
            return web.json_response({"error": "bad signature"}, status=401)
        return web.json_response({"order_id": query["order_id"], "status": "shipped yesterday"})


@pytest_asyncio.fixture(loop_scope="session")
async def webhook() -> AsyncIterator[WebhookServer]:
    server = WebhookServer(secret=secrets.token_urlsafe(32).encode())
    app = web.Application()
    app.router.add_post("/orders", server.handle)
    app.router.add_get("/orders", server.handle_get)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    try:
        yield server
    finally:
        await runner.cleanup()


def agent_config(
    *, webhook: WebhookServer | None = None, timeout: float = 5.0, method: str = "POST", url_query: str = ""
) -> AgentConfig:
    tools = []
    if webhook is not None:
        tools.append(
            WebhookTool(
                name="lookup_order",
                description="Look up an order's delivery status.",
                parameters={
                    "type": "object",
                    "properties": {
                        "order_id": {"type": "string", "pattern": "^[A-Z]-[0-9]+$"},
                        "note": {"type": "string"},
                    },
                    "required": ["order_id"],
                    "additionalProperties": False,
                },
                url=webhook.url + url_query,
                method=method,
                timeout_seconds=timeout,
                secret_ref=SECRET_REF,
            )
        )
    return AgentConfig(
        id=uuid.uuid4(),
        org_id=uuid.uuid4(),
        name="Acme support",
        active=True,
        instructions="You are Acme's support agent.",
        first_message=GREETING,
        temperature=0.3,
        tools=tools,
    )


@dataclass
class TextCall:
    session: AgentSession[None]
    record: CallRecord
    closed: asyncio.Future[CloseEvent]
    greeting: RunResult[None]
    models: AsyncClient

    async def close(self) -> None:
        await self.session.aclose()
        await self.models.close()


@pytest.fixture(scope="session")
def vad_model() -> vad.VAD:
    """Silero, loaded from its wheel (no download), as the job processes load it."""
    return silero.VAD.load()


LOOPBACK_ALLOWED = [ip_network("127.0.0.0/8")]
"""The test webhook server listens on loopback, which tools may call only when the operator says so."""


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with tool_http_session(LOOPBACK_ALLOWED) as session:
        yield session


async def start_call(
    config: AgentConfig,
    *,
    fake: FakeOpenAI,
    http: aiohttp.ClientSession,
    vad_model: vad.VAD,
    secret: bytes = b"",
    secret_of: uuid.UUID | None = None,
    allowed: list[IPv4Network | IPv6Network] = LOOPBACK_ALLOWED,
) -> TextCall:
    """A text-mode call; `secret` is the tool's signing secret, held for the agent's organisation
    unless `secret_of` names another."""
    holder = secret_of or config.org_id
    settings = WorkerSettings(
        openai_base_url=fake.base_url,
        openai_api_key=SecretStr(fake.api_key or ""),
        tool_secrets={holder: {SECRET_REF: SecretStr(secret.decode())}} if secret else {},
        tool_allowed_networks=allowed,
    )
    record = CallRecord()
    models = model_client(settings)
    session, agent = build_session(
        config,
        settings=settings,
        vad_model=vad_model,
        models=models,
        http=http,
        session_id=uuid.uuid4(),
        record=record,
    )
    closed: asyncio.Future[CloseEvent] = asyncio.get_running_loop().create_future()

    def on_close(event: CloseEvent) -> None:
        if not closed.done():
            closed.set_result(event)

    session.on("close", on_close)
    greeting = await session.start(agent, capture_run=True)
    return TextCall(session=session, record=record, closed=closed, greeting=greeting, models=models)


def messages(result: RunResult[None]) -> list[str]:
    return [e.item.text_content or "" for e in result.events if isinstance(e, ChatMessageEvent)]


def tool_outputs(result: RunResult[None]) -> list[llm.FunctionCallOutput]:
    """What the tools answered during the turn, as the model was given it."""
    return [e.item for e in result.events if isinstance(e, FunctionCallOutputEvent)]


async def test_the_agent_greets_with_its_first_message(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, vad_model: vad.VAD
) -> None:
    call = await start_call(agent_config(), fake=fake_openai, http=http, vad_model=vad_model)
    try:
        assert messages(call.greeting) == [GREETING]
        assert fake_openai.chat_requests == []  # the greeting is said, not generated
        fake_openai.reply("We open at nine.")
        result: RunResult[None] = await call.session.run(user_input="When do you open?")
        assert messages(result) == ["We open at nine."]
        sent = fake_openai.chat_requests[0].body
        assert sent["messages"][0] == {"role": "system", "content": "You are Acme's support agent."}
        assert sent["temperature"] == 0.3
        assert [t["function"]["name"] for t in sent["tools"]] == ["end_call"]
        assert [(t.role, t.text) for t in call.record.transcript] == [
            ("agent", GREETING),
            ("user", "When do you open?"),
            ("agent", "We open at nine."),
        ]
    finally:
        await call.close()


async def test_a_tool_call_reaches_the_webhook_signed(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, webhook: WebhookServer, vad_model: vad.VAD
) -> None:
    call = await start_call(
        agent_config(webhook=webhook), fake=fake_openai, http=http, vad_model=vad_model, secret=webhook.secret
    )
    try:
        fake_openai.reply_tool_call("lookup_order", {"order_id": "A-17"})
        fake_openai.reply("Your order A-17 shipped yesterday.")
        result: RunResult[None] = await call.session.run(user_input="Where is order A-17?")
        outputs = tool_outputs(result)
        assert len(outputs) == 1 and not outputs[0].is_error
        assert json.loads(outputs[0].output) == {"order_id": "A-17", "status": "shipped yesterday"}
        assert messages(result) == ["Your order A-17 shipped yesterday."]
        assert [c["verified"] for c in webhook.calls] == [True]
        assert webhook.calls[0]["headers"]["X-Agentline-Tool"] == "lookup_order"
        tool_message = fake_openai.chat_requests[1].body["messages"][-1]
        assert tool_message["role"] == "tool" and "shipped yesterday" in tool_message["content"]
        schema = next(
            t for t in fake_openai.chat_requests[0].body["tools"] if t["function"]["name"] == "lookup_order"
        )
        assert schema["function"]["parameters"]["required"] == ["order_id"]
    finally:
        await call.close()


async def test_a_get_tool_call_is_signed_over_the_query_it_sends(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, webhook: WebhookServer, vad_model: vad.VAD
) -> None:
    """The receiver checks the raw query bytes it got, the tool URL's own query included: the
    worker must send exactly what it signed (an HTTP client that re-quotes `/` and `:` breaks it)."""
    config = agent_config(webhook=webhook, method="GET", url_query="?tenant=acme")
    call = await start_call(config, fake=fake_openai, http=http, vad_model=vad_model, secret=webhook.secret)
    try:
        note = "leave at https://example.test/door: back & side"
        fake_openai.reply_tool_call("lookup_order", {"order_id": "A-17", "note": note})
        fake_openai.reply("Your order A-17 shipped yesterday.")
        result: RunResult[None] = await call.session.run(user_input="Where is order A-17?")
        outputs = tool_outputs(result)
        assert len(outputs) == 1 and not outputs[0].is_error, outputs[0].output
        assert [c["verified"] for c in webhook.calls] == [True]
        assert webhook.calls[0]["query"] == {"tenant": "acme", "order_id": "A-17", "note": note}
    finally:
        await call.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_a_tool_may_not_call_into_the_platforms_own_network(
    fake_openai: FakeOpenAI, webhook: WebhookServer, vad_model: vad.VAD, host: str
) -> None:
    """An address in the URL is checked before the request, a name where it is resolved."""
    config = agent_config(webhook=webhook)
    config.tools[0].url = webhook.url.replace("127.0.0.1", host)
    async with tool_http_session([]) as guarded:
        call = await start_call(
            config, fake=fake_openai, http=guarded, vad_model=vad_model, secret=webhook.secret, allowed=[]
        )
        try:
            fake_openai.reply_tool_call("lookup_order", {"order_id": "A-17"})
            fake_openai.reply("I cannot look that up right now.")
            result: RunResult[None] = await call.session.run(user_input="Where is order A-17?")
            outputs = tool_outputs(result)
            assert len(outputs) == 1 and outputs[0].is_error
            assert webhook.calls == []
            assert messages(result) == ["I cannot look that up right now."]
        finally:
            await call.close()


async def test_invalid_arguments_are_told_to_the_model_without_a_request(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, webhook: WebhookServer, vad_model: vad.VAD
) -> None:
    call = await start_call(
        agent_config(webhook=webhook), fake=fake_openai, http=http, vad_model=vad_model, secret=webhook.secret
    )
    try:
        fake_openai.reply_tool_call("lookup_order", {"order_id": "seventeen"})
        fake_openai.reply("Could you repeat the order number?")
        result: RunResult[None] = await call.session.run(user_input="Where is my order?")
        outputs = tool_outputs(result)
        assert outputs[0].is_error and "order_id" in outputs[0].output
        assert webhook.calls == []
        assert messages(result) == ["Could you repeat the order number?"]
    finally:
        await call.close()


async def test_a_slow_tool_times_out_and_the_session_goes_on(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, webhook: WebhookServer, vad_model: vad.VAD
) -> None:
    webhook.mode = "slow"
    config = agent_config(webhook=webhook, timeout=0.5)
    call = await start_call(config, fake=fake_openai, http=http, vad_model=vad_model, secret=webhook.secret)
    try:
        fake_openai.reply_tool_call("lookup_order", {"order_id": "A-1"})
        fake_openai.reply("Sorry, our order system is slow right now.")
        started = time.monotonic()
        result: RunResult[None] = await call.session.run(user_input="Where is order A-1?")
        assert time.monotonic() - started < 4
        outputs = tool_outputs(result)
        assert outputs[0].is_error and "did not answer within 0.5 seconds" in outputs[0].output
        assert messages(result) == ["Sorry, our order system is slow right now."]
        fake_openai.reply("Anything else?")
        assert messages(await call.session.run(user_input="OK")) == ["Anything else?"]
    finally:
        await call.close()


async def test_a_tool_answer_is_read_only_up_to_its_bound_and_the_model_told_it_was_cut(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, webhook: WebhookServer, vad_model: vad.VAD
) -> None:
    webhook.mode = "flood"
    config = agent_config(webhook=webhook, timeout=30.0)
    call = await start_call(config, fake=fake_openai, http=http, vad_model=vad_model, secret=webhook.secret)
    try:
        fake_openai.reply_tool_call("lookup_order", {"order_id": "A-3"})
        fake_openai.reply("That order has a very long history.")
        result: RunResult[None] = await call.session.run(user_input="Where is order A-3?")
        outputs = tool_outputs(result)
        assert len(outputs) == 1 and not outputs[0].is_error
        assert outputs[0].output == "x" * MAX_TOOL_RESULT_CHARS + TOOL_RESULT_CUT_NOTE
        assert messages(result) == ["That order has a very long history."]
        await asyncio.wait_for(webhook.flood_over.wait(), 60)
        # The worker hung up after its bound: what went out is what the sockets' buffers held.
        assert webhook.flooded < FLOOD_BYTES // 4
        fake_openai.reply("Anything else?")
        assert messages(await call.session.run(user_input="OK")) == ["Anything else?"]
    finally:
        await call.close()


async def test_a_failing_tool_is_reported_to_the_model(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, webhook: WebhookServer, vad_model: vad.VAD
) -> None:
    webhook.mode = "error"
    call = await start_call(
        agent_config(webhook=webhook), fake=fake_openai, http=http, vad_model=vad_model, secret=webhook.secret
    )
    try:
        fake_openai.reply_tool_call("lookup_order", {"order_id": "A-2"})
        fake_openai.reply("I cannot look that up right now.")
        result: RunResult[None] = await call.session.run(user_input="Where is order A-2?")
        outputs = tool_outputs(result)
        assert outputs[0].is_error
        assert "HTTP 500" in outputs[0].output and "database on fire" in outputs[0].output
        assert messages(result) == ["I cannot look that up right now."]
    finally:
        await call.close()


async def test_a_tool_whose_secret_is_missing_is_not_called(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, webhook: WebhookServer, vad_model: vad.VAD
) -> None:
    """A tool that names a signing secret the worker lacks fails closed: no unsigned request goes
    out, and the model is told the tool is not configured."""
    call = await start_call(agent_config(webhook=webhook), fake=fake_openai, http=http, vad_model=vad_model)
    try:
        fake_openai.reply_tool_call("lookup_order", {"order_id": "A-3"})
        fake_openai.reply("I cannot look orders up right now.")
        result: RunResult[None] = await call.session.run(user_input="Where is order A-3?")
        outputs = tool_outputs(result)
        assert outputs[0].is_error and "not configured" in outputs[0].output
        assert webhook.calls == []
        assert messages(result) == ["I cannot look orders up right now."]
    finally:
        await call.close()


async def test_a_tool_may_not_sign_with_another_organisations_secret(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, webhook: WebhookServer, vad_model: vad.VAD
) -> None:
    """Refs are names anyone can type: an agent naming another organisation's ref gets nothing signed."""
    call = await start_call(
        agent_config(webhook=webhook),
        fake=fake_openai,
        http=http,
        vad_model=vad_model,
        secret=webhook.secret,
        secret_of=uuid.uuid4(),
    )
    try:
        fake_openai.reply_tool_call("lookup_order", {"order_id": "A-4"})
        fake_openai.reply("I cannot look orders up right now.")
        result: RunResult[None] = await call.session.run(user_input="Where is order A-4?")
        outputs = tool_outputs(result)
        assert outputs[0].is_error and "not configured" in outputs[0].output
        assert webhook.calls == []
    finally:
        await call.close()


async def test_end_call_closes_the_session_after_the_goodbye(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, vad_model: vad.VAD
) -> None:
    call = await start_call(agent_config(), fake=fake_openai, http=http, vad_model=vad_model)
    fake_openai.reply_tool_call("end_call", {})
    fake_openai.reply("Goodbye, have a nice day!")
    result: RunResult[None] = call.session.run(user_input="That's all, bye.")
    closed = await asyncio.wait_for(call.closed, 10)
    assert call.record.ended_by_tool
    assert call.record.reason == "end_call"
    assert closed.reason.value == "user_initiated"
    calls = [e.item.name for e in result.events if isinstance(e, FunctionCallEvent)]
    assert calls == ["end_call"]
    assert call.record.transcript[-1].text == "Goodbye, have a nice day!"


async def test_a_model_error_ends_nothing_but_the_turn(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, vad_model: vad.VAD
) -> None:
    """A failing model answer is retried by livekit-agents; the scripted retry then succeeds."""
    call = await start_call(agent_config(), fake=fake_openai, http=http, vad_model=vad_model)
    try:
        fake_openai.reply(ChatReply(text="overloaded", status=500), "Recovered answer.")
        result: RunResult[None] = await call.session.run(user_input="Hello?")
        assert messages(result) == ["Recovered answer."]
        assert not call.closed.done()
    finally:
        await call.close()


async def test_a_session_the_models_keep_failing_ends_as_an_error(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, vad_model: vad.VAD
) -> None:
    """Failures livekit-agents cannot get past close the session with an error; the call's
    `session.ended` then says `error`, with the cause."""
    call = await start_call(agent_config(), fake=fake_openai, http=http, vad_model=vad_model)
    try:
        fake_openai.fallback = lambda _body: ChatReply(text="model not found", status=404)
        # The session puts up with a few failed turns in a row, and closes at the next one.
        for _ in range(call.session.conn_options.max_unrecoverable_errors + 1):
            with contextlib.suppress(APIStatusError):
                await call.session.run(user_input="Hello?")
        closed = await asyncio.wait_for(call.closed, 10)
        assert closed.reason == CloseReason.ERROR
        assert call.record.reason == "error"
        event = ended_event(
            session_id=uuid.uuid4(), room_name="r", reason=call.record.reason, detail=call.record.error
        )
        assert event.data.reason == "error" and "model not found" in (event.data.detail or "")
    finally:
        await call.close()


async def test_the_agents_voice_language_and_models_reach_the_model_server(
    fake_openai: FakeOpenAI, http: aiohttp.ClientSession, vad_model: vad.VAD
) -> None:
    config = agent_config().model_copy(
        update={
            "stt_model": "stt-x",
            "llm_model": "llm-x",
            "tts_model": "tts-x",
            "voice": "coral",
            "language": "de",
        }
    )
    call = await start_call(config, fake=fake_openai, http=http, vad_model=vad_model)
    try:
        fake_openai.reply("Hallo.")
        await call.session.run(user_input="Hallo?")
        assert fake_openai.chat_requests[0].body["model"] == "llm-x"

        assert call.session.tts is not None and call.session.stt is not None
        async with call.session.tts.synthesize("Guten Tag.") as stream:
            async for _ in stream:
                pass
        spoken = fake_openai.speech_requests[-1].body
        assert (spoken["model"], spoken["voice"], spoken["response_format"]) == ("tts-x", "coral", "pcm")

        await call.session.stt.recognize(rtc.AudioFrame.create(16_000, 1, 1_600))
        heard = fake_openai.transcription_requests[-1].body
        assert (heard["model"], heard["language"]) == ("stt-x", "de")
    finally:
        await call.close()


def test_each_call_gets_its_own_vad_on_the_process_model(vad_model: vad.VAD) -> None:
    """Calls share Silero's ONNX session, loaded once per process, but not the VAD's event emitter:
    one call's VAD metrics must not reach another call's handlers (on another thread's loop)."""
    assert isinstance(vad_model, silero.VAD)
    first, second = job_vad(vad_model), job_vad(vad_model)
    assert first is not second
    assert first._onnx_session is second._onnx_session is vad_model._onnx_session
    seen: list[object] = []
    first.on("metrics_collected", seen.append)
    second.emit("metrics_collected", object())
    assert seen == []
    assert first.min_silence_duration == vad_model.min_silence_duration
