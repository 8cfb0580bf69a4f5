"""The wave-3 outer methods (AIM, Recoverable Compression, ZOO-Prune, Free Video-LLM, VScan, GRT) end to end: the
signals they need from the towers, compared with torch's own modules; runs through `vtc.compress` on a tiny CLIP
and a tiny SigLIP tower; the one-line refusals where a signal cannot exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import vtc
from vtc.errors import UsageError
from vtc.io.encode import Encoder, EncoderConfig


@pytest.fixture(scope="module")
def encoders(models: dict[str, tuple[Path, Path]]) -> dict[str, Encoder]:
    return {k: Encoder(EncoderConfig(model=str(cfg), pretrained=None, checkpoint=str(ckpt), device="cpu"))
            for k, (cfg, ckpt) in models.items()}


def test_clip_last_block_signals_match_torch_attention(encoders: dict[str, Encoder]) -> None:
    """`last_cls_attn` / `last_keys`: the last block's q/k projections as ONE head over the full width — the same
    weights loaded into torch's own single-head MultiheadAttention give the same attention row; `patch_embed` is
    the last block's output (captured by a hook) through the visual projection."""
    enc = encoders["clip"]
    pixels = torch.randn(2, 3, *enc.image_size)
    out = enc.encode_pixels(pixels, {"last_cls_attn", "last_keys", "patch_embed"})
    blk = enc.model.visual.transformer.resblocks[-1]
    seen = {}
    hooks = [blk.ln_1.register_forward_hook(lambda m, a, o: seen.setdefault("h", o)),
             blk.register_forward_hook(lambda m, a, o: seen.setdefault("y", o))]
    with torch.no_grad():
        enc.model.visual(pixels)
    for h in hooks:
        h.remove()
    width = blk.attn.embed_dim
    one = torch.nn.MultiheadAttention(width, 1, batch_first=True)
    one.load_state_dict(blk.attn.state_dict())
    h = seen["h"] if enc.model.visual.transformer.batch_first else seen["h"].transpose(0, 1)
    y = seen["y"] if enc.model.visual.transformer.batch_first else seen["y"].transpose(0, 1)
    with torch.no_grad():
        _, w = one(h[:, :1], h, h, need_weights=True)
        k = torch.nn.functional.linear(h, blk.attn.in_proj_weight[width : 2 * width],
                                       blk.attn.in_proj_bias[width : 2 * width])
    assert torch.allclose(out["last_cls_attn"], w[:, 0, 1:], atol=1e-6)
    assert torch.allclose(out["last_keys"], k, atol=1e-5)
    assert torch.allclose(out["patch_embed"], y[:, 1:] @ enc.model.visual.proj, atol=1e-5)


