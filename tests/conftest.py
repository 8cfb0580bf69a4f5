"""Shared fixtures: tiny random-weight models loaded through --checkpoint, synthetic clips, golden/media paths."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import av
import pytest
import torch

from vtc.io.encode import Encoder
from vtc.testing import save_random_checkpoint, synth_clip, tiny_clip_config, tiny_siglip_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
GOLDEN = Path(os.environ.get("VTC_GOLDEN_DIR", SHARED / "golden"))
MEDIA = Path(os.environ.get("VTC_MEDIA_DIR", SHARED / "media"))

torch.set_num_threads(min(2, torch.get_num_threads()))
# the checkpoint-digest cache goes to a throwaway folder, not the user's ~/.cache/vtc
os.environ.setdefault("VTC_CACHE_DIR", tempfile.mkdtemp(prefix="vtc-test-cache-"))


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name → (open_clip JSON config, random-weight checkpoint) for a CLIP-style and a SigLIP-style tower."""
    d = tmp_path_factory.mktemp("models")
    clip = tiny_clip_config(d / "tiny-clip.json")
    # named without "siglip": open_clip would pick SigLIP's Hugging Face tokenizer (network) by name
    siglip = tiny_siglip_config(d / "tiny-map-pool.json")
    return {
        "clip": (clip, save_random_checkpoint(clip, d / "tiny-clip.pt", seed=0)),
        "siglip": (siglip, save_random_checkpoint(siglip, d / "tiny-map-pool.pt", seed=1)),
    }


@pytest.fixture(scope="session")
def clip_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s, 12 fps, 96×64 H.264 + AAC: moving square, scene cut at 1 s, 440 Hz tone."""
    return synth_clip(tmp_path_factory.mktemp("clips") / "square.mp4")


@pytest.fixture(scope="session")
def silent_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same clip without an audio track, odd size."""
    return synth_clip(tmp_path_factory.mktemp("clips") / "noaudio.mp4", audio=False, size=(90, 70), cut_at=None)


@pytest.fixture(scope="session")
def truncated_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A longer clip cut to 55 % of its bytes (moov at the start, so it opens and fails while decoding)."""
    d = tmp_path_factory.mktemp("clips")
    full = synth_clip(d / "full.mp4", seconds=6.0, size=(160, 120), audio=False)
    import av

    # rewrite with faststart so the header survives truncation
    fast = d / "fast.mp4"
    with av.open(str(full)) as src, av.open(str(fast), "w", options={"movflags": "faststart"}) as dst:
        s = dst.add_stream_from_template(src.streams.video[0])
        for pkt in src.demux(src.streams.video[0]):
            if pkt.dts is None:
                continue
            pkt.stream = s
            dst.mux(pkt)
    data = fast.read_bytes()
    cut = d / "truncated.mp4"
    cut.write_bytes(data[: int(len(data) * 0.55)])
    return cut


@pytest.fixture()
def model_args(models: dict[str, tuple[Path, Path]]):  # noqa: ANN201
    def make(kind: str = "clip") -> dict[str, str]:
        cfg, ckpt = models[kind]
        return {"model": str(cfg), "checkpoint": str(ckpt)}

    return make


@pytest.fixture()
def no_work(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count every attempt to open a video or build an encoder (both must stay at 0)."""
    calls = {"decode": 0, "model": 0}
    real_open = av.open

    def fake_open(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls["decode"] += 1
        return real_open(*a, **k)

    def fake_init(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls["model"] += 1
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(av, "open", fake_open)
    monkeypatch.setattr(Encoder, "__init__", fake_init)
    return calls


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    """One line at the end of a run that skipped the faithfulness or media tests, saying why and how to run them
    (a green run without ../shared otherwise looks like a full one)."""
    skipped = terminalreporter.stats.get("skipped", [])
    missing = [name for name, folder in (("golden cases", GOLDEN), ("media clips", MEDIA)) if not folder.is_dir()]
    if not missing:
        return
    n = sum(1 for rep in skipped if any(word in str(rep.longrepr) for word in ("golden", "shared", "media")))
    terminalreporter.write_line(
        f"vtc: {' and '.join(missing)} not found ({GOLDEN}, {MEDIA}): {n} faithfulness/media test(s) skipped; set "
        f"VTC_GOLDEN_DIR and VTC_MEDIA_DIR (see README, 'Tests').", yellow=True)
