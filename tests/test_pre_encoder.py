"""RLT before the encoder: static frames are not encoded, and the output does not change because of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import vtc
from vtc.testing import write_video


@pytest.fixture(scope="module")
def pausing_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 frames at 4 fps: a square moves for 4 frames, stops for 5 (identical frames), moves again."""
    path = tmp_path_factory.mktemp("pre") / "pause.mp4"
    frames = []
    for x in [0, 8, 16, 24, 24, 24, 24, 24, 24, 32, 40, 48]:
        img = np.full((96, 96, 3), 60, np.uint8)
        img[40:56, x : x + 16] = 250
        frames.append(img)
    return write_video(path, frames, fps=4, lossless=True)


def run(clip: Path, out: Path, model_args, **params: object) -> vtc.TokenFile:  # noqa: ANN001
    vtc.compress(clip, output=out, method="rlt", frames=12, params=params, **model_args("clip"))
    return vtc.load(out)


def test_static_frames_are_skipped_without_changing_the_output(pausing_clip: Path, tmp_path: Path,
                                                               model_args) -> None:  # noqa: ANN001
    skip = run(pausing_clip, tmp_path / "a.safetensors", model_args)
    full = run(pausing_clip, tmp_path / "b.safetensors", model_args, skip_static_frames=False)
    pre = skip.meta["pre_encoder"]
    assert pre["frames_skipped"] >= 4 and pre["patches_encoded"] < pre["patches_total"]
    assert "pre_encoder" not in full.meta
    assert torch.equal(skip.positions, full.positions)
    assert torch.allclose(skip.tokens.float(), full.tokens.float(), atol=1e-3)
    assert torch.equal(skip["sizes"], full["sizes"])  # run lengths
    # the paused frames keep nothing: their patches are represented by the earlier tokens
    per = skip.tokens_per_frame()
    assert int(per[5:9].sum()) == 0 and int(per[0]) == 36


def test_changed_patches_only(pausing_clip: Path, tmp_path: Path, model_args) -> None:  # noqa: ANN001
    part = run(pausing_clip, tmp_path / "c.safetensors", model_args, encode_changed_only=True)
    full = run(pausing_clip, tmp_path / "d.safetensors", model_args, skip_static_frames=False)
    pre = part.meta["pre_encoder"]
    assert pre["changed_patches_only"] and pre["patches_encoded"] < pre["patches_total"] / 2
    assert torch.equal(part.positions, full.positions)  # the same patches are kept (pixel rule)
    assert torch.isfinite(part.tokens.float()).all()


def test_rlt_floor_and_result_line_are_honest() -> None:
    """RLT's count follows the pixels: its floor is frame 0 (kept whole, it has no previous frame), never above
    what it kept; asked for a ratio, the result line says the ratio does not set its count (it used to claim
    'keeps at least T·N of T·N tokens' while keeping far fewer)."""
    from vtc.run.finish import ratio_note

    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 255, (4, 32, 32, 3), dtype=torch.uint8, generator=g)
    frames[1:] = frames[0]
    frames[2, :8, :8] = 0  # one 8×8 patch changes in frame 2 (and changes back in frame 3)
    x = torch.randn(4, 16, 8, generator=g)
    for asked in (0.1, 0.9):
        res = vtc.compress_features(x, method="rlt", ratio=asked, frames=frames)
        red = res.reduction
        assert red.num_outputs == 16 + 1 + 1  # frame 0, the patch that changed, the patch that changed back
        assert red.info["budget_floor"] == 16 <= red.num_outputs <= red.num_sources
        note = ratio_note(asked, red.ratio(), red.info, red.num_sources)
        assert note is not None and "--ratio does not set its count" in note and "at least" not in note
    # a floor above the tokens kept (or above those there are) is never named as one
    assert "at least" not in ratio_note(0.1, 0.5, {"budget_floor": 80}, 64)
    assert ratio_note(0.1, 0.5, {"budget_floor": 32}, 64) == "the method keeps at least 32 of 64 tokens"
