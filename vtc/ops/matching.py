"""Bipartite soft matching with plain-mean merging (ToMe's matching, AIM's merge rule), tracked as weights.

ToMe itself merges with size-weighted means; AIM's `bipartite_soft_matching_merge` uses
`scatter_reduce(mode="mean", include_self=True)`: a B token becomes the plain mean of its current value and the
current values of the A tokens merged into it, however many patches each already stands for.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.ops.similarity import l2_normalize


def mean_matching_round(values: Tensor, weights: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """One round over a batch of token sets.  values: [B, n, D] float32 (also the metric), weights: [B, n, S]
    float64 rows over S sources (values = weights @ sources) → (values [B, n − r, D], weights [B, n − r, S]).

    r = min(r, n // 2); r ≤ 0 leaves the sets unchanged. A = even slots, B = odd slots; each A token's most
    cosine-similar B token; A sorted by that score, descending; the first r merge into their B partners (plain
    mean); output order [unmerged A (descending score), B (original order)].
    """
    b, n, d = values.shape
    r = min(r, n // 2)
    if r <= 0:
        return values, weights
    metric = l2_normalize(values)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(-1, -2)
    node_max, node_idx = scores.max(-1)
    edge = node_max.argsort(dim=-1, descending=True)
    unm, src = edge[:, r:], edge[:, :r]
    dst = torch.gather(node_idx, 1, src)

    nb = n // 2
    count = torch.ones(b, nb).scatter_add_(1, dst, torch.ones(b, r))  # each B token and the A tokens it takes

    def merge(v: Tensor) -> Tensor:  # scatter_reduce(mean, include_self) as a sum and a count (much faster on CPU)
        a, bb = v[:, ::2], v[:, 1::2]
        c = v.shape[-1]
        kept = torch.gather(a, 1, unm[..., None].expand(b, unm.shape[1], c))
        moved = torch.gather(a, 1, src[..., None].expand(b, r, c))
        bb = bb.scatter_add(1, dst[..., None].expand(b, r, c), moved) / count.to(v.dtype)[..., None]
        return torch.cat([kept, bb], 1)

    return merge(values), merge(weights)
