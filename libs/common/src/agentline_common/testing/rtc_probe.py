"""A LiveKit rtc client for media tests, run as a process inside a test's network namespace.

    python -m agentline_common.testing.rtc_probe publish --url ws://10.213.x.2:port --token T
    python -m agentline_common.testing.rtc_probe receive --url ws://10.213.x.2:port --token T

`publish` sends a 440 Hz sine wave as a microphone track until killed or `--seconds` pass.
`receive` waits for a remote audio track and counts non-silent frames; it prints one JSON line
({"frames", "non_silent_frames", "peak_rms", "sample_rate"}) and exits 0 once `--frames` non-silent
frames arrived, 1 if they did not within `--timeout`.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import math
import sys
from collections.abc import Callable

from livekit import rtc

SAMPLE_RATE = 48_000
FRAME_MS = 10
SILENCE_RMS = 100.0
"""RMS of 16-bit samples below which a frame counts as silent (the sine has an RMS of ~7000)."""


def sine_frame(*, start_sample: int, frequency: float = 440.0, amplitude: float = 10_000) -> rtc.AudioFrame:
    samples_per_frame = SAMPLE_RATE * FRAME_MS // 1000
    samples = array.array(
        "h",
        (
            int(amplitude * math.sin(2 * math.pi * frequency * (start_sample + i) / SAMPLE_RATE))
            for i in range(samples_per_frame)
        ),
    )
    return rtc.AudioFrame(
        data=samples.tobytes(),
        sample_rate=SAMPLE_RATE,
        num_channels=1,
        samples_per_channel=samples_per_frame,
    )


def frame_rms(frame: rtc.AudioFrame) -> float:
    samples = array.array("h", bytes(frame.data))
    if not samples:
        return 0.0
    return math.sqrt(sum(s * s for s in samples) / len(samples))


async def connect(
    url: str, token: str, *, prepare: Callable[[rtc.Room], None] = lambda _: None, attempts: int = 3
) -> rtc.Room:
    """Join the room, trying again with a fresh Room when ICE does not finish in time.

    On a loaded 2-core machine the peer connection sometimes misses the SDK's deadline; a second
    attempt then succeeds. The caller's assertions stay the same: audio must arrive.
    """
    for attempt in range(1, attempts + 1):
        room = rtc.Room()
        prepare(room)
        try:
            await room.connect(url, token)
        except rtc.ConnectError as error:
            print(f"connect attempt {attempt} failed: {error}", file=sys.stderr, flush=True)
            if attempt == attempts:
                raise
            await asyncio.sleep(1.0)
        else:
            return room
    raise AssertionError("unreachable")


async def publish(url: str, token: str, seconds: float) -> int:
    room = await connect(url, token)
    source = rtc.AudioSource(SAMPLE_RATE, 1)
    track = rtc.LocalAudioTrack.create_audio_track("sine", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    await room.local_participant.publish_track(track, options)
    print(json.dumps({"published": track.sid}), flush=True)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    sample = 0
    while loop.time() < end:
        frame = sine_frame(start_sample=sample)
        sample += frame.samples_per_channel
        await source.capture_frame(frame)
    await room.disconnect()
    return 0


async def receive(url: str, token: str, *, frames_wanted: int, timeout: float) -> int:
    tracks: asyncio.Queue[rtc.Track] = asyncio.Queue()

    def on_track(track: rtc.Track, *_: object) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            tracks.put_nowait(track)

    def prepare(room: rtc.Room) -> None:
        room.on("track_subscribed", on_track)

    room = await connect(url, token, prepare=prepare)
    stats = {"frames": 0, "non_silent_frames": 0, "peak_rms": 0.0, "sample_rate": 0}
    try:
        async with asyncio.timeout(timeout):
            track = await tracks.get()
            async for event in rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1):
                rms = frame_rms(event.frame)
                stats["frames"] += 1
                stats["sample_rate"] = event.frame.sample_rate
                stats["peak_rms"] = max(float(stats["peak_rms"]), rms)
                if rms > SILENCE_RMS:
                    stats["non_silent_frames"] += 1
                    if stats["non_silent_frames"] >= frames_wanted:
                        break
    except TimeoutError:
        pass
    finally:
        print(json.dumps(stats), flush=True)
        await room.disconnect()
    return 0 if stats["non_silent_frames"] >= frames_wanted else 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="rtc_probe", description=__doc__)
    parser.add_argument("mode", choices=["publish", "receive"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--seconds", type=float, default=60.0, help="publish: how long")
    parser.add_argument("--frames", type=int, default=50, help="receive: non-silent frames wanted")
    parser.add_argument("--timeout", type=float, default=30.0, help="receive: give up after")
    args = parser.parse_args(argv)
    if args.mode == "publish":
        code = asyncio.run(publish(args.url, args.token, args.seconds))
    else:
        code = asyncio.run(receive(args.url, args.token, frames_wanted=args.frames, timeout=args.timeout))
    sys.exit(code)


if __name__ == "__main__":
    main()
