"""Invariants over every registered method: any T ≥ 1, grid ≥ 1×1, ratio in (0, 1]."""

from __future__ import annotations

import math

import pytest
import torch

import vtc
from vtc.errors import UsageError
from vtc.methods import all_methods, get_method
from vtc.signals import Signals

METHODS = [m.name for m in all_methods() if m.in_encoder is None]
#: methods that merge tokens inside the encoder (tested through a tiny ViT below)
IN_ENCODER = [m.name for m in all_methods() if m.in_encoder is not None]


def make_signals(t: int, n: int, d: int, gen: torch.Generator, h: int = 1, w: int = 1) -> Signals:
    return Signals(
        frames=torch.randint(0, 255, (t, 4 * h, 4 * w, 3), generator=gen, dtype=torch.uint8),
        attn=torch.softmax(torch.randn(t, n, generator=gen), -1),
        pooled=torch.randn(t, d, generator=gen),
        cls_attn=torch.softmax(torch.randn(t, n, generator=gen), -1),
        cls_token=torch.randn(t, d, generator=gen),
        keys=torch.randn(t, n + 1, 8, generator=gen),
        received=torch.softmax(torch.randn(t, n, generator=gen), -1) * n / (n + 1),
        received_object=torch.softmax(torch.randn(t, n, generator=gen), -1) * n / (n + 1),
        last_cls_attn=torch.softmax(torch.randn(t, n, generator=gen), -1),
        last_keys=torch.randn(t, n + 1, d, generator=gen),
        patch_embed=torch.randn(t, n, 6, generator=gen),
        query_embed=torch.nn.functional.normalize(torch.randn(6, generator=gen), dim=0),
        relevance=torch.randn(t, generator=gen),
        sensitivity=torch.rand(t, n, generator=gen),
        shallow_attn=torch.softmax(torch.randn(t, n, generator=gen), -1),
        readout_attn=torch.softmax(torch.randn(t, n, generator=gen), -1),
    )


