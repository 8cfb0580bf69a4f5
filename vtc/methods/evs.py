"""EVS (Efficient Video Sampling, NVIDIA), post-encoder: drop tokens that repeat the same cell of the previous
frame.  Follows the public rule in vLLM's `compute_retention_mask` (ported to SGLang).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vtc.methods.declare import implements
from vtc.reduction import Reduction
from vtc.signals import Signals


def evs_scores(x: Tensor) -> Tensor:
    """Dissimilarity 1 − cos(x[t, n], x[t−1, n]) for t ≥ 1, 255 for frame 0.  x: [T, N, D] → [T, N]."""
    xn = torch.nn.functional.normalize(x.float(), dim=-1)
    score = torch.full(x.shape[:2], 255.0)
    if x.shape[0] > 1:
        score[1:] = 1 - torch.nn.functional.cosine_similarity(xn[1:], xn[:-1], dim=-1)
    return score


@implements("evs")
def evs(
    x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, q: float | None
) -> Reduction:
    """EVS.  x: [T, N, D].  The global top R = max(N, ⌊T·N·(1 − q)⌋) tokens by dissimilarity (stable sort, frame 0
    first with its sentinel score) are kept, in original (frame, row, col) order."""
    t, n, _ = x.shape
    if q is None:
        q = 1.0 - ratio
    keep_count = max(n, math.floor(t * n * (1 - q)))
    score = evs_scores(x).reshape(-1)
    order = torch.argsort(score, descending=True, stable=True)[:keep_count]
    red = Reduction.select(order.sort().values, t * n)
    red.info.update(q=q, budget_floor=n)
    return red
