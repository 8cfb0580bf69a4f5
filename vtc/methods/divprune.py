"""DivPrune (CVPR'25): max–min diversity selection.  Follows vbdi/divprune @ 799e2d9."""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.methods.registry import Param, register
from vtc.ops import l2_normalize
from vtc.ops.topk import py_round
from vtc.reduction import Reduction
from vtc.signals import Signals

_CHUNK = 4096
_FULL = 25000  # L×L float32 up to ~2.5 GB: one matmul, then cheap greedy steps


def max_min_diversity(x: Tensor, k: int) -> Tensor:
    """Greedy farthest-point selection under cosine distance 1 − cos.  x: [L, D] → selection order [k].

    Step 0 picks the token whose nearest other token is farthest (the second-smallest distance of its row, the
    smallest being itself); then each step picks the token farthest from the selected set (first index on ties),
    keeping a running minimum distance (the same result as the authors' recomputed min over the selected rows).
    Up to _FULL tokens the L×L distances are computed once; beyond, in row chunks (memory O(L·chunk)).
    """
    xn = l2_normalize(x.float())
    length = xn.shape[0]
    k = max(1, min(k, length))
    full = 1 - xn @ xn.T if length <= _FULL else None
    second = torch.empty(length, device=xn.device)
    for s in range(0, length, _CHUNK):
        block = full[s : s + _CHUNK] if full is not None else 1 - xn[s : s + _CHUNK] @ xn.T
        second[s : s + _CHUNK] = torch.topk(block, min(2, length), dim=1, largest=False).values[:, -1]
    order = [int(torch.argmax(second))]

    def row(i: int) -> Tensor:
        return full[i] if full is not None else 1 - xn @ xn[i]

    min_dist = row(order[0]).clone()
    for _ in range(1, k):
        j = int(torch.argmax(min_dist))
        order.append(j)
        min_dist = torch.minimum(min_dist, row(j))
    return torch.tensor(order, dtype=torch.long)


@register(
    "divprune",
    summary="DivPrune: keep the most diverse tokens (greedy max–min cosine distance), jointly or per frame",
    paper="Alvar et al., DivPrune: Diversity-based Visual Token Pruning for LMMs, CVPR 2025",
    params=[Param("mode", "joint", "joint: one selection over the clip (authors); per_frame: per frame", "mode",
                  choices=("joint", "per_frame"))],
)
def divprune(
    x: Tensor, *, grid: tuple[int, int], ratio: float | None, signals: Signals, mode: str = "joint"
) -> Reduction:
    """DivPrune.  x: [T, N, D]; K = round(ratio·L) (half to even), L = T·N (joint) or N per frame.

    Kept tokens come out in original (frame, row, col) order; the greedy order is in `info["selection_order"]`.
    """
    t, n, d = x.shape
    r = 0.098 if ratio is None else ratio
    if mode == "joint":
        order = max_min_diversity(x.reshape(t * n, d), max(1, py_round(r * t * n)))
    else:
        k = max(1, py_round(r * n))
        order = torch.cat([max_min_diversity(x[f], k) + f * n for f in range(t)])
    red = Reduction.select(order.sort().values, t * n)
    red.info["selection_order"] = order.tolist() if order.numel() <= 4096 else "omitted (long)"
    return red
