"""LLaVA-Scissor (arXiv 2506.21862): semantic connected components, spatial then temporal, then a
nearest-centroid merge of every token.  Follows HumanMLLM/LLaVA-Scissor @ b63354c (`llava_arch_zip.py`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.methods.registry import Param, register
from vtc.ops import cosine_matrix
from vtc.ops.components import components
from vtc.reduction import Reduction
from vtc.signals import Signals


def scissor_map(
    x: Tensor, tau: float, union_find: str, epsilon: float, seed: int
) -> tuple[Tensor, list[list[int]], list[list[int]], Tensor]:
    """The three steps as weights.  x: [T, N, D] → (centroid weights [K, T·N], spatial comps (flat indices),
    temporal comps (spatial ids), final assignment [T·N])."""
    t, n, d = x.shape
    flat = x.reshape(t * n, d).float()
    spatial: list[list[int]] = []
    for f in range(t):
        adj = cosine_matrix(x[f].float()) > tau
        spatial += [[f * n + i for i in c] for c in components(adj, union_find, epsilon, seed)]
    s_w = torch.zeros(len(spatial), t * n, dtype=torch.float64)
    for i, c in enumerate(spatial):
        s_w[i, c] = 1.0 / len(c)
    centroids = (s_w @ flat.double()).float()
    temporal = components(cosine_matrix(centroids) > tau, union_find, epsilon, seed)
    c_w = torch.zeros(len(temporal), t * n, dtype=torch.float64)
    for k, comp in enumerate(temporal):
        c_w[k] = s_w[comp].mean(0)
    final = (c_w @ flat.double()).float()
    assign = cosine_matrix(flat, final).argmax(-1)
    return c_w, spatial, temporal, assign


@register(
    "llava_scissor",
    summary="LLaVA-Scissor: connected components of similar tokens, per frame then across frames; every token "
    "merged into its nearest component",
    paper="Sun et al., LLaVA-Scissor: Token Compression with Semantic Connected Components for Video LLMs, 2025",
    params=[
        Param("tau", None, "cosine above which two tokens are connected (default: searched to meet --ratio; 0.9, "
              "the README's, when no ratio is given)", "tau"),
        Param("epsilon", 0.05, "sampling tolerance of the approximate components (reference mode)", "epsilon"),
        Param("union_find", "exact", "exact: true components; reference: the authors' read-out, which can lose a "
              "node (bug), with their node sampling", choices=("exact", "reference")),
        Param("seed", 0, "seed of the reference mode's node sampling (the authors use numpy's global RNG)",
              "numpy_global_seed"),
    ],
    reference={"union_find": "reference"},
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
       bisection (K grows with τ) as the largest K within the ratio.
    Representative: the member of the row with the largest weight.
    """
    t, n, _ = x.shape
    if tau is None and ratio is not None:
        budget = ratio * t * n
        lo, hi = -1.0, 1.0
        for _ in range(14):  # bisection on τ; K is non-decreasing in τ
            mid = (lo + hi) / 2
            k = len(scissor_map(x, mid, "exact", epsilon, seed)[2])
            lo, hi = (mid, hi) if k <= budget else (lo, mid)
        tau = lo
    tau = 0.9 if tau is None else tau
    c_w, spatial, temporal, assign = scissor_map(x, tau, union_find, epsilon, seed)
    k = c_w.shape[0]
    count = torch.bincount(assign, minlength=k).double()
    w = c_w / (count + 1)[:, None]
    w[assign, torch.arange(t * n)] += 1.0 / (count[assign] + 1)
    dst, src = torch.nonzero(w, as_tuple=True)
    rep = w.argmax(1)
    red = Reduction.build(dst, src, w[dst, src], rep, t * n)
    red.info.update(tau=tau, n_after_spatial=len(spatial), order="temporal-component order")
    return red
