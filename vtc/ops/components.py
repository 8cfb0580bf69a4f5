"""Connected components of similarity graphs: exact (vectorised label propagation) or the authors' union–find.

LLaVA-Scissor's reference read-out collects a component as the nodes whose *direct* parent is the root, not
whose root is; with union by rank and path halving a node can sit two levels down and is then lost. `reference`
mode reproduces that (and its node-sampling order, from a seeded legacy numpy RNG); `exact` is the correct
read-out. Components are numbered by the authors' sort key: the index of the member with the highest degree
(ties: lowest index), ascending.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vtc.ops.similarity import BF16_COS_BOUND

_CHUNK = 2048


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


def propagate_labels(adj: Tensor) -> Tensor:
    """Exact component labels (smallest member index), batched.  adj: [B, n, n] bool symmetric → [B, n]."""
    b, n, _ = adj.shape
    labels = torch.arange(n).expand(b, n).clone()
    while True:
        new = torch.empty_like(labels)
        for s in range(0, n, _CHUNK):  # rows in chunks: memory O(B·chunk·n)
            blk = adj[:, s : s + _CHUNK]
            new[:, s : s + _CHUNK] = torch.where(blk, labels[:, None, :], n).amin(-1)
        new = torch.minimum(new, labels)
        for _ in range(4):  # pointer jumping
            new = torch.gather(new, 1, new)
        if torch.equal(new, labels):
            return labels
        labels = new


def bfs_labels(adj: Tensor) -> Tensor:
    """Exact component labels (smallest member index) of one graph [n, n] by frontier expansion: each step ORs
    the adjacency rows of the frontier. Fast for the large, dense graphs of LLaVA-Scissor's temporal step."""
    n = adj.shape[0]
    labels = torch.full((n,), -1, dtype=torch.long)
    unvisited = torch.ones(n, dtype=torch.bool)
    while bool(unvisited.any()):
        start = int(torch.nonzero(unvisited)[0])
        comp = torch.zeros(n, dtype=torch.bool)
        comp[start] = True
        frontier = comp.clone()
        while bool(frontier.any()):
            reach = adj[frontier].any(0)
            frontier = reach & ~comp
            comp |= reach
        labels[comp] = start
        unvisited &= ~comp
    return labels


def edge_labels(adj: Tensor) -> Tensor:
    """Exact component labels (smallest member index) of one sparse graph [n, n] from its edge list."""
    src, dst = torch.nonzero(torch.triu(adj, diagonal=1), as_tuple=True)
    return hook_labels(adj.shape[0], src, dst)


def order_ids(labels: Tensor, degree: Tensor) -> Tensor:
    """Renumber component labels [B, n] (any ids, -1 = none) 0..C−1 by the authors' key (see module doc)."""
    b, n = labels.shape
    out = torch.full_like(labels, -1)
    idx = torch.arange(n)
    for i in range(b):
        lab = labels[i]
        valid = lab >= 0
        uniq, inv = torch.unique(lab[valid], return_inverse=True)
        score = degree[i][valid].long() * (n + 1) + (n - idx[valid])  # highest degree, then lowest index
        best = torch.full((uniq.numel(),), -1, dtype=torch.long).scatter_reduce(0, inv, score, "amax")
        key = n - best % (n + 1)
        rank = torch.empty_like(key)
        rank[torch.argsort(key, stable=True)] = torch.arange(key.numel())
        out[i, valid] = rank[inv]
    return out


def component_ids(adj: Tensor, mode: str = "exact", epsilon: float = 0.05, seed: int = 0) -> Tensor:
    """Component id of every node (0..C−1 in the authors' order; -1 = lost by the reference read-out).

    adj: [n, n] or [B, n, n] boolean, symmetric, diagonal set → [n] or [B, n].
    `reference`: sample min(n, ceil(ln n / ε²)) nodes (legacy numpy RNG seeded with `seed`), union each with its
    neighbours in that order, read components out by direct parent; nodes next to no sampled node are singletons.
    """
    squeeze = adj.dim() == 2
    a = adj[None] if squeeze else adj
    a = a.bool().cpu()
    degree = torch.count_nonzero(a, dim=-1)
    if mode == "exact":
        if a.shape[0] == 1 and a.shape[1] > 512:  # one large graph: edge list when sparse, BFS when dense
            dense = float(degree.float().mean()) > 0.05 * a.shape[1]
            labels = (bfs_labels(a[0]) if dense else edge_labels(a[0]))[None]
        else:
            labels = propagate_labels(a)
        ids = order_ids(labels, degree)
    else:
        ids = torch.stack([_reference_labels(m.numpy(), epsilon, seed) for m in a])
        ids = order_ids(ids, degree)
    return ids[0] if squeeze else ids


def _reference_labels(a: np.ndarray, epsilon: float, seed: int) -> Tensor:
    n = a.shape[0]
    labels = torch.full((n,), -1, dtype=torch.long)
    if n == 0:
        return labels
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
    for r in np.unique([uf.find(int(i)) for i in sampled]):
        labels[torch.from_numpy(np.nonzero(uf.parent == r)[0])] = int(r)  # the authors' direct-parent read-out
    single = np.nonzero(~covered)[0]
    labels[torch.from_numpy(single)] = torch.from_numpy(single) + n  # singletons, ids beyond the roots
    return labels


def hook_labels(n: int, src: Tensor, dst: Tensor) -> Tensor:
    """Exact component labels (smallest member index) of n nodes joined by the edges (src[e], dst[e]): min-label
    hooking plus pointer jumping, vectorised; a few passes however many components there are."""
    labels = torch.arange(n)
    while True:
        low = torch.minimum(labels[src], labels[dst])
        new = labels.scatter_reduce(0, src, low, "amin").scatter_reduce(0, dst, low, "amin")
        new = new.scatter_reduce(0, labels, new, "amin")  # hook roots too
        while True:  # pointer jumping to the root
            nxt = new[new]
            if torch.equal(nxt, new):
                break
            new = nxt
        if torch.equal(new, labels):
            return labels
        labels = new


