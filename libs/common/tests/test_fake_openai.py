"""The fake model server, driven by the real `openai` SDK: if the SDK parses it, the plugins will."""

from __future__ import annotations

import array
import asyncio
import io
import json
import secrets
import sys
import wave
from collections.abc import AsyncIterator

import openai
import pytest
import pytest_asyncio
from agentline_common.testing.fake_openai import (
    SPEECH_SAMPLE_RATE,
    ChatReply,
    FakeOpenAI,
    speech_seconds,
    wav_bytes,
)
from agentline_common.testing.servers import free_port

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """The server as the plugin's fixture makes it: free loopback port, an API key it checks."""
    async with FakeOpenAI(api_key=f"sk-fake-{secrets.token_hex(24)}") as server:
        yield server


def client(server: FakeOpenAI) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key=server.api_key, max_retries=0)


def rms(pcm: bytes) -> float:
    samples = array.array("h", pcm)
    return (sum(s * s for s in samples) / max(1, len(samples))) ** 0.5


async def test_streamed_text_reply_arrives_in_chunks(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply("Hello there, caller")
    stream = await client(fake_openai).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == "Hello there, caller"
    assert len([p for p in pieces if p]) == 3
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 3
    assert fake_openai.chat_requests[0].body["messages"] == [{"role": "user", "content": "hi"}]


async def test_streamed_tool_call_deltas_reassemble(fake_openai: FakeOpenAI) -> None:
    call = fake_openai.reply_tool_call("lookup_order", {"order_id": "A-17", "urgent": True})
    stream = await client(fake_openai).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "where is my order"}], stream=True
    )
    ids, names, arguments, finish = set(), "", "", None
    async for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.id:
                    ids.add(delta.id)
                if delta.function and delta.function.name:
                    names += delta.function.name
                if delta.function and delta.function.arguments:
                    arguments += delta.function.arguments
            finish = choice.finish_reason or finish
    assert ids == {call.call_id}
    assert names == "lookup_order"
    assert json.loads(arguments) == {"order_id": "A-17", "urgent": True}
    assert finish == "tool_calls"


async def test_unscripted_chat_echoes_the_user_and_tool_results(fake_openai: FakeOpenAI) -> None:
    answer = await client(fake_openai).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}]
    )
    assert answer.choices[0].message.content == "You said: ping"
    answer = await client(fake_openai).chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
    )
    assert answer.choices[0].message.content == "The tool answered: sunny"


async def test_scripted_failure_is_an_openai_error(fake_openai: FakeOpenAI) -> None:
    fake_openai.reply(ChatReply(text="overloaded", status=503))
    with pytest.raises(openai.APIStatusError) as raised:
        await client(fake_openai).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.status_code == 503


async def test_wrong_api_key_is_refused(fake_openai: FakeOpenAI) -> None:
    wrong = openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await wrong.models.list()
    assert fake_openai.requests == []


async def test_bad_chat_body_is_a_400_naming_the_field(fake_openai: FakeOpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="messages"):
        await client(fake_openai).chat.completions.create(model="gpt-4o-mini", messages="nope")  # type: ignore[arg-type]


async def test_transcription_uses_the_script_then_a_rule(fake_openai: FakeOpenAI) -> None:
    fake_openai.hear("book a table for two")
    upload = wav_bytes(b"\x00\x00" * SPEECH_SAMPLE_RATE)  # one second of silence
    scripted = await client(fake_openai).audio.transcriptions.create(
        model="whisper-1", file=("a.wav", upload, "audio/wav"), response_format="verbose_json"
    )
    assert scripted.text == "book a table for two"
    ruled = await client(fake_openai).audio.transcriptions.create(
        model="whisper-1", file=("a.wav", upload, "audio/wav")
    )
    assert ruled.text == "I spoke for 1.0 seconds."
    recorded = fake_openai.transcription_requests
    assert [r.body["model"] for r in recorded] == ["whisper-1", "whisper-1"]
    assert recorded[0].body["audio_seconds"] == pytest.approx(1.0)


async def test_speech_pcm_is_audible_and_grows_with_the_text(fake_openai: FakeOpenAI) -> None:
    short_text, long_text = "Hi.", "Thank you for calling, how may I help you today?"
    lengths = []
    for text in (short_text, long_text):
        response = await client(fake_openai).audio.speech.create(
            model="tts-1", voice="alloy", input=text, response_format="pcm"
        )
        pcm = response.content
        assert response.response.headers["content-type"] == "audio/pcm"
        assert len(pcm) == 2 * int(speech_seconds(text) * SPEECH_SAMPLE_RATE)
        assert rms(pcm) > 1000
        lengths.append(len(pcm))
    assert lengths[1] > lengths[0]


async def test_speech_wav_and_unsupported_formats(fake_openai: FakeOpenAI) -> None:
    response = await client(fake_openai).audio.speech.create(
        model="tts-1", voice="alloy", input="Hello there", response_format="wav"
    )
    with wave.open(io.BytesIO(response.content)) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (24000, 1, 2)
        assert reader.getnframes() == int(speech_seconds("Hello there") * SPEECH_SAMPLE_RATE)
    with pytest.raises(openai.BadRequestError, match="response_format"):
        await client(fake_openai).audio.speech.create(
            model="tts-1", voice="alloy", input="Hello", response_format="mp3"
        )


async def test_latency_delays_the_answer(fake_openai: FakeOpenAI) -> None:
    fake_openai.latency = 0.3
    loop = asyncio.get_running_loop()
    started = loop.time()
    await client(fake_openai).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert loop.time() - started >= 0.3


async def test_runs_as_a_standalone_process() -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentline_common.testing.fake_openai",
        "--port",
        str(port),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        banner = await asyncio.wait_for(process.stdout.readline(), 30)
        assert f"127.0.0.1:{port}/v1" in banner.decode()
        standalone = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="any", max_retries=0)
        models = await standalone.models.list()
        assert "gpt-4o-mini" in [m.id for m in models.data]
    finally:
        process.terminate()
        await process.wait()
