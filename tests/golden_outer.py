"""Golden checks of the wave-3 outer methods (vscan, free_video_llm, grt, zoo_prune, recoverable, aim): each case's
stored inputs through vtc's functions, compared with what the authors' code produced (see
../shared/golden/README.md for the tensors and tolerances). `test_golden.py` runs them for every case it finds."""

from __future__ import annotations

import json
import math

import torch

from vtc.methods import get_method
from vtc.signals import Signals


def _dense_map(t: dict[str, torch.Tensor], rows: int, sources: int) -> torch.Tensor:
    w = torch.zeros(rows, sources, dtype=torch.float64)
    w[t["merge_dst"].long(), t["merge_src"].long()] = t["merge_w"].double()
    return w


def check_aim(meta: dict, t: dict[str, torch.Tensor]) -> None:
    """Round counts, merge weights over the pooled tokens, tokens, and the exact map from the input (through the
    registry's `reference` variant)."""
    from vtc.methods.aim import aim_merge

    p = json.loads(meta["params"])
    x = t["features"]
    grid = tuple(p["grid"])
    pool = p["mm_spatial_pool_mode"] or "none"  # Qwen2-VL: no 2-D pool, the 2×2 merge happened in the tower
    values, weights, _, _, counts = aim_merge(x, grid, pool, p["variant"], None, False)
    assert counts == t["round_counts"].tolist(), "round counts"
    assert torch.allclose(weights, t["merge_weights"].double(), atol=1e-6, rtol=0), "merge weights"
    assert torch.allclose(values, t["tokens_per_frame"], atol=1e-5, rtol=0), "tokens per frame"
    spec = get_method("aim")
    red = spec.run(x, grid=grid, ratio=None, signals=Signals(),
                   params=spec.resolve({"mm_spatial_pool_mode": pool, "variant": p["variant"]}, "reference"))
    assert torch.allclose(red.apply(x), t["tokens"], atol=1e-5, rtol=0), "tokens"
    if "merge_src" in t:
        assert torch.allclose(red.dense(), _dense_map(t, red.num_outputs, x.shape[0] * x.shape[1]), atol=1e-6)


def check_recoverable(meta: dict, t: dict[str, torch.Tensor]) -> None:
    """The two scores vtc computes (one-head full-width CLS attention, scaled text cosine) from the stored q, keys,
    CLIP hidden states and projection; per frame the picks, centres and counts; then the tokens (`reference`)."""
    from vtc.methods.recoverable import cls_attention_full, recoverable_frame, text_scores
    from vtc.ops.outliers import outlier_fraction

    p = json.loads(meta["params"])
    attn = t["cls_attn"]  # top-k gaps reach 1.1e-7: decide on the stored scores, as the README says
    assert torch.allclose(cls_attention_full(t["q_cls"], t["keys"]), attn, atol=1e-6, rtol=1e-5), "CLS attention"
    patch_embed = t["clip_hidden"][:, 1:] @ t["w.visual_projection"].T
    sim = text_scores(patch_embed, t["text_embed"][0])
    assert torch.allclose(sim, t["text_score"], atol=1e-7, rtol=1e-5), "text score"
    knobs = {"knn": p["knn_k"], "text_weight": p["text_score_scale"], "lof_pick": p["lof_k_vision"],
             "lof_text": p["lof_k_text"], "lof_rest": p["lof_k_rest"]}
    per_frame = json.loads(meta["stability"])["per_frame"]
    for f in range(t["features"].shape[0]):
        d = recoverable_frame(attn[f], t["text_score"][f], t["keys"][f], centres="width", key_index="list", **knobs)
        for name in ("index_vision", "index_text"):  # top-k sets (the authors' order is topk's)
            assert torch.equal(d[name].sort().values, t[f"f{f}.{name}"].sort().values), (f, name)
        assert torch.equal(d["index_all"], t[f"f{f}.index_all"]) and torch.equal(d["centers"], t[f"f{f}.centers"])
        filled = t["text_score"][f].clone()  # the LOF shares themselves (scikit-learn's rule, restated in torch)
        filled[d["index_vision"]] = filled.min()
        shares = (outlier_fraction(attn[f], p["lof_k_vision"]), outlier_fraction(filled, p["lof_k_text"]),
                  outlier_fraction(attn[f][d["rest"]], p["lof_k_rest"]))
        ref = per_frame[f]
        assert torch.allclose(torch.tensor(shares, dtype=torch.float64),
                              torch.tensor([ref["rv"], ref["rt"], ref["rr"]], dtype=torch.float64), atol=1e-12), f
    spec = get_method("recoverable")
    sig = Signals(last_cls_attn=attn, last_keys=t["keys"], patch_embed=patch_embed, query_embed=t["text_embed"][0])
    red = spec.run(t["features"], grid=tuple(p["grid"]), ratio=None, signals=sig,
                   params=spec.resolve(knobs, "reference"))
    assert red.info["tokens_per_frame"] == t["tokens_per_frame"].tolist(), "tokens per frame"
    assert torch.allclose(red.apply(t["features"]), t["tokens"], atol=1e-5, rtol=0), "tokens"


