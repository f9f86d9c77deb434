"""A caller for tests and benchmarks: joins a LiveKit room with a token, listens to the agent's
greeting, speaks a WAV file, listens to the answer, hangs up, and prints one JSON line of what it
heard and when (monotonic seconds, comparable within the run).

It must run where WebRTC media flows: inside the test's network namespace, e.g.
``ip netns exec <ns> python caller.py --url ws://10.213.x.2:port --token ... --wav speech.wav``.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import math
import sys
import time
import wave
from dataclasses import asdict, dataclass, field

from livekit import rtc

SAMPLE_RATE = 48_000
FRAME_SAMPLES = SAMPLE_RATE // 50  # 20 ms
LOUD_RMS = 500.0
"""Above this a 20 ms frame counts as sound (the fake voice is ~8000, silence is 0)."""
QUIET_SECONDS = 1.0
"""Silence that marks the end of what the agent says."""


def rms(samples: array.array[int]) -> float:
    return math.sqrt(sum(s * s for s in samples) / max(1, len(samples)))


@dataclass
class Heard:
    """One stretch of agent audio: when it began and ended, how loud it was."""

    started_at: float
    ended_at: float = 0.0
    loud_frames: int = 0
    peak_rms: float = 0.0


@dataclass
class Report:
    connected_at: float = 0.0
    agent_joined_at: float | None = None
    greeting: Heard | None = None
    speech_ended_at: float | None = None
    answer: Heard | None = None
    agent_left_at: float | None = None
    error: str | None = None
    events: list[str] = field(default_factory=list)


class Listener:
    """Reads the agent's audio and splits it into stretches of sound separated by silence."""

    def __init__(self) -> None:
        self.stretches: list[Heard] = []
        self._current: Heard | None = None
        self._quiet_since: float | None = None
        self.changed = asyncio.Event()

    async def run(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        async for event in stream:
            now = time.monotonic()
            level = rms(array.array("h", bytes(event.frame.data)))
            if level >= LOUD_RMS:
                if self._current is None:
                    self._current = Heard(started_at=now)
                self._current.loud_frames += 1
                self._current.peak_rms = max(self._current.peak_rms, level)
                self._current.ended_at = now
                self._quiet_since = None
            elif self._current is not None:
                self._quiet_since = self._quiet_since or now
                if now - self._quiet_since >= QUIET_SECONDS:
                    self._close_stretch()
        self.flush()

    def flush(self) -> None:
        """End the stretch in progress: the audio ended (the agent left) before the quiet did."""
        if self._current is not None:
            self._close_stretch()

    def _close_stretch(self) -> None:
        assert self._current is not None
        self.stretches.append(self._current)
        self._current = None
        self._quiet_since = None
        self.changed.set()

    async def next_stretch(self, after: int) -> Heard:
        while len(self.stretches) <= after:
            self.changed.clear()
            await self.changed.wait()
        return self.stretches[after]


def read_wav(path: str) -> array.array[int]:
    with wave.open(path, "rb") as reader:
        if reader.getframerate() != SAMPLE_RATE or reader.getnchannels() != 1:
            raise SystemExit(f"{path}: need {SAMPLE_RATE} Hz mono 16-bit")
        return array.array("h", reader.readframes(reader.getnframes()))


class Microphone:
    """Sends 20 ms frames in real time: the queued speech, else silence (as a real mic would)."""

    def __init__(self, source: rtc.AudioSource) -> None:
        self._source = source
        self._pending: array.array[int] = array.array("h")
        self.last_loud_at: float | None = None
        self.done = asyncio.Event()

    def say(self, samples: array.array[int]) -> None:
        self._pending.extend(samples)
        self.done.clear()

    async def run(self) -> None:
        silence = array.array("h", [0] * FRAME_SAMPLES)
        next_at = time.monotonic()
        while True:
            if self._pending:
                chunk, self._pending = self._pending[:FRAME_SAMPLES], self._pending[FRAME_SAMPLES:]
                chunk.extend([0] * (FRAME_SAMPLES - len(chunk)))
            else:
                chunk = silence
            frame = rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, FRAME_SAMPLES)
            await self._source.capture_frame(frame)
            if rms(chunk) >= LOUD_RMS:
                self.last_loud_at = time.monotonic() + self._source.queued_duration
            if not self._pending:
                self.done.set()
            next_at += FRAME_SAMPLES / SAMPLE_RATE
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def call(
    url: str, token: str, wav: str | None, timeout: float, hold: float = 0.0, until_agent_leaves: bool = False
) -> Report:
    report = Report()
    room = rtc.Room()
    listener = Listener()
    agent_track: asyncio.Future[rtc.Track] = asyncio.get_running_loop().create_future()
    agent_joined, agent_left = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    def on_participant(participant: rtc.RemoteParticipant) -> None:
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT and not agent_joined.is_set():
            report.agent_joined_at = time.monotonic()
            agent_joined.set()

    @room.on("participant_connected")
    def _connected(participant: rtc.RemoteParticipant) -> None:
        on_participant(participant)

    @room.on("participant_disconnected")
    def _left(participant: rtc.RemoteParticipant) -> None:
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT and not agent_left.is_set():
            report.agent_left_at = time.monotonic()
            agent_left.set()

    @room.on("disconnected")
    def _disconnected(_reason: object) -> None:
        # A deleted room disconnects everyone at once: the agent is gone too.
        if agent_joined.is_set() and not agent_left.is_set():
            report.agent_left_at = time.monotonic()
            agent_left.set()

    @room.on("track_subscribed")
    def _subscribed(track: rtc.Track, _: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and not agent_track.done():
            agent_track.set_result(track)

    try:
        async with asyncio.timeout(timeout):
            await room.connect(url, token)
            report.connected_at = time.monotonic()
            for participant in room.remote_participants.values():
                on_participant(participant)
            source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=40)
            microphone = Microphone(source)
            track = rtc.LocalAudioTrack.create_audio_track("microphone", source)
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            await room.local_participant.publish_track(track, options)
            tasks.append(asyncio.create_task(microphone.run()))
            await agent_joined.wait()
            tasks.append(asyncio.create_task(listener.run(await agent_track)))
            report.greeting = await listener.next_stretch(0)
            report.events.append("greeting heard")
            await asyncio.sleep(hold)
            if wav is not None:
                microphone.say(read_wav(wav))
                await microphone.done.wait()
                report.speech_ended_at = microphone.last_loud_at
                report.events.append("spoke")
                if until_agent_leaves:
                    await agent_left.wait()
                    report.events.append("agent left")
                    listener.flush()
                    report.answer = listener.stretches[1] if len(listener.stretches) > 1 else None
                else:
                    report.answer = await listener.next_stretch(1)
                    report.events.append("answer heard")
    except TimeoutError:
        report.error = f"timed out after {timeout:g} s ({', '.join(report.events) or 'nothing heard'})"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await room.disconnect()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True, help='"-": read it from stdin once started')
    parser.add_argument("--wav", default=None, help="48 kHz mono 16-bit speech to say after the greeting")
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--hold", type=float, default=0.0, help="seconds to stay after the greeting")
    parser.add_argument(
        "--until-agent-leaves", action="store_true", help="after speaking, stay until the agent leaves"
    )
    args = parser.parse_args()
    # Reading the token only now lets a benchmark start this process (imports take a while) before
    # the token is issued, so that dispatch latency does not include Python's start-up.
    token = sys.stdin.readline().strip() if args.token == "-" else args.token
    report = asyncio.run(call(args.url, token, args.wav, args.timeout, args.hold, args.until_agent_leaves))
    print(json.dumps(asdict(report)), flush=True)


if __name__ == "__main__":
    main()
