"""The scalable forms of DivPrune's max–min selection and LLaVA-Scissor's similarity graphs give exactly what the
quadratic textbook computations give (those are restated here, small), on clustered and on structureless data."""

from __future__ import annotations

import pytest
import torch

import vtc
from vtc.methods import llava_scissor as scissor_mod
from vtc.ops import diversity
from vtc.ops.components import SimilarityGraph, component_ids, edge_labels, threshold_components
from vtc.ops.similarity import l2_normalize


def textbook_max_min(x: torch.Tensor, k: int) -> list[int]:
    """DivPrune's greedy as the authors write it: full L×L distances, first pick by the second-smallest row entry."""
    xn = l2_normalize(x.float())
    dist = 1 - xn @ xn.T
    order = [int(torch.argmax(torch.topk(dist, 2, dim=1, largest=False).values[:, -1]))]
    min_dist = dist[order[0]].clone()
    for _ in range(1, k):
        j = int(torch.argmax(min_dist))
        order.append(j)
        min_dist = torch.minimum(min_dist, dist[j])
    return order


def clustered(t: int, n: int, d: int, seed: int) -> torch.Tensor:
    """[T, N, D]: every patch drifts slowly over time (a random walk), with a scene cut half way."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cumsum(0.2 * torch.randn(t, n, d, generator=g), 0) + torch.randn(1, n, d, generator=g)
    x[t // 2 :] += 3 * torch.randn(1, n, d, generator=g)
    return x


def family(kind: str, t: int, n: int, d: int, seed: int) -> torch.Tensor:
    """[T, N, D] of one feature family: `clustered`; `drift` — a static background per patch plus a slowly decaying
    drift (many near-duplicates at short range, few at long range); `noise` — i.i.d. tokens, no near neighbours."""
    g = torch.Generator().manual_seed(seed)
    if kind == "drift":
        steps = torch.randn(t, n, d, generator=g).cumsum(0) / (torch.arange(t)[:, None, None] + 1).sqrt()
        return torch.randn(1, n, d, generator=g) + 0.3 * steps
    if kind == "noise":
        return torch.randn(t, n, d, generator=g)
    return clustered(t, n, d, seed)


@pytest.mark.parametrize("kind", ["clustered", "drift", "noise"])
@pytest.mark.parametrize("seed", [0, 1])
def test_max_min_diversity_equals_the_textbook_greedy(kind: str, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # small blocks, column batches, hot sets and hot-row blocks, so that every path (the first pick's rounds of
    # sampled columns and exact blocks, hot-set refills, rows computed ahead of their pick) runs on a small input
    monkeypatch.setattr(diversity, "_BLOCK", 64)
    monkeypatch.setattr(diversity, "_SAMPLE", 50)
    monkeypatch.setattr(diversity, "_HOT", 32)
    monkeypatch.setattr(diversity, "_ROWS", 5)  # hot rows in several blocks per refill
    t, n, d = 12, 49, 32
    flat = family(kind, t, n, d, seed).reshape(t * n, d)
    for k in (1, 7, 150):
        got = diversity.max_min_diversity(flat, k, neighbours=(n, 1)).tolist()
        assert got == textbook_max_min(flat, k)


@pytest.mark.parametrize("kind,floor,cap", [("clustered", -1.0, 10**9), ("clustered", 0.95, 10**9),
                                            ("clustered", -1.0, 5000), ("drift", -1.0, 10**9), ("noise", -1.0, 5000)])
def test_similarity_graph_components_equal_the_dense_graph(kind: str, floor: float, cap: int) -> None:
    """Stored pairs (pivot-pruned passes, rebuilt lower as τ comes down), the streamed pass below the floor, and
    centroid sets mixing single rows with means all give the components and degrees of the dense M×M graph."""
    x = l2_normalize(family(kind, 20, 30, 16, 2).reshape(600, 16))
    dense = x @ x.T
    g = SimilarityGraph(x, floor, cap=cap, block=64)  # 600 rows > 4 blocks: the pivot cells are tried
    assert (g.cells is not None) == (kind == "drift")  # drift clusters tightly (pruned passes); noise never does
    taus = (0.97, 0.9, 0.6, 0.2) if kind != "noise" else (0.9, 0.6, 0.4, 0.2)
    gen = torch.Generator().manual_seed(5)
    for tau in taus:  # coming down, as the τ search does
        labels, degree = g.components(tau)
        assert torch.equal(labels, edge_labels(dense > tau)), tau
        assert torch.equal(degree, (dense > tau).sum(1)), tau
        ids = component_ids(dense > tau)
        assert ids.max() + 1 == labels.unique().numel()
        # centroids: most rows alone, some rows averaged in pairs
        paired = torch.randperm(600, generator=gen)[:80].reshape(40, 2)
        alone = torch.ones(600, dtype=torch.bool)
        alone[paired.flatten()] = False
        single = torch.cat([torch.nonzero(alone).flatten(), torch.full((40,), -1)])
        cn = l2_normalize(torch.cat([x[alone], (x[paired[:, 0]] + x[paired[:, 1]]) / 2]))
        c_labels, c_degree = g.centroid_components(single, cn, tau)
        c_dense = cn @ cn.T
        assert torch.equal(c_labels, edge_labels(c_dense > tau)), tau
        assert torch.equal(c_degree, (c_dense > tau).sum(1)), tau
        fresh = SimilarityGraph(x, floor, cap=cap, block=64)  # labels only, before any pair is scored in float32
        assert torch.equal(fresh.centroid_components(single, cn, tau, degrees=False)[0], c_labels), tau


@pytest.mark.parametrize("kind", ["clustered", "drift", "noise"])
def test_llava_scissor_sparse_temporal_graph_matches_the_dense_one(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The temporal step past _DENSE centroids (similar token pairs, single-token centroids read from them) and the
    galloping τ search give the same tokens as the M×M path on the same input, on every feature family."""
    x = family(kind, 16, 36, 24, 3)
    dense = vtc.compress_features(x, method="llava_scissor", ratio=0.2)
    monkeypatch.setattr(scissor_mod, "_DENSE", 8)
    sparse = vtc.compress_features(x, method="llava_scissor", ratio=0.2)
    assert dense.reduction.info["tau"] == sparse.reduction.info["tau"]
    assert torch.equal(dense.reduction.dst, sparse.reduction.dst)
    assert torch.equal(dense.reduction.src, sparse.reduction.src)
    torch.testing.assert_close(dense.tokens, sparse.tokens)


