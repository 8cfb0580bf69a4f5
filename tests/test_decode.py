from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vtc.errors import InputError, TruncatedVideoError, UsageError
from vtc.io.decode import DecodeReport, Sampling, decode_audio, iter_frames, probe


def same(w: int, h: int) -> tuple[int, int]:
    return 32, 24


def test_probe(clip_path: Path) -> None:
    info = probe(clip_path)
    assert (info.width, info.height) == (96, 64)
    assert info.fps == pytest.approx(12)
    assert info.duration == pytest.approx(2.0, abs=0.1)
    assert info.has_audio and info.codec == "h264"


def test_sample_by_count_streams_resized_frames(clip_path: Path) -> None:
    report = DecodeReport()
    frames = list(iter_frames(clip_path, Sampling(frames=8), same, report=report))
    times = [t for t, _ in frames]
    assert len(frames) == 8
    assert all(f.shape == (24, 32, 3) and f.dtype == np.uint8 for _, f in frames)
    assert times == sorted(times) and times[0] == 0.0 and times[-1] <= 2.0
    assert report.sampled_frames == 8


def test_sample_by_fps_and_every(clip_path: Path) -> None:
    by_fps = [t for t, _ in iter_frames(clip_path, Sampling(frames=None, fps=2.0), same)]
    assert len(by_fps) == 4 and np.allclose(np.diff(by_fps), 0.5, atol=0.09)
    every = [t for t, _ in iter_frames(clip_path, Sampling(frames=None, every=5), same)]
    assert len(every) == 5  # frames 0, 5, 10, 15, 20 of 24


def test_more_targets_than_frames_yields_each_frame_once(clip_path: Path) -> None:
    times = [t for t, _ in iter_frames(clip_path, Sampling(frames=100), same)]
    assert len(times) == 24 and len(set(times)) == 24


def test_sampling_validation() -> None:
    with pytest.raises(UsageError):
        Sampling(frames=0).validate()
    with pytest.raises(UsageError):
        Sampling(fps=1.0, every=2).validate()


def test_missing_and_non_video(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        probe(tmp_path / "nope.mp4")
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video")
    with pytest.raises(InputError, match="cannot be opened as a video"):
        probe(bad)


def test_truncated_is_an_error_unless_allowed(truncated_clip: Path) -> None:
    with pytest.raises(TruncatedVideoError, match="--allow-truncated"):
        list(iter_frames(truncated_clip, Sampling(frames=16), same))
    report = DecodeReport()
    kept = list(iter_frames(truncated_clip, Sampling(frames=16), same, allow_truncated=True, report=report))
    assert report.truncated and 0 < len(kept) < 16


@pytest.mark.parametrize("seek", [False, True])
def test_truncation_is_caught_by_both_strategies(truncated_clip: Path, seek: bool) -> None:
    """Two samples, the last one past the cut: seeking must notice the stream ended early too."""
    with pytest.raises(TruncatedVideoError):
        list(iter_frames(truncated_clip, Sampling(frames=2), same, seek=seek))


def test_a_truncated_file_is_reported_at_one_time(truncated_clip: Path, tmp_path: Path) -> None:
    """Where a truncated file stops is the file's: every sampling and both strategies (one pass, seeks) name the
    same time — the last video packet the file holds, read here with PyAV's demuxer — in the error (it used to
    say 'near' the sampled target that failed: 19.90 s or 13.48 s for one file, by --frames; one batch named two
    times for two such files' failures of one kind)."""
    import re

    import av

    with av.open(str(truncated_clip)) as c:
        s = c.streams.video[0]
        want = max(float(p.pts * s.time_base) for p in c.demux(s) if p.pts is not None and p.size)
    said = set()
    for frames in (2, 5, 16, 40):
        for seek in (False, True):
            with pytest.raises(TruncatedVideoError) as e:
                list(iter_frames(truncated_clip, Sampling(frames=frames), same, seek=seek))
            said.add(re.search(r"stops at ([0-9.]+) s", str(e.value)).group(1))
    assert said == {f"{want:.2f}"}
    report = DecodeReport()  # kept with --allow-truncated: the file records the same end
    list(iter_frames(truncated_clip, Sampling(frames=5), same, allow_truncated=True, report=report, seek=True))
    assert report.truncated and report.data_end == pytest.approx(want)


def test_audio_mono_float(clip_path: Path, silent_clip: Path) -> None:
    pcm = decode_audio(clip_path)
    assert pcm is not None and pcm.dtype == np.float32
    assert len(pcm) == pytest.approx(2.0 * 16000, rel=0.1)
    assert 0.2 < float(np.abs(pcm).max()) <= 1.0
    assert decode_audio(silent_clip) is None


def test_seek_sampling_matches_sequential(tmp_path: Path) -> None:
    """Sparse targets on a short-GOP clip: seeking chooses exactly the frames a full pass chooses."""
    from vtc.io.decode import _sparse, keyframe_times
    from vtc.testing import write_video

    frames = []
    for i in range(120):  # 12 s at 10 fps, a keyframe every 5 frames
        img = np.full((48, 64, 3), 40, np.uint8)
        img[10:30, (i * 3) % 44 : (i * 3) % 44 + 20] = 220
        frames.append(img)
    short = write_video(tmp_path / "short_gop.mp4", frames, fps=10, gop=5)
    assert len(keyframe_times(short)) >= 20
    seq_r, seek_r = DecodeReport(), DecodeReport()
    seq = list(iter_frames(short, Sampling(frames=6), same, report=seq_r, seek=False))
    sk = list(iter_frames(short, Sampling(frames=6), same, report=seek_r, seek=True))
    assert [t for t, _ in seq] == [t for t, _ in sk]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(seq, sk, strict=True))
    assert seek_r.decoded_frames < seq_r.decoded_frames
    assert _sparse(short, np.array([t for t, _ in seq]))  # auto mode picks seeking here


