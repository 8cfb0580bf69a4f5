"""Zeroth-order sensitivity of a projector and sensitivity-weighted diverse selection (ZOO-Prune's two steps).

`projector_sensitivity` estimates, for every token x_i, s_i = mean_j ‖P(x_i + h·u_j) − P(x_i − h·u_j)‖ / (2h)
over m unit directions u_j (a Monte-Carlo estimate of ‖J_P(x_i)‖_F / √d). A linear P gives every token the same
value: the estimate only means something for a nonlinear projector (LLaVA's Linear–GELU–Linear).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vtc.ops.similarity import l2_normalize


def unit_directions(m: int, dim: int, seed: int = 0) -> Tensor:
    """m random directions [m, dim] (float32 normal draws from a generator seeded with `seed`, each divided by its
    norm + 1e-12 as the authors do)."""
    u = torch.randn(m, dim, generator=torch.Generator().manual_seed(seed))
    return normalize_directions(u)


def normalize_directions(u: Tensor) -> Tensor:
    """u / (‖u‖ + 1e-12) row-wise.  u: [..., m, dim]."""
    return u / (u.norm(dim=-1, keepdim=True) + 1e-12)


@torch.no_grad()
def projector_sensitivity(project: Callable[[Tensor], Tensor], x: Tensor, directions: Tensor, h: float = 0.01,
                          chunk: int = 64) -> Tensor:
    """Central-difference sensitivity of `project` at every row of x.  x: [M, d], directions: [m, d] unit rows
    → [M] float32 (tokens in chunks of `chunk`: memory O(chunk·m·d_out))."""
    out = []
    u = directions.to(x.device, x.dtype)
    for rows in x.split(chunk):
        plus = project(rows[:, None, :] + h * u[None])  # [c, m, d_out]
        minus = project(rows[:, None, :] - h * u[None])
        out.append(((plus - minus).float().norm(dim=-1) / (2 * h)).mean(-1))
    return torch.cat(out) if out else x.new_zeros(0)


def sensitivity_weights(s: Tensor, guard: bool = True) -> Tensor:
    """w = (s − min) / (max − min + 1e-8); with `guard`, all ones when max == min (LLaVA-1.5's path; the NeXT path
    has no guard).  s: [N] → [N]."""
    lo, hi = s.min(), s.max()
    if guard and bool(hi == lo):
        return torch.ones_like(s)
    return (s - lo) / (hi - lo + 1e-8)


def weighted_diverse_order(x: Tensor, w: Tensor, k: int) -> Tensor:
    """Greedy sensitivity-weighted diversity.  x: [N, D], w: [N] → selection order [k] (frame-local indices).

    First the most sensitive token (argmax w, first on ties); then each step the token maximising
    (min cosine distance 1 − cos to the picked set) · w, picked tokens excluded, first index on ties."""
    n = x.shape[0]
    k = max(0, min(k, n))
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    xn = l2_normalize(x.float())
    w = w.float()
    order = [int(torch.argmax(w))]
    sim = xn @ xn.T if k > 8 else None  # one product for all steps when there are many (N² memory: per frame)
    min_dist = 1 - (sim[order[0]] if sim is not None else xn @ xn[order[0]])
    picked = torch.zeros(n, dtype=torch.bool)
    picked[order[0]] = True
    low = torch.tensor(-torch.inf)
    while len(order) < k:
        j = int(torch.argmax(torch.where(picked, low, min_dist * w)))
        order.append(j)
        picked[j] = True
        min_dist = torch.minimum(min_dist, 1 - (sim[j] if sim is not None else xn @ xn[j]))
    return torch.tensor(order, dtype=torch.long)
