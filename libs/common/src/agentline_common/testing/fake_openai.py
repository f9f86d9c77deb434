"""A fake OpenAI-compatible model server on loopback: the outside world, faked on the real wire.

It speaks what livekit-plugins-openai (and the `openai` SDK under it) sends and parses:

- ``POST /v1/chat/completions``: streamed (SSE ``chat.completion.chunk``, tool-call deltas included)
  or whole (``chat.completion``);
- ``POST /v1/audio/transcriptions``: multipart upload, ``json``/``verbose_json``/``text`` answers;
- ``POST /v1/audio/speech``: ``pcm`` (24 kHz, 16-bit, mono), ``wav``, or the ``sse`` stream format;
  the audio is a tone whose length grows with the text, so a listener can tell speech from silence;
- ``GET /v1/models``.

Tests script it (a queue of chat replies and of transcripts) and read back every request it got.
With nothing scripted it still answers sensibly (it echoes the user), which is what `make up` uses
for an offline demo: ``python -m agentline_common.testing.fake_openai --port 8200``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import base64
import contextlib
import io
import json
import math
import secrets
import time
import wave
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio
from aiohttp import web

SPEECH_SAMPLE_RATE = 24_000
SECONDS_PER_CHARACTER = 0.05
MIN_SPEECH_SECONDS = 0.4
MAX_SPEECH_SECONDS = 8.0
CHUNK_SECONDS = 0.05
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ToolCall:
    """One function call the fake model asks for."""

    name: str
    arguments: dict[str, Any] | str
    call_id: str = field(default_factory=lambda: f"call_{secrets.token_hex(8)}")

    @property
    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)


@dataclass(frozen=True)
class ChatReply:
    """What the fake model answers to one chat request: text, tool calls, or both."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    status: int = 200
    """A non-200 status answers with an OpenAI-shaped error instead."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received: the path and the decoded body."""

    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    received_at: float


