"""LLaVA-Scissor (arXiv 2506.21862): semantic connected components, spatial then temporal, then a
nearest-centroid merge of every token.  Follows HumanMLLM/LLaVA-Scissor @ b63354c (`llava_arch_zip.py`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.methods.declare import implements
from vtc.ops import cosine_matrix
from vtc.ops.components import SimilarityGraph, component_ids, hook_labels, order_ids, spanning_forest
from vtc.ops.similarity import l2_normalize, nearest_rows
from vtc.reduction import Reduction
from vtc.signals import Signals


def _means(x: Tensor, ids: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Plain means of the rows of x [n, D] per id (ids -1 ignored) → ([count, D], sizes [count]); summed in
    float64, a block of rows at a time."""
    valid = torch.nonzero(ids >= 0).flatten()
    size = torch.bincount(ids[valid], minlength=count)
    # a group of one is its row (its float64 mean rounds back to the same float32): copied, not summed
    member = torch.zeros(count, dtype=torch.long).scatter_(0, ids[valid], valid)
    out = x.index_select(0, member).float().masked_fill_((size == 0)[:, None], 0.0)
    multi = valid[size[ids[valid]] > 1]
    if multi.numel():
        groups, local = torch.unique(ids[multi], return_inverse=True)
        sums = torch.zeros(groups.numel(), x.shape[1], dtype=torch.float64)
        for s in range(0, multi.numel(), 8192):
            sums.index_add_(0, local[s : s + 8192], x[multi[s : s + 8192]].double())
        out[groups] = (sums / size[groups][:, None]).float()
    return out, size


_DENSE = 4096  # up to this many centroids the temporal graph is one M×M matrix, as in the reference code
_GRID = 2.0**-7  # resolution of the τ search


