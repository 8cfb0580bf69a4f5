"""HoliTom (NeurIPS'25), outer-LLM part: DP temporal windows, static tokens merged over time then clustered,
dynamic tokens kept by attention.  Follows cokeshao/HoliTom @ e9b2972.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vtc.methods.declare import implements
from vtc.ops import adjacent_cosine, cosine_matrix, dpc_knn, topk_indices
from vtc.ops.merge import blend_groups, mean_groups
from vtc.reduction import Reduction
from vtc.signals import Signals
from vtc.stages import segment


@implements("holitom")
def holitom(
    x: Tensor,
    *,
    grid: tuple[int, int],
    ratio: float,
    signals: Signals,
    tau: float,
    beta: float,
    knn: int,
    contextual_share: float,
    max_window_size: int,
    no_beta: bool,
    segmenter: str,
) -> Reduction:
    """HoliTom (outer stage).  x: [T, N, D]; signals.attn [T, N] (attention each patch receives).

    1. c[t, n] = cos(x[t, n], x[t+1, n]); windows by dynamic programming over static savings (`holitom_windows`).
    2. r' = min(r / ((T·N − saved) / (T·N)), 1).
    3. Per window [s, e]: static positions P (c > τ throughout) become their time mean; m = round(|P|·r')
       DPC-kNN centers (k = min(K, m)), sorted by position; every other static token joins the nearest center
       (Euclidean); a center with members becomes β·center + (1 − β)·mean(members).
    4. Dynamic tokens: per frame the round(ceil(|dyn|·r')·(1 − D)) most-attended are kept unchanged.
    5. Order: windows in time; in a window its static tokens, then each frame's dynamic tokens (raster).

    Deviation: with D > 0 the authors' code crashes; vtc merges each frame's remaining dynamic tokens into
    the other ceil(|dyn|·r') − kept tokens around strided anchors (plain mean, cosine assignment).
    """
    t, n, d = x.shape
    r = ratio
    attn = signals.require("attn", "holitom").float()
    sim = adjacent_cosine(x.float())  # [T-1, N]
    segments = segment(segmenter, x, signals, native="holitom", tau=tau, max_window_size=max_window_size)
    saved = 0
    for s, e in segments.tolist():
        if e > s:
            saved += int((sim[s:e] > tau).all(0).sum()) * (e - s)
    total = t * n
    r_eff = min(r / ((total - saved) / total), 1.0)

    groups: list[tuple[Tensor, Tensor, int]] = []
    for s, e in segments.tolist():
        length = e - s + 1
        static = (sim[s:e] > tau).all(0) if length > 1 else torch.zeros(n, dtype=torch.bool)
        pos = torch.nonzero(static).flatten()
        frames = torch.arange(s, e + 1)
        if pos.numel() > 0:
            m = round(pos.numel() * r_eff)
            if m > 0:
                xs = x[s : e + 1, pos].float().mean(0)  # [|P|, D]
                peaks = dpc_knn(xs, min(knn, m))
                centers = topk_indices(peaks.score, m)  # ascending position
                member = torch.ones(pos.numel(), dtype=torch.bool)
                member[centers] = False
                assign = torch.full((pos.numel(),), -1, dtype=torch.long)
                assign[member] = peaks.distance[member][:, centers].argmin(-1)
                if no_beta:  # plain mean over center and members
                    assign[centers] = torch.arange(m)
                    w, _ = mean_groups(assign, m)
                    rows, cols = assign, torch.arange(pos.numel())
                else:
                    rows, cols, w = blend_groups(assign, centers, m, beta)
                for j in range(m):
                    sel = rows == j
                    src = (frames[:, None] * n + pos[cols[sel]][None]).reshape(-1)
                    wj = (w[sel][None].expand(length, -1) / length).reshape(-1)
                    groups.append((src, wj, s * n + int(pos[centers[j]])))
        dyn = torch.nonzero(~static).flatten()
        k_total = math.ceil(dyn.numel() * r_eff)
        k_keep = round(k_total * (1 - contextual_share))
        for f in range(s, e + 1):
            keep = dyn[topk_indices(attn[f, dyn], k_keep)]
            for p in keep.tolist():
                groups.append((torch.tensor([f * n + p]), torch.ones(1), f * n + p))
            n_ctx = k_total - keep.numel()
            if n_ctx > 0:
                groups.extend(_contextual(x[f], dyn, keep, n_ctx, f * n))
    red = Reduction.from_groups(groups, t * n, segments=segments)
    red.info.update(effective_ratio=r_eff, temporal_savings=saved,
                    order="window, then static tokens (by position) before each frame's dynamic tokens")
    return red


def _contextual(xf: Tensor, dyn: Tensor, keep: Tensor, n_ctx: int, off: int) -> list[tuple[Tensor, Tensor, int]]:
    """Merge a frame's non-kept dynamic tokens around `n_ctx` strided anchors (plain means, cosine assignment)."""
    rest = dyn[~torch.isin(dyn, keep)]
    if rest.numel() == 0:
        return []
    n_ctx = min(n_ctx, rest.numel())
    step = max(1, rest.numel() // n_ctx)
    anchors = torch.arange(0, step * n_ctx, step)[:n_ctx]
    assign = cosine_matrix(xf[rest].float(), xf[rest[anchors]].float()).argmax(-1)
    assign[anchors] = torch.arange(n_ctx)
    w, _ = mean_groups(assign, n_ctx)
    return [(off + rest[assign == j], w[assign == j], off + int(rest[anchors[j]])) for j in range(n_ctx)]
