"""DivPrune (CVPR'25): max–min diversity selection.  Follows vbdi/divprune @ 799e2d9."""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.methods.declare import implements
from vtc.ops import max_min_diversity
from vtc.ops.topk import py_round
from vtc.reduction import Reduction
from vtc.signals import Signals


@implements("divprune")
def divprune(
    x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, mode: str
) -> Reduction:
    """DivPrune.  x: [T, N, D]; K = round(ratio·L) (half to even), L = T·N (joint) or N per frame.

    Kept tokens come out in original (frame, row, col) order; the greedy order is in `info["selection_order"]`.
    """
    t, n, d = x.shape
    r = ratio
    if mode == "joint":
        # the same patch one frame on, and the next patch in the row, are likely near: hints for the first pick
        order = max_min_diversity(x.reshape(t * n, d), max(1, py_round(r * t * n)), neighbours=(n, 1))
    else:
        k = max(1, py_round(r * n))
        order = torch.cat([max_min_diversity(x[f], k, neighbours=(1, grid[1])) + f * n for f in range(t)])
    red = Reduction.select(order.sort().values, t * n)
    red.info["selection_order"] = order.tolist() if order.numel() <= 4096 else "omitted (long)"
    return red
