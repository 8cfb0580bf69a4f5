"""Live sources: frames decoded as they arrive from a network stream, a pipe or a capture device.

A live source has no end to plan from, so frames are sampled as they come: by rate (`fps`, the frame nearest to
each of t₀, t₀ + 1/fps, … — the rule `iter_frames` applies to a file, so a live run and an offline run of the
same stream pick the same frames) or every n-th frame. Every decoded frame is reported, sampled or not, with its
arrival time: the caller closes a time chunk as soon as the stream's clock passes its end.

Times are *stream seconds*: 0 at the first frame of the run, continuing across reconnections (a new connection
starts where the previous one stopped, plus the wall-clock time it was gone — the gap is reported).
"""

from __future__ import annotations

import io
import math
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from vtc.errors import InputError, UsageError

#: URL schemes FFmpeg opens as live network sources
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp", "tcp", "rtp", "http", "https", "hls")


def is_stream_url(source: str) -> bool:
    """Whether `source` is a network URL (rtsp://, srt://, udp://, tcp://, http(s)://, …)."""
    scheme, sep, _ = source.partition("://")
    return bool(sep) and scheme.lower() in LIVE_SCHEMES


def check_live_source(source: str, fmt: str | None) -> None:
    """A live source is `-` (standard input), a network URL, or a capture device with `fmt` (v4l2, avfoundation,
    dshow, …); else a UsageError that says so."""
    if source == "-" or is_stream_url(source) or fmt:
        return
    raise UsageError(f"--live takes '-' (a stream on standard input), a network URL ({', '.join(LIVE_SCHEMES[:7])}, "
                     f"http(s) …) or a capture device with --live-format (e.g. v4l2 /dev/video0), not '{source}'. "
                     f"For a video file, drop --live.")


class _StallingReader(io.RawIOBase):
    """A pipe read with a stall timeout: `read` waits at most `timeout` seconds for data, then raises."""

    def __init__(self, fd: int, timeout: float) -> None:
        self.fd, self.timeout = fd, timeout

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        if not ready:
            raise TimeoutError(f"no data for {self.timeout:g} s")
        return os.read(self.fd, n if n > 0 else 1 << 16)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


#: demuxer options for low latency: probe about half a second of stream, not FFmpeg's default 5 s
LOW_LATENCY = {"analyzeduration": "500000", "probesize": "500000"}


def open_live(source: str, *, fmt: str | None = None, open_timeout: float = 10.0, stall_timeout: float = 10.0,
              options: dict[str, str] | None = None) -> av.container.InputContainer:
    """Open a live source; FFmpeg's reads give up after `stall_timeout` seconds without data."""
    options = {**LOW_LATENCY, **(options or {})}
    try:
        if source == "-":
            return av.open(_StallingReader(sys.stdin.fileno(), stall_timeout), format=fmt or "mpegts",
                           options=options)
        return av.open(source, format=fmt, options=options, timeout=(open_timeout, stall_timeout),
                       metadata_errors="ignore")
    except (av.error.FFmpegError, OSError) as e:
        raise InputError(f"{source}: cannot open the live source ({getattr(e, 'strerror', None) or e}). Is the "
                         f"stream running and the address right?") from None


@dataclass
class LiveFrame:
    """One decoded frame: its stream time (s), arrival (time.time()), and the picture when it is sampled."""

    t: float
    arrival: float
    image: np.ndarray | None
    index: int  # decoded frames since the run began


@dataclass
class Gap:
    """The source was gone from stream time `t` for `seconds` (wall clock); `reason` says why."""

    t: float
    seconds: float
    reason: str


class Sampler:
    """Which decoded frames to keep, as they arrive: the one nearest to each target t₀ + k/fps (ties to the earlier
    frame, a frame kept once), or every n-th frame.  The same rule as `vtc.io.decode.iter_frames`."""

    def __init__(self, fps: float | None, every: int | None) -> None:
        self.fps, self.every = fps, every
        self.reset()

    def reset(self) -> None:
        """Start over (a new connection: its first frame is the first target)."""
        self.start: float | None = None
        self.j = 0
        self.count = 0
        self.prev: tuple[float, object] | None = None
        self.last_kept: object = None

    def push(self, t: float, frame: object) -> list[tuple[float, object]]:
        """`frame` (any object) decoded at time `t`.  → frames to keep now as (time, frame): none, one, or more when
        several targets fall between two frames (each frame kept once)."""
        idx, self.count = self.count, self.count + 1
        if self.fps is None:
            return [(t, frame)] if idx % int(self.every or 1) == 0 else []
        if self.start is None:
            self.start = t
        out: list[tuple[float, object]] = []
        while (target := self.start + self.j / self.fps) <= t:
            use_prev = self.prev is not None and (target - self.prev[0]) <= (t - target)
            chosen = self.prev if use_prev else (t, frame)
            self.j += 1
            assert chosen is not None
            if chosen[1] is not self.last_kept:
                self.last_kept = chosen[1]
                out.append(chosen)
        self.prev = (t, frame)
        return out


