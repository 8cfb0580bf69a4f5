"""Greedy max–min (farthest-point) diversity selection under cosine distance (DivPrune's core)."""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.ops.similarity import l2_normalize

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
