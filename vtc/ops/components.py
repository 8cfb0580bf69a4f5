"""Connected components of similarity graphs: exact (vectorised label propagation) or the authors' union–find.

LLaVA-Scissor's reference read-out collects a component as the nodes whose *direct* parent is the root, not
whose root is; with union by rank and path halving a node can sit two levels down and is then lost. `reference`
mode reproduces that (and its node-sampling order, from a seeded legacy numpy RNG); `exact` is the correct
read-out. Components are numbered by the authors' sort key: the index of the member with the highest degree
(ties: lowest index), ascending.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from vtc.ops.similarity import BF16_COS_BOUND

_CHUNK = 2048
_COLS = 2048  # columns per product in a pass over all pairs: 1024 × 2048 bfloat16 cosines stay in cache


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
    """Renumber component labels [B, n] (any ids, -1 = none) 0..C−1 by the authors' key (see module doc), all B
    graphs at once."""
    b, n = labels.shape
    out = torch.full_like(labels, -1)
    valid = labels >= 0
    if not bool(valid.any()):
        return out
    span = int(labels.max()) + 1
    frame = torch.arange(b)[:, None].expand(b, n)[valid]
    comps, inv = torch.unique(frame * span + labels[valid], return_inverse=True)  # (graph, label) pairs
    idx = torch.arange(n).expand(b, n)[valid]
    score = degree[valid].long() * (n + 1) + (n - idx)  # highest degree, then lowest index
    best = torch.full((comps.numel(),), -1, dtype=torch.long).scatter_reduce(0, inv, score, "amax")
    key = n - best % (n + 1)  # the member that names the component: distinct within a graph
    graph = comps // span
    rank = torch.empty_like(key)
    rank[torch.argsort(graph * (n + 1) + key)] = torch.arange(key.numel())
    count = torch.bincount(graph, minlength=b)
    out[valid] = (rank - (torch.cumsum(count, 0) - count)[graph])[inv]
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


def spanning_forest(weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A maximum spanning tree of each complete graph with edge weights weight [B, n, n] (symmetric), by Prim's
    algorithm on all B graphs at once → (u, v, w), each [B, n − 1]: tree edge k of graph b joins nodes u[b, k] and
    v[b, k] with weight w[b, k].  For every τ the graph weight > τ has the components of the tree edges with w > τ
    (a heavier path joins whatever an edge above τ joins), so one tree answers every threshold."""
    b, n, _ = weight.shape
    rows = torch.arange(b)
    u, v, w = (torch.zeros(b, max(n - 1, 0), dtype=dt) for dt in (torch.long, torch.long, weight.dtype))
    if n < 2:
        return u, v, w
    inside = torch.zeros(b, n, dtype=torch.bool)
    inside[:, 0] = True
    best = weight[:, 0].clone()  # [B, n] heaviest edge from the tree to each node
    parent = torch.zeros(b, n, dtype=torch.long)
    for k in range(n - 1):
        w[:, k], v[:, k] = best.masked_fill(inside, -float("inf")).max(1)
        u[:, k] = parent[rows, v[:, k]]
        inside[rows, v[:, k]] = True
        row = weight[rows, v[:, k]]  # [B, n]
        closer = row > best
        best = torch.where(closer, row, best)
        parent = torch.where(closer, v[:, k : k + 1], parent)
    return u, v, w


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