def test_display_rotation_is_applied(tmp_path: Path) -> None:
    """A 90° (counter-clockwise) display matrix: the frame comes out upright, 32×64 instead of 64×32."""
    from fractions import Fraction

    import av

    path = tmp_path / "rot.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=4)
        s.width, s.height, s.pix_fmt = 64, 32, "yuv444p"
        s.options = {"crf": "0"}
        s.set_display_rotation(90)
        img = np.zeros((32, 64, 3), np.uint8)
        img[:8, :8] = 255  # marker at the top-left of the stored picture
        for i in range(4):
            fr = av.VideoFrame.from_ndarray(img, format="rgb24")
            fr.pts, fr.time_base = i, Fraction(1, 4)
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    info = probe(path)
    assert info.rotation == 90 and info.display_size == (32, 64)
    (_, frame), = list(iter_frames(path, Sampling(frames=1), lambda w, h: (w, h)))
    assert frame.shape == (64, 32, 3)
    ys, xs = np.nonzero(frame[..., 0] > 128)
    assert ys.min() >= 56 and xs.max() <= 7  # turned counter-clockwise: the marker is now bottom-left


def video_stream(container, time_base, rate: int = 10):  # noqa: ANN001, ANN201
    """Add a 32×32 mpeg4 stream (`rate` fps nominal, `time_base`) to an open output container."""
    s = container.add_stream("mpeg4", rate=rate)
    s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
    s.time_base = time_base
    return s


def mux_frames(container, s, pts: list[int], time_base) -> None:  # noqa: ANN001
    import av

    for i, t in enumerate(pts):
        frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), (20 * i) % 256, np.uint8), format="rgb24")
        frame.pts, frame.time_base = t, time_base
        for pkt in s.encode(frame):
            container.mux(pkt)
    for pkt in s.encode(None):
        container.mux(pkt)


def test_a_claimed_duration_of_1e6_seconds_is_bounded_by_the_stream(tmp_path: Path) -> None:
    """Three frames whose timestamps jump to 1e6 s: sampling at 1 or 1000 fps plans no more targets than the stream
    holds, decodes in one pass and ends quickly (the header's duration is not believed)."""
    import time
    from fractions import Fraction

    import av

    from vtc.io.decode import Sampling, iter_frames, probe, target_times

    path = tmp_path / "jump.mkv"
    with av.open(str(path), "w") as c:
        s = video_stream(c, Fraction(1, 1000), rate=25)
        mux_frames(c, s, [0, 40, 10**9], Fraction(1, 1000))
    info = probe(path)
    for fps in (1.0, 1000.0):
        targets = target_times(info, Sampling(fps=fps))
        assert targets is not None and len(targets) <= 1_000_000  # not 1e9 (8 GB) at 1000 fps
        t0 = time.perf_counter()
        frames = list(iter_frames(path, Sampling(fps=fps), lambda w, h: (w, h), allow_truncated=True))
        assert time.perf_counter() - t0 < 20 and 1 <= len(frames) <= 3


def test_extreme_aspect_ratios_are_decoded_at_a_bounded_size() -> None:
    from vtc.io.geometry import MAX_ASPECT, FrameGeometry

    geo = FrameGeometry((224, 224), "shortest")
    assert geo.decode_size(8000, 8) == (MAX_ASPECT * 224, 224)  # not 224 000 × 224
    assert geo.decode_size(2, 16000) == (224, MAX_ASPECT * 224)
    assert geo.decode_size(640, 360) == (398, 224)  # ordinary videos unchanged


