from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from vtc.errors import ModelError, UsageError
from vtc.io.encode import Encoder, EncoderConfig

ALL = {"attn", "pooled", "cls_attn", "cls_token", "keys"}


def frames(enc: Encoder, b: int = 3) -> np.ndarray:
    w, h = enc.input_size(96, 64)
    return np.random.default_rng(0).integers(0, 255, (b, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_shapes_and_signals(kind: str, model_args) -> None:  # noqa: ANN001
    a = model_args(kind)
    enc = Encoder(EncoderConfig(model=a["model"], checkpoint=a["checkpoint"], pretrained=None))
    assert enc.kind == kind and enc.grid == (6, 6)
    out = enc.encode(frames(enc), ALL)
    assert out["patches"].shape == (3, 36, enc.width)
    assert out["attn"].shape == (3, 36) and torch.allclose(out["attn"].sum(-1), torch.ones(3), atol=1e-5)
    assert out["cls_attn"].shape == (3, 36)
    assert out["keys"].shape[:2] == (3, 37)
    assert out["pooled"].dim() == 2


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_last_layer_pooled_equals_open_clip(kind: str, model_args) -> None:  # noqa: ANN001
    """vtc re-states the towers' forward to read signals; with layer −1 it must give open_clip's embedding."""
    a = model_args(kind)
    enc = Encoder(EncoderConfig(model=a["model"], checkpoint=a["checkpoint"], pretrained=None, layer=-1))
    f = frames(enc)
    ours = enc.encode(f, {"pooled"})["pooled"]
    with torch.inference_mode():
        ref = enc.model.encode_image(enc.geometry.preprocess(f))
    assert torch.allclose(ours, ref, atol=1e-5)


def test_layer_choice_changes_tokens(model_args) -> None:  # noqa: ANN001
    a = model_args("clip")
    f = None
    outs = []
    for layer in (-1, -2):
        enc = Encoder(EncoderConfig(model=a["model"], checkpoint=a["checkpoint"], pretrained=None, layer=layer))
        f = frames(enc) if f is None else f
        outs.append(enc.encode(f)["patches"])
    assert not torch.allclose(outs[0], outs[1])
    with pytest.raises(UsageError, match="outside this model"):
        Encoder(EncoderConfig(model=a["model"], checkpoint=a["checkpoint"], pretrained=None, layer=7))


def test_checkpoint_loads_weights(model_args) -> None:  # noqa: ANN001
    a = model_args("clip")
    enc = Encoder(EncoderConfig(model=a["model"], checkpoint=a["checkpoint"], pretrained=None))
    sd = torch.load(a["checkpoint"], weights_only=True)
    assert torch.equal(enc.model.state_dict()["visual.conv1.weight"], sd["visual.conv1.weight"])
    assert len(enc.checkpoint_sha256) == 64


def test_model_errors(tmp_path, model_args) -> None:  # noqa: ANN001
    with pytest.raises(ModelError, match="Did you mean ViT-B-16"):
        Encoder(EncoderConfig(model="ViT-B-61"))
    with pytest.raises(ModelError, match="no pretrained tag"):
        Encoder(EncoderConfig(model="ViT-B-16", pretrained="nonsense"))
    with pytest.raises(ModelError, match="not found"):
        Encoder(EncoderConfig(model="ViT-B-16", checkpoint=str(tmp_path / "missing.pt")))
    a = model_args("siglip")
    with pytest.raises(ModelError, match="does not fit"):
        Encoder(EncoderConfig(model=model_args("clip")["model"], checkpoint=a["checkpoint"]))


def test_real_model_names_resolve_offline_to_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without network, fetching pretrained weights fails with instructions (not a traceback)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def boom(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(open_clip, "create_model", boom)
    with pytest.raises(ModelError, match="--checkpoint PATH"):
        Encoder(EncoderConfig(model="ViT-B-16", pretrained="openai"))


def test_offline_with_an_empty_cache_fails_before_importing_open_clip(tmp_path, clip_path) -> None:  # noqa: ANN001
    """A fresh machine without network: the default model fails with exit 3 and what to do, decided before open_clip
    (seconds of imports) is loaded."""
    import os
    import subprocess
    import sys

    code = ("import atexit, sys\nfrom vtc.cli import run\n"
            "sys.argv = ['vtc', 'compress', sys.argv[1], '-o', sys.argv[2]]\n"
            "atexit.register(lambda: print('open_clip' in sys.modules))\nrun()\n")  # run() ends the process
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("HF_HUB_CACHE", None)
    r = subprocess.run([sys.executable, "-c", code, str(clip_path), str(tmp_path / "o.safetensors")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and r.stdout.strip().splitlines()[-1] == "False", r.stdout + r.stderr
    assert "--checkpoint PATH" in r.stdout + r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_a_pretrained_tag_loads_like_a_checkpoint(model_args, monkeypatch) -> None:  # noqa: ANN001
    """The pretrained-tag path: the file open_clip's tag names (from the cache, or fetched) is loaded as --checkpoint
    is, vision tower only, built on the meta device (no random initialisation of a real tensor) and assigned from
    the memory-mapped file; the same encoder as open_clip's own loader. The hub is unreachable here, so the tag's
    file is a local random-weight checkpoint standing in for the cached download."""
    import numpy as np
    import open_clip
    import open_clip.pretrained as ocp

    from vtc.io import encode as enc_mod
    from vtc.io.encode import Encoder, EncoderConfig

    a = model_args("clip")
    mean_std = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda name: ["cached"])
    monkeypatch.setattr(ocp, "get_pretrained_cfg", lambda name, tag: {"hf_hub": "x/y/", **mean_std})
    fetched = []
    monkeypatch.setattr(ocp, "download_pretrained", lambda cfg, **k: fetched.append(cfg) or a["checkpoint"])
    monkeypatch.setattr(enc_mod, "_hub_reachable", lambda *args, **kw: True)
    real_normal = torch.nn.init.normal_
    initialised = []

    def normal(tensor: torch.Tensor, *args: object, **kw: object) -> torch.Tensor:
        initialised.append(not tensor.is_meta)
        return real_normal(tensor, *args, **kw)

    monkeypatch.setattr(torch.nn.init, "normal_", normal)
    light = Encoder(EncoderConfig(model=a["model"], pretrained="cached"), text=False)
    assert fetched and getattr(light.model, "vision_only", False) and light.model.transformer is None
    assert initialised and not any(initialised)  # open_clip's init ran on meta tensors only
    full = Encoder(EncoderConfig(model=a["model"], checkpoint=a["checkpoint"], pretrained=None), text=True)
    frames = np.random.default_rng(0).integers(0, 255, (2, 48, 48, 3), dtype=np.uint8)
    want = {"attn", "pooled", "keys"}
    x, y = full.encode(frames, want), light.encode(frames, want)
    assert all(torch.equal(x[k], y[k]) for k in x)


def test_vision_only_loading_is_the_same_encoder(model_args, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """Without --query only the vision tower is materialised (assigned from the memory-mapped checkpoint): the same
    tokens and signals as the full model, no text tower, and the checkpoint is hashed once (cached)."""
    import numpy as np

    from vtc.io import encode as enc_mod
    from vtc.io.encode import Encoder, EncoderConfig

    monkeypatch.setenv("VTC_CACHE_DIR", str(tmp_path / "cache"))
    frames = np.random.default_rng(0).integers(0, 255, (3, 48, 48, 3), dtype=np.uint8)
    for kind in ("clip", "siglip"):
        a = model_args(kind)
        cfg = EncoderConfig(model=a["model"], checkpoint=a["checkpoint"], pretrained=None)
        full, light = Encoder(cfg, text=True), Encoder(cfg, text=False)
        assert getattr(light.model, "vision_only", False) and not getattr(full.model, "vision_only", False)
        want = {"attn", "pooled", "cls_attn", "keys", "received"}
        x, y = full.encode(frames, want), light.encode(frames, want)
        assert all(torch.equal(x[k], y[k]) for k in x)
        with pytest.raises(UsageError, match="text tower"):
            light.encode_text("a dog")
        assert full.checkpoint_sha256 == light.checkpoint_sha256
    calls = []
    monkeypatch.setattr(enc_mod, "_sha256", lambda p: calls.append(p) or "x")
    Encoder(cfg, text=False)
    assert not calls  # the digest came from the cache