def _mlp(t: dict[str, torch.Tensor], prefix: str) -> torch.nn.Sequential:
    """The stored projector `w.<prefix>.<i>.*` as torch modules in float32: Linear layers at the stored indices,
    GELU between them (LLaVA's mlp2x_gelu; the low-rank one has two bias-free factor layers)."""
    idx = sorted({int(k.split(".")[2]) for k in t if k.startswith(f"w.{prefix}.")})
    layers: list[torch.nn.Module] = []
    for i in range(max(idx) + 1):
        if i not in idx:
            layers.append(torch.nn.GELU())
            continue
        w = t[f"w.{prefix}.{i}.weight"].float()
        b = t.get(f"w.{prefix}.{i}.bias")
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        lin.weight.data.copy_(w)
        if b is not None:
            lin.bias.data.copy_(b.float())
        layers.append(lin)
    return torch.nn.Sequential(*layers).eval()


def check_zoo_prune(meta: dict, t: dict[str, torch.Tensor]) -> None:
    """Sensitivities from the stored projector and raw directions (rtol 1e-4), then the selection order and kept
    set on the stored sensitivities (exact), through the registry's `reference` variant for the kept tokens."""
    from vtc.ops.sensitivity import (
        normalize_directions,
        projector_sensitivity,
        sensitivity_weights,
        weighted_diverse_order,
    )

    p = json.loads(meta["params"])
    x, ref_s = t["features"], t["sensitivity"]
    tt, n, _ = x.shape
    mm = _mlp(t, "mm_projector")
    with torch.no_grad():
        assert torch.allclose(mm(x), t["projected"], atol=1e-5, rtol=1e-5), "projector"
    u = normalize_directions(t["directions_raw"])
    next_path = p["path"] == "next"
    proj = _mlp(t, "lowrank_mm_projector") if next_path else mm
    for f in range(tt):
        s = projector_sensitivity(proj, x[f], u[0] if next_path else u[f], p["NOISERECOV_INTENS"])
        assert torch.allclose(s, ref_s[f], rtol=1e-4, atol=0), f"sensitivity, frame {f}"
    k = p["k_frame"] if next_path else p["k_per_frame"]
    for f in range(tt):
        order = weighted_diverse_order(t["projected"][f], sensitivity_weights(ref_s[f], not next_path), k)
        assert torch.equal(order, t["selection_order"][f]), f"selection order, frame {f}"
    spec = get_method("zoo_prune")
    params = {"k_per_frame": k, "guard": not next_path}
    red = spec.run(t["projected"], grid=tuple(p.get("grid_hw") or p["grid"]), ratio=None,
                   signals=Signals(sensitivity=ref_s), params=spec.resolve(params, "reference"))
    assert torch.equal(red.rep, t["kept_index"]), "kept index"
    assert torch.equal(red.apply(t["projected"]), t["tokens"]), "tokens"


_FVL_POOL = {"spatial_1d_max_pool": "1d_max", "spatial_1d_avg_pool": "1d_avg", "spatial_2d_max_pool": "2d_max",
             "spatial_2d_avg_pool": "2d_avg"}


