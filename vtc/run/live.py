"""Live runs: compress a stream as it arrives, one time chunk at a time, into a directory of chunk files.

    decode thread (iter_live) ──queue──▶ caller's thread: encoder batches as frames come ──▶ at the chunk's end:
                                          compress + store chunk_N.safetensors, then the index names it

A chunk covers `chunk` seconds of stream time [t0, t0 + chunk); it closes as soon as a frame past its end is
decoded (or the stream ends, or the run is stopped), so a frame's tokens are durable within about one chunk plus
one chunk's encode time of its arrival. The method runs on each chunk's features: a method whose scope is "frame"
gives exactly what an offline run of the same frames gives; "clip" methods decide within each chunk
(`vtc methods` prints each method's scope). Memory is flat: a chunk's features are freed once it is written.

A second run into the same directory (same settings) continues the index: chunk numbers, and stream time after the
last chunk's end plus the wall-clock time the source was away, recorded as a gap.
"""

from __future__ import annotations

import datetime as _dt
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vtc.errors import InputError, UsageError, VtcError
from vtc.io.chunks import INDEX_FORMAT, INDEX_VERSION, chunk_name, fsync_file, is_live_dir, read_index, write_index
from vtc.io.decode import DecodeReport, VideoInfo
from vtc.io.live import Gap, LiveFrame, check_live_source, iter_live
from vtc.run.finish import FrameReuse, Job, Video
from vtc.run.pipeline import Engine
from vtc.run.plan import Plan
from vtc.targets.encoders import AnyEncoder

#: frames (sampled or not) waiting between the decode thread and the encoder
QUEUE_FRAMES = 512


