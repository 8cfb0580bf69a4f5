"""FastVID (NeurIPS'25): DySeg temporal segmentation + STPrune (ATS salient tokens, density anchors, DTM merge).

Follows the authors' LLaVA-OneVision implementation (LunarShen/FastVID @ a40a109), the headline one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vtc.errors import UsageError
from vtc.methods.declare import implements
from vtc.ops import dpc_knn, topk_indices
from vtc.ops.merge import blend_group_means
from vtc.ops.similarity import l2_normalize
from vtc.reduction import Groups, Reduction
from vtc.signals import Signals
from vtc.stages import segment


@implements("fastvid")
def fastvid(
    x: Tensor,
    *,
    grid: tuple[int, int],
    ratio: float,
    signals: Signals,
    min_segments: int,
    tau: float,
    context_share: float,
    anchor_stride: int,
    beta: float,
    knn: int,
    segmenter: str,
) -> Reduction:
    """FastVID.  x: [T, N, D]; signals.attn [T, N]; signals.pooled [T, D'] (for DySeg).

    1. DySeg splits time into segments.
    2. Per frame: R = int(N·r), Nc = int(R·d) context tokens, Ns = R − Nc salient tokens (top attention, kept).
    3. The other N − Ns tokens are candidates; DPC-kNN scores them per frame.
    4. In a segment of L frames, G = ceil(L/p) anchor frames (the last, then every p-th backwards) each pick
       m = floor(Nc·L/G) top-score candidates; every candidate of the segment joins its most cosine-similar
       pick, and the pick becomes a·pick + (1 − a)·mean(group), a = max(1/(n+1), β) (= β in practice).
    5. Output sorted by flat index (time, then raster).

    A context row is stored as its pick (one entry) plus one `Groups` block, the group's mean: one weight and the
    list of the other members, so the map holds one index per candidate × anchor instead of a weighted entry.

    Deviations (the authors' code raises in these cases): T < c → fewer cuts (min(c−1, T−1)); Nc = 0 → no
    context tokens, non-salient tokens are dropped; m larger than the candidates → m is clamped; R = 0 → R = 1.
    Ties in the density score break by index instead of random jitter.
    """
    t, n, d = x.shape
    r = ratio
    attn = signals.require("attn", "fastvid").float()
    segments = segment(segmenter, x, signals, native="dyseg", min_segments=min_segments, tau=tau)
    if anchor_stride < 1:
        raise UsageError("fastvid: anchor_stride must be ≥ 1.")
    budget = max(1, int(n * r))
    n_ctx = int(budget * context_share)
    n_sal = min(budget - n_ctx, n)
    n_cand = n - n_sal

    salient = topk_indices(attn, n_sal)  # [T, Ns] ascending
    is_cand = torch.ones(t, n, dtype=torch.bool)
    is_cand.scatter_(1, salient, False)
    cand = torch.nonzero(is_cand)[:, 1].reshape(t, n_cand)  # [T, N−Ns] ascending patch index
    frame_off = (torch.arange(t) * n)[:, None]

    ctx_src: list[Tensor] = []  # per anchor frame: each pick's source (the row's representative, kept with weight)
    ctx_w: list[Tensor] = []  # the pick's whole weight in its row
    groups: list[Groups] = []  # the mean part of each row: one weight, the members of the pick's group
    if n_ctx > 0 and n_cand > 0:
        xc = torch.gather(x.float(), 1, cand[..., None].expand(t, n_cand, d))  # [T, N−Ns, D]
        # per-frame density scores, a few frames at a time (each holds [frames, N−Ns, N−Ns] distances)
        score = torch.cat([dpc_knn(xc[a : a + 8], knn).score for a in range(0, t, 8)])  # [T, N−Ns]
        for s, e in segments.tolist():
            length = e - s + 1
            groups_per_seg = math.ceil(length / anchor_stride)
            m = min(int(math.floor(n_ctx * length / groups_per_seg)), n_cand)
            if m <= 0:
                continue
            anchors = [s + j for j in range(length) if (length - 1 - j) % anchor_stride == 0]
            pool = l2_normalize(xc[s : e + 1].reshape(-1, d))  # every candidate of the segment, unit length
            pool_src = (cand[s : e + 1] + frame_off[s : e + 1]).reshape(-1)
            for f in anchors:
                pick = topk_indices(score[f], m, sort_index=False)  # candidate-local indices
                assign = (pool @ l2_normalize(xc[f, pick]).T).argmax(-1)  # [P] → most cosine-similar pick
                # the pick itself sits in the pool: pool row of pick j is (f − s)·(N−Ns) + pick[j]
                anchor_rows = (f - s) * n_cand + pick
                n_members = torch.bincount(assign, minlength=m).double()
                a = torch.maximum(1.0 / (n_members + 1), torch.tensor(beta, dtype=torch.float64))
                anchor_w, member_w, size, members = blend_group_means(assign, anchor_rows, m, a)
                row0 = sum(c.numel() for c in ctx_src)
                groups.append(Groups(torch.arange(m) + row0, member_w.float(), size, pool_src[members]))
                ctx_src.append(pool_src[anchor_rows])
                ctx_w.append(anchor_w)
    sal_src = (salient + frame_off).reshape(-1)
    n_ctx_out = sum(c.numel() for c in ctx_src)
    dst = [torch.arange(sal_src.numel()) + n_ctx_out, torch.arange(n_ctx_out)]
    src = [sal_src] + ctx_src
    w = [torch.ones(sal_src.numel(), dtype=torch.float64)] + ctx_w
    rep = torch.cat(ctx_src + [sal_src]) if ctx_src else sal_src
    red = Reduction.build(torch.cat(dst), torch.cat(src), torch.cat(w), rep, t * n, segments=segments,
                          groups=Groups.cat(groups) if groups else None)
    red.info.update(budget_per_frame=budget, salient_per_frame=n_sal, context_per_frame=n_ctx)
    return red.permute(torch.argsort(red.rep))
