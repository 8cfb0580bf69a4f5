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

from vtc.methods.registry import Param, register
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
    """Per level (coarsest first): sizes, features [T, n_l, D], patch weights [n_l, h·w], boxes [n_l, 4]
    (y0, x0, y1, x1; exclusive ends), child slots into the next level [n_l, 4]."""

    sizes: list[tuple[int, int]]
    feats: list[Tensor]
    weights: list[Tensor]
    boxes: list[Tensor]
    slots: list[Tensor]


def build_pyramid(x: Tensor, grid: tuple[int, int], root_level: int, mode: str) -> Pyramid:
    """x [T, h·w, D] → the pyramid from the input up to the width of `level_sizes(h, w)[root_level]`."""
    h, w = grid
    sizes = level_sizes(h, w)
    target_w = sizes[root_level][1]
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    feats, weights = [x.float()], [torch.eye(h * w, dtype=torch.float64)]
    boxes = [torch.stack([yy, xx, yy + 1, xx + 1], -1).reshape(-1, 4)]
    level_hw, slots = [(h, w)], []
    while level_hw[0][1] != target_w:
        ch, cw = level_hw[0]
        s = child_slots(ch, cw)
        feats.insert(0, pool_level(feats[0], s, mode))
        weights.insert(0, pool_level(weights[0][None], s, mode)[0])
        b = boxes[0][s.clamp(min=0)]
        big = torch.where((s >= 0)[..., None], b, torch.tensor([1 << 30, 1 << 30, -1, -1]))
        boxes.insert(0, torch.cat([big[..., :2].min(1).values, big[..., 2:].max(1).values], -1))
        slots.insert(0, s)
        level_hw.insert(0, (math.ceil(ch / 2), math.ceil(cw / 2)))
    return Pyramid(level_hw, feats, weights, boxes, slots)


def _cos(a: Tensor, b: Tensor, head_dim: int | None) -> Tensor:
    """Cosine similarity along the last dim (F.cosine_similarity), averaged over heads of `head_dim` channels."""
    if head_dim:
        a = a.reshape(*a.shape[:-1], -1, head_dim)
        b = b.reshape(*b.shape[:-1], -1, head_dim)
        return F.cosine_similarity(a, b, dim=-1).mean(-1)
    return F.cosine_similarity(a, b, dim=-1)


def quadtree_nodes(p: Pyramid, threshold: float, head_dim: int | None, border_slots: str
                   ) -> list[tuple[int, int, int]]:
    """Output nodes (frame, level, cell), sorted by frame then top-left patch."""
    t = p.feats[0].shape[0]
    h, w = p.sizes[-1]
    nodes: list[tuple[int, int, int]] = []
    active = [(f, c) for f in range(t) for c in range(p.feats[0].shape[1])]
    for lvl in range(len(p.feats) - 1):
        if not active:
            break
        frames = torch.tensor([a[0] for a in active])
        cells = torch.tensor([a[1] for a in active])
        s = p.slots[lvl][cells]  # [A, 4]
        valid = s >= 0
        child = p.feats[lvl + 1][frames[:, None], s.clamp(min=0)]  # invalid slots: the child level's cell 0
        sim = _cos(p.feats[lvl][frames, cells][:, None, :], child, head_dim)  # [A, 4]
        ok = sim >= threshold
        stop = ok.all(1) if border_slots == "reference" else (ok | ~valid).all(1)
        nxt = []
        for i in range(len(active)):
            if bool(stop[i]):
                nodes.append((int(frames[i]), lvl, int(cells[i])))
            else:
                nxt.extend((int(frames[i]), int(c)) for c in s[i][valid[i]])
        active = nxt
    nodes.extend((f, len(p.feats) - 1, c) for f, c in active)

    def key(node: tuple[int, int, int]) -> int:
        y0, x0 = p.boxes[node[1]][node[2], :2].tolist()
        return node[0] * h * w + y0 * w + x0

    return sorted(nodes, key=key)


