"""The scalable forms of DivPrune's max–min selection and LLaVA-Scissor's similarity graphs give exactly what the
quadratic textbook computations give (those are restated here, small), on clustered and on structureless data."""

from __future__ import annotations

import functools

import pytest
import torch

import vtc
from vtc.methods import llava_scissor as scissor_mod
from vtc.ops import cosine_matrix, diversity
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


def textbook_components(adj: torch.Tensor) -> list[list[int]]:
    """Connected components of a boolean graph [n, n] by breadth-first search, smallest member first."""
    a = adj.numpy()
    seen = [False] * a.shape[0]
    out = []
    for s in range(a.shape[0]):
        if seen[s]:
            continue
        comp, frontier = {s}, [s]
        while frontier:
            nxt = {int(j) for i in frontier for j in a[i].nonzero()[0]} - comp
            comp |= nxt
            frontier = list(nxt)
        for i in comp:
            seen[i] = True
        out.append(sorted(comp))
    return out


def textbook_scissor_count(x: torch.Tensor, tau: float) -> int:
    """LLaVA-Scissor's K at τ as the paper states it, on dense matrices: per-frame components of cos > τ, their
    means, components of the means' cos > τ."""
    t, n, _ = x.shape
    sim = cosine_matrix(x.float())
    means = [x[f, comp].double().mean(0).float() for f in range(t) for comp in textbook_components(sim[f] > tau)]
    return len(textbook_components(cosine_matrix(torch.stack(means)) > tau))


@pytest.mark.parametrize("kind", ["clustered", "drift", "noise", "walk"])
def test_llava_scissor_tau_is_plain_bisection_on_the_dense_graphs(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The τ the method settles on (sparse temporal graph from a bfloat16 pass in small blocks and column blocks,
    spatial counts from spanning trees, counts skipped where bounds decide) is plain bisection over the 2⁻⁷ grid
    with K computed on the dense graphs; the output has that K."""
    from vtc.ops import components

    if kind == "walk":  # every patch a random walk with a cut half way
        g = torch.Generator().manual_seed(6)
        x = torch.cumsum(0.3 * torch.randn(16, 36, 24, generator=g), 0)
        x[8:] = x[8:] - x[8:9] + torch.randn(1, 36, 24, generator=g)
    else:
        x = family(kind, 16, 36, 24, 6)
    monkeypatch.setattr(scissor_mod, "_DENSE", 8)
    monkeypatch.setattr(scissor_mod, "SimilarityGraph", functools.partial(SimilarityGraph, block=32))
    monkeypatch.setattr(components, "_COLS", 128)
    for ratio in (0.05, 0.15, 0.4):
        lo, hi = 0, 256  # grid index i ↔ τ = −1 + i / 128
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if textbook_scissor_count(x, -1 + mid / 128) <= ratio * 16 * 36 else (lo, mid)
        res = vtc.compress_features(x, method="llava_scissor", ratio=ratio)
        assert res.reduction.info["tau"] == -1 + lo / 128, ratio
        assert res.tokens.shape[0] == textbook_scissor_count(x, -1 + lo / 128), ratio


@pytest.mark.parametrize("kind", ["clustered", "noise"])
def test_spanning_forest_gives_the_components_at_every_threshold(kind: str) -> None:
    """The tree edges above τ join exactly what the graph cos > τ joins, for every τ."""
    from vtc.ops.components import spanning_forest

    x = family(kind, 6, 40, 16, 7)
    sim = cosine_matrix(x)
    u, v, w = spanning_forest(sim)
    for tau in (-0.5, 0.0, 0.3, 0.6, 0.9, 0.99):
        for f in range(6):
            want = textbook_components(sim[f] > tau)
            keep = w[f] > tau
            assert 40 - int(keep.sum()) == len(want), (tau, f)
            tree = torch.zeros(40, 40, dtype=torch.bool)
            tree[u[f][keep], v[f][keep]] = True
            assert textbook_components(tree | tree.T) == want, (tau, f)


@pytest.mark.parametrize("kind", ["clustered", "drift", "noise"])
def test_similar_blocks_find_every_pair_above_the_floor(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bfloat16 pass in row blocks and column blocks misses no pair whose float32 cosine is above the floor."""
    from vtc.ops import components

    monkeypatch.setattr(components, "_COLS", 128)  # runs of 64 columns, and narrower tails
    x = l2_normalize(family(kind, 20, 30, 16, 8).reshape(600, 16))
    dense = torch.triu(x @ x.T, 1)
    for floor in (0.2, 0.8):
        got = set()
        for i, j, _, _ in components.similar_blocks(x, floor, block=32, find_cells=False):
            got |= {(min(a, b), max(a, b)) for a, b in zip(i.tolist(), j.tolist(), strict=True)}
        want = set(map(tuple, torch.nonzero(dense > floor).tolist()))
        assert want <= got, floor


@pytest.mark.parametrize("scale", [1.0, 1e-3, 30.0])
def test_bf16_band_holds(scale: float) -> None:
    """|bfloat16 cos − float32 cos| stays within the band the rows' rounding gives, for unit rows of varied make
    (dense Gaussian, sparse spikes, near-duplicates)."""
    from vtc.ops.components import bf16_band, bf16_rounding, bf16_slack

    g = torch.Generator().manual_seed(9)
    rows = torch.cat([torch.randn(300, 768, generator=g),
                      torch.randn(300, 768, generator=g) * (torch.rand(300, 768, generator=g) < 0.02),
                      torch.randn(1, 768, generator=g) + 0.01 * torch.randn(300, 768, generator=g)]) * scale
    xn = l2_normalize(rows)
    slack = bf16_slack(*bf16_rounding(xn), 768)
    low = xn.to(torch.bfloat16)
    rough = (low @ low.T).float()
    exact = torch.stack([(xn * xn[i]).sum(1) for i in range(xn.shape[0])])  # the float32 products the graph uses
    for c in (-0.5, 0.0, 0.1, 0.5, 0.9, 0.99):
        w = bf16_band(slack, c)
        assert not ((rough > c + w) & (exact <= c)).any() and not ((rough <= c - w) & (exact > c)).any(), c
