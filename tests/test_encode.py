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
    # a config of ~10 TB of weights against a small checkpoint: refused from the shapes, nothing allocated
    import json

    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"image_size": 48, "layers": 48, "width": 65536,
                                                                 "patch_size": 8}, "text_cfg": {"width": 32}}))
    with pytest.raises(ModelError, match=r"does not fit model 'huge' \(it has no visual\."):
        Encoder(EncoderConfig(model=str(huge), checkpoint=model_args("clip")["checkpoint"]), text=False)


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


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_a_pretrained_tag_loads_like_a_checkpoint(kind: str, model_args, monkeypatch, tmp_path) -> None:  # noqa: ANN001
    """The pretrained-tag path: the file open_clip's tag names (from the cache, or fetched) is loaded as --checkpoint
    is, vision tower only, built on the meta device (no random initialisation of a real tensor) and assigned from
    the memory-mapped file, with the tag's own preprocessing (mean/std); the same encoder as open_clip's own loader
    given the same tag. The hub is unreachable here, so the tag's file is a local random-weight checkpoint standing
    in for the cached download. Once resolved, the tag loads again without open_clip or the hub (vtc's cache)."""
    import shutil

    import numpy as np
    import open_clip
    import open_clip.factory as ocf
    import open_clip.pretrained as ocp

    from vtc.io import encode as enc_mod
    from vtc.io.encode import Encoder, EncoderConfig

    monkeypatch.setenv("VTC_CACHE_DIR", str(tmp_path / "cache"))
    a = dict(model_args(kind))
    a["checkpoint"] = shutil.copy(a["checkpoint"], tmp_path / "downloaded.pt")
    tag = {"hf_hub": "x/y/", "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3)}
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda name: ["cached"])
    fetched = []
    for mod in (ocp, ocf):
        monkeypatch.setattr(mod, "get_pretrained_cfg", lambda name, t: dict(tag) if t == "cached" else {})
        monkeypatch.setattr(mod, "download_pretrained", lambda cfg, **k: fetched.append(cfg) or a["checkpoint"])
    monkeypatch.setattr(enc_mod, "_hub_reachable", lambda *args, **kw: True)
    real_normal = torch.nn.init.normal_
    initialised = []

    def normal(tensor: torch.Tensor, *args: object, **kw: object) -> torch.Tensor:
        initialised.append(not tensor.is_meta)
        return real_normal(tensor, *args, **kw)

    monkeypatch.setattr(torch.nn.init, "normal_", normal)
    light = Encoder(EncoderConfig(model=a["model"], pretrained="cached"), text=False)
    assert fetched and getattr(light.model, "vision_only", False)
    assert getattr(light.model, "transformer", None) is None and getattr(light.model, "text", None) is None
    assert not any(initialised)  # nothing random was drawn into a real tensor
    assert light.geometry.mean == tag["mean"] and light.geometry.std == tag["std"]
    full = Encoder(EncoderConfig(model=a["model"], pretrained="cached"), text=True)  # open_clip's own loader
    assert not getattr(full.model, "vision_only", False) and full.geometry == light.geometry
    frames = np.random.default_rng(0).integers(0, 255, (2, 48, 48, 3), dtype=np.uint8)
    want = {"attn", "pooled", "keys"}
    x, y = full.encode(frames, want), light.encode(frames, want)
    assert all(torch.equal(x[k], y[k]) for k in x)

    def no(*args: object, **kw: object) -> None:
        raise AssertionError("open_clip or the hub was consulted for a tag resolved before")

    if kind == "clip":  # a SigLIP tower is a timm trunk: open_clip builds it
        monkeypatch.setattr(enc_mod, "_open_clip", no)
    monkeypatch.setattr(enc_mod, "_hub_reachable", no)
    again = Encoder(EncoderConfig(model=a["model"], pretrained="cached"), text=False)
    assert again.geometry == light.geometry == enc_mod.geometry_for(EncoderConfig(model=a["model"],
                                                                                  pretrained="cached"))
    z = again.encode(frames, want)
    assert all(torch.equal(x[k], z[k]) for k in x)
    import json

    cache = tmp_path / "cache" / "tags.json"
    good = cache.read_text()
    for damaged in ({"mean": "x"}, {"std": [0, 0, 0]}, {"mean": [1, 2]}):  # a damaged entry is a miss
        entries = json.loads(good)
        for entry in entries.values():
            entry["preprocess"].update(damaged)
        cache.write_text(json.dumps(entries))
        with pytest.raises(AssertionError, match="consulted"):
            Encoder(EncoderConfig(model=a["model"], pretrained="cached"), text=False)
    cache.write_text(good)
    Path(a["checkpoint"]).touch()  # the file changed: resolved again through open_clip
    with pytest.raises(AssertionError, match="consulted"):
        Encoder(EncoderConfig(model=a["model"], pretrained="cached"), text=False)


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