def _cells(low: Tensor, block: int) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """A coarse cover of the unit rows [M, D] (as bfloat16 `low`) by pivot cells, for pruning block pairs.

    Pivots are drawn (seeded, at random) from the rows no pivot covers yet (cos ≥ 0.8), a batch at a time; every row
    joins its most similar pivot. → (row order [M] grouping cells, cell of each ordered row [M], pivot rows [P], radius
    [P]: an upper bound on the angle between the pivot and any member), or None when rows do not cluster tightly
    enough for cells of 64 rows on average to cover them (then little could be pruned, and small cells would only
    make the pass slower)."""
    m = low.shape[0]
    max_pivots = max(64, m // 64)
    best = torch.full((m,), -2.0)
    owner = torch.zeros(m, dtype=torch.long)
    pivots: list[Tensor] = []
    uncovered = torch.arange(m)
    batch = max(16, min(256, m // block))
    gen = torch.Generator().manual_seed(0)
    while uncovered.numel() and sum(p.numel() for p in pivots) < max_pivots:
        # a seeded random draw: an even spread would alias with the frame length (the same patches every time)
        pick = uncovered[torch.randperm(uncovered.numel(), generator=gen)[:batch]]
        base = sum(p.numel() for p in pivots)
        pivots.append(pick)
        for s in range(0, m, 8192):  # every row against the new pivots (earlier ones are already in `best`)
            sim, arg = (low[s : s + 8192] @ low[pick].T).float().max(1)
            better = sim > best[s : s + 8192]
            best[s : s + 8192] = torch.where(better, sim, best[s : s + 8192])
            owner[s : s + 8192] = torch.where(better, arg + base, owner[s : s + 8192])
        uncovered = torch.nonzero(best < 0.8).flatten()
        if len(pivots) >= 2 and uncovered.numel() > 0.9 * m:
            return None
    if uncovered.numel() > 0.05 * m:
        return None
    piv = torch.cat(pivots)
    # angle of a member to its pivot: true cos ≥ bf16 cos − bound
    angle = torch.arccos((best - BF16_COS_BOUND).clamp(-1, 1)) + 1e-4
    radius = torch.zeros(piv.numel()).scatter_reduce(0, owner, angle, "amax")
    order = torch.argsort(owner, stable=True)
    return order, owner[order], piv, radius


def similar_blocks(
    xn: Tensor,
    floor: float,
    block: int = 1024,
    cells: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    find_cells: bool = True,
    slack: float | None = None,
) -> Iterator[tuple[Tensor, Tensor, Tensor, bool]]:
    """Every pair i ≠ j (once) of unit rows xn [M, D] whose bfloat16 cosine exceeds floor − `bf16_band` (from the
    rows' `bf16_slack`, computed when not given): a superset of the pairs with cos > floor, block by block as
    (i [E], j [E], cos [E], exact): the cosines in float32 when `exact`
    (a block with few columns is multiplied in float32), else bfloat16 values.

    Rows are grouped by pivot cells (`_cells`) when they cluster; a pair of cells whose pivots are farther apart
    than their radii allow a cosine above the floor is never multiplied. Structureless rows: one blocked pass.
    `cells`: `_cells(xn in bfloat16, block)` when already known (find_cells=False: known to be None)."""
    m = xn.shape[0]
    low = xn.to(torch.bfloat16)
    bound = bf16_band(bf16_slack(*bf16_rounding(xn), xn.shape[1]) if slack is None else slack, floor)
    if cells is None and find_cells and m > 4 * block:
        cells = _cells(low, block)
    if cells is None:
        order, cell_of, reach = torch.arange(m), torch.zeros(m, dtype=torch.long), None
    else:
        order, cell_of, piv, radius = cells
        pc = (xn[piv] @ xn[piv].T).clamp(-1, 1)
        gap = torch.arccos((pc + 1e-6).clamp(-1, 1)) - radius[:, None] - radius[None, :]
        # the largest cosine two members of the cells can have (slack for float32 trigonometry)
        most = torch.where(gap > 0, torch.cos(gap), torch.ones_like(gap)) + 1e-5
        reach = most > floor - 2 * bound  # [P, P] cells that may hold a pair above the floor
    # chunks: runs of ordered rows within one cell, at most `block` long
    brk = torch.nonzero(cell_of[1:] != cell_of[:-1]).flatten() + 1
    edges = sorted(set(brk.tolist()) | set(range(0, m, block)) | {m})
    chunks = [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]
    chunk_cell = torch.tensor([int(cell_of[a]) for a, _ in chunks])
    for ci, (a, b) in enumerate(chunks):
        rows = order[a:b]
        own = b - a
        if reach is None:  # rows in their own order: the later rows are slices (nothing gathered), a few at a time
            exact = m - a <= 4 * block  # few columns left: float32 products, all at once
            width = m - a if exact else max(_COLS, own)  # else cache-sized products, compared while in cache
            for c in range(a, m, width):
                sims = xn[a:b] @ xn[c : c + width].T if exact else low[a:b] @ low[c : c + width].T
                if c == a:
                    sims[:, :own].masked_fill_(~torch.ones(own, own, dtype=torch.bool).triu(1), -2.0)  # i < j only
                i, j = entries_above(sims, floor - bound)
                yield rows[i], order[c + j], sims[i, j].float(), exact
            continue
        later = ci + torch.nonzero(reach[chunk_cell[ci], chunk_cell[ci:]]).flatten()
        if later.numel() == 0:
            continue
        cols = torch.cat([order[chunks[c][0] : chunks[c][1]] for c in later.tolist()])
        exact = cols.numel() <= 4 * block  # few columns (a pruned pass): float32 products cost little more
        sims = xn[rows] @ xn[cols].T if exact else low[rows] @ low[cols].T  # [b, C]; first b columns: the chunk
        sims[:, :own].masked_fill_(~torch.ones(own, own, dtype=torch.bool).triu(1), -2.0)  # pairs i < j only
        i, j = entries_above(sims, floor - bound)
        yield rows[i], cols[j], sims[i, j].float(), exact


def entries_above(v: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """(row, column) of the entries of v [R, C] above threshold; for bfloat16 v a superset: those above the
    bfloat16 number just at or below it.  Sparse hits in bfloat16 (a pass over all pairs): the bits' int16 view
    (non-negative bfloat16s order as their bits) is reduced to each run of 64 columns' largest, and only the runs
    that reach the threshold are compared entry by entry."""
    if v.dtype != torch.bfloat16 or threshold < 0 or v.shape[1] % 64:
        return nonzero_2d(greater(v, threshold))
    r, c = v.shape
    t = torch.tensor(threshold).to(torch.bfloat16)
    bits = int(t.view(torch.int16)) - int(float(t) > threshold)
    runs = v.view(torch.int16).view(r, c // 64, 64)
    ri, rj = torch.nonzero(runs.amax(-1) > bits, as_tuple=True)
    k, col = nonzero_2d(runs[ri, rj] > bits)
    return ri[k], rj[k] * 64 + col


def greater(v: Tensor, threshold: float) -> Tensor:
    """v > threshold, [R, C] → bool [R, C'] (C' ≥ C, padded with False to whole 8-byte words); for bfloat16 v a
    superset: v > the bfloat16 number just at or below the threshold, compared as the bits' int16 view."""
    if v.dtype != torch.bfloat16:
        return v > threshold
    if threshold < 0:
        return v.float() > threshold
    t = torch.tensor(threshold).to(torch.bfloat16)
    bits = int(t.view(torch.int16)) - int(float(t) > threshold)  # non-negative bfloat16s order as their bits
    out = torch.empty(v.shape[0], -(-v.shape[1] // 8) * 8, dtype=torch.bool)  # rows padded to whole 8-byte words
    out[:, v.shape[1] :] = False
    torch.gt(v.view(torch.int16), bits, out=out[:, : v.shape[1]])
    return out


def nonzero_2d(mask: Tensor) -> tuple[Tensor, Tensor]:
    """(row, column) of the set entries of mask [R, C] (C may be padded past the matrix, with False): rows of a
    whole number of 8-byte words are scanned a word at a time, and only the nonzero words looked into."""
    r, c = mask.shape
    if c % 8 or not mask.is_contiguous():
        return torch.nonzero(mask, as_tuple=True)
    wi, wj = torch.nonzero(mask.view(torch.int64), as_tuple=True)
    k, bit = torch.nonzero(mask.view(r, c // 8, 8)[wi, wj], as_tuple=True)
    return wi[k], wj[k] * 8 + bit


class _Union:
    """Component labels (smallest member index) under edges added in batches."""

    def __init__(self, n: int) -> None:
        self.labels = torch.arange(n)
        self.src: list[Tensor] = []
        self.dst: list[Tensor] = []
        self.pending = 0

    def add(self, src: Tensor, dst: Tensor) -> None:
        self.src.append(src)
        self.dst.append(dst)
        self.pending += src.numel()
        if self.pending > 1 << 22:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            a, b = self.labels[torch.cat(self.src)], self.labels[torch.cat(self.dst)]
            keep = a != b
            self.labels = hook_labels(self.labels.numel(), a[keep], b[keep])[self.labels]
        self.src, self.dst, self.pending = [], [], 0

    def result(self) -> Tensor:
        self._flush()
        return self.labels


class SimilarityGraph:
    """The graph cos(x_i, x_j) > τ over unit rows x [M, D] for any τ ≥ `floor`, without an M×M matrix.

    The similar pairs are found by one blocked bfloat16 pass (`similar_blocks`: cells of rows too far apart to
    matter are never multiplied), made when a query first needs it, down to a floor: 2τ − 1 for the query's τ when the
    rows cluster (a search coming down from τ = 1 rebuilds a few times, each pass pruned), else the lowest similarity
    for which about cap / 4 pairs are expected (from a sample of rows), never below `floor`. If more than `cap` pairs
    are found after all, the floor is raised to keep the cap / 2 most similar. The pairs are kept sorted by their
    bfloat16 cosine, so a query at τ ≥ floor reads only those that can be above τ − band: it decides the pairs
    far from τ by their bfloat16 value and computes the few within the band (`bf16_band`) in float32 (cached); a query
    below what the stored pairs can answer makes one pass at τ, joining components block by block (nothing stored).
    `centroid_components` answers for centroids most of which are single rows of x: their pairs come from the
    stored ones, only the other centroids are multiplied.
    """

    def __init__(self, xn: Tensor, floor: float = -1.0, cap: int = 8_000_000, block: int = 1024) -> None:
        self.xn, self.block, self.cap, self.lowest = xn, block, cap, floor
        m = xn.shape[0]
        self.rounding = bf16_rounding(xn)
        self.slack = bf16_slack(*self.rounding, xn.shape[1])
        self.cells = _cells(xn.to(torch.bfloat16), block) if m > 4 * block else None
        self.sampled = self._sampled_floor(xn, cap // 4)
        self.floor = float("inf")  # nothing stored yet
        self.tried = float("inf")  # the lowest floor a pass has been made for
        empty = torch.zeros(0, dtype=torch.int32)
        self.src, self.dst, self.rough, self.exact = empty, empty, torch.zeros(0), torch.zeros(0)
        self.key = torch.zeros(0, dtype=torch.int32)  # −`_order_key` of the stored pairs' cosines, ascending
        self.multi: tuple[float, Tensor, list] | None = None  # (τ, centroids, `_multi_pairs`) of the last question

    def ready(self, tau: float) -> bool:
        """Whether the stored pairs answer τ, after one more pass if that can help."""
        if tau >= self.floor:
            return True
        if tau < self.lowest or tau >= self.tried:  # below the floor asked for, or a pass there overflowed
            return False
        target = max(self.lowest, self.sampled if self.cells is None else max(self.sampled, 2 * tau - 1))
        self._build(min(target, tau))
        return tau >= self.floor

    def _build(self, floor: float) -> None:
        self.tried = floor
        src, dst, val, known = [], [], [], []
        kept, cap = 0, self.cap
        for i, j, v, exact in similar_blocks(self.xn, floor, self.block, self.cells, False, self.slack):
            keep = v > floor - bf16_band(self.slack, floor)  # the floor may have risen since the pass began
            src.append(i[keep].int())
            dst.append(j[keep].int())
            val.append(v[keep])
            known.append(torch.full((int(keep.sum()),), exact))
            kept += known[-1].numel()
            if kept > cap:  # more pairs than the sample promised: keep the cap / 2 most similar
                v = torch.cat(val)
                kth = float(torch.kthvalue(v, v.numel() - cap // 2 + 1).values)
                floor = kth + bf16_band(self.slack, kth)
                mask = v > floor - bf16_band(self.slack, floor)
                src, dst, val = [torch.cat(src)[mask]], [torch.cat(dst)[mask]], [v[mask]]
                known = [torch.cat(known)[mask]]
                kept = int(mask.sum())
        self.floor = floor
        if not val:
            return
        # most similar first, by the bfloat16-rounded cosine (a radix sort of int keys): a query reads a prefix
        rough = torch.cat(val)
        key = _order_key(rough)
        order = torch.argsort(-key, stable=True)
        self.key = -key[order]  # ascending
        self.rough = rough[order]  # bfloat16 or float32 cos
        self.src, self.dst = torch.cat(src)[order], torch.cat(dst)[order]
        # float32 cos where known, filled on demand for the others
        self.exact = torch.where(torch.cat(known)[order], self.rough, float("nan"))

    @staticmethod
    def _sampled_floor(xn: Tensor, pairs: int, rows: int = 256) -> float:
        """The similarity above which about `pairs` pairs lie, estimated from `rows` evenly spread rows."""
        m = xn.shape[0]
        if m * (m - 1) // 2 <= pairs:
            return -1.0
        pick = torch.linspace(0, m - 1, min(rows, m)).round().long().unique()
        low = xn.to(torch.bfloat16)
        sims = (low[pick] @ low.T).flatten()  # an estimate: bfloat16 is close enough
        k = int(pairs * 2 * pick.numel() / m) + pick.numel()  # + the rows' own entries (cos 1)
        if k >= sims.numel():
            return -1.0
        return float(torch.topk(sims, k).values[-1])

    def upto(self, value: float) -> int:
        """A number n of stored pairs such that every pair whose (bfloat16) cosine is above value is among the first
        n: those whose cosine rounds to bfloat16 no lower than value does (a few at value itself may come along)."""
        return int(torch.searchsorted(self.key, -_order_key(torch.tensor([value])), side="right"))

    def above(self, tau: float) -> tuple[int, Tensor]:
        """(n, mask [n]): the stored pairs that can be above τ (τ ≥ floor) are the first n; mask: cos > τ."""
        width = bf16_band(self.slack, tau)
        n = self.upto(tau - width)
        near = torch.nonzero(self.rough[:n] <= tau + width).flatten()
        self._rescore(near)
        keep = self.rough[:n] > tau
        keep[near] = self.exact[near] > tau
        return n, keep

    def _rescore(self, idx: Tensor) -> None:
        """Float32 cosines of the stored pairs idx that have none yet."""
        todo = idx[torch.isnan(self.exact[idx])]
        for part in todo.split(4096):  # a few MB of gathered rows at a time: they stay in cache
            self.exact[part] = (self.xn[self.src[part].long()] * self.xn[self.dst[part].long()]).sum(1)

    def components(self, tau: float) -> tuple[Tensor, Tensor]:
        """(labels [M] — smallest member index, degree [M] — neighbours with cos > τ, itself included)."""
        m = self.xn.shape[0]
        if self.ready(tau):
            n, keep = self.above(tau)
            src, dst = self.src[:n][keep].long(), self.dst[:n][keep].long()
            degree = 1 + torch.bincount(src, minlength=m) + torch.bincount(dst, minlength=m)
            return hook_labels(m, src, dst), degree
        return threshold_components(self.xn, tau, self.block)

    def centroid_components(
        self, single: Tensor, cn: Tensor, tau: float, degrees: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """Components of unit centroids cn [C, D] at τ, where centroid c is row single[c] of x when single[c] ≥ 0
        (bit-identical to it) and a mean of several rows otherwise → (labels [C], degree [C]) as `components`.
        degrees=False (labels only, degree None): a stored pair near τ is scored in float32 only when it would join
        two components the other pairs leave apart."""
        c = cn.shape[0]
        if not self.ready(tau):
            return threshold_components(cn, tau, self.block)
        union = _Union(c)
        degree = torch.ones(c, dtype=torch.long)
        # pairs of single-row centroids: the stored ones
        where = torch.full((self.xn.shape[0],), -1, dtype=torch.long)
        is_single = single >= 0
        where[single[is_single]] = torch.nonzero(is_single).flatten()
        width = bf16_band(self.slack, tau)
        n = self.upto(tau - width)
        a, b = where[self.src[:n].long()], where[self.dst[:n].long()]
        both = (a >= 0) & (b >= 0)
        if degrees:
            keep = self.above(tau)[1] & both
            _count(union, degree, a[keep], b[keep])
        else:
            rough, exact = self.rough[:n], self.exact[:n]
            known = ~torch.isnan(exact)
            sure = both & torch.where(known, exact > tau, rough > tau + width)
            maybe = torch.nonzero(both & ~known & (rough <= tau + width)).flatten()
            union.add(a[sure], b[sure])
        # pairs with a centroid of several rows: multiplied here, each pair once
        for i, j, rough, mixed in self._multi_pairs(is_single, cn, tau):
            _count(union, degree, *_exactly_above(cn, i, j, rough, tau, mixed))
        if not degrees:
            labels = union.result()
            maybe = maybe[labels[a[maybe]] != labels[b[maybe]]]  # only pairs that could still join two components
            self._rescore(maybe)
            maybe = maybe[self.exact[maybe] > tau]
            union.add(a[maybe], b[maybe])
            return union.result(), None
        return union.result(), degree


    def _multi_pairs(self, is_single: Tensor, cn: Tensor, tau: float) -> list[tuple[Tensor, Tensor, Tensor, float]]:
        """The pairs of unit centroids cn [C, D] with at least one not a single row (is_single [C] False) whose
        bfloat16 cosine can be above τ, each once, block by block: (i [E], j [E], bfloat16 cos [E], slack); kept
        for the next question about the same centroids and τ."""
        if self.multi is None or self.multi[0] != tau or self.multi[1] is not cn:
            self.multi = (tau, cn, list(self._multi_blocks(is_single, cn, tau)))
        return self.multi[2]

    def _multi_blocks(
        self, is_single: Tensor, cn: Tensor, tau: float
    ) -> Iterator[tuple[Tensor, Tensor, Tensor, float]]:
        multi = torch.nonzero(~is_single).flatten()
        if multi.numel() == 0:
            return
        e, size = bf16_rounding(cn[multi])
        mixed = bf16_slack(max(e, self.rounding[0]), max(size, self.rounding[1]), cn.shape[1])
        low = cn.to(torch.bfloat16)
        wanted = torch.ones(cn.shape[0], dtype=torch.bool)  # partners not yet paired with every multi-row centroid
        for s in range(0, multi.numel(), self.block):
            rows = multi[s : s + self.block]
            own = rows.numel()
            wanted[rows] = False  # pairs within the block: once, from its own triangle
            rough = low[rows] @ low[rows].T
            rough.masked_fill_(~torch.ones(own, own, dtype=torch.bool).triu(1), -2.0)
            i, j = entries_above(rough, tau - bf16_band(mixed, tau))
            yield rows[i], rows[j], rough[i, j].float(), mixed
            for c in range(0, cn.shape[0], _COLS):  # every other partner still wanted, in cache-sized products
                rough = low[rows] @ low[c : c + _COLS].T
                rough.masked_fill_(~wanted[None, c : c + _COLS], -2.0)
                i, j = entries_above(rough, tau - bf16_band(mixed, tau))
                yield rows[i], c + j, rough[i, j].float(), mixed

    def fewest_components(self, tau: float, single: Tensor | None = None, cn: Tensor | None = None) -> int | None:
        """A lower bound on the components `centroid_components(single, cn, τ)` finds (single None: the rows of x
        themselves), from bfloat16 cosines alone: C less every pair that can be above τ, since an edge joins two
        components at most — the stored pairs, and the pairs with a centroid of several rows. None when the stored
        pairs cannot answer τ."""
        if not self.ready(tau):
            return None
        edges = self.upto(tau - bf16_band(self.slack, tau))
        if single is None or cn is None:
            return self.xn.shape[0] - edges
        for i, _, _, _ in self._multi_pairs(single >= 0, cn, tau):
            edges += i.numel()
        return cn.shape[0] - edges


def _order_key(v: Tensor) -> Tensor:
    """int32 keys [E] that order the float values v [E] as their bfloat16 roundings (round to nearest: a value above
    another rounds no lower), from the bits: non-negative numbers order as their bits, negative ones reversed."""
    bits = v.to(torch.bfloat16).view(torch.int16).int()
    return torch.where(bits >= 0, bits, -32769 - bits)


def bf16_rounding(xn: Tensor) -> tuple[float, float]:
    """(largest |x − bfloat16(x)|, largest of |x| and |bfloat16(x)|) over the rows x of xn [M, D] (0, 0 if none),
    measured: some 2⁻⁹ for unit rows, where entry-wise rounding alone allows 2⁻⁸. Float32 norms, enlarged by
    D·2⁻²³ for their own rounding."""
    e = size = 0.0
    for part in xn.split(4096):  # a few MB at a time: read once from memory
        low = part.to(torch.bfloat16).float()
        e = max(e, float(torch.linalg.vector_norm(part - low, dim=1).max()))
        size = max(size, *(float(torch.linalg.vector_norm(v, dim=1).max()) for v in (part, low)))
    grow = 1 + xn.shape[1] * 2.0**-23
    return e * grow, size * grow


def bf16_slack(e: float, size: float, d: int) -> float:
    """The part of |bfloat16 cos − float32 cos| that does not scale with the cosine, for rows with `bf16_rounding`
    (e, size) in D dims: the bfloat16 inputs' error, |x̃·ỹ − x·y| ≤ |x̃||y − ỹ| + |x − x̃||ỹ| + |x − x̃||y − ỹ|
    (Cauchy–Schwarz), plus float32 accumulation of D products in the bfloat16 and in the float32 product alike."""
    return (2 * size * e + e * e + 2 * (d + 2) * 2.0**-24 * size * size) * (1 + 2.0**-10) + 1e-7


def bf16_band(slack: float, c: float) -> float:
    """Half-width w of the band around c where a bfloat16 cosine v does not decide the float32 one: v > c + w means
    cos > c, v ≤ c − w means cos ≤ c.  Adds to `bf16_slack` the rounding of the bfloat16 result, |v − s| ≤ 2⁻⁸·|s|
    ≤ δ·|v| with δ = 2⁻⁸ / (1 − 2⁻⁸): w = (slack + δ·|c|) / (1 − δ) — some 0.004 to 0.008 for unit rows, where the
    fixed BF16_COS_BOUND is 0.02."""
    delta = 2.0**-8 / (1 - 2.0**-8)
    return (slack + delta * abs(c)) / (1 - delta) + 1e-6


def _exactly_above(
    xn: Tensor, i: Tensor, j: Tensor, rough: Tensor, tau: float, slack: float
) -> tuple[Tensor, Tensor]:
    """The pairs (i, j) whose float32 cosine exceeds τ, given their bfloat16 cosines (all > τ − band)."""
    near = torch.nonzero(rough <= tau + bf16_band(slack, tau)).flatten()
    keep = rough > tau
    for part in near.split(4096):
        keep[part] = (xn[i[part]] * xn[j[part]]).sum(1) > tau
    return i[keep], j[keep]


def _count(union: _Union, degree: Tensor, i: Tensor, j: Tensor) -> None:
    union.add(i, j)
    degree += torch.bincount(i, minlength=degree.numel()) + torch.bincount(j, minlength=degree.numel())


def threshold_components(xn: Tensor, tau: float, block: int = 1024) -> tuple[Tensor, Tensor]:
    """Components of cos > τ over unit rows xn [M, D] in one pruned bfloat16 pass (pairs near τ in float32), joined
    block by block: → (labels [M] — smallest member index, degree [M] — neighbours with cos > τ, itself included)."""
    m = xn.shape[0]
    union = _Union(m)
    degree = torch.ones(m, dtype=torch.long)
    a = bf16_slack(*bf16_rounding(xn), xn.shape[1])
    for i, j, v, exact in similar_blocks(xn, tau, block, slack=a):
        _count(union, degree, *((i[v > tau], j[v > tau]) if exact else _exactly_above(xn, i, j, v, tau, a)))
    return union.result(), degree