def echo_reply(body: dict[str, Any]) -> ChatReply:
    """The default answer when nothing is scripted: repeat the user, or report a tool's result."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    content = _message_text(last)
    if last.get("role") == "tool":
        return ChatReply(text=f"The tool answered: {content}")
    if last.get("role") == "user" and content:
        return ChatReply(text=f"You said: {content}")
    return ChatReply(text="Hello! How can I help you?")


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def speech_seconds(text: str) -> float:
    """How long the fake voice speaks `text`: proportional to its length, within bounds."""
    return min(MAX_SPEECH_SECONDS, max(MIN_SPEECH_SECONDS, len(text) * SECONDS_PER_CHARACTER))


def pcm_chunks(text: str, *, sample_rate: int = SPEECH_SAMPLE_RATE) -> Iterator[bytes]:
    """16-bit mono PCM of a voiced tone for `text`, in 50 ms chunks (so the first bytes go out at
    once): two harmonics of 240 Hz, one syllable-like swell per word."""
    total = int(speech_seconds(text) * sample_rate)
    pulse = total / max(1, len(text.split()))
    period = sample_rate // 240
    wave_form = [
        0.6 * math.sin(2 * math.pi * i / period) + 0.3 * math.sin(4 * math.pi * i / period)
        for i in range(period)
    ]
    step = int(sample_rate * CHUNK_SECONDS)
    for start in range(0, total, step):
        samples = array.array("h")
        for index in range(start, min(total, start + step)):
            envelope = math.sin(math.pi * (index % pulse) / pulse) ** 0.5
            samples.append(int(12_000 * envelope * wave_form[index % period]))
        yield samples.tobytes()


def synthesize_pcm(text: str, *, sample_rate: int = SPEECH_SAMPLE_RATE) -> bytes:
    """The whole of `pcm_chunks`."""
    return b"".join(pcm_chunks(text, sample_rate=sample_rate))


def wav_bytes(pcm: bytes, *, sample_rate: int = SPEECH_SAMPLE_RATE) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(sample_rate)
        writer.writeframes(pcm)
    return buffer.getvalue()


def wav_seconds(data: bytes) -> float:
    """Duration of a WAV upload; 0 when it is not a readable WAV."""
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            return reader.getnframes() / float(reader.getframerate() or 1)
    except (wave.Error, EOFError):
        return 0.0


def _error(status: int, message: str, *, error_type: str = "invalid_request_error") -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": error_type, "param": None, "code": None}},
        status=status,
    )


class FakeOpenAI:
    """The server. `start()` binds a free loopback port unless told one; `base_url` ends in /v1."""

    def __init__(
        self,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        api_key: str | None = None,
        latency: float = 0.0,
        default_transcript: str | None = None,
        models: tuple[str, ...] = ("gpt-4o-mini", "whisper-1", "tts-1"),
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.latency = latency
        """Seconds to wait before the first byte of every model answer."""
        self.default_transcript = default_transcript
        self.models = models
        self.requests: list[RecordedRequest] = []
        self.fallback: Callable[[dict[str, Any]], ChatReply] = echo_reply
        self._replies: deque[ChatReply] = deque()
        self._transcripts: deque[str] = deque()
        self._runner: web.AppRunner | None = None

    # scripting

    def reply(self, *replies: ChatReply | str) -> None:
        """Queue chat answers, used one per request, in order; a str is a text answer."""
        for item in replies:
            self._replies.append(ChatReply(text=item) if isinstance(item, str) else item)

    def reply_tool_call(self, name: str, arguments: dict[str, Any] | str, *, text: str = "") -> ToolCall:
        """Queue an answer that calls tool `name`; returns the call (its id is in the follow-up)."""
        call = ToolCall(name=name, arguments=arguments)
        self._replies.append(ChatReply(text=text, tool_calls=(call,)))
        return call

    def hear(self, *transcripts: str) -> None:
        """Queue transcripts, one per transcription request."""
        self._transcripts.extend(transcripts)

    @property
    def pending_replies(self) -> int:
        return len(self._replies)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [request for request in self.requests if request.path == path]

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return self.requests_to("/v1/chat/completions")

    @property
    def speech_requests(self) -> list[RecordedRequest]:
        return self.requests_to("/v1/audio/speech")

    @property
    def transcription_requests(self) -> list[RecordedRequest]:
        return self.requests_to("/v1/audio/transcriptions")

    # lifecycle

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._authenticate], client_max_size=32 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_get("/v1/models", self._models)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None:
            sockets = getattr(server, "sockets", None) or []
            self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # handlers

    @web.middleware
    async def _authenticate(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        if self.api_key is not None:
            expected = f"Bearer {self.api_key}"
            if not secrets.compare_digest(request.headers.get("Authorization", ""), expected):
                return _error(401, "Incorrect API key provided.", error_type="invalid_api_key")
        response: web.StreamResponse = await handler(request)
        return response

    def _record(self, request: web.Request, body: dict[str, Any]) -> None:
        headers = {k.lower(): v for k, v in request.headers.items() if k.lower() != "authorization"}
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                headers=headers,
                body=body,
                received_at=time.monotonic(),
            )
        )

    async def _json_body(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.")
        return body

    async def _models(self, request: web.Request) -> web.Response:
        self._record(request, {})
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "agentline-fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        self._record(request, body)
        if not isinstance(body.get("messages"), list) or not body.get("model"):
            return _error(400, "'messages' (a list) and 'model' are required.")
        reply = self._replies.popleft() if self._replies else self.fallback(body)
        if self.latency:
            await asyncio.sleep(self.latency)
        if reply.status != 200:
            return _error(reply.status, reply.text or "scripted failure", error_type="server_error")
        completion_id = f"chatcmpl-{secrets.token_hex(12)}"
        if not body.get("stream"):
            return web.json_response(_completion(completion_id, str(body["model"]), reply))
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        for chunk in _completion_chunks(completion_id, str(body["model"]), reply, include_usage):
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _transcribe(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            return _error(400, "Transcriptions take a multipart/form-data upload.")
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return _error(400, "'file' is required.")
        audio = upload.file.read()
        seconds = wav_seconds(audio)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        self._record(request, {**fields, "file_bytes": len(audio), "audio_seconds": seconds})
        if self.latency:
            await asyncio.sleep(self.latency)
        if self._transcripts:
            text = self._transcripts.popleft()
        elif self.default_transcript is not None:
            text = self.default_transcript
        else:
            text = f"I spoke for {seconds:.1f} seconds."
        response_format = fields.get("response_format", "json")
        if response_format == "text":
            return web.Response(text=text, content_type="text/plain")
        if response_format == "verbose_json":
            return web.json_response(
                {
                    "task": "transcribe",
                    "language": "english",
                    "duration": seconds,
                    "text": text,
                    "segments": [],
                }
            )
        return web.json_response({"text": text})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        self._record(request, body)
        text = body.get("input")
        if not isinstance(text, str) or not text:
            return _error(400, "'input' (non-empty text) is required.")
        response_format = body.get("response_format", "mp3")
        if response_format not in ("pcm", "wav"):
            return _error(400, f"response_format {response_format!r} is not supported here: use pcm or wav.")
        if self.latency:
            await asyncio.sleep(self.latency)
        if body.get("stream_format") == "sse":
            return await self._speech_events(request, text)
        response = web.StreamResponse(headers={"Content-Type": f"audio/{response_format}"})
        await response.prepare(request)
        if response_format == "wav":
            await response.write(wav_bytes(synthesize_pcm(text)))
        else:
            for chunk in pcm_chunks(text):
                await response.write(chunk)
        await response.write_eof()
        return response

    async def _speech_events(self, request: web.Request, text: str) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in pcm_chunks(text):
            event = {"type": "speech.audio.delta", "audio": base64.b64encode(chunk).decode()}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        done = {"type": "speech.audio.done", "usage": usage}
        await response.write(f"data: {json.dumps(done)}\n\n".encode())
        await response.write_eof()
        return response


def _completion(completion_id: str, model: str, reply: ChatReply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": c.call_id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json}}
            for c in reply.tool_calls
        ]
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if reply.tool_calls else "stop",
            }
        ],
        "usage": _usage(reply),
    }


def _usage(reply: ChatReply) -> dict[str, int]:
    completion_tokens = max(1, len(reply.text.split()))
    return {
        "prompt_tokens": 10,
        "completion_tokens": completion_tokens,
        "total_tokens": 10 + completion_tokens,
    }


def _completion_chunks(
    completion_id: str, model: str, reply: ChatReply, include_usage: bool
) -> list[dict[str, Any]]:
    """The chunks OpenAI streams: role first, text in pieces, tool calls name-then-arguments."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        }

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
    words = reply.text.split(" ") if reply.text else []
    for index, word in enumerate(words):
        chunks.append(chunk({"content": word if index == 0 else f" {word}"}))
    for index, call in enumerate(reply.tool_calls):
        chunks.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call.call_id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": ""},
                        }
                    ]
                }
            )
        )
        arguments = call.arguments_json
        middle = len(arguments) // 2
        for piece in (arguments[:middle], arguments[middle:]):
            if piece:
                chunks.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    chunks.append(chunk({}, "tool_calls" if reply.tool_calls else "stop"))
    if include_usage:
        chunks.append(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(reply),
            }
        )
    return chunks


@pytest_asyncio.fixture(loop_scope="session")
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    """A fresh fake model server per test, on a free loopback port, with an API key it checks.

    `.base_url` (…/v1), `.api_key`, `.reply(...)`, `.reply_tool_call(...)`, `.hear(...)`,
    `.requests` / `.chat_requests` / `.speech_requests` / `.transcription_requests`, `.latency`.
    """
    server = FakeOpenAI(api_key=f"sk-fake-{secrets.token_hex(24)}")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _serve(host: str, port: int, api_key: str | None, latency: float) -> None:
    server = FakeOpenAI(host=host, port=port, api_key=api_key, latency=latency)
    await server.start()
    print(f"fake OpenAI-compatible server on {server.base_url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m agentline_common.testing.fake_openai --port N`: the offline model server."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--api-key", default=None, help="require this bearer key (default: any)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, args.api_key, args.latency))


if __name__ == "__main__":
    main()