TINY_VISION = {"image_size": 48, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16}


@pytest.mark.parametrize("extra", [
    {},
    {"quick_gelu": True},
    {"vision": {"ls_init_value": 0.5, "no_ln_pre": True}},
    {"vision": {"pool_type": "avg", "final_ln_after_pool": True, "norm_kwargs": {"eps": 1e-6}}},
    {"vision": {"image_size": [48, 64], "patch_size": [8, 16], "mlp_ratio": 2.5}},
    {"vision": {"pos_embed_type": "sin_cos_2d"}},
    {"vision": {"attentional_pool": True}},  # not built by vtc: open_clip's own module is used
    {"vision": {"scale_fc": True}},
], ids=["plain", "quickgelu", "layerscale-noln", "avgpool-lnafter", "rect-mlp", "sincos", "attnpool", "custom-block"])
def test_clip_vit_without_open_clip_equals_open_clip(extra: dict, tmp_path: Path) -> None:
    """A CLIP ViT checkpoint loaded without --query is built by vtc.io.clip_vit (open_clip not imported); its tokens,
    signals and pooled embedding are bit-identical to open_clip's own module (same operations in the same order)
    for every config option it builds, and the options it does not build go through open_clip."""
    import json

    from vtc.io.clip_vit import VisionTransformer
    from vtc.testing import save_random_checkpoint

    cfg = {"embed_dim": 16, "vision_cfg": {**TINY_VISION, **extra.get("vision", {})},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    if extra.get("quick_gelu"):
        cfg["quick_gelu"] = True
    conf = tmp_path / "arch.json"
    conf.write_text(json.dumps(cfg))
    ckpt = save_random_checkpoint(conf, tmp_path / "w.pt", seed=3)
    ec = EncoderConfig(model=str(conf), checkpoint=str(ckpt), pretrained=None, layer=-1)
    light, full = Encoder(ec, text=False), Encoder(ec, text=True)
    ours = isinstance(light.model.visual, VisionTransformer)
    assert ours == ("attentional_pool" not in cfg["vision_cfg"] and "scale_fc" not in cfg["vision_cfg"])
    assert not isinstance(full.model.visual, VisionTransformer)
    assert light.grid == full.grid and light.geometry == full.geometry and light.describe() == full.describe()
    pixels = torch.randn(2, 3, *light.image_size, generator=torch.Generator().manual_seed(1))
    want = {"attn", "pooled", "cls_attn", "cls_token", "keys", "received", "last_keys", "last_cls_attn",
            "patch_embed"} if ours else {"pooled"}
    x, y = full.encode_pixels(pixels, want), light.encode_pixels(pixels, want)
    assert set(x) == set(y) and all(torch.equal(x[k], y[k]) for k in x), [k for k in x if not torch.equal(x[k], y[k])]
    with torch.inference_mode():
        assert torch.equal(full.model.visual(pixels).float(), y["pooled"])  # open_clip's own image embedding


def test_compress_with_a_clip_checkpoint_does_not_import_open_clip(tmp_path: Path, clip_path: Path,
                                                                   model_args) -> None:  # noqa: ANN001
    """`vtc compress --checkpoint` of a CLIP ViT builds the tower without open_clip (which costs ~3 s to import):
    the run ends with open_clip, timm, torchvision and transformers absent from sys.modules."""
    import os
    import subprocess
    import sys

    a = model_args("clip")
    code = ("import atexit, sys\nfrom vtc.cli import run\n"
            "sys.argv = ['vtc', 'compress', *sys.argv[1:]]\n"
            "atexit.register(lambda: print([m for m in ('open_clip', 'timm', 'torchvision', 'transformers') "
            "if m in sys.modules]))\nrun()\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = tmp_path / "o.safetensors"
    r = subprocess.run([sys.executable, "-c", code, str(clip_path), "-o", str(out), "--model", a["model"],
                        "--checkpoint", a["checkpoint"], "-m", "tome", "--frames", "3"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "[]", r.stdout + r.stderr
    assert out.exists()
