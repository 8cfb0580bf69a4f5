"""FrameFusion (ICCV'25), the pre-LLM merge step: fold each token into the same position of the previous frame
when they are similar enough.  Follows thu-nics/FrameFusion @ fbec1d2 (layer-0 call of `FrameFusion.forward`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.methods.declare import implements
from vtc.ops import adjacent_cosine
from vtc.reduction import Reduction
from vtc.signals import Signals


@implements("framefusion")
def framefusion(
    x: Tensor,
    *,
    grid: tuple[int, int],
    ratio: float | None,
    signals: Signals,
    similarity_threshold: float | None,
    cost: float,
) -> Reduction:
    """FrameFusion layer-0 merge.  x: [T, N, D].

    sim[t, n] = cos(x[t, n], x[t−1, n]) (frame 0: −2). Candidates: sim ≥ S_th; when they exceed a share
    1 − cost of all tokens, only the int((1 − cost)·T·N) most similar merge. Each run of consecutive candidates
    at a position folds into the token before it (the chain start): the plain mean of the chain.
    With --ratio and no S_th, the round((1 − ratio)·T·N) most similar tokens merge (the threshold that meets
    the ratio; frame 0 cannot merge, so the ratio cannot go below 1/T). Kept tokens stay in original order.
    """
    t, n, _ = x.shape
    sim = torch.full((t, n), -2.0)
    if t > 1:
        sim[1:] = adjacent_cosine(x.float())
    flat = sim.reshape(-1)
    total = t * n
    if similarity_threshold is None and ratio is not None:
        n_merge = min(total - n, max(0, round((1 - ratio) * total)))
        cand = torch.zeros(total, dtype=torch.bool)
        cand[torch.topk(flat, n_merge).indices] = True
    else:
        s_th = 0.6 if similarity_threshold is None else similarity_threshold
        cand = flat >= s_th
        cap = 1 - cost
        if int(cand.sum()) / total >= cap:
            cand = torch.zeros(total, dtype=torch.bool)
            cand[torch.topk(flat, int(cap * total)).indices] = True
    cand = cand.reshape(t, n)
    # chain start of every token: itself if not a candidate, else the chain start of the previous frame
    start = torch.arange(total).reshape(t, n)
    for f in range(1, t):
        start[f] = torch.where(cand[f], start[f - 1], start[f])
    kept = torch.nonzero(~cand.reshape(-1)).flatten()  # chain starts, original order
    row_of = torch.full((total,), -1, dtype=torch.long)
    row_of[kept] = torch.arange(kept.numel())
    dst = row_of[start.reshape(-1)]
    count = torch.bincount(dst, minlength=kept.numel()).double()
    red = Reduction.build(dst, torch.arange(total), 1.0 / count[dst], kept, total)
    red.info.update(merged_fraction=float(cand.sum()) / total, budget_floor=n)
    return red