class SimilarityGraph:
    """The graph cos(x_i, x_j) > τ over unit rows x [M, D] for any τ ≥ `floor`, without an M×M matrix.

    The floor is the lowest similarity for which about cap / 4 pairs are expected above it (from a sample of rows),
    or `floor` if higher. One blocked bfloat16 pass keeps every pair i < j that may lie above it (within the
    product's rounding bound); if more than `cap` do after all, the floor is raised to keep the most similar.
    A query at τ ≥ floor decides the pairs far from τ by their bfloat16 value and computes the few within the
    bound in float32 (cached); below the floor it falls back to blocked label propagation (exact, one float32
    product pass per round).
    """

    # |bf16 cos − cos| for unit vectors (see BF16_COS_BOUND), plus 2⁻⁹ for the threshold's own rounding
    BOUND = BF16_COS_BOUND

    def __init__(self, xn: Tensor, floor: float = -1.0, cap: int = 4_000_000, block: int = 1024) -> None:
        self.xn, self.block = xn, block
        m = xn.shape[0]
        floor = max(floor, self._sampled_floor(xn, cap // 4))
        low = xn.to(torch.bfloat16)
        src, dst, val = [], [], []
        kept = 0
        # one buffer for every block's products and one for its mask: fresh pages for each block would cost more
        # page faults than the products themselves take
        space = torch.empty(min(block, m) * m, dtype=torch.bfloat16)
        marks = torch.empty(min(block, m) * m, dtype=torch.bool)
        lower = ~torch.ones(block, block, dtype=torch.bool).triu(1)
        for s in range(0, m, block):
            b = min(block, m - s)
            rough = torch.matmul(low[s : s + b], low[s:].T, out=space[: b * (m - s)].view(b, m - s))
            rough[:, :b].masked_fill_(lower[:b, :b], -2.0)  # [b, M − s]: pairs i < j only (upper triangle)
            mask = torch.gt(rough, floor - self.BOUND, out=marks[: b * (m - s)].view(b, m - s))  # in bfloat16
            i, j = torch.nonzero(mask, as_tuple=True)
            src.append(i + s)
            dst.append(j + s)
            val.append(rough[i, j].float())
            kept += i.numel()
            if kept > cap:  # more pairs than the sample promised: keep the `cap` most similar
                v = torch.cat(val)
                floor = float(torch.kthvalue(v, v.numel() - cap + 1).values) + self.BOUND
                mask = v > floor - self.BOUND
                src, dst, val = [torch.cat(src)[mask]], [torch.cat(dst)[mask]], [v[mask]]
                kept = int(mask.sum())
        self.floor = floor
        self.src, self.dst, self.rough = torch.cat(src), torch.cat(dst), torch.cat(val)
        self.exact = torch.full_like(self.rough, float("nan"))  # float32 cos, filled on demand

    @staticmethod
    def _sampled_floor(xn: Tensor, pairs: int, rows: int = 256) -> float:
        """The similarity above which about `pairs` pairs lie, estimated from `rows` evenly spread rows."""
        m = xn.shape[0]
        if m * (m - 1) // 2 <= pairs:
            return -1.0
        pick = torch.linspace(0, m - 1, min(rows, m)).round().long().unique()
        sims = (xn[pick] @ xn.T).flatten()
        k = int(pairs * 2 * pick.numel() / m) + pick.numel()  # + the rows' own entries (cos 1)
        if k >= sims.numel():
            return -1.0
        return float(torch.topk(sims, k).values[-1])

    def above(self, tau: float) -> Tensor:
        """Mask over the stored pairs: cos > τ (τ ≥ floor)."""
        near = torch.nonzero((self.rough - tau).abs() <= self.BOUND).flatten()
        todo = near[torch.isnan(self.exact[near])]
        for part in todo.split(65536):
            self.exact[part] = (self.xn[self.src[part]] * self.xn[self.dst[part]]).sum(1)
        keep = self.rough > tau
        keep[near] = self.exact[near] > tau
        return keep

    def components(self, tau: float) -> tuple[Tensor, Tensor]:
        """(labels [M] — smallest member index, degree [M] — neighbours with cos > τ, itself included)."""
        m = self.xn.shape[0]
        if tau >= self.floor:
            keep = self.above(tau)
            src, dst = self.src[keep], self.dst[keep]
            degree = 1 + torch.bincount(src, minlength=m) + torch.bincount(dst, minlength=m)
            return hook_labels(m, src, dst), degree
        return self._propagate(tau)

    def _propagate(self, tau: float) -> tuple[Tensor, Tensor]:
        m, xn = self.xn.shape[0], self.xn
        labels = torch.arange(m)
        degree = torch.zeros(m, dtype=torch.long)
        first = True
        while True:
            new = torch.empty_like(labels)
            for s in range(0, m, self.block):
                adj = xn[s : s + self.block] @ xn.T > tau
                adj[torch.arange(adj.shape[0]), torch.arange(s, s + adj.shape[0])] = True
                if first:
                    degree[s : s + self.block] = adj.sum(1)
                new[s : s + self.block] = torch.where(adj, labels[None, :], m).amin(1)
            first = False
            new = torch.minimum(new, labels)
            new = new.scatter_reduce(0, labels, new, "amin")
            while not torch.equal(nxt := new[new], new):
                new = nxt
            if torch.equal(new, labels):
                return labels, degree
            labels = new