def video_like(t: int, h: int, w: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """Static background + drift + a scene cut, so temporal methods find static and dynamic tokens."""
    base = torch.randn(h * w, d, generator=gen)
    other = torch.randn(h * w, d, generator=gen)
    frames = [(base if i < max(1, t * 3 // 5) else other) + 0.05 * i / max(t, 1) * torch.randn(h * w, d, generator=gen)
              for i in range(t)]
    return torch.stack(frames)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("t,h,w", [(1, 1, 1), (1, 3, 3), (2, 2, 3), (3, 4, 4), (5, 5, 4), (9, 4, 4), (16, 6, 6)])
@pytest.mark.parametrize("ratio", [0.05, 0.3, 1.0])
def test_invariants(name: str, t: int, h: int, w: int, ratio: float) -> None:
    gen = torch.Generator().manual_seed(t * 100 + h * 10 + w)
    d = 8
    x = video_like(t, h, w, d, gen)
    sig = make_signals(t, h * w, d, gen, h, w)
    spec = get_method(name)
    red = spec.run(x, grid=(h, w), ratio=ratio, signals=sig, params=spec.defaults())
    k, n_src = red.num_outputs, t * h * w
    assert k >= 1
    budget = math.ceil(ratio * n_src) + t
    if "count_rule" not in red.info:  # rlt: the content sets the count, --ratio is not used (it says so)
        assert k <= max(budget, red.info.get("budget_floor", 0)), (k, budget)
    # provenance: valid indices, positive weights, every output has a source
    n_extra = 0 if red.extra is None else red.extra.shape[0]
    dst, src, weight = red.entries()  # entries and groups (FastVID) as one coalesced list
    assert dst.numel() == red.num_entries and torch.unique(dst * (n_src + n_extra) + src).numel() == dst.numel()
    assert src.min() >= 0 and red.src.max() < n_src + n_extra
    assert red.dst.min() >= 0 and red.dst.max() < k
    assert (red.weight >= 0).all()
    row_total = torch.zeros(k, dtype=torch.float64).index_add_(0, red.dst, red.weight.double())
    assert (row_total > 0).all()
    assert (red.sizes() >= 1).all()
    assert ((red.rep >= -1) & (red.rep < n_src)).all()
    covered = red.source()
    assert set(torch.nonzero(covered >= 0).flatten().tolist()) == set(src[src < n_src].tolist())
    # tokens are exactly the map applied to the features; deterministic
    tok = red.apply(x)
    full = x.reshape(n_src, d) if red.extra is None else torch.cat([x.reshape(n_src, d), red.extra])
    assert torch.allclose(tok.double(), red.dense() @ full.double(), atol=1e-5)
    red2 = spec.run(x, grid=(h, w), ratio=ratio, signals=sig, params=spec.defaults())
    assert all(torch.equal(a, b) for a, b in zip(red2.entries(), red.entries(), strict=True))
    assert torch.equal(red2.rep, red.rep)
    # a representative is one of the row's sources (when it has one)
    has = red.rep >= 0
    rows = torch.nonzero(has).flatten()
    pairs = set(zip(dst.tolist(), src.tolist(), strict=False))
    static_rep_ok = all((int(r), int(red.rep[r])) in pairs or name in ("holitom", "prunevid") for r in rows)
    assert static_rep_ok


def test_none_keeps_everything() -> None:
    x = torch.randn(3, 4, 5)
    res = vtc.compress_features(x, method="none", grid=(2, 2))
    assert torch.equal(res.tokens, x.reshape(12, 5))


def test_pool_matches_bilinear_interpolation() -> None:
    x = torch.randn(2, 27 * 27, 6)
    res = vtc.compress_features(x, method="pool", params={"stride": 2})
    grid = x.reshape(2, 27, 27, 6).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(grid, size=(14, 14), mode="bilinear", align_corners=False)
    assert torch.allclose(res.tokens, ref.permute(0, 2, 3, 1).reshape(-1, 6), atol=1e-5)


def test_uniform_meets_ratio() -> None:
    x = torch.randn(8, 196, 4)
    res = vtc.compress_features(x, method="uniform", ratio=0.1)
    assert 0.05 < res.ratio_achieved <= 0.1


def test_unknown_method_suggests_names() -> None:
    with pytest.raises(UsageError, match="Did you mean fastvid"):
        get_method("fastvd")


def test_bad_ratio_and_missing_signal() -> None:
    x = torch.randn(4, 16, 8)
    with pytest.raises(UsageError, match=r"\(0, 1\]"):
        vtc.compress_features(x, method="pool", ratio=1.5)
    with pytest.raises(UsageError, match="needs the signal 'attn'"):
        vtc.compress_features(x, method="fastvid", ratio=0.2)


def test_unknown_param_is_an_error() -> None:
    with pytest.raises(UsageError, match="no parameter 'tua'"):
        vtc.compress_features(torch.randn(2, 4, 3), method="holitom", params={"tua": 1}, attn=torch.ones(2, 4) / 4)


def test_composition_holitom_windows_in_fastvid() -> None:
    gen = torch.Generator().manual_seed(0)
    x = video_like(16, 7, 7, 16, gen)
    sig = make_signals(16, 49, 16, gen)
    a = vtc.compress_features(x, method="fastvid", ratio=0.2, attn=sig.attn, pooled=sig.pooled,
                              params={"segmenter": "holitom"})
    from vtc.stages import holitom_windows

    assert torch.equal(a.reduction.segments, holitom_windows(x, tau=0.8)[0])


def test_dycoke_ratio_maps_to_kept_fraction() -> None:
    x = torch.randn(32, 196, 8)
    res = vtc.compress_features(x, method="dycoke", ratio=0.5)
    assert 0.45 <= res.ratio_achieved <= 0.5
    floor = vtc.compress_features(x, method="dycoke", ratio=0.1)
    assert floor.reduction.num_outputs == floor.reduction.info["budget_floor"]  # whole frames only


def test_prunevid_ratio_is_met_by_fitting_cluster_ratio() -> None:
    gen = torch.Generator().manual_seed(3)
    x = video_like(16, 8, 8, 16, gen)
    res = vtc.compress_features(x, method="prunevid", ratio=0.15)
    assert res.ratio_achieved <= 0.15
    assert res.ratio_achieved > 0.05


@pytest.mark.parametrize("name", IN_ENCODER)
@pytest.mark.parametrize("t,h,w", [(1, 1, 1), (1, 3, 3), (2, 2, 3), (3, 4, 4), (5, 6, 6)])
@pytest.mark.parametrize("ratio", [0.05, 0.3, 1.0])
@pytest.mark.parametrize("class_token", [True, False])
def test_in_encoder_invariants(name: str, t: int, h: int, w: int, ratio: float, class_token: bool) -> None:
    """Through a tiny timm ViT (with or without CLS): the budget, exact 0/1 provenance, sizes, a valid map."""
    from timm.models.vision_transformer import VisionTransformer

    from vtc.io.towers import timm_blocks_merging
    from vtc.stages.in_encoder import reduction_from_sources, tokens_after

    torch.manual_seed(t * 100 + h * 10 + w)
    vit = VisionTransformer(img_size=(4 * h, 4 * w), patch_size=4, embed_dim=16, depth=3, num_heads=2,
                            class_token=class_token, global_pool="token" if class_token else "avg").eval()
    spec = get_method(name)
    prefix = int(class_token)
    merger = spec.in_encoder(ratio=ratio, layers=3, tokens=h * w + prefix, protected=prefix, **spec.defaults())
    with torch.no_grad():
        x = timm_blocks_merging(vit.blocks, vit._pos_embed(vit.patch_embed(torch.randn(t, 3, 4 * h, 4 * w))), merger,
                                (h, w))
    n = h * w
    k = x.shape[1] - prefix
    floor = tokens_after([n] * 3, n + prefix, prefix, 3) - prefix  # the most 3 blocks can merge
    floor = max(floor, int(merger.describe().get("budget_floor", 0)))  # a method's own floor, reported in the file
    assert 1 <= k <= max(floor, math.ceil(ratio * n) + 1)
    src = merger.source[:, prefix:, prefix:]
    if name == "tome_vit":  # 0/1: each patch in exactly one token, sizes count patches
        assert ((src == 0) | (src == 1)).all() and torch.equal(src.sum(1), torch.ones(t, n))
        if merger.size is not None:
            assert torch.equal(merger.size[:, prefix:, 0], src.sum(-1))
    else:  # vid-TLDR: fractional (score-weighted) provenance; zero-score patches vanish
        assert ((src >= 0) & (src <= 1 + 1e-6)).all() and (src.amax(-1) > 0).all()
    red = reduction_from_sources(src)
    assert red.num_outputs == t * k and red.num_sources == t * n and (red.sizes() >= 1).all()
    assert ((red.rep >= 0) & (red.rep < t * n)).all()
    with pytest.raises(UsageError, match="inside the encoder"):
        spec.run(torch.randn(t, n, 8), grid=(h, w), ratio=ratio, signals=Signals(), params=spec.defaults())
