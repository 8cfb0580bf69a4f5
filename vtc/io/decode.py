"""Decode (PyAV): probe a video, plan which frames to sample, stream them at the encoder's input size.

Only the sampled frames are ever converted to RGB, straight to the size the encoder needs (PyAV's
`reformat`); no list of all frames is built. Audio is decoded on request as mono float PCM.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np

from vtc.errors import InputError, TruncatedVideoError, UsageError, VtcError
from vtc.io.storage import RemotePath, RemoteVideo, is_url, location

#: Sample rate of the audio handed to audio-guided methods.
AUDIO_RATE = 16_000


@dataclass
class VideoInfo:
    """What `probe` learns from the container header (durations in seconds)."""

    path: str
    size_bytes: int
    container: str
    codec: str
    width: int
    height: int
    rotation: int
    fps: float
    duration: float
    num_frames: int  # header count, 0 when the container does not store it
    start_time: float
    has_audio: bool
    audio_rate: int
    #: index of the video stream read (among the video streams)
    stream: int = 0
    #: whether `duration` is the video stream's own (False: the container's, which audio may lengthen)
    duration_is_own: bool = True

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) after applying the display rotation."""
        return (self.height, self.width) if self.rotation % 180 == 90 else (self.width, self.height)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


#: sanity bounds of the sampling options
MAX_FPS = 1000.0
MAX_FRAMES = 1_000_000


@dataclass(frozen=True)
class Sampling:
    """How to pick frames: `frames` uniformly over the duration, or `fps` per second, or `every` n-th frame."""

    frames: int | None = 32
    fps: float | None = None
    every: int | None = None

    def validate(self) -> Sampling:
        """One mode, with a value of the right type and a sane size; else a UsageError."""
        given = [k for k in ("fps", "every") if getattr(self, k) is not None]
        if len(given) > 1:
            raise UsageError("choose one of --frames, --fps or --every.")
        if self.fps is not None:
            if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not math.isfinite(self.fps) \
                    or not 0 < self.fps <= MAX_FPS:
                raise UsageError(f"--fps must be a number in (0, {MAX_FPS}], not {self.fps!r}.")
        elif self.every is not None:
            if isinstance(self.every, bool) or not isinstance(self.every, int) or not 1 <= self.every:
                raise UsageError(f"--every must be an integer ≥ 1, not {self.every!r}.")
        elif isinstance(self.frames, bool) or not isinstance(self.frames, int) or not 1 <= self.frames <= MAX_FRAMES:
            raise UsageError(f"--frames must be an integer in [1, {MAX_FRAMES}], not {self.frames!r}.")
        return self

    def describe(self) -> dict[str, object]:
        if self.fps is not None:
            return {"mode": "fps", "fps": self.fps}
        if self.every is not None:
            return {"mode": "every", "every": self.every}
        return {"mode": "count", "frames": self.frames}


@dataclass
class DecodeReport:
    """What happened while decoding: frames decoded, sampled, and whether the file ended early."""

    decoded_frames: int = 0
    sampled_frames: int = 0
    last_time: float = 0.0
    truncated: bool = False
    error: str = ""
    frame_times: list[float] = field(default_factory=list)
    #: when truncated: where the file's video data ends, seconds (`data_end`; the same whatever the sampling)
    data_end: float | None = None


