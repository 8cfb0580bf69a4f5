"""Connected components of a similarity graph: exact (vectorised label propagation) or the authors' union–find.

LLaVA-Scissor's reference read-out collects a component as the nodes whose *direct* parent is the root, not
whose root is; with union by rank and path halving a node can sit two levels down and is then lost. `reference`
mode reproduces that (and its node-sampling order from a seeded legacy numpy RNG); `exact` is the correct
read-out. Both return components ordered by the key "index of the member with the highest degree" (ties: lowest
index), ascending, as the authors sort them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


class UnionFind:
    """Union by rank with path halving (the reference implementation's variant)."""

    def __init__(self, size: int) -> None:
        self.parent = np.arange(size, dtype=np.int64)
        self.rank = np.zeros(size, dtype=np.int32)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = int(parent[x])
        return x

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx == ry:
            return
        if self.rank[rx] < self.rank[ry]:
            self.parent[rx] = ry
        else:
            self.parent[ry] = rx
            if self.rank[rx] == self.rank[ry]:
                self.rank[rx] += 1


def _label_propagation(adj: Tensor) -> Tensor:
    """Exact component labels (smallest member index) of a symmetric boolean adjacency [n, n]."""
    n = adj.shape[0]
    labels = torch.arange(n)
    big = torch.full((n, n), n, dtype=torch.long)
    while True:
        new = torch.where(adj, labels[None, :], big).min(1).values.minimum(labels)
        new = new[new]  # pointer jumping
        if torch.equal(new, labels):
            return labels
        labels = new


def _order(components: list[list[int]], degree: np.ndarray) -> list[list[int]]:
    def key(c: list[int]) -> int:
        best_deg, best = -1, math.inf
        for node in c:
            if degree[node] > best_deg or (degree[node] == best_deg and node < best):
                best_deg, best = int(degree[node]), node
        return int(best)

    return sorted(components, key=key)


def components(adj: Tensor, mode: str = "exact", epsilon: float = 0.05, seed: int = 0) -> list[list[int]]:
    """Components of the graph `adj` [n, n] (bool, symmetric, diagonal set), as sorted member lists.

    `reference`: sample min(n, ceil(ln n / ε²)) nodes (legacy numpy RNG seeded with `seed`), union each with its
    neighbours in that order, read components out by direct parent (may lose nodes), nodes not adjacent to any
    sampled node are singletons. `exact`: true connected components.
    """
    n = adj.shape[0]
    if n == 0:
        return []
    a = adj.cpu().numpy().astype(bool)
    degree = a.sum(1)
    if mode == "exact":
        labels = _label_propagation(adj.cpu().bool())
        groups: dict[int, list[int]] = {}
        for i, lab in enumerate(labels.tolist()):
            groups.setdefault(lab, []).append(i)
        return _order(list(groups.values()), degree)
    rng = np.random.RandomState(seed)
    size = min(n, int(np.ceil(np.log(n) / epsilon**2))) if n > 1 else 1
    sampled = rng.choice(n, size=size, replace=False)
    covered = np.zeros(n, dtype=bool)
    uf = UnionFind(n)
    for i in sampled:
        nbrs = np.nonzero(a[i])[0]
        covered[i] = True
        covered[nbrs] = True
        for j in nbrs:
            uf.union(int(i), int(j))
    roots = np.unique([uf.find(int(i)) for i in sampled])
    comps = [np.nonzero(uf.parent == r)[0].tolist() for r in roots]
    comps = [c for c in comps if c] + [[int(i)] for i in np.nonzero(~covered)[0]]
    return _order(comps, degree)
