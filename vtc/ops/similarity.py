"""Cosine similarity and distances."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Row-normalise the last dimension.  x: [..., D] → [..., D]."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def cosine_matrix(a: Tensor, b: Tensor | None = None) -> Tensor:
    """Pairwise cosine similarity.  a: [..., n, D], b: [..., m, D] → [..., n, m]."""
    an = l2_normalize(a)
    bn = an if b is None else l2_normalize(b)
    return an @ bn.transpose(-1, -2)


#: |cos in bfloat16 − cos| for unit rows: each bf16 input is within 2⁻⁹ (relative), so a product sum is within
#: 2⁻⁸·Σ|xᵢyᵢ| ≤ 2⁻⁸; the bf16 result adds 2⁻⁹ and float32 accumulation D·2⁻²⁴ (D ≤ 16k) — 0.02 is ≥ 2.5× that
BF16_COS_BOUND = 0.02


def nearest_rows(x: Tensor, centers: Tensor, block: int = 4096, exact_below: int = 1 << 24) -> Tensor:
    """Index of the most cosine-similar center for every row (first on ties), as `(x̂ @ ĉᵀ).argmax(-1)` in float32.

    x: [L, D], centers: [K, D] (any scale) → [L] int64. Past `exact_below` products (L·K), rows are scored in
    bfloat16 first (several times faster on CPUs with bf16 units): a row whose best score leads the second by more
    than 2·BF16_COS_BOUND has that best center for certain; the other rows are scored again in float32."""
    cn = l2_normalize(centers.float())
    if x.shape[0] * cn.shape[0] <= exact_below or cn.shape[0] < 2:
        return torch.cat([(l2_normalize(rows.float()) @ cn.T).argmax(-1) for rows in x.split(block)])
    cb = cn.to(torch.bfloat16)
    out = []
    for rows in x.split(block):
        rn = l2_normalize(rows.float())
        top = (rn.to(torch.bfloat16) @ cb.T).topk(2, dim=-1)
        best = top.indices[:, 0].clone()
        unsure = torch.nonzero(top.values[:, 0].float() - top.values[:, 1].float() <= 2 * BF16_COS_BOUND).flatten()
        if unsure.numel():
            best[unsure] = (rn[unsure] @ cn.T).argmax(-1)
        out.append(best)
    return torch.cat(out)


def adjacent_cosine(x: Tensor, lag: int = 1) -> Tensor:
    """Position-wise cosine between frame t and t+lag.  x: [T, N, D] → [T-lag, N]."""
    xn = l2_normalize(x)
    return (xn[:-lag] * xn[lag:]).sum(-1) if x.shape[0] > lag else x.new_zeros(0, x.shape[1])


def pairwise_distance(x: Tensor) -> Tensor:
    """Scaled Euclidean distances d_ij = ‖x_i − x_j‖ / √D, with `torch.cdist`'s own formula.

    x: [..., n, D] → [..., n, n].  `torch.cdist` is used on purpose: the reference implementations use it, and
    for n > 25 it takes the ‖x‖² + ‖y‖² − 2x·y path, whose rounding decides near-duplicate distances.
    """
    return torch.cdist(x.float(), x.float()) / math.sqrt(x.shape[-1])