def test_audio_longer_than_video_is_not_truncation(tmp_path: Path) -> None:
    """An MKV with 1 s of video and 4 s of audio (the container's duration is the audio's): complete, not truncated."""
    from fractions import Fraction

    import av

    from vtc.io.decode import DecodeReport, Sampling, iter_frames, probe

    path = tmp_path / "longaudio.mkv"
    with av.open(str(path), "w") as c:
        vs = video_stream(c, Fraction(1, 10))
        aus = c.add_stream("aac", rate=16000)
        mux_frames(c, vs, list(range(10)), Fraction(1, 10))
        for k in range(4 * 16000 // 1024):
            a = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            a.sample_rate, a.pts, a.time_base = 16000, k * 1024, Fraction(1, 16000)
            for p in aus.encode(a):
                c.mux(p)
        for p in aus.encode(None):
            c.mux(p)
    info = probe(path)
    report = DecodeReport()
    frames = list(iter_frames(path, Sampling(frames=4), lambda w, h: (w, h), info=info, report=report))
    assert len(frames) == 4 and not report.truncated


def test_two_video_streams_and_a_thin_clip_are_complete(tmp_path: Path) -> None:
    """Two video streams of different lengths (the first is read, judged on its own duration) and a 16000×2 clip
    decode completely, not as truncated, at a bounded size."""
    from fractions import Fraction

    import av

    from vtc.io.decode import DecodeReport, Sampling, iter_frames, probe
    from vtc.io.geometry import FrameGeometry
    from vtc.testing import write_video

    two = tmp_path / "two.mkv"
    with av.open(str(two), "w") as c:
        streams = [video_stream(c, Fraction(1, 10)), video_stream(c, Fraction(1, 10))]
        for s, n in zip(streams, (10, 30), strict=True):
            mux_frames(c, s, list(range(n)), Fraction(1, 10))
    thin = write_video(tmp_path / "thin.mp4", [np.full((2, 16000, 3), 100, np.uint8)] * 6, fps=6)
    geo = FrameGeometry((224, 224), "shortest")
    for path in (two, thin):
        info, report = probe(path), DecodeReport()
        frames = list(iter_frames(path, Sampling(frames=4), geo.decode_size, info=info, report=report))
        assert len(frames) == 4 and not report.truncated
        assert max(frames[0][1].shape[:2]) <= 8 * 224


def _gop_clip(path: Path, seconds: int = 40, fps: int = 10, bframes: bool = True) -> Path:
    """A clip with a keyframe every 2 s and (optionally) B-frames, moov first (so a cut copy still opens)."""
    import av

    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"preset": "fast", "g": str(2 * fps), "keyint_min": str(2 * fps), "bf": "3" if bframes else "0"}
        rng = np.random.default_rng(0)
        for i in range(seconds * fps):
            img = np.full((48, 64, 3), (i * 7) % 256, np.uint8)
            img[:, (i * 3) % 64] = 255
            img[rng.integers(0, 48), :] = 0
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


@pytest.mark.parametrize("sampling", [Sampling(frames=None, fps=1.0), Sampling(frames=37), Sampling(frames=None,
                                                                                                       fps=7.3)])
def test_parallel_decode_gives_the_sequential_frames(tmp_path: Path, sampling: Sampling,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut at keyframes and decoded by three threads (B-frames included): the same times, the same pixels."""
    from vtc.io import decode

    monkeypatch.setattr(decode, "PARALLEL_MIN_SECONDS", 10.0)
    path = _gop_clip(tmp_path / "gop.mp4")
    info = probe(path)
    runs = {}
    for workers in (1, 3):
        report = DecodeReport()
        runs[workers] = list(iter_frames(path, sampling, lambda w, h: (32, 24), info=info, report=report,
                                         workers=workers, seek=False))
        assert not report.truncated and report.sampled_frames == len(runs[workers])
    assert len(decode._chunk_bounds(path, info, 3)) > 3  # really cut into chunks
    one, three = runs[1], runs[3]
    assert [t for t, _ in one] == [t for t, _ in three]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(one, three, strict=True))


def test_parallel_decode_still_detects_truncation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vtc.io import decode

    monkeypatch.setattr(decode, "PARALLEL_MIN_SECONDS", 10.0)
    full = _gop_clip(tmp_path / "full.mp4", bframes=False)
    cut = tmp_path / "cut.mp4"
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.6)])
    info = probe(cut)
    with pytest.raises(TruncatedVideoError):
        list(iter_frames(cut, Sampling(frames=None, fps=1.0), same, info=info, workers=3, seek=False))
    report = DecodeReport()
    kept = list(iter_frames(cut, Sampling(frames=None, fps=1.0), same, info=info, workers=3, seek=False,
                            allow_truncated=True, report=report))
    assert report.truncated and 10 <= len(kept) < 40
    assert [t for t, _ in kept] == sorted(t for t, _ in kept)