def check_free_video_llm(meta: dict, t: dict[str, torch.Tensor]) -> None:
    """Frame relevance and patch embeddings from the stored CLIP outputs, then (authors' layout, uniform middle
    frames) the frame lists, ROI boxes, patch–text cosines, every row's sources and op, and the tokens; the unused
    top-change helper as a unit."""
    from vtc.methods.free_video_llm import free_video_rows, top_change_frames

    p = json.loads(meta["params"])
    x = t["features"]
    tt, n, _ = x.shape
    side = math.isqrt(n)
    rel = torch.nn.functional.cosine_similarity(t["text_embed"], t["frame_embed"], dim=-1)
    assert torch.allclose(rel, t["frame_text_cos"], atol=1e-6), "frame relevance"
    patch_embed = t["clip_hidden"][:, 1:] @ t["w.visual_projection"].T  # no post-LayerNorm, as the authors
    knobs = dict(slow_frames=p["num_slowpath"], slow_pool=_FVL_POOL[p["slow_agg"]], roi=p["roi_ratio"],
                 middle_frames=p["middle_frames"], middle_pool=_FVL_POOL[p["middle_agg"]],
                 fast_frames=p["fast_frames"], fast_size=p["fast_output_size"][0])
    src, op, frame, facts = free_video_rows(x, (side, side), rel, patch_embed, t["text_embed"][0], **knobs,
                                            middle_select="uniform", layout="authors")
    for name in ("slow_frames", "middle_frames", "fast_frames", "roi_slow", "roi_middle"):
        if name in t:
            assert torch.equal(facts[name], t[name]), name
    for name in ("patch_text_cos_slow", "patch_text_cos_middle"):
        if name in t:
            assert torch.allclose(facts[name], t[name], atol=1e-6), name
    ref = t["row_src"]
    width = max(src.shape[1], ref.shape[1])
    pad = torch.nn.functional.pad
    assert torch.equal(pad(src, (0, width - src.shape[1]), value=-1), pad(ref, (0, width - ref.shape[1]), value=-1))
    assert torch.equal(op, t["row_op_max"].bool()) and torch.equal(frame, t["row_frame"]), "row ops / frames"
    num = min(max(p["middle_frames"], 2), tt)
    assert torch.equal(top_change_frames(x, num), t["top_change_frames"]), "top-change helper"
    spec = get_method("free_video_llm")
    sig = Signals(relevance=rel, query_embed=t["text_embed"][0], patch_embed=patch_embed)
    red = spec.run(x, grid=(side, side), ratio=None, signals=sig, params=spec.resolve(knobs, "reference"))
    assert torch.allclose(red.apply(x), t["tokens"], atol=1e-6, rtol=0), "tokens"


def check_vscan(meta: dict, t: dict[str, torch.Tensor]) -> None:
    """Head means of the stored CLS rows (LLaVA cases), then per frame the local picks (window order), the global
    picks (top-k order) and the kept set on the stored scores; then the merged tokens, assignment and counts
    through the registry (`reference` = the LLaVA rule, `qwen` = the Qwen rule)."""
    from vtc.methods.vscan import vscan_frame

    p = json.loads(meta["params"])
    llava = meta["variant"] == "llava"
    x = t["projected"] if "projected" in t else t["features"]
    tt, n, _ = x.shape
    if "w.mm_projector.0.weight" in t:
        with torch.no_grad():
            assert torch.allclose(_mlp(t, "mm_projector")(t["features"]), x, atol=1e-5), "projector"
    if llava:
        for name in ("shallow", "deep"):
            assert torch.allclose(t[f"cls_attn_{name}"].mean(1), t[f"score_{name}"], atol=1e-8), name
        shallow, deep, k, grid = t["score_shallow"], t["score_deep"], p["visual_token_num"], (24, 24)
        knobs, variant = {"local_rule": "windows", "window_size": p["window_size"]}, "reference"
    else:
        shallow, deep, k, grid = t["score_local"], t["score_global"], p["num_keep_tokens"], tuple(p["grid_hw"])
        knobs, variant = {"local_rule": "greedy", "window_size": p["window_size"]}, "qwen"
        assert k == int(p["image_token_ratio"] * n)
    for f in range(tt):
        local, glob, kept, _ = vscan_frame(x[f], shallow[f], deep[f], k, grid, **knobs)
        assert torch.equal(local, t["local_index"][f]), f"local picks, frame {f}"
        assert torch.equal(glob, t["global_index"][f]), f"global picks, frame {f}"
        assert torch.equal(torch.nonzero(t["keep"][f]).flatten(), kept), f"kept, frame {f}"
    spec = get_method("vscan")
    red = spec.run(x, grid=grid, ratio=None, signals=Signals(shallow_attn=shallow, readout_attn=deep),
                   params=spec.resolve({"k_per_frame": k}, variant))
    assert torch.equal(red.rep, t["kept_index"]), "kept index"
    assert torch.equal(red.source().long(), t["assign"]), "assignment"
    assert torch.equal(red.sizes().long(), t["merge_count"]) or torch.equal(red.sizes().long() - 1, t["merge_count"])
    assert torch.allclose(red.apply(x), t["tokens"], atol=1e-5, rtol=0), "tokens"