def _contains(a: Tensor, b: Tensor) -> Tensor:
    """Boxes a [n, 4], b [m, 4] → [n, m]: a contains b."""
    return ((a[:, None, :2] <= b[None, :, :2]) & (a[:, None, 2:] >= b[None, :, 2:])).all(-1)


def temporal_pairs(frame: Tensor, box: Tensor, feat: Tensor, thresh: float, head_dim: int | None, slow: bool
                   ) -> Tensor:
    """Pairs (a in frame t, b in frame t+1) with nested boxes and similarity ≥ thresh.  → int64 [L, 2], by
    frame pair, then (fast path) by a then b, or (slow path, `slow`) by similarity descending with the authors'
    adjacent-duplicate filter on b."""
    out = []
    t_max = int(frame.max()) if frame.numel() else -1
    for f in range(t_max):
        ia = torch.nonzero(frame == f).flatten()
        ib = torch.nonzero(frame == f + 1).flatten()
        if not ia.numel() or not ib.numel():
            continue
        nested = _contains(box[ia], box[ib]) | _contains(box[ib], box[ia]).T
        ka, kb = torch.nonzero(nested, as_tuple=True)  # candidate pairs; similarity per pair, as the authors do
        if slow or not head_dim:
            a, b = feat[ia[ka]], feat[ib[kb]]
            sim = ((a / (a.norm(dim=-1, keepdim=True) + 1e-8)) * (b / (b.norm(dim=-1, keepdim=True) + 1e-8))).sum(-1)
        else:
            a = feat[ia[ka]].reshape(len(ka), -1, head_dim)
            b = feat[ib[kb]].reshape(len(kb), -1, head_dim)
            a = a / (a.norm(dim=-1, keepdim=True) + 1e-8)
            b = b / (b.norm(dim=-1, keepdim=True) + 1e-8)
            sim = (a * b).sum(-1).mean(-1)
        passed = sim >= thresh
        ka, kb, sim = ka[passed], kb[passed], sim[passed]
        if slow:
            order = torch.argsort(sim, descending=True, stable=True)
            ka, kb = ka[order], kb[order]
            keep = torch.ones(len(kb), dtype=torch.bool)
            keep[1:] = kb[1:] != kb[:-1]
            ka, kb = ka[keep], kb[keep]
        out.append(torch.stack([ia[ka], ib[kb]], 1))
    return torch.cat(out) if out else torch.zeros(0, 2, dtype=torch.long)


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


@dataclass
class SttmResult:
    """The structure behind an STTM reduction (for tests and `vtc show`)."""

    nodes: list[tuple[int, int, int]]
    pairs: Tensor
    rep: Tensor


def sttm_reduce(x: Tensor, grid: tuple[int, int], threshold: float, temporal_thresh: float, root_level: int,
                weighted_avg: bool, slow_ver: bool, head_dim: int | None, border_slots: str, union: str
                ) -> tuple[Reduction, SttmResult]:
    """STTM with fixed thresholds.  x: [T, N, D] → (Reduction, structure)."""
    t, n, _ = x.shape
    h, w = grid
    mode = "sum" if weighted_avg else "mean"
    sizes = level_sizes(h, w)
    root_level = max(-len(sizes), min(root_level, len(sizes) - 1))
    p = build_pyramid(x, grid, root_level, mode)
    nodes = quadtree_nodes(p, threshold, head_dim, border_slots)
    frame = torch.tensor([nd[0] for nd in nodes])
    box = torch.stack([p.boxes[nd[1]][nd[2]] for nd in nodes])
    feat = torch.stack([p.feats[nd[1]][nd[0], nd[2]] for nd in nodes])
    pairs = temporal_pairs(frame, box, feat, temporal_thresh, head_dim, slow_ver) if temporal_thresh > 0 \
        else torch.zeros(0, 2, dtype=torch.long)
    rep = union_pairs(len(nodes), pairs, union)
    survivors = torch.unique(rep)  # sorted: groups in the order of their earliest node
    row = torch.searchsorted(survivors, rep)
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    count = torch.bincount(row, minlength=len(survivors))
    total_area = torch.zeros(len(survivors), dtype=torch.long).index_add_(0, row, area)
    dst, src, wts = [], [], []
    for i, nd in enumerate(nodes):
        wv = p.weights[nd[1]][nd[2]]
        idx = torch.nonzero(wv).flatten()
        scale = 1.0 / float(total_area[row[i]]) if weighted_avg else 1.0 / float(count[row[i]])
        dst.append(torch.full((idx.numel(),), int(row[i])))
        src.append(idx + nd[0] * n)
        wts.append(wv[idx] * scale)
    reps = frame[survivors] * n + box[survivors, 0] * w + box[survivors, 1]
    red = Reduction.build(torch.cat(dst), torch.cat(src), torch.cat(wts), reps, t * n)
    red.info.update(spatial_nodes=len(nodes), temporal_pairs=int(pairs.shape[0]))
    return red, SttmResult(nodes, pairs, rep)