def iter_live(
    source: str,
    size: Callable[[int, int], tuple[int, int]],
    *,
    fps: float | None,
    every: int | None,
    fmt: str | None = None,
    open_timeout: float = 10.0,
    stall_timeout: float = 10.0,
    reconnect: int = 0,
    stop: threading.Event | None = None,
    on_gap: Callable[[Gap], None] | None = None,
    on_open: Callable[[dict[str, object]], None] | None = None,
) -> Iterator[LiveFrame]:
    """Decode `source` until it ends (or `stop` is set): every decoded frame as a LiveFrame, with the picture
    (uint8 RGB [H, W, 3] at `size(width, height)`) on sampled frames only.

    A source that ends, drops or stalls is reopened up to `reconnect` times in a row (1 s apart; standard input
    cannot be reopened); each reconnection is a `Gap`. A stall with no reconnection left is an InputError.
    `on_open` receives the stream's facts (container, codec, width, height, fps) at each connection.
    """
    stop = stop or threading.Event()
    sampler = Sampler(fps, every)
    offset = 0.0  # stream time at which the current connection's first frame sits
    last_t, last_arrival = -math.inf, 0.0
    decoded, tries = 0, 0
    reason = ""
    while not stop.is_set():
        try:
            container = open_live(source, fmt=fmt, open_timeout=open_timeout, stall_timeout=stall_timeout)
        except InputError:
            if source == "-" or tries >= reconnect:
                if decoded:  # the source is gone for good after it ran: that is its end
                    return
                raise
            tries += 1
            stop.wait(1.0)
            continue
        stalled = ""
        first_pts: int | None = None
        try:
            if not container.streams.video:
                raise InputError(f"{source}: the stream carries no video.")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
            if on_open is not None:
                on_open({"container": container.format.name, "codec": stream.codec_context.name,
                         "width": stream.codec_context.width, "height": stream.codec_context.height, "fps": rate})
            base = stream.time_base or Fraction(1, 90_000)
            for frame in container.decode(stream):
                if stop.is_set():
                    return
                now = time.time()
                pts = frame.pts if frame.pts is not None else round(decoded / rate / base)
                if first_pts is None:  # a new connection: the clock continues after the gap
                    if decoded:
                        gap = max(0.0, now - last_arrival)
                        offset = last_t + 1.0 / rate + gap
                        if on_gap is not None:
                            on_gap(Gap(last_t, gap, reason))
                    first_pts = pts
                    sampler.reset()
                # seconds since the connection's first frame, exactly rounded (as a file's frame.time is)
                rel = float((pts - first_pts) * base)
                if offset + rel <= last_t:  # a timestamp jump backwards: keep the clock monotonic
                    rel = last_t + 1.0 / rate - offset
                last_t, last_arrival = offset + rel, now
                tries = 0
                kept = sampler.push(rel, (frame, now, decoded))
                decoded += 1
                if not kept:
                    yield LiveFrame(offset + rel, now, None, decoded - 1)
                for kt, item in kept:
                    kf, arrived, index = item  # type: ignore[misc]
                    w, h = size(kf.width, kf.height)
                    image = kf.reformat(width=w, height=h, format="rgb24", interpolation="BICUBIC").to_ndarray()
                    yield LiveFrame(offset + kt, arrived, image, index)
        except (av.error.FFmpegError, TimeoutError, OSError) as e:
            stalled = str(getattr(e, "strerror", None) or e)
        finally:
            container.close()
        if stop.is_set():
            return
        if source == "-" or tries >= reconnect:
            if stalled:
                raise InputError(f"{source}: the source stalled or dropped ({stalled}) after {decoded} frames. "
                                 f"Check the source, or raise --stall-timeout / --reconnect.")
            return
        reason = f"the source stalled or dropped ({stalled})" if stalled else "the source ended"
        tries += 1
        stop.wait(1.0)
