"""LLaVA-Scissor (arXiv 2506.21862): semantic connected components, spatial then temporal, then a
nearest-centroid merge of every token.  Follows HumanMLLM/LLaVA-Scissor @ b63354c (`llava_arch_zip.py`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.methods.registry import Param, register
from vtc.ops import cosine_matrix
from vtc.ops.components import component_ids
from vtc.reduction import Reduction
from vtc.signals import Signals


def _means(x: Tensor, ids: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """Plain means of the rows of x [n, D] per id (ids -1 ignored) → ([count, D], sizes [count])."""
    valid = ids >= 0
    size = torch.bincount(ids[valid], minlength=count)
    sums = torch.zeros(count, x.shape[1], dtype=torch.float64).index_add_(0, ids[valid], x[valid].double())
    return (sums / size.clamp_min(1)[:, None]).float(), size


class _Scissor:
    """The three steps for one clip; per-frame similarities are computed once and reused across τ."""

    def __init__(self, x: Tensor, union_find: str, epsilon: float, seed: int) -> None:
        t, n, d = x.shape
        self.t, self.n = t, n
        self.flat = x.reshape(t * n, d).float()
        self.sim = cosine_matrix(x.float())  # [T, N, N]
        self.mode, self.epsilon, self.seed = union_find, epsilon, seed

    def spatial(self, tau: float) -> tuple[Tensor, int]:
        """Spatial component of every token (frame-major global ids; -1 = lost) and their count."""
        ids = component_ids(self.sim > tau, self.mode, self.epsilon, self.seed)  # [T, N] per-frame ids
        per_frame = (ids.max(1).values + 1).clamp_min(0)
        offset = torch.cumsum(per_frame, 0) - per_frame
        glob = torch.where(ids >= 0, ids + offset[:, None], -1).reshape(-1)
        return glob, int(per_frame.sum())

    def run(self, tau: float) -> tuple[Tensor, Tensor, Tensor, int]:
        """(spatial ids [T·N], temporal ids [#spatial], final centroids [K, D], K)."""
        s_ids, m = self.spatial(tau)
        centroids, _ = _means(self.flat, s_ids, m)
        t_ids = component_ids(cosine_matrix(centroids) > tau, self.mode, self.epsilon, self.seed)
        k = int(t_ids.max()) + 1 if t_ids.numel() else 0
        final, _ = _means(centroids, t_ids, k)
        return s_ids, t_ids, final, k

    def count(self, tau: float) -> int:
        return self.run(tau)[3]


@register(
    "llava_scissor",
    summary="LLaVA-Scissor: connected components of similar tokens, per frame then across frames; every token "
    "merged into its nearest component",
    paper="Sun et al., LLaVA-Scissor: Token Compression with Semantic Connected Components for Video LLMs, 2025",
    params=[
        Param("tau", "cosine above which two tokens are connected (default: searched to meet --ratio; 0.9, "
              "the README's, when no ratio is given)", "tau", lo=-1.0, hi=1.0),
        Param("epsilon", "sampling tolerance of the approximate components (reference mode)", "epsilon",
              lo=0.0, hi=1.0),
        Param("union_find", "exact: true components; reference: the authors' read-out, which can lose a "
              "node (bug), with their node sampling", choices=("exact", "reference")),
        Param("seed", "seed of the reference mode's node sampling (the authors use numpy's global RNG)",
              "numpy_global_seed"),
    ],
    variants={"reference": {"union_find": "reference"}},
)
def llava_scissor(
    x: Tensor,
    *,
    grid: tuple[int, int],
    ratio: float | None,
    signals: Signals,
    tau: float | None = None,
    epsilon: float = 0.05,
    union_find: str = "exact",
    seed: int = 0,
) -> Reduction:
    """LLaVA-Scissor.  x: [T, N, D].

    1. Per frame: components of the graph cos > τ; each → plain mean of its members.
    2. Over all frames' centroids: components again (same τ); each → plain mean of its centroids (unweighted).
    3. Every original token joins its most cosine-similar final centroid; output k = (centroid_k + Σ assigned)
       / (count_k + 1). Order: temporal-component order. K depends on τ; with --ratio and no τ, τ is found by
       bisection (K grows with τ): the largest K within the ratio.
    Representative: the source with the largest weight in the row.
    """
    t, n, _ = x.shape
    sc = _Scissor(x, union_find, epsilon, seed)
    if tau is None and ratio is not None:
        budget = ratio * t * n
        lo, hi = -1.0, 1.0
        for _ in range(8):  # τ to within 2^-7; each step costs one full pass
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if sc.count(mid) <= budget else (lo, mid)
        tau = lo
    tau = 0.9 if tau is None else tau
    s_ids, t_ids, final, k = sc.run(tau)
    assign = cosine_matrix(sc.flat, final).argmax(-1)  # [T·N]
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
