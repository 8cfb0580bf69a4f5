"""Greedy max–min (farthest-point) diversity selection under cosine distance (DivPrune's core).

Memory is O(L·D + L·block) and never an L×L matrix; time is O(K·L·D) plus the first pick's neighbour search:

- **First pick** (the token whose nearest other token is farthest): every token's nearest-neighbour distance is
  bounded from above cheaply (its neighbours along the given index offsets — the same patch in the next frame, the
  next patch in the row), then tightened with growing batches of columns in a fixed pseudo-random order, only for
  the tokens whose bound still reaches the best exact distance found so far; exact distances are computed for the
  most promising of those each round. Exact; a few blocks for video features, and a few thousand columns per token
  instead of all L for structureless ones (i.i.d. noise, where no token has a near neighbour to hint). The sampled
  columns are multiplied in bfloat16, the bound widened by the product's proven error (`bf16_band`): still an upper
  bound, at a third of the time on CPUs with bfloat16 units; the exact distances stay float32.
- **Greedy steps**: the running minimum distance to the selected set is updated lazily, once per `_PENDING`
  selections, with one matrix product; between updates the argmax is found exactly from the top of the stale
  (upper-bound) vector, refreshed against the pending selections. The hot tokens' cosines to each other are
  computed a block of rows at a time (`_HotRows`: the wanted row and the next likely picks), so a selection costs a
  row read, not a matrix–vector product whose thread start-up dominates on a busy CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vtc.ops.components import bf16_band, bf16_rounding, bf16_slack
from vtc.ops.similarity import l2_normalize

_BLOCK = 512  # rows per exact-distance block (memory O(block·L))
_SAMPLE = 1024  # columns in the first batch that bounds every token's nearest-neighbour distance (then doubling)
_HOT = 1024  # tokens whose distance to the selection is kept exact between two full updates
_MARGIN = 1e-5  # float32 rounding between two ways of computing the same distance
_ROWS = 64  # hot rows computed together (the likely next picks)


def max_min_diversity(x: Tensor, k: int, neighbours: Sequence[int] = ()) -> Tensor:
    """Greedy farthest-point selection under cosine distance 1 − cos.  x: [L, D] → selection order [k].

    Step 0 picks the token whose nearest other token is farthest (the second-smallest distance of its row, the
    smallest being itself); then each step picks the token farthest from the selected set (first index on ties).
    `neighbours`: index offsets whose tokens are likely near (e.g. N for the same patch one frame later, 1 for the
    next patch); they only speed up the first pick, never change it.
    """
    xn = l2_normalize(x.float())
    length = xn.shape[0]
    k = max(1, min(k, length))
    order = [_most_isolated(xn, neighbours)]
    min_dist = 1 - xn @ xn[order[0]]  # exact running minimum distance to the selected set
    while len(order) < k:
        # the hot set: the tokens farthest from the selection; every other token is at most `floor` away
        size = min(length, _HOT)
        hot_dist, hot = torch.topk(min_dist, size)
        floor = float(hot_dist[-1]) if size < length else -float("inf")
        hot_x = xn[hot]
        rows = _HotRows(hot_x)
        first = len(order)
        while len(order) < k:
            best = hot_dist.max()
            if float(best) <= floor + _MARGIN:  # the farthest token might now be outside the hot set
                break
            at = torch.nonzero(hot_dist == best).flatten()
            jj = int(at[torch.argmin(hot[at])])  # first index on ties
            order.append(int(hot[jj]))
            hot_dist = torch.minimum(hot_dist, 1 - rows.get(jj, hot_dist))
        if len(order) == first:  # nothing stands out from the rest (ties at the floor): take the exact argmax
            j = int(torch.argmax(min_dist))
            order.append(j)
        min_dist = torch.minimum(min_dist, _nearest(xn, xn[order[first:]]))
    return torch.tensor(order, dtype=torch.long)


class _HotRows:
    """Cosines of hot tokens to the whole hot set [H, D], a block of rows at a time: when row jj is wanted, it is
    computed together with the `_ROWS` hot tokens farthest from the selection that have none yet (the likely next
    picks) — one matrix product per block instead of one matrix–vector product (and its threads' start-up) per
    selection."""

    def __init__(self, hot_x: Tensor) -> None:
        self.hot_x = hot_x
        self.done = torch.zeros(hot_x.shape[0], dtype=torch.bool)
        self.cos = torch.empty(hot_x.shape[0], hot_x.shape[0])  # [H, H], row i filled once done[i]

    def get(self, jj: int, dist: Tensor) -> Tensor:
        """Row jj: cos(hot jj, every hot token) [H]; `dist` [H] ranks the rows computed with it."""
        if not bool(self.done[jj]):
            todo = torch.nonzero(~self.done).flatten()
            todo = todo[torch.argsort(dist[todo], descending=True, stable=True)[:_ROWS]]
            if not bool((todo == jj).any()):
                todo = torch.cat([torch.tensor([jj]), todo[: _ROWS - 1]])
            self.cos[todo] = self.hot_x[todo] @ self.hot_x.T
            self.done[todo] = True
        return self.cos[jj]


def _nearest(rows: Tensor, to: Tensor) -> Tensor:
    """Cosine distance from each of rows [n, D] to its nearest row of `to` [m, D] → [n]."""
    return (1 - rows @ to.T).amin(1)


def _most_isolated(xn: Tensor, neighbours: Sequence[int]) -> int:
    """argmax over tokens of the second-smallest entry of their distance row (first index on ties).

    Every token's nearest-neighbour distance is bounded from above by its distance to any other token: first its
    hinted neighbours, then columns taken in a fixed pseudo-random order, a growing batch at a time, for the tokens
    whose bound still reaches the best exact value found so far (the `alive` ones). Each round also computes exact
    values for the `_BLOCK` alive tokens with the highest bounds. A token is dropped once its bound falls below the
    best exact value, so structureless inputs (no near neighbours to hint) cost a few sampled columns per token
    plus exact rows for the tokens whose nearest neighbour is genuinely far — not an L×L pass."""
    length = xn.shape[0]
    if length <= _BLOCK:
        return int(torch.argmax(_second_smallest(xn, xn)))
    bound = torch.full((length,), float("inf"))
    for o in neighbours:
        if 0 < o < length:
            d = 1 - (xn[o:] * xn[:-o]).sum(1)
            bound[o:] = torch.minimum(bound[o:], d)
            bound[:-o] = torch.minimum(bound[:-o], d)
    columns = torch.randperm(length, generator=torch.Generator().manual_seed(0))
    # sampled columns in bfloat16 (a third of float32's time on CPUs with bfloat16 units): a cosine v stands for one
    # at least v − bf16_band(v), so 1 − v + band is still an upper bound on the distance
    low, slack = xn.to(torch.bfloat16), bf16_slack(*bf16_rounding(xn), xn.shape[1])
    alive = torch.arange(length)
    exact = torch.full((length,), -float("inf"))  # exact value where computed
    best, pos, step = -float("inf"), 0, _SAMPLE
    while alive.numel():
        if pos < length:  # tighten the bounds of the alive tokens with the next batch of columns
            cols = columns[pos : pos + step]
            pos, step = pos + cols.numel(), step * 2
            slot = torch.full((length,), -1, dtype=torch.long)
            slot[cols] = torch.arange(cols.numel())
            chunk, xc = max(1, (1 << 22) // cols.numel()), low[cols]  # [chunk, cols] cosines at a time
            for s in range(0, alive.numel(), chunk):
                rows = alive[s : s + chunk]
                v = low[rows] @ xc.T  # [rows, cols] bfloat16 cosines
                own = slot[rows]  # a token is not its own neighbour
                mine = torch.nonzero(own >= 0).flatten()
                v[mine, own[mine]] = -2.0
                top = v.amax(1).float()
                bound[rows] = torch.minimum(bound[rows], 1 - top + bf16_band(slack, top))
        # exact values for the most promising alive tokens (all of them once every column has been seen)
        by_bound = alive[torch.argsort(bound[alive], descending=True, stable=True)]
        rows = by_bound if pos >= length else by_bound[:_BLOCK]
        exact[rows] = _second_smallest(xn[rows], xn)
        best = max(best, float(exact[rows].max()))
        done = torch.zeros(length, dtype=torch.bool)
        done[rows] = True
        alive = alive[~done[alive] & (bound[alive] + _MARGIN >= best)]
    top = torch.nonzero(exact == exact.max()).flatten()
    return int(top.min())


def _second_smallest(rows: Tensor, xn: Tensor) -> Tensor:
    """Second-smallest cosine distance of each row [n, D] to all of xn [L, D] (the smallest is itself) → [n]."""
    out = torch.empty(rows.shape[0])
    for s in range(0, rows.shape[0], _BLOCK):
        block = 1 - rows[s : s + _BLOCK] @ xn.T
        out[s : s + _BLOCK] = torch.topk(block, min(2, xn.shape[0]), dim=1, largest=False).values[:, -1]
    return out
