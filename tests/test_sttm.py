"""STTM's vectorised quadtree and cross-frame pairs against their definitions, written out node by node."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vtc.methods import get_method
from vtc.methods.sttm import sttm_reduce
from vtc.signals import Signals


def naive_nodes(x: torch.Tensor, grid: tuple[int, int], threshold: float, root_level: int
                ) -> tuple[list[tuple[int, int, int, int, int]], list[torch.Tensor]]:
    """Per frame, recursively from the root level's cells: a cell is a node when it is ≥ threshold-similar to each
    child it has, else its children are visited; cells of the finest level are nodes.  Returns (frame, y0, x0, y1,
    x1) per node in frame / top-left order, and the node features (means of means)."""
    from vtc.methods.sttm import build_pyramid

    p = build_pyramid(x, grid, root_level, "mean")
    nodes, feats = [], []

    def visit(f: int, lvl: int, c: int) -> None:
        if lvl == len(p.feats) - 1:
            nodes.append((f, *p.boxes[lvl][c].tolist()))
            feats.append(p.feats[lvl][f, c])
            return
        kids = [int(k) for k in p.slots[lvl][c] if k >= 0]
        sims = [float(F.cosine_similarity(p.feats[lvl][f, c], p.feats[lvl + 1][f, k], dim=0)) for k in kids]
        if all(s >= threshold for s in sims):
            nodes.append((f, *p.boxes[lvl][c].tolist()))
            feats.append(p.feats[lvl][f, c])
        else:
            for k in kids:
                visit(f, lvl + 1, k)

    for f in range(x.shape[0]):
        for c in range(p.feats[0].shape[1]):
            visit(f, 0, c)
    order = sorted(range(len(nodes)), key=lambda i: (nodes[i][0], nodes[i][1], nodes[i][2]))
    return [nodes[i] for i in order], [feats[i] for i in order]


@pytest.mark.parametrize(("grid", "threshold", "root_level"), [((7, 7), 0.5, 1), ((9, 13), 0.7, 1), ((8, 8), 0.3, 0),
                                                               ((13, 6), 0.9, 2), ((5, 5), 0.6, -1)])
def test_quadtree_and_pairs_match_their_definition(grid: tuple[int, int], threshold: float, root_level: int) -> None:
    g = torch.Generator().manual_seed(sum(grid))
    h, w = grid
    # smooth content (a few blobs) so that cells at every level stop
    base = F.interpolate(torch.randn(1, 16, 3, 3, generator=g), size=grid, mode="bilinear", align_corners=False)
    x = base.flatten(2).transpose(1, 2) + 0.3 * torch.randn(4, h * w, 16, generator=g)
    red, st = sttm_reduce(x, grid, threshold, 0.7, root_level, False, False, None, "own", "exact")
    nodes, feats = naive_nodes(x, grid, threshold, root_level)
    boxes = torch.cat(st.plan.pyramid.boxes)[st.cell]
    assert [(int(f), *b.tolist()) for f, b in zip(st.frame, boxes, strict=True)] == nodes
    # cross-frame pairs: nodes of consecutive frames, one box inside the other, similarity ≥ 0.7
    want = []
    for i, (fi, *bi) in enumerate(nodes):
        for j, (fj, *bj) in enumerate(nodes):
            nested = (bi[0] <= bj[0] and bi[1] <= bj[1] and bi[2] >= bj[2] and bi[3] >= bj[3]) or \
                     (bj[0] <= bi[0] and bj[1] <= bi[1] and bj[2] >= bi[2] and bj[3] >= bi[3])
            a, b = feats[i], feats[j]
            sim = float((a / (a.norm() + 1e-8) * (b / (b.norm() + 1e-8))).sum())
            if fj == fi + 1 and nested and sim >= 0.7:
                want.append((i, j))
    assert [tuple(p) for p in st.pairs.tolist()] == want
    assert red.num_outputs == st.num_outputs == len(set(st.rep.tolist()))
    assert red.source().unique().numel() == red.num_outputs


def test_ratio_search_meets_the_budget_and_equals_the_fixed_threshold_run() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 81, 24, generator=g) + 0.4 * torch.randn(6, 81, 24, generator=g)
    spec = get_method("sttm")
    red = spec.run(x, grid=(9, 9), ratio=0.2, signals=Signals(), params=spec.defaults())
    assert red.num_outputs <= 0.2 * 6 * 81
    fixed, _ = sttm_reduce(x, (9, 9), red.info["threshold"], 0.6, 1, False, False, None, "own", "exact")
    assert torch.equal(fixed.dst, red.dst) and torch.equal(fixed.src, red.src) and torch.equal(fixed.weight, red.weight)
    assert torch.equal(fixed.rep, red.rep)
