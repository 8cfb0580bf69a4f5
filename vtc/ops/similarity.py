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