class _RemoteContainer:
    """`with _open(url) as c`: a container over a streamed object (`vtc.io.storage.RemoteVideo`).  A read that
    failed for good (retries spent) raises its one-line error when the block ends, whatever the decoder made of
    it (PyAV takes a failed read for the end of the file)."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        target = location(url)
        assert isinstance(target, RemotePath)
        self.file = RemoteVideo(target)
        try:
            self.container = av.open(self.file, metadata_errors="ignore")
        except av.error.FFmpegError as e:
            self.file.close()
            if self.file.error is not None:
                raise self.file.error from None
            raise InputError(f"{target}: cannot be opened as a video ({e.strerror or e}). Is it a video file, and "
                             f"complete?") from None

    def __enter__(self) -> av.container.InputContainer:
        return self.container

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> bool:
        self.container.close()
        self.file.close()
        if self.file.error is not None and kind is not GeneratorExit:
            raise self.file.error from None
        return False


def check_input(path: str | os.PathLike[str]) -> Path:
    """An input video exists, is a regular file and is readable (the cheap checks, made before any model is
    loaded), else an InputError.  → the path.  A URL (object storage) is returned as it is: its reader
    reports a missing or unreadable object."""
    if is_url(path):
        return path  # type: ignore[return-value]
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file. Check the path.")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, not a video file.")
    if not p.is_file():  # a FIFO, socket or device would block or never end
        raise InputError(f"{p}: is not a regular file (a pipe, socket or device); save the video to a file first.")
    if not os.access(p, os.R_OK):
        raise InputError(f"{p}: is not readable (permission denied).")
    return p


def _open(path: str | os.PathLike[str]) -> av.container.InputContainer:
    if is_url(path):  # object storage: streamed with read-ahead, never downloaded whole
        return _RemoteContainer(path)  # type: ignore[return-value]
    p = check_input(path)
    try:
        return av.open(str(p), metadata_errors="ignore")
    except av.error.FFmpegError as e:  # not a media file, or the header is unreadable
        raise InputError(
            f"{p}: cannot be opened as a video ({e.strerror or e}). Is it a video file, and complete?"
        ) from None


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Read the header: size, fps, duration, rotation, audio.  Raises InputError for non-videos."""
    with _open(path) as c:
        if not c.streams.video:
            raise InputError(f"{path}: has no video stream (is it an audio or image file?).")
        index = _video_index(c)
        v = c.streams.video[index]
        rate = v.average_rate or v.guessed_rate or v.base_rate
        fps = float(rate) if rate else 0.0
        own = v.duration is not None and v.time_base is not None
        if own:
            duration = float(v.duration * v.time_base)
        elif len(c.streams) > 1 and (span := _demuxed_span(c, v)) is not None:
            duration, own = span, True  # the container's duration is the longest stream's (audio may run on)
        elif c.duration is not None:
            duration = c.duration / av.time_base
        else:
            duration = 0.0
        start = float(v.start_time * v.time_base) if v.start_time is not None and v.time_base else 0.0
        rotation = 0
        try:
            first = next(c.decode(video=index))
            rotation = int(round(getattr(first, "rotation", 0) or 0)) % 360
        except (StopIteration, av.error.FFmpegError):
            pass
        audio = c.streams.audio[0] if c.streams.audio else None
        return VideoInfo(
            path=str(path),
            size_bytes=location(path).stat().st_size,
            container=c.format.name,
            codec=v.codec_context.name,
            width=v.width,
            height=v.height,
            rotation=rotation,
            fps=fps,
            duration=duration,
            num_frames=int(v.frames or 0),
            start_time=start,
            has_audio=audio is not None,
            audio_rate=int(audio.rate or 0) if audio is not None else 0,
            stream=index,
            duration_is_own=own or len(c.streams) == 1,
        )


def _demuxed_span(c: av.container.InputContainer, v: av.video.stream.VideoStream) -> float | None:
    """The video stream's own duration from its packets' timestamps (demuxed, not decoded), or None; the
    container is sought back to its start."""
    end = None
    start = v.start_time or 0
    try:
        for pkt in c.demux(v):
            if pkt.pts is not None:
                e = pkt.pts + (pkt.duration or 0)
                end = e if end is None else max(end, e)
        c.seek(0)
    except av.error.FFmpegError:
        return None
    if end is None or v.time_base is None:
        return None
    return float((end - start) * v.time_base)


def _video_index(c: av.container.InputContainer, window: int = 512) -> int:
    """The video stream to read: the first one that holds frames (an empty first stream is skipped).

    With several video streams, which ones hold frames is seen from the first `window` demuxed packets (headers
    are unreliable: an empty MKV track can claim a duration); the container is sought back to its start.
    """
    videos = c.streams.video
    if len(videos) <= 1:
        return 0
    seen: set[int] = set()
    try:
        for n, pkt in enumerate(c.demux(*videos)):
            if pkt.size:
                seen.add(pkt.stream.index)
            if n >= window or len(seen) == len(videos):
                break
        c.seek(0)
    except av.error.FFmpegError:
        seen = set()
    for i, v in enumerate(videos):
        if v.index in seen:
            return i
    for i, v in enumerate(videos):
        if (v.frames or 0) > 0 or (v.duration or 0) > 0:
            return i
    return 0


