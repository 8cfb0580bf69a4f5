"""Local outlier factor of scalar samples (scikit-learn's `LocalOutlierFactor(contamination="auto")` rule).

For each sample a: its k nearest other samples N(a) (|x_a − x_b|; k = min(n_neighbors, n − 1)); k-distance
kd(b) = distance of b to its k-th neighbour; reach(a, b) = max(kd(b), d(a, b)); lrd(a) = 1 / (mean reach(a, ·) +
1e-10); LOF(a) = mean over N(a) of lrd(b) / lrd(a). With contamination "auto" a sample is an outlier when
−LOF < −1.5. Equal distances are broken by index (scikit-learn's tree search leaves them to its traversal order).
"""

from __future__ import annotations

import torch
from torch import Tensor


def local_outlier_factor(values: Tensor, n_neighbors: int = 20) -> Tensor:
    """LOF of every sample.  values: [n] → [n] float64 (n ≥ 2)."""
    x = values.double().reshape(-1)
    n = x.numel()
    k = max(1, min(n_neighbors, n - 1))
    if n <= 2 * k + 1:  # small: every other sample is a candidate
        cand = torch.arange(n).expand(n, n)
    else:  # in 1-D the k nearest lie among the k sorted neighbours on either side: a window of 2k + 1
        perm = torch.sort(x, stable=True).indices
        rank = torch.empty(n, dtype=torch.long)
        rank[perm] = torch.arange(n)
        start = (rank - k).clamp(0, n - 2 * k - 1)
        cand = perm[start[:, None] + torch.arange(2 * k + 1)]
    cand = torch.sort(cand, dim=1).values  # candidates by index, so that stable sorting breaks ties by index
    dist = (x[:, None] - x[cand]).abs()
    dist[cand == torch.arange(n)[:, None]] = float("inf")  # a sample is not its own neighbour
    pick = torch.argsort(dist, dim=1, stable=True)[:, :k]
    order = torch.gather(cand, 1, pick)  # [n, k] nearest others, ties by index
    nd = torch.gather(dist, 1, pick)
    kdist = nd[:, -1]
    reach = torch.maximum(kdist[order], nd)
    lrd = 1.0 / (reach.mean(1) + 1e-10)
    return (lrd[order] / lrd[:, None]).mean(1)


def outlier_fraction(values: Tensor, n_neighbors: int = 20, offset: float = -1.5) -> float:
    """Share of samples that `LocalOutlierFactor(n_neighbors, contamination="auto").fit_predict` calls outliers
    (negative outlier factor below `offset`).  values: [n]; fewer than 2 samples: 0."""
    if values.numel() < 2:
        return 0.0
    return float((-local_outlier_factor(values, n_neighbors) < offset).double().mean())