@dataclass(frozen=True)
class LiveOptions:
    """How a live source is read and cut.  chunk: stream seconds per chunk file; reconnect: how many times in a
    row a dropped source is reopened; stall_timeout: seconds without data before the source counts as stalled."""

    chunk: float = 10.0
    reconnect: int = 0
    stall_timeout: float = 10.0
    open_timeout: float = 10.0
    format: str | None = None

    def validate(self) -> LiveOptions:
        for name, lo in (("chunk", 0.1), ("stall_timeout", 0.1), ("open_timeout", 0.1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= 86_400:
                raise UsageError(f"--{name.replace('_', '-')} takes seconds in [{lo}, 86400], not {v!r}.")
        if isinstance(self.reconnect, bool) or not isinstance(self.reconnect, int) or not 0 <= self.reconnect <= 10**6:
            raise UsageError(f"--reconnect takes a count ≥ 0, not {self.reconnect!r}.")
        return self


@dataclass
class LiveSummary:
    """What a live run did: chunks written, frames, tokens, why it stopped, and latency (frame arrival → its
    chunk named by the index) in seconds."""

    output: Path
    chunks: int = 0
    frames: int = 0
    tokens: int = 0
    source_tokens: int = 0
    stopped: str = ""
    latencies: list[float] = field(default_factory=list)
    gaps: list[dict[str, Any]] = field(default_factory=list)
    error: VtcError | None = None

    def latency(self, q: float) -> float | None:
        return float(np.quantile(self.latencies, q)) if self.latencies else None


def check_live_plan(plan: Plan, source: str, options: LiveOptions) -> None:
    """What a live run cannot do, said before the source is opened."""
    options.validate()
    check_live_source(source, options.format)
    if plan.sampling.fps is None and plan.sampling.every is None:
        raise UsageError("--live samples by rate: pass --fps F (or --every n); --frames needs the whole video.")
    if "audio_saliency" in plan.signals:
        raise UsageError(f"{plan.spec.name} budgets tokens from the audio track, which --live does not read; choose "
                         f"another method (e.g. budgeted -p budget=uniform).")


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


class LiveRun:
    """One live run into `outdir`.  See the module docstring."""

    def __init__(self, plan: Plan, encoder: AnyEncoder, source: str, outdir: Path, options: LiveOptions,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.plan, self.encoder, self.source, self.outdir = plan, encoder, source, Path(outdir)
        self.options = options
        self.on_event = on_event or (lambda kind, data: None)
        self.engine = Engine(plan, encoder, decode_workers=1)
        self.stream: dict[str, Any] = {}  # what the decoder learnt of the stream (codec, size, rate)
        #: the frame-reuse rule's last view and outputs, carried from one chunk to the next
        self._last_view: Any = None
        self._last_out: Any = None
        self._warned = False

    # ------------------------------------------------------------------ the index
    def _settings(self) -> dict[str, Any]:
        return {"config_hash": self.plan.cfg.config_hash(), "chunk": float(self.options.chunk),
                "method": self.plan.method_label, "sampling": self.plan.sampling.describe()}

    def _open_index(self) -> dict[str, Any]:
        """A fresh index, or the existing one of the same settings (the run continues it)."""
        if self.outdir.exists() and not self.outdir.is_dir():
            raise UsageError(f"-o {self.outdir} is a file; --live writes a directory of chunks.")
        if is_live_dir(self.outdir):
            index = read_index(self.outdir)
            if index.get("settings", {}).get("config_hash") != self._settings()["config_hash"] or \
                    index.get("settings", {}).get("chunk") != self._settings()["chunk"]:
                raise UsageError(f"{self.outdir} holds a live run with other settings ({index.get('settings')}); "
                                 f"continue it with the same options, or choose another -o.")
            return index
        if self.outdir.is_dir() and any(self.outdir.iterdir()):
            raise UsageError(f"-o {self.outdir} is a directory with other files and no live index; choose an empty "
                             f"or new directory.")
        self.outdir.mkdir(parents=True, exist_ok=True)
        if not os.access(self.outdir, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write into {self.outdir}: the folder is not writable.")
        return {"format": INDEX_FORMAT, "version": INDEX_VERSION, "settings": self._settings(), "sessions": [],
                "gaps": [], "chunks": []}

    # ------------------------------------------------------------------ one chunk
    def _info(self, start: float, duration: float, frames: int) -> VideoInfo:
        """A chunk as a video of its own: the stream's facts, its `frames` decoded frames from time `start` (what a
        target's processor is told: frame indices count from the chunk's first decoded frame)."""
        s = self.stream
        return VideoInfo(path=self.source, size_bytes=0, container=str(s.get("container", "")),
                         codec=str(s.get("codec", "")), width=int(s.get("width", 0)), height=int(s.get("height", 0)),
                         rotation=0, fps=float(s.get("fps", 0.0)), duration=duration, num_frames=frames,
                         start_time=start, has_audio=False, audio_rate=0)

    def run(self, stop: threading.Event | None = None) -> LiveSummary:
        """Read the source until it ends, stalls for good, or `stop` is set; write chunks as they complete."""
        stop = stop or threading.Event()
        index = self._open_index()
        summary = LiveSummary(self.outdir)
        chunks = index["chunks"]
        base = float(chunks[-1]["t1"]) if chunks else 0.0  # stream time continues after the last chunk
        resumed_at = time.time()
        if chunks and index["sessions"]:
            away = max(0.0, resumed_at - float(index["sessions"][-1].get("last_arrival", resumed_at)))
            base += away
            index["gaps"].append({"t": float(chunks[-1]["t1"]), "seconds": away, "reason": "a new run"})
        number = int(chunks[-1]["index"]) + 1 if chunks else 0
        session = {"source": self.source, "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   "t_offset": base, "first_chunk": number, "last_arrival": resumed_at}
        index["sessions"].append(session)
        write_index(self.outdir, index)
        q: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_FRAMES)
        decoder = threading.Thread(target=self._decode, args=(q, stop), daemon=True, name="vtc-live-decode")
        decoder.start()
        length = float(self.options.chunk)
        k = 0  # chunk number within this run: covers [base + k·L, base + (k+1)·L)
        state = _Chunk()
        error: VtcError | None = None
        try:
            while True:
                try:
                    item = q.get(timeout=0.2)
                except queue.Empty:
                    if stop.is_set():
                        summary.stopped = "stopped"
                        break
                    continue
                if isinstance(item, VtcError):
                    error = item
                    break
                if item is None:
                    summary.stopped = "the source ended"
                    break
                if isinstance(item, Gap):
                    g = {"t": base + item.t, "seconds": item.seconds, "reason": item.reason}
                    index["gaps"].append(g)
                    summary.gaps.append(g)
                    self.on_event("gap", g)
                    continue
                frame: LiveFrame = item
                g_t = base + frame.t
                session["last_arrival"] = frame.arrival
                while g_t >= base + (k + 1) * length:  # the stream's clock passed this chunk's end
                    if state.frames:
                        number = self._close(index, state, number, base + k * length, base + (k + 1) * length,
                                             summary)
                    state = _Chunk()
                    k += 1
                if state.first_t is None:
                    state.first_t = g_t
                state.decoded += 1
                if frame.image is not None:
                    self._add(state, number, frame, g_t, base + k * length, length)
                if stop.is_set():
                    summary.stopped = "stopped"
                    break
            if state.frames:  # the current chunk ends with what arrived
                t1 = min(base + (k + 1) * length, state.times[-1] + 1e-3) if summary.stopped != "the source ended" \
                    else base + (k + 1) * length
                self._close(index, state, number, base + k * length, t1, summary)
        finally:
            stop.set()
            if state.video is not None:
                state.video.close()
            index["ended"] = str(error) if error is not None else summary.stopped
            write_index(self.outdir, index)
        if error is not None:
            summary.error = error
            summary.stopped = "stopped by an error"
        return summary

    def _add(self, state: _Chunk, number: int, frame: LiveFrame, t: float, t0: float, length: float) -> None:
        """Queue a sampled frame for the encoder; encode a batch when one is full."""
        assert frame.image is not None
        if state.video is None:
            planned = int(round(length * (self.plan.sampling.fps or self.stream.get("fps", 25.0))))
            job = Job(number, Path(self.source), self.outdir / chunk_name(number))
            state.video = self.engine.open_video(job, self._info(t0, length, 0), DecodeReport(), planned)
            if self.plan.pre_encoder is not None:  # the frame-reuse rule continues from the previous chunk
                state.video.reuse = FrameReuse(self.plan.pre_encoder, self._last_view, self._last_out)
        state.pending.append(frame.image)
        state.pending_times.append(t)
        state.times.append(t)
        state.arrivals.append(frame.arrival)
        state.frames += 1
        state.video.report.frame_times.append(t)
        state.video.report.decoded_frames += 1
        bs = self.engine.batch
        if len(state.pending) >= bs:
            self.engine.encode_frames(state.video, state.pending[:bs], state.pending_times[:bs])
            del state.pending[:bs], state.pending_times[:bs]

    def _close(self, index: dict[str, Any], state: _Chunk, number: int, t0: float, t1: float,
               summary: LiveSummary) -> int:
        """Encode the chunk's last frames, compress and store it, make it durable, then name it in the index."""
        video = state.video
        assert video is not None
        assert state.first_t is not None
        video.info = self._info(state.first_t, t1 - t0, state.decoded)
        video.report.sampled_frames = state.frames
        video.report.last_time = state.times[-1]
        video.live = {"chunk": number, "t0": t0, "t1": t1, "source": self.source}
        outcome = self.engine.complete(video, state.pending, state.pending_times)
        if video.reuse is not None:
            self._last_view, self._last_out = video.reuse.last_view, video.reuse.last_out
        state.video = None
        if not outcome.ok:
            assert outcome.error is not None
            raise outcome.error
        path = self.outdir / chunk_name(number)
        fsync_file(path)
        prev = index["chunks"][-1] if index["chunks"] else None
        lat = [time.time() - a for a in state.arrivals]  # + the index write below (milliseconds)
        entry = {"index": number, "file": path.name, "t0": round(t0, 6), "t1": round(t1, 6), "frames": state.frames,
                 "first_frame": int(prev["first_frame"]) + int(prev["frames"]) if prev else 0,
                 "tokens": outcome.num_tokens, "source_tokens": outcome.num_source_tokens,
                 "session": len(index["sessions"]) - 1,
                 "latency_s": {"p50": round(float(np.median(lat)), 3), "max": round(max(lat), 3)},
                 "encode_s": round(outcome.timings.get("encode", 0.0), 3),
                 "rss_mb": _rss_mb()}
        index["chunks"].append(entry)
        write_index(self.outdir, index)
        summary.latencies.extend(lat)
        summary.chunks += 1
        summary.frames += state.frames
        summary.tokens += outcome.num_tokens
        summary.source_tokens += outcome.num_source_tokens
        self.on_event("chunk", entry)
        if entry["encode_s"] > t1 - t0 and not self._warned:  # the encoder falls behind: latency will grow
            self._warned = True
            self.on_event("behind", {"encode_s": entry["encode_s"], "seconds": round(t1 - t0, 3),
                                     "frames": state.frames})
        return number + 1

    # ------------------------------------------------------------------ decode thread
    def _decode(self, q: queue.Queue[Any], stop: threading.Event) -> None:
        o = self.options

        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.2)
                    return
                except queue.Full:
                    continue

        try:
            frames = iter_live(self.source, self.encoder.geometry.decode_size, fps=self.plan.sampling.fps,
                               every=self.plan.sampling.every, fmt=o.format, open_timeout=o.open_timeout,
                               stall_timeout=o.stall_timeout, reconnect=o.reconnect, stop=stop,
                               on_gap=put, on_open=self.stream.update)
            for f in frames:
                put(f)
            put(None)
        except VtcError as e:
            put(e)
        except Exception as e:  # an unexpected decoder failure ends the run with one line
            put(InputError(f"{self.source}: decoding failed ({type(e).__name__}: {e})."))


@dataclass
class _Chunk:
    """The chunk being filled: its video (encoder outputs so far) and the frames not yet encoded."""

    video: Video | None = None
    pending: list[np.ndarray] = field(default_factory=list)
    pending_times: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    frames: int = 0  # sampled frames
    decoded: int = 0  # decoded frames (sampled or not) in the chunk's time span
    first_t: float | None = None  # stream time of the first of them
