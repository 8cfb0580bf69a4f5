"""DPC-kNN: density-peak clustering scores (FastVID, HoliTom, PruneVid)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from vtc.ops.similarity import pairwise_distance


class DensityPeaks(NamedTuple):
    """Result of `dpc_knn`: score [B, n] (δ·ρ), density [B, n], distance [B, n, n]."""

    score: Tensor
    density: Tensor
    distance: Tensor


def dpc_knn(x: Tensor, k: int) -> DensityPeaks:
    """Density-peak scores of every point, batched.

    x: [B, n, D] (or [n, D]).  Returns score/density [B, n] and the distance matrix [B, n, n].

    1. d_ij = ‖x_i − x_j‖₂ / √D (`torch.cdist`);
    2. ρ_i = exp(−mean of the k smallest d_ij²), self included;
    3. δ_i = min d_ij over the points j denser than i; the densest point gets the largest distance of the matrix;
    4. score_i = δ_i · ρ_i.

    Deviation from the authors: they add U(0,1)·1e-6 from the global RNG to ρ to break ties. vtc breaks ties
    deterministically instead: among equal densities the lower index counts as denser. No golden case depends on it.
    """
    squeeze = x.dim() == 2
    if squeeze:
        x = x[None]
    b, n, _ = x.shape
    dist = pairwise_distance(x)
    k = max(1, min(k, n))
    knn = torch.topk(dist, k, dim=-1, largest=False).values
    density = torch.exp(-(knn**2).mean(-1))
    idx = torch.arange(n, device=x.device)
    denser = (density[:, None, :] > density[:, :, None]) | (
        (density[:, None, :] == density[:, :, None]) & (idx[None, :] < idx[:, None])[None]
    )  # [B, i, j]: j is denser than i
    big = dist.flatten(1).max(-1).values if n > 0 else dist.new_zeros(b)
    masked = torch.where(denser, dist, torch.full_like(dist, float("inf")))
    delta = masked.min(-1).values
    delta = torch.where(torch.isinf(delta), big[:, None].expand_as(delta), delta)
    score = delta * density
    if squeeze:
        return DensityPeaks(score[0], density[0], dist[0])
    return DensityPeaks(score, density, dist)
