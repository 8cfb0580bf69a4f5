"""Every clip in ../shared/media either compresses or fails with the clear error it deserves."""

from __future__ import annotations

from pathlib import Path

import pytest

import vtc
from vtc.errors import TruncatedVideoError

from .conftest import MEDIA

CLIPS = sorted(p for p in MEDIA.glob("*") if p.suffix in {".mp4", ".webm", ".mkv", ".avi"}) if MEDIA.is_dir() else []


@pytest.mark.skipif(not CLIPS, reason="no media clips (../shared/media, or set VTC_MEDIA_DIR)")
@pytest.mark.parametrize("clip", CLIPS, ids=lambda p: p.name)
def test_media_clip(tmp_path: Path, clip: Path, model_args) -> None:  # noqa: ANN001
    out = tmp_path / "o.safetensors"
    kw = dict(output=out, method="pool", frames=8, batch_size=8, pretrained=None, **model_args("clip"))
    if "truncated" in clip.name:
        with pytest.raises(TruncatedVideoError, match="--allow-truncated"):
            vtc.compress(clip, **kw)
        with pytest.raises(TruncatedVideoError):  # sparse sampling (seek per target) must notice it too
            vtc.compress(clip, **{**kw, "frames": 2})
        assert not out.exists()
        res = vtc.compress(clip, allow_truncated=True, **kw)
        assert res.truncated and vtc.load(out).meta["truncated"] is True
        return
    res = vtc.compress(clip, **kw)
    f = vtc.load(out)
    t = f.num_frames
    assert 1 <= t <= 8
    ft = f["frame_times"]
    assert (ft[1:] > ft[:-1]).all() and float(ft[-1]) <= f.meta["video"]["duration"] + 1e-3
    assert f.tokens.shape[0] == res.num_tokens
    h, w = f.grid
    assert ((f.positions[:, 1] < h) & (f.positions[:, 2] < w)).all()
    assert int(f["sizes"].sum()) == f.merge_entries()[1].numel()


@pytest.mark.skipif(not CLIPS, reason="no media clips (../shared/media, or set VTC_MEDIA_DIR)")
def test_sintel_fastvid_end_to_end(tmp_path: Path, model_args) -> None:  # noqa: ANN001
    out = tmp_path / "s.safetensors"
    res = vtc.compress(MEDIA / "sintel_trailer_480p.mp4", output=out, method="fastvid", ratio=0.1, frames=32,
                       pretrained=None, **model_args("siglip"))
    f = vtc.load(out)
    assert f.num_frames == 32 and res.ratio_achieved <= 0.1 + 1 / 36
    assert f["segments"].shape[1] == 2