def check_grt(meta: dict, t: dict[str, torch.Tensor]) -> None:
    """The gate (moved patches, motion scores) and the gated patch embeddings from the stored pixels and weights;
    key frames, the divergences through the stored lm_head (the authors' reversed KL), merged frames; the packed
    tokens of the whole method with that head; and the registry's `reference` variant (head: vtc's identity
    substitute) on the same knobs."""
    from vtc.methods.grt import grt_select, key_frames, semantic_merge
    from vtc.stages.gate import gated_embeddings, patch_gate, patches, siglip_pixels

    p = json.loads(meta["params"])
    x = t["features"]
    tt, n, _ = x.shape
    pv = siglip_pixels(t["frames"])
    assert torch.allclose(pv, t["pixel_values"], atol=1e-6), "pixel normalisation"
    pix = patches(pv, p["patch_size"])
    keep, score = patch_gate(pix, p["gate_diff_threshold"], p["gate_metric"], "sum")
    assert torch.equal(keep, t["gate_keep"].bool()), "gate keep"
    assert torch.allclose(score, t["gate_score"], atol=1e-6), "gate score"
    emb = gated_embeddings(pix, t["w.patch_embedding.weight"], t["w.patch_embedding.bias"], keep)
    assert torch.allclose(emb + t["w.position_embedding.weight"], t["embeddings"], atol=1e-6), "gated embeddings"
    key = key_frames(keep, p["scene_cut_factor"])
    assert torch.equal(key, t["key_frames"].bool()), "key frames"
    removed, dists = semantic_merge(x.mean(1), key, p["merge_jsd_threshold"], "reversed", t["w.lm_head.weight"])
    assert torch.allclose(torch.tensor(dists), t["jsd"], atol=1e-5, rtol=1e-5), "divergences"
    assert torch.equal(torch.nonzero(~removed).flatten(), t["kept_frames"]), "kept frames"
    red = grt_select(x, t["frames"], tuple(p["grid"]), p["scene_merge_keep_ratio"],
                     gate_threshold=p["gate_diff_threshold"], gate_metric=p["gate_metric"], gate_scale="sum",
                     scene_cut=p["scene_cut_factor"], jsd_threshold=p["merge_jsd_threshold"], divergence="reversed",
                     require_match=p["scene_merge_require_semantic_match"],
                     min_tokens=p["scene_merge_min_tokens_per_frame"], head=t["w.lm_head.weight"])
    assert torch.equal(red.rep.reshape(tt, -1) % n, t["kept_index"]), "kept index"
    assert torch.equal(red.apply(x), t["tokens"]), "tokens"
    spec = get_method("grt")  # through the registry: the gate knobs under the authors' names
    params = {"gate_diff_threshold": p["gate_diff_threshold"], "gate_metric": p["gate_metric"],
              "scene_cut_factor": p["scene_cut_factor"], "merge_jsd_threshold": p["merge_jsd_threshold"],
              "scene_merge_require_semantic_match": p["scene_merge_require_semantic_match"],
              "scene_merge_min_tokens_per_frame": p["scene_merge_min_tokens_per_frame"]}
    via = spec.run(x, grid=tuple(p["grid"]), ratio=p["scene_merge_keep_ratio"], signals=Signals(frames=t["frames"]),
                   params=spec.resolve(params, "reference"))
    assert via.info["key_frames"] == torch.nonzero(key).flatten().tolist()
    assert via.num_outputs == t["tokens"].shape[0]


OUTER_CHECKS = {"aim": check_aim, "recoverable": check_recoverable, "zoo_prune": check_zoo_prune,
                "free_video_llm": check_free_video_llm, "vscan": check_vscan, "grt": check_grt}
