"""Assignment and merge-by-assignment helpers.

Merges are expressed as weights on source rows, never as averaged tensors, so every method yields an exact
`Reduction` (provenance included).
"""

from __future__ import annotations

import torch
from torch import Tensor


def assign_nearest(sim: Tensor, *, largest: bool = True) -> Tensor:
    """Index of the best column for every row (first index on ties).  sim: [..., n, m] → [..., n]."""
    return sim.argmax(-1) if largest else sim.argmin(-1)


def mean_groups(assign: Tensor, num_groups: int) -> tuple[Tensor, Tensor]:
    """Plain-mean weights of members.  assign: [n] group id per member (-1 = none).

    Returns (weight [n] = 1/|group| for each member, count [num_groups]).
    """
    valid = assign >= 0
    count = torch.bincount(assign[valid], minlength=num_groups)
    w = torch.zeros(assign.shape, dtype=torch.float64)
    w[valid] = 1.0 / count[assign[valid]].double()
    return w, count


def blend_groups(
    assign: Tensor, anchors: Tensor, num_groups: int, beta: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """Blend each anchor with the mean of its assigned members: a_j·anchor_j + (1 − a_j)·mean(members_j).

    assign: [n] group per member; anchors: [num_groups] member index of each group's anchor;
    beta: [num_groups] or scalar anchor weight a_j. A group with no member keeps its anchor with weight 1.
    Returns (rows, cols, weights) triplets over member indices: row = group, col = member index.
    """
    w_mean, count = mean_groups(assign, num_groups)
    a = torch.as_tensor(beta, dtype=torch.float64).expand(num_groups).clone()
    a = torch.where(count > 0, a, torch.ones_like(a))
    members = torch.nonzero(assign >= 0).flatten()
    rows = torch.cat([torch.arange(num_groups), assign[members]])
    cols = torch.cat([anchors.long(), members])
    w = torch.cat([a, (1 - a[assign[members]]) * w_mean[members]])
    return rows, cols, w