def test_siglip_patch_embed_is_the_pool_head_on_one_patch(encoders: dict[str, Encoder]) -> None:
    """SigLIP substitute: timm's own attention-pool head, given a frame made of one patch repeated, pools to
    exactly that patch's `patch_embed` (attention on equal keys is uniform: the output is that value)."""
    enc = encoders["siglip"]
    pixels = torch.randn(1, 3, *enc.image_size)
    out = enc.encode_pixels(pixels, {"patch_embed", "last_cls_attn", "last_keys"})
    tr = enc.model.visual.trunk
    with torch.no_grad():
        final = tr.norm(tr.blocks(tr.norm_pre(tr.patch_drop(tr._pos_embed(tr.patch_embed(pixels))))))
        ap = tr.attn_pool
        pos, ap.pos_embed = ap.pos_embed, None
        try:
            one = final[:, 3:4].expand(1, final.shape[1], -1) + (0 if pos is None else pos[3:4])
            pooled = enc.model.visual.head(ap(one))
        finally:
            ap.pos_embed = pos
    assert torch.allclose(out["patch_embed"][0, 3], pooled[0], atol=1e-5)
    assert out["last_keys"].shape[1] == enc.num_patches + 1 and torch.all(out["last_keys"][:, 0] == 0)
    assert torch.allclose(out["last_cls_attn"].sum(-1), torch.ones(1), atol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("method,kw", [
    ("aim", {}),
    ("recoverable", {"query": "a white square"}),
    ("recoverable", {}),
    ("free_video_llm", {"query": "a white square", "params": {"fast_size": 2}}),
    ("vscan", {"ratio": 0.25}),
    ("grt", {"params": {"min_tokens": 4}}),
])
def test_end_to_end(kind: str, method: str, kw: dict, clip_path: Path, model_args, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / f"{method}.safetensors"
    vtc.compress(clip_path, output=out, method=method, frames=4, **kw, **model_args(kind))
    f = vtc.load(out)
    assert 1 <= f.tokens.shape[0] < 4 * f.tokens_per_frame().numel() * 100
    assert f.meta["method"].startswith(method)


def test_text_guided_methods_need_a_query_only_where_required(clip_path: Path, model_args, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(UsageError, match="query-aware"):
        vtc.compress(clip_path, output=tmp_path / "o.safetensors", method="aim", query="x", **model_args("clip"))
    with pytest.raises(UsageError, match="--query"):
        vtc.compress(clip_path, output=tmp_path / "o.safetensors", method="free_video_llm", **model_args("clip"))


@pytest.mark.parametrize("grid", [(27, 27), (9, 14), (1, 5)])
def test_free_video_llm_odd_grids(grid: tuple[int, int]) -> None:
    """SigLIP's 27×27 (and non-square grids): horizontal pairs stay within a row (the last column alone), the box
    lies on the real h × ⌈w/2⌉ grid; every slow row is the max of two horizontal neighbours or a lone last column."""
    from vtc.methods import get_method
    from vtc.signals import Signals

    h, w = grid
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, h * w, 8, generator=gen)
    sig = Signals(relevance=torch.randn(6, generator=gen), query_embed=torch.randn(5, generator=gen),
                  patch_embed=torch.randn(6, h * w, 5, generator=gen))
    spec = get_method("free_video_llm")
    red = spec.run(x, grid=grid, ratio=None, signals=sig, params=spec.resolve({"fast_size": 4}))
    boxes = torch.tensor(red.info["roi_slow"])
    pw = (w + 1) // 2
    assert (boxes[:, 1] <= pw).all() and (boxes[:, 3] <= h).all() and (boxes[:, 0] >= 0).all()
    assert (boxes[:, 1] - boxes[:, 0] == round(pw * 0.8 ** 0.5)).all()
    tokens = red.apply(x)
    f = red.info["slow_frames"][0]
    left, right, top, bottom = boxes[0].tolist()
    first = x[f].reshape(h, w, 8)[top, 2 * left : 2 * left + 2].amax(0)
    assert torch.equal(tokens[0], first)


@pytest.fixture(scope="module")
def llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vtc.testing import tiny_llava_onevision

    return tiny_llava_onevision(tmp_path_factory.mktemp("llava") / "ov", image_size=98)


def test_zoo_prune_sensitivity_is_the_projectors(llava: Path, clip_path: Path, tmp_path: Path) -> None:
    """--target llava-onevision: the sensitivity signal equals a central difference through the checkpoint's own
    projector module (transformers), pooled as the tokens are; ZOO-Prune keeps int(ratio·N) tokens per frame."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from vtc.ops.sensitivity import unit_directions
    from vtc.run.config import make_config
    from vtc.targets.encoders import open_encoder

    enc = open_encoder(make_config(target="llava-onevision", target_model=str(llava)).encoder)
    pixels = torch.randn(2, 3, *enc.image_size)
    out = enc.encode_pixels(pixels, {"sensitivity"})
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(llava).eval()
    with torch.no_grad():
        cfg = model.config
        hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[cfg.vision_feature_layer]
        u = unit_directions(64, hidden.shape[-1], 0)
        proj = model.model.multi_modal_projector
        diff = proj(hidden[:, :, None] + 0.01 * u) - proj(hidden[:, :, None] - 0.01 * u)  # [B, g·g, m, D]
        s = (diff.norm(dim=-1) / 0.02).mean(-1)
        g = int(s.shape[1] ** 0.5)
        pooled = torch.nn.functional.interpolate(s.reshape(2, 1, g, g), size=[(g + 1) // 2] * 2, mode="bilinear")
    assert torch.allclose(out["sensitivity"], pooled.reshape(2, -1), rtol=1e-4, atol=1e-6)
    res = vtc.compress(clip_path, output=tmp_path / "z.safetensors", method="zoo_prune", ratio=0.25, frames=4,
                       target="llava-onevision", target_model=str(llava), encoder=enc)
    f = vtc.load(tmp_path / "z.safetensors")
    assert f.tokens.shape[0] == 4 * int(0.25 * 16) and "seeded 0" in f.meta["signals"]["sensitivity"]
    assert res is not None


def test_zoo_prune_refuses_without_a_target(clip_path: Path, model_args, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(UsageError, match="nonlinear projector"):
        vtc.compress(clip_path, output=tmp_path / "o.safetensors", method="zoo_prune", **model_args("clip"))


def test_clip_only_signals_refused_with_a_target(llava: Path, clip_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not provide"):
        vtc.compress(clip_path, output=tmp_path / "o.safetensors", method="recoverable", target="llava-onevision",
                     target_model=str(llava))


def test_vscan_signals_are_the_blocks_attention(encoders: dict[str, Encoder]) -> None:
    """CLIP: `shallow_attn` is block L/4's head-mean CLS row as torch's own MultiheadAttention returns it (hooked on
    that block), `readout_attn` equals `cls_attn`; SigLIP: both equal `received`-style maps of the named blocks."""
    from vtc.io.towers import shallow_block

    enc = encoders["clip"]
    pixels = torch.randn(2, 3, *enc.image_size)
    out = enc.encode_pixels(pixels, {"shallow_attn", "readout_attn", "cls_attn"})
    blk = enc.model.visual.transformer.resblocks[shallow_block(enc.num_layers)]
    seen = {}
    hook = blk.ln_1.register_forward_hook(lambda m, a, o: seen.setdefault("h", o))
    with torch.no_grad():
        enc.model.visual(pixels)
    hook.remove()
    h = seen["h"] if enc.model.visual.transformer.batch_first else seen["h"].transpose(0, 1)
    with torch.no_grad():
        _, w = blk.attn(h, h, h, need_weights=True, average_attn_weights=True)
    assert torch.allclose(out["shallow_attn"], w[:, 0, 1:], atol=1e-6)
    assert torch.equal(out["readout_attn"], out["cls_attn"])
    sig = encoders["siglip"]
    res = sig.encode_pixels(torch.randn(1, 3, *sig.image_size), {"shallow_attn", "readout_attn", "received"})
    assert torch.equal(res["readout_attn"], res["received"]) and res["shallow_attn"].shape == res["received"].shape


def test_vscan_with_a_target(llava: Path, clip_path: Path, tmp_path: Path) -> None:
    vtc.compress(clip_path, output=tmp_path / "v.safetensors", method="vscan", ratio=0.25, frames=4,
                 target="llava-onevision", target_model=str(llava))
    f = vtc.load(tmp_path / "v.safetensors")
    assert f.tokens.shape[0] == 4 * 4 and "VScan" in f.meta["signals"]["shallow_attn"]


def test_grt_with_a_target(llava: Path, clip_path: Path, tmp_path: Path) -> None:
    """The gate runs on the frames the target sees, in cells of its (pooled) token grid."""
    vtc.compress(clip_path, output=tmp_path / "g.safetensors", method="grt", ratio=0.25, frames=6,
                 params={"min_tokens": 2}, target="llava-onevision", target_model=str(llava))
    f = vtc.load(tmp_path / "g.safetensors")
    assert f.tokens.shape[0] == 6 * 4 and f.meta["info"]["key_frames"][0] == 0


def test_grt_gated_tower_uses_the_gated_embeddings(encoders: dict[str, Encoder]) -> None:
    """`forward_gated` runs the tower on exactly the stage's gated embeddings (checked against the authors' outputs
    in the golden cases): conv1's output replaced by `gated_embeddings` of the unfolded pixels."""
    from vtc.stages.gate import gated_embeddings, patches

    enc = encoders["clip"]
    conv = enc.model.visual.conv1
    pixels = torch.randn(3, 3, *enc.image_size)
    keep = torch.rand(3, enc.num_patches) > 0.5
    keep[0] = True
    out, emb = enc.encode_gated(pixels, frozenset(), keep, [None, None, None])
    pix = patches(pixels, conv.kernel_size[0])
    want = gated_embeddings(pix, conv.weight, conv.bias, keep)
    assert torch.allclose(emb, want, atol=1e-5)
    h, w = enc.grid
    hook = conv.register_forward_hook(lambda m, a, o: want.transpose(1, 2).reshape(3, -1, h, w))
    try:
        ref = enc.encode_pixels(pixels)
    finally:
        hook.remove()
    assert torch.allclose(out["patches"], ref["patches"], atol=1e-5)
    assert not torch.allclose(out["patches"], enc.encode_pixels(pixels)["patches"], atol=1e-3)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_grt_reference_gates_inside_the_tower(kind: str, clip_path: Path, model_args, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "g.safetensors"
    vtc.compress(clip_path, output=out, method="grt:reference", frames=6, batch_size=4,
                 params={"scene_merge_min_tokens_per_frame": 4}, **model_args(kind))
    gate = vtc.load(out).meta["embedding_gate"]
    assert gate["patches_total"] == 6 * vtc.load(out).grid[0] * vtc.load(out).grid[1]
    assert 0 < gate["patches_moved"] <= gate["patches_total"] and gate["threshold"] == 0.3


def test_grt_gate_refused_with_a_target(llava: Path, clip_path: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="reuse_embeddings=false"):
        vtc.compress(clip_path, output=tmp_path / "o.safetensors", method="grt:reference", target="llava-onevision",
                     target_model=str(llava))