class _Scissor:
    """The three steps for one clip; per-frame similarities are computed once and reused across τ, and so is the
    temporal similarity graph while the spatial components (hence the centroids) stay the same."""

    def __init__(self, x: Tensor, union_find: str, epsilon: float, seed: int) -> None:
        t, n, d = x.shape
        self.t, self.n = t, n
        self.flat = x.reshape(t * n, d).float()
        self.sim = cosine_matrix(x.float())  # [T, N, N]
        self.mode, self.epsilon, self.seed = union_find, epsilon, seed
        # exact components of every frame's graph sim > τ, for every τ: a maximum spanning tree per frame
        self.forest = spanning_forest(self.sim) if union_find == "exact" else None
        self.graph: SimilarityGraph | None = None  # similar pairs among the tokens, once per clip
        self.last: tuple[Tensor, Tensor] | None = None  # (spatial ids, their centroids)
        self.kept: tuple[Tensor, Tensor] | None = None  # the same at the last τ found within budget
        self.rows: tuple[Tensor, Tensor, Tensor] | None = None  # (centroids, `_rows` of them)
        self.memo: tuple[float, Tensor, Tensor] | None = None  # (τ, spatial ids, temporal ids) of the last query

    def spatial(self, tau: float) -> tuple[Tensor, int]:
        """Spatial component of every token (frame-major global ids; -1 = lost) and their count."""
        adj = self.sim > tau  # [T, N, N]
        if self.forest is None:
            ids = component_ids(adj, self.mode, self.epsilon, self.seed)  # [T, N] per-frame ids
        else:  # the tree edges above τ join what the graph joins; numbered as component_ids numbers them
            u, v, w = self.forest
            first = torch.arange(self.t)[:, None] * self.n
            keep = w > tau
            labels = hook_labels(self.t * self.n, (u + first)[keep], (v + first)[keep]).view(self.t, self.n)
            ids = order_ids(labels, torch.count_nonzero(adj, dim=-1))
        per_frame = (ids.max(1).values + 1).clamp_min(0)
        offset = torch.cumsum(per_frame, 0) - per_frame
        glob = torch.where(ids >= 0, ids + offset[:, None], -1).reshape(-1)
        return glob, int(per_frame.sum())

    def spatial_count(self, tau: float) -> int:
        """How many spatial components: T·N less the tree edges above τ (exact mode), without labelling them."""
        if self.forest is None:
            return self.spatial(tau)[1]
        return self.t * self.n - int(torch.count_nonzero(self.forest[2] > tau))

    def centroids(self, tau: float) -> tuple[Tensor, Tensor]:
        """(spatial ids [T·N], their centroids [M, D]); the centroids are reused while the ids stay the same (the
        last ones asked for, and those of the last τ found within budget)."""
        s_ids, m = self.spatial(tau)
        for known in (self.last, self.kept):
            if known is not None and torch.equal(known[0], s_ids):
                self.last = known
                return known
        self.last = (s_ids, _means(self.flat, s_ids, m)[0])
        return self.last

    def run(self, tau: float) -> tuple[Tensor, Tensor, Tensor, int]:
        """(spatial ids [T·N], temporal ids [#spatial], final centroids [K, D], K)."""
        s_ids, centroids = self.centroids(tau)
        t_ids = self.temporal(s_ids, centroids, tau)
        k = int(t_ids.max()) + 1 if t_ids.numel() else 0
        final, _ = _means(centroids, t_ids, k)
        return s_ids, t_ids, final, k

    def temporal(self, s_ids: Tensor, centroids: Tensor, tau: float) -> Tensor:
        if self.memo is not None and self.memo[0] == tau and torch.equal(self.memo[1], s_ids):
            return self.memo[2]
        t_ids = self._temporal(s_ids, centroids, tau)
        self.memo = (tau, s_ids, t_ids)
        return t_ids

    def _temporal(self, s_ids: Tensor, centroids: Tensor, tau: float) -> Tensor:
        """Temporal component of every centroid [M, D] (authors' order).  Past _DENSE centroids (exact mode) the
        graph is a list of similar pairs among the clip's tokens, found once (`SimilarityGraph`): a centroid that is
        a single token takes its pairs from there, only the others are multiplied — memory O(pairs), not O(M²)."""
        if centroids.shape[0] <= _DENSE or self.mode != "exact":
            return component_ids(cosine_matrix(centroids) > tau, self.mode, self.epsilon, self.seed)
        labels, degree = self._graph_components(s_ids, centroids, tau)
        return order_ids(labels[None], degree[None])[0]

    def _graph_components(
        self, s_ids: Tensor, centroids: Tensor, tau: float, degrees: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        return self._graph().centroid_components(*self._rows(s_ids, centroids), tau, degrees)

    def _rows(self, s_ids: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
        """(the token each centroid is when it is a single one, else -1 [M]; unit centroids [M, D]), kept while the
        centroids stay the same."""
        if self.rows is None or self.rows[0] is not centroids:
            valid = torch.nonzero(s_ids >= 0).flatten()
            size = torch.bincount(s_ids[valid], minlength=centroids.shape[0])
            token = torch.full((centroids.shape[0],), -1, dtype=torch.long)
            token[s_ids[valid]] = valid
            self.rows = (centroids, torch.where(size == 1, token, -1), l2_normalize(centroids))
        return self.rows[1], self.rows[2]

    def _graph(self) -> SimilarityGraph:
        if self.graph is None:
            self.graph = SimilarityGraph(l2_normalize(self.flat))
        return self.graph

    def count(self, tau: float) -> int:
        s_ids, centroids = self.centroids(tau)
        if centroids.shape[0] <= _DENSE or self.mode != "exact":
            t_ids = self.temporal(s_ids, centroids, tau)
            return int(t_ids.max()) + 1 if t_ids.numel() else 0
        # how many components only: no degrees (they only order the components), fewer pairs scored in float32
        labels, _ = self._graph_components(s_ids, centroids, tau, degrees=False)
        return int(labels.unique().numel())

    def within(self, tau: float, budget: float) -> bool:
        """K(τ) ≤ budget.  Cheap bounds decide first where they can: K ≤ M (the spatial count), and K ≥ M − (pairs
        of centroids whose bfloat16 cosine can be above τ) on the sparse path."""
        m = self.spatial_count(tau)
        if m <= budget:
            return True
        if m > _DENSE and self.mode == "exact":
            if m == self.t * self.n:  # every centroid is its token
                fewest = self._graph().fewest_components(tau)
            else:
                fewest = self._graph().fewest_components(tau, *self._rows(*self.centroids(tau)))
            if fewest is not None and fewest > budget:
                return False
        if self.count(tau) > budget:
            return False
        self.kept = self.last
        return True

    def search(self, budget: float) -> float:
        """The largest τ on the grid −1 + i·2⁻⁷ whose K is within budget (K grows with τ): galloping down from the
        top, where graphs are sparse and cheap, then bisecting — what bisection over [−1, 1] finds, in fewer,
        cheaper evaluations."""
        top = round(2 / _GRID)
        hi, step = top, 1  # K(τ_hi) > budget is assumed at τ = 1
        lo = hi - step
        while lo > 0 and not self.within(-1 + lo * _GRID, budget):
            hi, step = lo, step * 2
            lo = max(hi - step, 0)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.within(-1 + mid * _GRID, budget) else (lo, mid)
        return -1 + lo * _GRID


@implements("llava_scissor")
def llava_scissor(
    x: Tensor,
    *,
    grid: tuple[int, int],
    ratio: float | None,
    signals: Signals,
    tau: float | None,
    epsilon: float,
    union_find: str,
    seed: int,
) -> Reduction:
    """LLaVA-Scissor.  x: [T, N, D].

    1. Per frame: components of the graph cos > τ; each → plain mean of its members.
    2. Over all frames' centroids: components again (same τ); each → plain mean of its centroids (unweighted).
    3. Every original token joins its most cosine-similar final centroid; output k = (centroid_k + Σ assigned)
       / (count_k + 1). Order: temporal-component order. K depends on τ; with --ratio and no τ, τ is searched on
       a 2⁻⁷ grid (K grows with τ): the largest K within the ratio.
    Memory stays O(T·N²) + O(pairs): the temporal graph past 4096 centroids is a list of similar token pairs
    (`SimilarityGraph`, one pass that skips groups of tokens too far apart), not an M×M matrix; the final
    assignment runs in row blocks.
    Representative: the source with the largest weight in the row.
    """
    t, n, _ = x.shape
    sc = _Scissor(x, union_find, epsilon, seed)
    if tau is None and ratio is not None:
        tau = sc.search(ratio * t * n)
    tau = 0.9 if tau is None else tau
    s_ids, t_ids, final, k = sc.run(tau)
    assign = nearest_rows(sc.flat, final)  # [T·N] most cosine-similar final centroid
    count = torch.bincount(assign, minlength=k).double()
    s_size = torch.bincount(s_ids[s_ids >= 0], minlength=t_ids.numel()).double()
    t_size = torch.bincount(t_ids, minlength=k).double()
    # centroid part: token j in spatial comp c of temporal comp k → 1 / (|C_k| · |S_c| · (n_k + 1))
    members = torch.nonzero(s_ids >= 0).flatten()
    c = s_ids[members]
    row = t_ids[c]
    w_c = 1.0 / (t_size[row] * s_size[c] * (count[row] + 1))
    # assigned part: 1 / (n_k + 1)
    src = torch.cat([members, torch.arange(t * n)])
    dst = torch.cat([row, assign])
    w = torch.cat([w_c, 1.0 / (count[assign] + 1)])
    red = Reduction.build(dst, src, w, torch.zeros(k, dtype=torch.long), t * n)
    # representative: largest weight per row (first source on ties)
    key = red.weight.double() * (t * n + 1) - red.src.double() / (t * n + 1)
    best = torch.full((k,), -float("inf"), dtype=torch.float64).scatter_reduce(0, red.dst, key, "amax")
    is_best = key == best[red.dst]
    red.rep = torch.full((k,), -1, dtype=torch.long).scatter_reduce(0, red.dst[is_best], red.src[is_best], "amax")
    red.info.update(tau=tau, n_after_spatial=int(t_ids.numel()), spatial_assign=None,
                    order="temporal-component order")
    red.info.pop("spatial_assign")
    return red
