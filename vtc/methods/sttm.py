"""STTM: spatio-temporal token merging with a quadtree per frame, then merging across frames.
Follows HYUNJS/STTM @ 00736c7 (`token_merging_utils/quadtree_*.py`).

1. A pyramid per frame: the grid is pooled 2×2 level after level (odd sizes peel off the first row / column) up
   to the level `root_level` of the size list (which ends when either side reaches 2).
2. Top down from the coarsest level, a cell stops (becomes an output node) when its feature is cosine-similar
   (≥ `threshold`) to each of its children; otherwise its children are examined at the next level. The finest
   level's remaining cells are nodes. Nodes are ordered by their top-left patch.
3. With `temporal_thresh` > 0, a node and a node of the next frame whose boxes nest and whose features are similar
   (≥ `temporal_thresh`) are joined; every group becomes one token, the plain mean of its nodes (with
   `weighted_avg`: the area-weighted mean), represented by its earliest node.

The exact linear map from the patch grid is kept (average pooling compounds, so weights are dyadic fractions).
Only where step 2 cuts the tree depends on the spatial threshold: the pyramid, every parent–child similarity and
every cross-frame candidate pair are computed once (`plan_sttm`), and the search for the threshold that meets
--ratio re-cuts the tree (`sttm_structure`) without touching the features again.

Deviations from the authors' code (their behaviour is the `reference` variant):
- at odd borders a parent has fewer than four children; the authors also compare it with the child level's cell
  (t, 0, 0) in the missing slots (`border_slots="reference"`), vtc compares it with its real children only;
- the authors' vectorised union–find leaves some joined pairs apart (a next-frame node paired with two nodes of
  the current frame); vtc joins connected components (`union="exact"`);
- `weighted_avg` with exactly one odd side, T = 1 on the slow path and a 1×1 grid crash or loop in the authors'
  code; vtc handles them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vtc.methods.declare import implements
from vtc.reduction import Reduction
from vtc.signals import Signals


def level_sizes(h: int, w: int) -> list[tuple[int, int]]:
    """The authors' size list, coarsest first: halve (ceil) until either side is 2 (a 1×1 grid stops at once)."""
    sizes = [(h, w)]
    while h != 2 and w != 2 and (h, w) != (1, 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.insert(0, (h, w))
    return sizes


def child_slots(h: int, w: int) -> Tensor:
    """For each cell of the pooled (⌈h/2⌉ × ⌈w/2⌉) level, its children in the h × w level in slot order TL, TR, BL,
    BR as flat indices, -1 where the slot does not exist (odd sizes: the first row / column has one child row /
    column).  → int64 [⌈h/2⌉·⌈w/2⌉, 4]."""

    def spans(n: int) -> list[tuple[int, int | None]]:
        if n % 2 == 0:
            return [(2 * i, 2 * i + 1) for i in range(n // 2)]
        return [(0, None)] + [(2 * i - 1, 2 * i) for i in range(1, (n + 1) // 2)]

    out = []
    for r0, r1 in spans(h):
        for c0, c1 in spans(w):
            cells = [(r0, c0), (r0, c1), (r1, c0), (r1, c1)]
            out.append([-1 if r is None or c is None else r * w + c for r, c in cells])
    return torch.tensor(out, dtype=torch.long).reshape(-1, 4)


def pool_level(x: Tensor, slots: Tensor, mode: str) -> Tensor:
    """x [T, n, C] over the child level → [T, n', C]: the mean (or sum) of each cell's existing children."""
    valid = slots >= 0
    gathered = x[:, slots.clamp(min=0)] * valid[None, :, :, None]  # [T, n', 4, C]
    total = gathered.sum(2)
    return total / valid.sum(1)[None, :, None] if mode == "mean" else total


@dataclass
class Pyramid:
    """Per level (coarsest first): sizes, features [T, n_l, D], boxes [n_l, 4] (y0, x0, y1, x1; exclusive ends),
    child slots into the next level [n_l, 4], and each cell's linear map from the patch grid as padded rows:
    patches [n_l, M_l] (ascending, -1 = padding) with their float64 weights [n_l, M_l] (average pooling compounds,
    so weights are dyadic fractions)."""

    sizes: list[tuple[int, int]]
    feats: list[Tensor]
    boxes: list[Tensor]
    slots: list[Tensor]
    patches: list[Tensor]
    weights: list[Tensor]


def build_pyramid(x: Tensor, grid: tuple[int, int], root_level: int, mode: str) -> Pyramid:
    """x [T, h·w, D] → the pyramid from the input up to the width of `level_sizes(h, w)[root_level]`."""
    h, w = grid
    sizes = level_sizes(h, w)
    target_w = sizes[root_level][1]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    feats = [x.float()]
    patches, weights = [torch.arange(h * w)[:, None]], [torch.ones(h * w, 1, dtype=torch.float64)]
    boxes = [torch.stack([yy, xx, yy + 1, xx + 1], -1).reshape(-1, 4)]
    level_hw, slots = [(h, w)], []
    while level_hw[0][1] != target_w:
        ch, cw = level_hw[0]
        s = child_slots(ch, cw)
        valid = s >= 0
        feats.insert(0, pool_level(feats[0], s, mode))
        # a cell's map: its children's maps side by side (children are disjoint), divided by their count for means
        pat = torch.where(valid[..., None], patches[0][s.clamp(min=0)], -1).flatten(1)  # [n', 4·M]
        wts = (weights[0][s.clamp(min=0)] * valid[..., None]).flatten(1)
        if mode == "mean":
            wts = wts / valid.sum(1, keepdim=True)
        order = torch.where(pat >= 0, pat, 1 << 62).argsort(1)
        patches.insert(0, pat.gather(1, order))
        weights.insert(0, wts.gather(1, order))
        b = boxes[0][s.clamp(min=0)]
        big = torch.where(valid[..., None], b, torch.tensor([1 << 30, 1 << 30, -1, -1]))
        boxes.insert(0, torch.cat([big[..., :2].min(1).values, big[..., 2:].max(1).values], -1))
        slots.insert(0, s)
        level_hw.insert(0, (math.ceil(ch / 2), math.ceil(cw / 2)))
    return Pyramid(level_hw, feats, boxes, slots, patches, weights)


def _cos(a: Tensor, b: Tensor, head_dim: int | None) -> Tensor:
    """Cosine similarity along the last dim (F.cosine_similarity), averaged over heads of `head_dim` channels."""
    if head_dim:
        a = a.reshape(*a.shape[:-1], -1, head_dim)
        b = b.reshape(*b.shape[:-1], -1, head_dim)
        return F.cosine_similarity(a, b, dim=-1).mean(-1)
    return F.cosine_similarity(a, b, dim=-1)


def _unit(v: Tensor, head_dim: int | None) -> Tensor:
    """Rows of v [..., D] scaled to unit norm (+1e-8, as the authors), per head of `head_dim` channels if given."""
    if head_dim:
        v = v.reshape(*v.shape[:-1], -1, head_dim)
    return v / (v.norm(dim=-1, keepdim=True) + 1e-8)


def _contains(a: Tensor, b: Tensor) -> Tensor:
    """Boxes a [n, 4], b [m, 4] → [n, m]: a contains b."""
    return ((a[:, None, :2] <= b[None, :, :2]) & (a[:, None, 2:] >= b[None, :, 2:])).all(-1)


#: elements of one gathered block when similarities are computed frame-chunk by frame-chunk
_BLOCK = 1 << 24


@dataclass
class SttmPlan:
    """Everything STTM computes once per clip, whatever the spatial threshold.  Cells of all levels have global
    ids (level after level, coarsest first): C in all.

    split_sim: per level but the finest, [T, n_l, 4]: a cell's similarity to each child slot (the authors' rule
    for missing slots: the child level's cell 0); parents: per level but the coarsest, [n_l] its parent cell;
    pair_*: [P] the cross-frame candidates (cell `a` of frame f, cell `b` of frame f + 1, boxes nested, similarity
    ≥ temporal_thresh), ordered by f, a, b."""

    pyramid: Pyramid
    grid: tuple[int, int]
    split_sim: list[Tensor]
    parents: list[Tensor]
    offsets: list[int]
    boxes: Tensor
    pair_frame: Tensor
    pair_a: Tensor
    pair_b: Tensor
    pair_sim: Tensor


def plan_sttm(x: Tensor, grid: tuple[int, int], root_level: int, mode: str, head_dim: int | None,
              temporal_thresh: float, slow: bool) -> SttmPlan:
    """x [T, h·w, D] → the threshold-independent part of STTM."""
    p = build_pyramid(x, grid, root_level, mode)
    t = x.shape[0]
    split_sim, parents = [], [torch.zeros(p.feats[0].shape[1], dtype=torch.long)]
    for lvl, s in enumerate(p.slots):
        parent, child = p.feats[lvl], p.feats[lvl + 1]
        sim = torch.empty(t, parent.shape[1], 4)
        step = max(1, _BLOCK // (s.numel() * x.shape[-1]))
        for f in range(0, t, step):
            sim[f:f + step] = _cos(parent[f:f + step, :, None, :], child[f:f + step][:, s.clamp(min=0)], head_dim)
        split_sim.append(sim)
        up = torch.empty(child.shape[1], dtype=torch.long)
        valid = s >= 0
        up[s[valid]] = torch.arange(s.shape[0])[:, None].expand_as(s)[valid]
        parents.append(up)
    sizes = [f.shape[1] for f in p.feats]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    boxes = torch.cat(p.boxes)
    ga, gb = torch.nonzero(_contains(boxes, boxes) | _contains(boxes, boxes).T, as_tuple=True)
    if temporal_thresh > 0 and t > 1:
        per_head = None if slow else head_dim
        # one [P0, D] pair of gathers per frame pair, into the same two buffers (fresh ones every frame pair left
        # the C heap fragmented: a 2.96 GB peak on 79 frames of [729, 1152], 1.35 GB with reuse)
        sim = torch.empty(t - 1, ga.numel())  # [T-1, P0]
        nxt = _unit(torch.cat([lv[0] for lv in p.feats]), per_head)  # [C, D] or [C, heads, head_dim]
        bufa, bufb = nxt.new_empty(ga.numel(), *nxt.shape[1:]), nxt.new_empty(gb.numel(), *nxt.shape[1:])
        for f in range(t - 1):
            cur, nxt = nxt, _unit(torch.cat([lv[f + 1] for lv in p.feats]), per_head)
            prod = torch.index_select(cur, 0, ga, out=bufa).mul_(torch.index_select(nxt, 0, gb, out=bufb))
            sim[f] = prod.sum(-1).mean(-1) if per_head else prod.sum(-1)
        f, k = torch.nonzero(sim >= temporal_thresh, as_tuple=True)
        pair = (f, ga[k], gb[k], sim[f, k])
    else:
        empty = torch.zeros(0, dtype=torch.long)
        pair = (empty, empty, empty, torch.zeros(0))
    return SttmPlan(p, grid, split_sim, parents, offsets, boxes, *pair)


@dataclass
class SttmResult:
    """The structure behind an STTM reduction at one threshold (for tests and `vtc show`): the output nodes'
    frame and global cell [K], sorted by frame then top-left patch; the joined node pairs [L, 2]; each node's
    group representative [K] (its smallest node index)."""

    plan: SttmPlan
    frame: Tensor
    cell: Tensor
    pairs: Tensor
    rep: Tensor

    @property
    def nodes(self) -> list[tuple[int, int, int]]:
        """(frame, level, cell within the level) per node."""
        lvl = torch.bucketize(self.cell, torch.tensor(self.plan.offsets), right=True) - 1
        cell = self.cell - torch.tensor(self.plan.offsets)[lvl]
        return list(zip(self.frame.tolist(), lvl.tolist(), cell.tolist(), strict=True))

    @property
    def num_outputs(self) -> int:
        return int(torch.unique(self.rep).numel())


def quadtree_nodes(plan: SttmPlan, threshold: float, border_slots: str) -> Tensor:
    """Top down from the coarsest level, a cell stops (is a node) when it is ≥ threshold-similar to each child
    (`own`: each child that exists); the others' children are examined at the next level; the finest level's
    remaining cells are nodes.  → bool [T, C]: which cells are nodes."""
    p = plan.pyramid
    active = torch.ones(p.feats[0].shape[:2], dtype=torch.bool)
    masks = []
    for lvl, sim in enumerate(plan.split_sim):
        ok = sim >= threshold
        stop = ok.all(-1) if border_slots == "reference" else (ok | (p.slots[lvl] < 0)).all(-1)
        masks.append(active & stop)
        active = (active & ~stop)[:, plan.parents[lvl + 1]]
    masks.append(active)
    return torch.cat(masks, 1)


def union_pairs(n: int, pairs: Tensor, mode: str) -> Tensor:
    """Representative (smallest index) of each node's group.  `exact`: connected components; `reference`: the
    authors' vectorised loop (scatter-min both ends, rep ← rep[rep], until rep is idempotent), which can leave
    joined pairs apart."""
    rep = torch.arange(n)
    if not pairs.numel():
        return rep
    a, b = pairs[:, 0], pairs[:, 1]
    if mode == "reference":
        while True:
            m = torch.minimum(rep[a], rep[b])
            rep = rep.scatter_reduce(0, a, m, reduce="amin")
            rep = rep.scatter_reduce(0, b, m, reduce="amin")
            rep = rep[rep]
            if torch.equal(rep, rep[rep]):
                return rep
    while True:  # exact: propagate the minimum label along edges until nothing changes
        m = torch.minimum(rep[a], rep[b])
        new = rep.scatter_reduce(0, a, m, reduce="amin").scatter_reduce(0, b, m, reduce="amin")
        new = new[new]
        if torch.equal(new, rep):
            return rep
        rep = new


def sttm_structure(plan: SttmPlan, threshold: float, slow: bool, border_slots: str, union: str) -> SttmResult:
    """The quadtree's nodes at `threshold`, the cross-frame pairs among them (fast path: by node a then b; slow
    path, `slow`: per frame pair by similarity descending, the authors' adjacent-duplicate filter on b) and the
    groups they form."""
    h, w = plan.grid
    is_node = quadtree_nodes(plan, threshold, border_slots)
    frame, cell = torch.nonzero(is_node, as_tuple=True)
    order = torch.argsort(frame * h * w + plan.boxes[cell, 0] * w + plan.boxes[cell, 1])
    frame, cell = frame[order], cell[order]
    index = torch.full(is_node.shape, -1, dtype=torch.long)
    index[frame, cell] = torch.arange(frame.numel())
    pf = plan.pair_frame
    a, b = index[pf, plan.pair_a], index[pf + 1, plan.pair_b]
    both = (a >= 0) & (b >= 0)
    a, b, pf, sim = a[both], b[both], pf[both], plan.pair_sim[both]
    order = torch.argsort(a * frame.numel() + b)
    if slow:  # within each frame pair: similarity descending, ties in (a, b) order
        by_sim = order[torch.argsort(sim[order], descending=True, stable=True)]
        order = by_sim[torch.argsort(pf[by_sim], stable=True)]
    a, b = a[order], b[order]
    if slow:
        keep = torch.ones(len(b), dtype=torch.bool)
        keep[1:] = b[1:] != b[:-1]
        a, b = a[keep], b[keep]
    pairs = torch.stack([a, b], 1)
    return SttmResult(plan, frame, cell, pairs, union_pairs(frame.numel(), pairs, union))


def sttm_reduction(st: SttmResult, weighted_avg: bool) -> Reduction:
    """Every group becomes one token: the plain mean of its nodes (weighted_avg: area-weighted), represented by
    its earliest node; the map from the patch grid is exact."""
    plan, p = st.plan, st.plan.pyramid
    t, n = p.feats[-1].shape[:2]
    w = plan.grid[1]
    width = max(m.shape[1] for m in p.patches)
    patches = torch.cat([F.pad(m, (0, width - m.shape[1]), value=-1) for m in p.patches])  # [C, M]
    weights = torch.cat([F.pad(m, (0, width - m.shape[1])) for m in p.weights])
    survivors = torch.unique(st.rep)  # sorted: groups in the order of their earliest node
    row = torch.searchsorted(survivors, st.rep)
    box = plan.boxes[st.cell]
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    if weighted_avg:
        total = torch.zeros(len(survivors), dtype=torch.long).index_add_(0, row, area)
    else:
        total = torch.bincount(row, minlength=len(survivors))
    scale = 1.0 / total.double()
    pat = patches[st.cell]  # [K, M]
    real = pat >= 0
    dst = row[:, None].expand_as(pat)[real]
    src = (pat + st.frame[:, None] * n)[real]
    wts = (weights[st.cell] * scale[row][:, None])[real]
    reps = st.frame[survivors] * n + box[survivors, 0] * w + box[survivors, 1]
    red = Reduction.build(dst, src, wts, reps, t * n)
    red.info.update(spatial_nodes=int(st.frame.numel()), temporal_pairs=int(st.pairs.shape[0]))
    return red


def sttm_reduce(x: Tensor, grid: tuple[int, int], threshold: float, temporal_thresh: float, root_level: int,
                weighted_avg: bool, slow_ver: bool, head_dim: int | None, border_slots: str, union: str
                ) -> tuple[Reduction, SttmResult]:
    """STTM with fixed thresholds.  x: [T, N, D] → (Reduction, structure)."""
    st = sttm_structure(_plan(x, grid, root_level, weighted_avg, head_dim, temporal_thresh, slow_ver), threshold,
                        slow_ver, border_slots, union)
    return sttm_reduction(st, weighted_avg), st


def _plan(x: Tensor, grid: tuple[int, int], root_level: int, weighted_avg: bool, head_dim: int | None,
          temporal_thresh: float, slow_ver: bool) -> SttmPlan:
    sizes = level_sizes(*grid)
    root_level = max(-len(sizes), min(root_level, len(sizes) - 1))
    return plan_sttm(x, grid, root_level, "sum" if weighted_avg else "mean", head_dim, temporal_thresh, slow_ver)


@implements("sttm")
def sttm(
    x: Tensor, *, grid: tuple[int, int], ratio: float | None, signals: Signals, threshold: float | None,
    temporal_thresh: float, root_level: int, weighted_avg: bool, slow_ver: bool,
    head_dim: int | None, border_slots: str, union: str,
) -> Reduction:
    """STTM.  x: [T, N, D] on an (h, w) grid.  With --ratio and no `threshold`, the spatial threshold is searched
    (bisection, 12 steps) for the largest output count not above ratio·T·N."""
    if head_dim and x.shape[-1] % head_dim:
        head_dim = None
    plan = _plan(x, grid, root_level, weighted_avg, head_dim, temporal_thresh, slow_ver)

    def at(th: float) -> SttmResult:
        return sttm_structure(plan, th, slow_ver, border_slots, union)

    if threshold is not None or ratio is None:
        th = 0.8 if threshold is None else threshold
        red = sttm_reduction(at(th), weighted_avg)
        red.info["threshold"] = th
        return red
    budget = ratio * x.shape[0] * x.shape[1]
    lo, hi = -1.0, 1.0
    best: tuple[float, SttmResult] | None = None
    for _ in range(12):  # only the structure depends on the threshold: the plan is computed once
        mid = (lo + hi) / 2
        st = at(mid)
        if st.num_outputs <= budget:
            best, lo = (mid, st), mid
        else:
            hi = mid
    floor = best is None
    if best is None:  # even merging everything the pyramid allows stays above the budget: that is the floor
        best = (-1.0, at(-1.0))
    red = sttm_reduction(best[1], weighted_avg)
    if floor:
        red.info["budget_floor"] = red.num_outputs
    red.info["threshold"] = round(best[0], 6)
    return red