@register(
    "sttm",
    summary="STTM: per-frame quadtree merging of similar regions, then merging of nested regions across frames",
    paper="Hyun et al., Multi-Granular Spatio-Temporal Token Merging for Training-Free Acceleration of Video LLMs, "
    "ICCV 2025",
    params=[
        Param("threshold", "spatial: a cell stops splitting when it is this cosine-similar to each child "
              "(default: searched to reach --ratio when one is given, else 0.8)", "threshold", lo=-1.0, hi=1.0),
        Param("temporal_thresh", "cross-frame: nested nodes this similar are merged (≤ 0: no temporal merging)",
              "temporal_thresh", lo=-1.0, hi=1.0),
        Param("root_level", "coarsest pyramid level to start from (index into the size list; -1 = no spatial "
              "merging)", "root_level"),
        Param("weighted_avg", "area-weighted means (sum pooling) instead of means of means", "weighted_avg"),
        Param("slow_ver", "the authors' slow temporal path (similarity-sorted pairs, adjacent dedupe)", "slow_ver"),
        Param("head_dim", "compare per attention head of this many channels, averaged", "head_dim", lo=1),
        Param("border_slots", "odd borders: compare a parent with its real children (own) or also with the child "
              "level's first cell in the missing slots (reference)", choices=("own", "reference")),
        Param("union", "cross-frame groups: connected components (exact) or the authors' union–find (reference)",
              choices=("exact", "reference")),
    ],
    paper_ratio=None,
    variants={"reference": {"border_slots": "reference", "union": "reference"}},
)
def sttm(
    x: Tensor, *, grid: tuple[int, int], ratio: float | None, signals: Signals, threshold: float | None = None,
    temporal_thresh: float = 0.6, root_level: int = 1, weighted_avg: bool = False, slow_ver: bool = False,
    head_dim: int | None = None, border_slots: str = "own", union: str = "exact",
) -> Reduction:
    """STTM.  x: [T, N, D] on an (h, w) grid.  With --ratio and no `threshold`, the spatial threshold is searched
    (bisection, 12 steps) for the largest output count not above ratio·T·N."""
    if head_dim and x.shape[-1] % head_dim:
        head_dim = None
    args = (temporal_thresh, root_level, weighted_avg, slow_ver, head_dim, border_slots, union)
    if threshold is not None or ratio is None:
        red, _ = sttm_reduce(x, grid, 0.8 if threshold is None else threshold, *args)
        red.info["threshold"] = 0.8 if threshold is None else threshold
        return red
    budget = ratio * x.shape[0] * x.shape[1]
    lo, hi = -1.0, 1.0
    best: tuple[float, Reduction] | None = None
    for _ in range(12):
        mid = (lo + hi) / 2
        red, _ = sttm_reduce(x, grid, mid, *args)
        if red.num_outputs <= budget:
            best, lo = (mid, red), mid
        else:
            hi = mid
    if best is None:  # even merging everything the pyramid allows stays above the budget: that is the floor
        best = (-1.0, sttm_reduce(x, grid, -1.0, *args)[0])
        best[1].info["budget_floor"] = best[1].num_outputs
    best[1].info["threshold"] = round(best[0], 6)
    return best[1]
