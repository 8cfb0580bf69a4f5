"""Audio-guided budgets: the saliency follows loud and silent stretches, and OmniZip's windows follow it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import vtc
from vtc.io.audio import audio_saliency, saliency_from_pcm
from vtc.methods import get_method
from vtc.methods.omnizip import renormalise_monotone
from vtc.signals import Signals
from vtc.testing import synth_clip

from .conftest import MEDIA


def test_saliency_tracks_loudness() -> None:
    rate = 16000
    t = np.arange(4 * rate) / rate
    pcm = (0.5 * np.sin(2 * np.pi * 440 * t) * ((t >= 1) & (t < 2) | (t >= 3))).astype(np.float32)
    sal = saliency_from_pcm(pcm, rate)
    assert sal.shape == (100,)
    loud = torch.cat([sal[27:48], sal[77:98]]).mean()
    quiet = torch.cat([sal[2:23], sal[52:73]]).mean()
    assert loud > 0.8 and quiet < 0.1


@pytest.fixture(scope="module")
def loud_then_silent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 s: tone in [0, 2) and [4, 6), silence in [2, 4) and [6, 8)."""
    return synth_clip(tmp_path_factory.mktemp("audio") / "ls.mp4", seconds=8.0, fps=8, size=(64, 64),
                      cut_at=None, loud=[(0.0, 2.0), (4.0, 6.0)])


def test_window_budgets_follow_the_soundtrack(loud_then_silent: Path, model_args, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "o.safetensors"
    vtc.compress(loud_then_silent, output=out, method="omnizip", ratio=0.4, frames=16, **model_args("clip"))
    f = vtc.load(out)
    info = f.meta["info"]
    assert info["guidance"] == "audio" and len(info["window_drop_ratios"]) == 4
    drops = info["window_drop_ratios"]
    assert drops[0] < drops[1] and drops[2] < drops[3]  # loud windows keep more
    per_frame = f.tokens_per_frame()
    loud = per_frame[0:4].sum() + per_frame[8:12].sum()
    quiet = per_frame[4:8].sum() + per_frame[12:16].sum()
    assert loud > quiet
    assert "logmel" in f.meta["signals"]["audio_saliency"] and f["audio_saliency"].numel() == 200


def test_no_audio_and_silence_fall_back_to_uniform(silent_clip: Path, model_args, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "o.safetensors"
    vtc.compress(silent_clip, output=out, method="omnizip", ratio=0.5, frames=8, **model_args("clip"))
    f = vtc.load(out)
    assert f.meta["info"]["guidance"].startswith("uniform (no audio")
    assert f.meta["signals"]["audio_saliency"].startswith("none")
    spec = get_method("omnizip")
    x = torch.randn(8, 16, 8)
    red = spec.run(x, grid=(4, 4), ratio=0.5, signals=Signals(audio_saliency=torch.zeros(200)),
                   params=spec.defaults())
    assert red.info["guidance"] == "uniform (flat audio)" and set(red.info["window_drop_ratios"]) == {0.5}


def test_monotone_normaliser_is_monotone_and_meets_target() -> None:
    base = torch.tensor([0.39, 0.39, 0.55, 0.47, 0.39, 0.39, 0.542, 0.478], dtype=torch.float64)
    sizes = torch.full((8,), 392)
    r = renormalise_monotone(base, sizes, 0.6)
    assert abs(float((r * sizes).sum()) - 0.6 * 392 * 8) < 1e-6
    order = torch.argsort(base)
    assert (r[order][1:] >= r[order][:-1] - 1e-12).all()


@pytest.mark.skipif(not (MEDIA / "sintel_trailer_480p.mp4").exists(),
                    reason="no media clips (../shared/media, or set VTC_MEDIA_DIR)")
def test_real_soundtracks() -> None:
    """Sintel: near-silent start, loud music later; car_detection: a digitally silent AAC track."""
    sal = audio_saliency(MEDIA / "sintel_trailer_480p.mp4")
    assert sal is not None and sal.numel() == pytest.approx(52.2 * 25, abs=30)
    assert sal[:25].mean() < sal[25 * 20 : 25 * 40].mean()
    silent = audio_saliency(MEDIA / "car_detection.mp4")
    assert silent is not None and float(silent.max()) == 0.0


@pytest.mark.parametrize("ratio", [0.1, 0.4, 0.6])
def test_monotone_mode_meets_any_ratio(ratio: float) -> None:
    spec = get_method("omnizip")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 49, 16, generator=g)
    sig = Signals(audio_saliency=torch.rand(32 * 25, generator=g), times=torch.arange(32, dtype=torch.float64))
    red = spec.run(x, grid=(7, 7), ratio=ratio, signals=sig, params=spec.defaults())
    assert ratio - 0.03 <= red.ratio() <= ratio + 1e-9  # per-frame floor rounding only
