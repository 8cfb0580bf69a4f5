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