@pytest.mark.parametrize("kind", ["clustered", "drift", "noise"])
def test_threshold_components_equal_the_dense_graph(kind: str) -> None:
    x = l2_normalize(family(kind, 20, 30, 16, 4).reshape(600, 16))
    dense = x @ x.T
    for tau in (0.1, 0.5, 0.95):
        labels, degree = threshold_components(x, tau, block=64)
        assert torch.equal(labels, edge_labels(dense > tau)), tau
        assert torch.equal(degree, (dense > tau).sum(1)), tau


def test_llava_scissor_search_is_bisection() -> None:
    """The galloping search lands where bisection over [−1, 1] (8 halvings) lands when K grows with τ."""
    x = clustered(8, 25, 16, 4)
    sc = scissor_mod._Scissor(x, "exact", 0.05, 0)
    for ratio in (0.05, 0.2, 0.6):
        budget = ratio * 200
        lo, hi = -1.0, 1.0
        for _ in range(8):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if sc.count(mid) <= budget else (lo, mid)
        assert sc.search(budget) == lo


@pytest.mark.parametrize("data", ["walk", "noise"])
def test_nearest_rows_equals_the_float32_argmax(data: str) -> None:
    """The bfloat16 pre-scoring never changes an answer: on clustered rows (clear winners) and on noise (many
    near ties, rescored in float32) it equals the plain float32 argmax."""
    from vtc.ops.similarity import l2_normalize, nearest_rows

    g = torch.Generator().manual_seed(3)
    centers = torch.randn(300, 64, generator=g)
    if data == "walk":
        x = centers[torch.randint(0, 300, (5000,), generator=g)] + 0.3 * torch.randn(5000, 64, generator=g)
    else:
        x = torch.randn(5000, 64, generator=g)
    want = (l2_normalize(x) @ l2_normalize(centers).T).argmax(-1)
    got = nearest_rows(x, centers, block=700, exact_below=0)
    assert torch.equal(got, want)
