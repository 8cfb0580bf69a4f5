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


def blend_group_means(
    assign: Tensor, anchors: Tensor, num_groups: int, beta: Tensor | float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`blend_groups` in group form: the same weights, with each group's members listed once instead of one
    (row, col, weight) triple each (what `vtc.reduction.Groups` stores).

    assign: [n] group per member (-1 = none); anchors: [num_groups] member index of each group's anchor;
    beta: [num_groups] or scalar anchor weight a_j.  Returns
    - anchor_w [num_groups] float64: the anchor's whole weight in its row, a_j plus its share of the mean
      (1 − a_j)/|group j| when it is a member of its own group (1 for a group without members);
    - member_w [num_groups] float64: (1 − a_j)/|group j|, the weight of every other member (0 for an empty group);
    - size [num_groups] int64: members of each group other than its anchor;
    - members [Σ size] int64: those members, group after group, ascending within a group.
    """
    _, count = mean_groups(assign, num_groups)
    a = torch.as_tensor(beta, dtype=torch.float64).expand(num_groups).clone()
    a = torch.where(count > 0, a, torch.ones_like(a))
    member_w = torch.where(count > 0, (1 - a) * (1.0 / count.double()), torch.zeros_like(a))
    anchors = anchors.long()
    own = torch.zeros(num_groups, dtype=torch.bool)
    valid = (anchors >= 0) & (anchors < assign.numel())
    own[valid] = assign[anchors[valid]] == torch.arange(num_groups)[valid]
    anchor_w = torch.where(own, a + member_w, a)
    keep = assign >= 0
    keep[anchors[own]] = False  # an anchor inside its own group is counted in its anchor weight
    members = torch.nonzero(keep).flatten()
    members = members[torch.argsort(assign[members], stable=True)]
    size = count - own.long()
    return anchor_w, member_w, size, members