def content_hash(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """sha256 of the file (hex), streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def target_times(info: VideoInfo, sampling: Sampling) -> np.ndarray | None:
    """Times (seconds, ascending) the sampled frames should be nearest to; None for every-n-th sampling.

    By count, T times spread uniformly from the first to the last frame (like LLaVA's
    `linspace(0, n_frames − 1, T)`); by rate, one every 1/fps seconds.
    """
    if sampling.every is not None:
        return None
    frame_dur = 1.0 / info.fps if info.fps > 0 else 0.0
    span = max(0.0, info.duration - frame_dur)
    # never more targets than the stream holds (a hostile duration or a PTS jump can claim 1e9 s), nor MAX_FRAMES
    held = info.num_frames if info.num_frames > 0 else MAX_FRAMES
    if sampling.fps is not None:
        n = max(1, min(int(math.floor(min(span * sampling.fps, 1e15) + 1e-9)) + 1, MAX_FRAMES))
        if n > held:  # more targets than frames: every frame is taken anyway; spread them over the span
            return info.start_time + np.linspace(0.0, span, held)
        return info.start_time + np.arange(n) / sampling.fps
    t = min(int(sampling.frames or 1), held)
    if t == 1:
        return np.array([info.start_time + span / 2])
    return info.start_time + np.linspace(0.0, span, t)


def planned_frames(info: VideoInfo, sampling: Sampling) -> int:
    """How many frames `sampling` takes from a video (what `iter_frames` yields unless the stream holds fewer
    frames than its header claims); 0 when unknown."""
    targets = target_times(info, sampling)
    if targets is not None:
        return len(targets)
    every = int(sampling.every or 1)
    return -(-info.num_frames // every) if info.num_frames > 0 else 0


def iter_frames(
    path: str | os.PathLike[str],
    sampling: Sampling,
    size: Callable[[int, int], tuple[int, int]],
    *,
    info: VideoInfo | None = None,
    allow_truncated: bool = False,
    report: DecodeReport | None = None,
    times: np.ndarray | None = None,
    seek: bool | None = None,
    workers: int | None = None,
) -> Iterator[tuple[float, np.ndarray]]:
    """Stream the sampled frames as (time in seconds, uint8 RGB array [H, W, 3]).

    `size(width, height)` gives the (width, height) to convert to, from the displayed frame size; the encoder
    supplies it. Only two decoded frames are alive at a time. When several targets fall on the same frame it is
    yielded once. A decode error part-way raises TruncatedVideoError unless `allow_truncated`, which keeps what
    decoded and flags it in `report`. `times` (seconds, ascending) overrides the sampling plan's targets.

    `seek=None` picks the strategy: when the targets are at least two keyframe intervals apart (sparse sampling of
    a long video), each target is reached by a seek to the keyframe before it and a short forward decode; else one
    sequential pass. Both choose the same frames (the nearest to each target).

    A long video (≥ PARALLEL_MIN_SECONDS, sampled by time) read in one pass is cut at keyframes into chunks that
    `workers` threads decode side by side (PyAV releases the GIL while decoding); frames still come out in order,
    identical to the sequential pass, with at most 2·workers chunks in flight. `workers=1` keeps one thread;
    None: min(4, CPUs).
    """
    sampling.validate()
    info = info or probe(path)
    report = report if report is not None else DecodeReport()
    targets = np.asarray(times, dtype=np.float64) if times is not None else target_times(info, sampling)
    out_w, out_h = size(*info.display_size)
    swap = info.rotation % 180 == 90
    conv_w, conv_h = (out_h, out_w) if swap else (out_w, out_h)

    def convert(frame: av.VideoFrame) -> np.ndarray:
        arr = frame.reformat(width=conv_w, height=conv_h, format="rgb24", interpolation="BICUBIC").to_ndarray()
        if info.rotation:
            arr = np.ascontiguousarray(np.rot90(arr, k=info.rotation // 90))
        return arr

    if targets is not None and (seek if seek is not None else _sparse(path, targets)):
        yield from _iter_seek(path, targets, convert, info, report, allow_truncated)
        return
    n_workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    if targets is not None and n_workers > 1 and info.duration >= PARALLEL_MIN_SECONDS:
        bounds = _chunk_bounds(path, info, n_workers)
        if len(bounds) > 2:
            yield from _iter_parallel(path, targets, bounds, convert, info, report, allow_truncated, n_workers)
            return
    j = 0
    prev: av.VideoFrame | None = None
    prev_t = -math.inf
    last_emitted: int | None = None
    with _open(path) as c:
        stream = c.streams.video[info.stream]
        stream.thread_type = "AUTO"
        try:
            for frame in c.decode(stream):
                ft = float(frame.time) if frame.time is not None else report.decoded_frames / max(info.fps, 1e-9)
                idx = report.decoded_frames
                report.decoded_frames += 1
                report.last_time = ft
                if targets is None:
                    if idx % int(sampling.every or 1) == 0:
                        report.frame_times.append(ft)
                        yield ft, convert(frame)
                    continue
                while j < len(targets) and targets[j] <= ft:
                    use_prev = prev is not None and (targets[j] - prev_t) <= (ft - targets[j])
                    chosen, ct, cidx = (prev, prev_t, idx - 1) if use_prev else (frame, ft, idx)
                    j += 1
                    if cidx != last_emitted and chosen is not None:
                        last_emitted = cidx
                        report.frame_times.append(ct)
                        yield ct, convert(chosen)
                if j >= len(targets):
                    break
                prev, prev_t = frame, ft
            else:  # the stream ended by itself: did it end where the header says?
                if _ended_early(info, report):
                    report.truncated = True
                    report.error = "stream ended before the duration in the header"
        except av.error.FFmpegError as e:
            report.truncated = True
            report.error = str(e.strerror or e)
        if report.truncated:
            _stopped(path, info, report, allow_truncated)
        # targets past the last decoded frame (rounding at the very end) take the last frame once
        if targets is not None and j < len(targets) and prev is not None and not report.truncated:
            if last_emitted != report.decoded_frames - 1:
                report.frame_times.append(prev_t)
                yield prev_t, convert(prev)
    report.sampled_frames = len(report.frame_times)
    if report.decoded_frames == 0:
        raise InputError(f"{path}: no video frame could be decoded (empty or corrupt stream).")


#: videos at least this long (seconds) are decoded by several threads when read in one pass
PARALLEL_MIN_SECONDS = 120.0


def _chunk_bounds(path: str | os.PathLike[str], info: VideoInfo, workers: int) -> list[float]:
    """Chunk edges for parallel decoding: keyframe times, about 8 chunks per worker and none shorter than 10 s;
    [-inf, k1, ..., +inf]. Fewer than 3 edges: not worth it."""
    keys = keyframe_times(path)
    if len(keys) < 3:
        return []
    want = max(2, min(8 * workers, int(info.duration // 10.0)))
    step = max(1, len(keys) // want)
    return [-math.inf, *keys[step::step], math.inf]


@dataclass
class _Chunk:
    """What one thread found between two keyframes: chosen frames (time, frame) and what it decoded."""

    frames: list[tuple[float, np.ndarray]] = field(default_factory=list)
    decoded: int = 0
    last_time: float = -math.inf
    ended: bool = False  # the stream ended inside this chunk
    error: str = ""
    tail: tuple[float, np.ndarray] | None = None  # the last frame, for targets past the end


def _decode_chunk(path: str | os.PathLike[str], info: VideoInfo, a: float, b: float, targets: np.ndarray,
                  convert: Callable[[av.VideoFrame], np.ndarray]) -> _Chunk:
    """Frames with a ≤ time < b (a = keyframe), plus the first frame at or past b as look-ahead; targets in
    [a, b) choose their nearest frame with the sequential rule."""
    out = _Chunk()
    j = 0
    prev: av.VideoFrame | None = None
    prev_t = -math.inf
    last_emitted: float | None = None

    def emit(frame: av.VideoFrame, t: float) -> None:
        nonlocal last_emitted
        if t != last_emitted:
            last_emitted = t
            out.frames.append((t, convert(frame)))

    with _open(path) as c:
        stream = c.streams.video[info.stream]
        stream.thread_type = "NONE"  # the threads are ours: one decoder thread each
        try:
            if a > -math.inf:
                c.seek(int(a / stream.time_base), stream=stream, backward=True, any_frame=False)
            for frame in c.decode(stream):
                ft = float(frame.time) if frame.time is not None else 0.0
                if ft < a:  # before the keyframe (an open GOP's leading frames): the previous chunk's
                    continue
                inside = ft < b
                if inside:
                    out.decoded += 1
                    out.last_time = ft
                while j < len(targets) and targets[j] <= ft:
                    use_prev = prev is not None and (targets[j] - prev_t) <= (ft - targets[j])
                    emit(*((prev, prev_t) if use_prev and prev is not None else (frame, ft)))
                    j += 1
                if not inside:
                    break
                prev, prev_t = frame, ft
            else:
                out.ended = True
        except av.error.FFmpegError as e:
            out.error = str(e.strerror or e)
    if out.ended and prev is not None and j < len(targets):
        out.tail = (prev_t, convert(prev))
    return out


def _iter_parallel(
    path: str | os.PathLike[str],
    targets: np.ndarray,
    bounds: list[float],
    convert: Callable[[av.VideoFrame], np.ndarray],
    info: VideoInfo,
    report: DecodeReport,
    allow_truncated: bool,
    workers: int,
) -> Iterator[tuple[float, np.ndarray]]:
    """Chunks decoded by `workers` threads, yielded in order; the same frames and verdicts as the one-pass loop."""
    jobs = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        lo, hi = np.searchsorted(targets, a, "left"), np.searchsorted(targets, b, "left")
        jobs.append((a, b, targets[lo:hi]))
    last_emitted: float | None = None
    pool = ThreadPoolExecutor(workers, thread_name_prefix="vtc-decode")
    try:
        pending: deque = deque()
        submitted = 0
        for index in range(len(jobs)):
            while submitted < len(jobs) and len(pending) < 2 * workers:  # bounded read-ahead
                pending.append(pool.submit(_decode_chunk, path, info, *jobs[submitted], convert))
                submitted += 1
            chunk: _Chunk = pending.popleft().result()
            report.decoded_frames += chunk.decoded
            report.last_time = max(report.last_time, chunk.last_time)
            for t, arr in chunk.frames:
                if t != last_emitted:
                    last_emitted = t
                    report.frame_times.append(t)
                    yield t, arr
            last = index == len(jobs) - 1
            if chunk.error or (chunk.ended and not last):
                report.truncated = True
                report.error = chunk.error or "stream ended before the duration in the header"
            elif last and chunk.ended and _ended_early(info, report):
                report.truncated = True
                report.error = "stream ended before the duration in the header"
            if report.truncated:
                _stopped(path, info, report, allow_truncated)
                break
            if last and chunk.tail is not None and chunk.tail[0] != last_emitted:
                report.frame_times.append(chunk.tail[0])
                yield chunk.tail
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    report.sampled_frames = len(report.frame_times)
    if report.decoded_frames == 0:
        raise InputError(f"{path}: no video frame could be decoded (empty or corrupt stream).")


def keyframe_times(path: str | os.PathLike[str]) -> list[float]:
    """Presentation times of the video's keyframes, from one demux pass (no decoding)."""
    with _open(path) as c:
        stream = c.streams.video[_video_index(c)]
        out = []
        try:
            for pkt in c.demux(stream):
                if pkt.is_keyframe and pkt.pts is not None:
                    out.append(float(pkt.pts * stream.time_base))
        except av.error.FFmpegError:
            pass
        return out


def _sparse(path: str | os.PathLike[str], targets: np.ndarray) -> bool:
    """Are the targets at least two keyframe intervals apart (so seeking beats decoding everything)?"""
    if len(targets) < 2 or len(targets) > 4096:  # many targets: one sequential pass ends at the real end
        return False
    keys = keyframe_times(path)
    if len(keys) < 3:
        return False
    return float(np.median(np.diff(targets))) >= 2.0 * float(np.median(np.diff(keys)))


def _iter_seek(
    path: str | os.PathLike[str],
    targets: np.ndarray,
    convert: Callable[[av.VideoFrame], np.ndarray],
    info: VideoInfo,
    report: DecodeReport,
    allow_truncated: bool,
) -> Iterator[tuple[float, np.ndarray]]:
    """Seek-per-target sampling: keyframe before the target, then decode forward to the nearest frame."""
    last_pts: int | None = None
    with _open(path) as c:
        stream = c.streams.video[info.stream]
        stream.thread_type = "AUTO"
        for target in targets:
            prev: av.VideoFrame | None = None
            chosen: av.VideoFrame | None = None
            try:
                c.seek(int(max(target, 0.0) / stream.time_base), stream=stream, backward=True, any_frame=False)
                for frame in c.decode(stream):
                    report.decoded_frames += 1
                    ft = float(frame.time) if frame.time is not None else 0.0
                    report.last_time = max(report.last_time, ft)
                    if ft < target:
                        prev = frame
                        continue
                    use_prev = prev is not None and (target - float(prev.time)) <= (ft - target)
                    chosen = prev if use_prev else frame
                    break
                else:
                    chosen = prev  # the stream ended: the last frame is the nearest, if it is near
                    slack = max(1.0, 2.0 / info.fps if info.fps > 0 else 1.0)
                    if prev is None or float(prev.time) < target - slack:
                        if not info.duration_is_own:  # the container's duration (audio may be longer): the
                            break  # video simply ends here; later targets have no frame of their own
                        report.truncated = True
                        report.error = "stream ended before the duration in the header"
            except av.error.FFmpegError as e:
                report.truncated = True
                report.error = str(e.strerror or e)
            if report.truncated:
                _stopped(path, info, report, allow_truncated)
                break
            if chosen is None or chosen.pts == last_pts:
                continue
            last_pts = chosen.pts
            ct = float(chosen.time)
            report.frame_times.append(ct)
            yield ct, convert(chosen)
    report.sampled_frames = len(report.frame_times)
    if not report.frame_times and report.decoded_frames == 0:
        raise InputError(f"{path}: no video frame could be decoded (empty or corrupt stream).")


def data_end(path: str | os.PathLike[str], info: VideoInfo) -> float:
    """Seconds: the time of the last video packet the file holds (one demux pass, no decoding; a read error ends
    it). Where a truncated file stops is a fact of the file: the decode paths (one pass, threads, seeks) stop at
    sampling-dependent places, so the error names this instead."""
    end = 0.0
    with _open(path) as c:
        stream = c.streams.video[info.stream]
        try:
            for pkt in c.demux(stream):
                if pkt.pts is not None and pkt.size:
                    end = max(end, float(pkt.pts * stream.time_base))
        except av.error.FFmpegError:
            pass
    return end


def _stopped(path: str | os.PathLike[str], info: VideoInfo, report: DecodeReport, allow_truncated: bool) -> None:
    """The video ended early: record where its data ends (`report.data_end`), and raise TruncatedVideoError unless
    `allow_truncated`. The one message of every decode path, so one file is reported at one time."""
    try:
        report.data_end = data_end(path, info)
    except (av.error.FFmpegError, OSError, VtcError):  # a second read failed too: what the decoder reached
        report.data_end = report.last_time
    if not allow_truncated:
        raise TruncatedVideoError(
            f"{path}: the video data stops at {report.data_end:.2f} s of {info.duration:.2f} s ({report.error}): "
            f"the file is truncated or corrupt. Repair or re-encode it, or pass --allow-truncated to keep the "
            f"frames before that."
        )


def _ended_early(info: VideoInfo, report: DecodeReport) -> bool:
    """True when a stream that ended without an error clearly stopped short of its header's promise."""
    if info.num_frames > 0:
        return report.decoded_frames < 0.98 * info.num_frames - 1
    if not info.duration_is_own:  # only the container's duration, and other streams (audio) may be longer
        return False
    frame_dur = 1.0 / info.fps if info.fps > 0 else 0.0
    return info.duration > 0 and report.last_time + frame_dur < 0.9 * info.duration - 1.0


def decode_audio(path: str | os.PathLike[str], sample_rate: int = AUDIO_RATE) -> np.ndarray | None:
    """The first audio track as mono float32 PCM at `sample_rate` [S], or None when there is no audio."""
    with _open(path) as c:
        if not c.streams.audio:
            return None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in c.decode(c.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError:
            pass  # keep what decoded; the video path reports truncation
        return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
