"""Recoverable Compression (AAAI'25): CLS-attention and text-similarity picks sized by LOF outliers, then the rest
recovered into attention-weighted cluster tokens.  Follows banjiuyufen/Recoverable-Compression @ d927594
(`llava/model/multimodal_encoder/clip_encoder.py`, `token_recycling_with_text_in_vision_and_clustring`), per frame.

Per frame, with a = the last block's single-head, full-width CLS attention (`last_cls_attn`) and s = the text
similarity of each patch (cosine of the query and the patch's projected token, `patch_embed`/`query_embed`,
times E^-½):
1. vision picks: the top int(N·ρ_v) of a, ρ_v = share of LOF(20) outliers among a;
2. text picks: s with the vision picks set to min(s); the top int((N − k_v)·ρ_t), ρ_t = LOF(20) share of it;
   kept = sort(vision ∪ text), raster order;
3. the rest R (ascending): centres = the top int(n_c·ρ_r) of a over R, ρ_r = LOF(10) share among R's a, in
   descending attention; each centre i becomes x_i + Σ a_j·x_j over its 32 best candidates j (the other rest
   tokens) by cos(key_i, key_j) + 50·s_j; one extra token Σ a_j·x_j over the non-centres; with no centre only the
   picks are output.

Without --query there are no text picks (k_t = 0) and the centre score is the key cosine alone.

The authors' code has two indexing slips, kept by `reference`: the centre count uses n_c = the feature width C
(a reused variable) instead of |R| (`centres=width`; vtc's default `rest`), and the keys of the rest are read at
their positions in the rest list instead of their own (`key_index=list`; vtc's default `own`). vtc also keeps a
frame's most-attended token where nothing stands out (`keep_one`; the authors' code empties the frame) and clamps
the 32 candidates and the centre count to what the rest holds (the authors' `topk` raises there). The authors' text
feature is the CLIP text tower's last padded position of the prompt's first line; vtc uses the query's embedding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vtc.methods.declare import implements
from vtc.ops.outliers import outlier_fraction
from vtc.ops.similarity import l2_normalize
from vtc.reduction import Reduction
from vtc.signals import Signals


def text_scores(patch_embed: Tensor, query: Tensor) -> Tensor:
    """The authors' text score: cos(text, patch) · E^-½.  patch_embed: [T, N, E], query: [E] → [T, N]."""
    return (l2_normalize(patch_embed.float()) @ l2_normalize(query.float().reshape(-1))) * patch_embed.shape[-1] ** -0.5


def cls_attention_full(q_cls: Tensor, keys: Tensor) -> Tensor:
    """One-head attention over the full width: softmax(q_cls · kᵀ · C^-½), CLS column dropped.
    q_cls: [T, C], keys: [T, N+1, C] → [T, N]."""
    logits = (keys.float() @ q_cls.float()[..., None])[..., 0] * q_cls.shape[-1] ** -0.5
    return logits.softmax(-1)[:, 1:]


def recoverable_frame(attn: Tensor, sim: Tensor | None, keys: Tensor, *, centres: str = "rest",
                      key_index: str = "own", knn: int = 32, text_weight: float = 50.0, lof_pick: int = 20,
                      lof_text: int = 20, lof_rest: int = 10) -> dict[str, Tensor]:
    """One frame's decisions.  attn: [N], sim: [N] or None, keys: [N+1, C] (row 0 = CLS).

    Returns `index_vision`, `index_text`, `index_all` (sorted, duplicates kept as the authors'), `centers`
    (original indices, descending attention) and `groups` [n_c, knn] (original indices of each centre's merged
    candidates), `rest` (ascending)."""
    n = attn.numel()
    width = keys.shape[-1]
    k_v = int(n * outlier_fraction(attn, lof_pick))
    index_vision = torch.topk(attn, k_v).indices
    if sim is not None:
        s = sim.clone()
        s[index_vision] = sim.min()
        k_t = int((n - k_v) * outlier_fraction(s, lof_text))
        index_text = torch.topk(s, k_t).indices
    else:
        index_text = index_vision.new_zeros(0)
    index_all = torch.cat([index_vision, index_text]).sort().values
    rest_mask = torch.ones(n, dtype=torch.bool)
    rest_mask[index_all] = False
    rest = torch.nonzero(rest_mask).flatten()
    a_rest = attn[rest]
    pool = width if centres == "width" else rest.numel()
    n_c = min(int(pool * outlier_fraction(a_rest, lof_rest)), rest.numel())
    pos = torch.topk(a_rest, n_c).indices  # positions in the rest list, descending attention
    k_rest = keys[1:][torch.arange(rest.numel())] if key_index == "list" else keys[1:][rest]
    kn = l2_normalize(k_rest.float())
    score = kn[pos] @ kn.T  # [n_c, |R|]
    if sim is not None:
        score = score + text_weight * sim[rest][None, :]
    score[torch.arange(n_c), pos] = -math.inf  # a centre is not its own candidate
    take = min(knn, rest.numel() - 1)
    groups = torch.topk(score, take, dim=1).indices if n_c else pos.new_zeros(0, take)
    return {"index_vision": index_vision, "index_text": index_text, "index_all": index_all,
            "centers": rest[pos], "groups": rest[groups], "rest": rest}


@implements("recoverable")
def recoverable(
    x: Tensor, *, grid: tuple[int, int], ratio: float | None, signals: Signals, centres: str,
    key_index: str, knn: int, text_weight: float, lof_pick: int, lof_text: int,
    lof_rest: int, keep_one: bool,
) -> Reduction:
    """Recoverable Compression.  x: [T, N, C]; per frame: picks (raster), centres (descending attention), one extra.
    The count follows the LOF outlier shares: --ratio is not used."""
    t, n, _ = x.shape
    attn = signals.require("last_cls_attn", "recoverable").float()
    keys = signals.require("last_keys", "recoverable")
    sim = None
    if signals.patch_embed is not None and signals.query_embed is not None:
        sim = text_scores(signals.patch_embed, signals.query_embed)
    groups: list[tuple[Tensor, Tensor, int]] = []
    counts = []
    for f in range(t):
        off = f * n
        d = recoverable_frame(attn[f], None if sim is None else sim[f], keys[f], centres=centres,
                              key_index=key_index, knn=knn, text_weight=text_weight, lof_pick=lof_pick,
                              lof_text=lof_text, lof_rest=lof_rest)
        one = torch.ones(1, dtype=torch.float64)
        picks = d["index_all"]
        if keep_one and picks.numel() == 0 and d["centers"].numel() == 0:
            picks = attn[f].argmax()[None]
        groups += [(i[None] + off, one, int(i) + off) for i in picks]
        a = attn[f].double()
        for c, g in zip(d["centers"], d["groups"], strict=True):
            groups.append((torch.cat([c[None], g]) + off, torch.cat([one, a[g]]), int(c) + off))
        if d["centers"].numel():
            others = d["rest"][~torch.isin(d["rest"], d["centers"])]
            if others.numel():
                groups.append((others + off, a[others], -1))
        counts.append(len(groups) - sum(counts))
    red = Reduction.from_groups(groups, t * n)
    red.info.update(tokens_per_frame=counts, text=sim is not None, budget_floor=len(groups))
    return red
