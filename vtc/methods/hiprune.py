"""HiPrune: anchors where a middle vision layer looks, their neighbours, then registers where the last layer looks.
Follows Danielement321/HiPrune @ 6e83a12 (`LLaVA/llava/model/llava_arch.py`, `encode_images`), per frame.

Per frame, with a budget of k tokens:
1. anchors: the round(k·α/5) patches receiving the most attention at the object layer (`received_object`);
2. buffers: each anchor's neighbours i−1, i+1, i−w, i+w, clamped to [0, N−1] (the authors' code has no row check,
   so i±1 wraps across rows, and off-grid neighbours clamp onto tokens 0 / N−1: kept as written);
3. registers: the k − |anchors ∪ buffers| patches receiving the most attention at the read-out layer
   (`received`), among those not yet chosen;
kept in raster order. The authors' hard-coded 24×24 grid (24, 575) is the grid width and N−1 here, as in their
Qwen variant.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.methods.declare import implements
from vtc.ops import topk_indices
from vtc.ops.topk import py_round, trunc
from vtc.reduction import Reduction
from vtc.signals import Signals


def hiprune_frame(score_object: Tensor, score_deep: Tensor, k: int, alpha: float, width: int
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """One frame.  score_object, score_deep: [N].  → (keep mask [N] bool, anchors [a] sorted, anchor+buffer mask)."""
    n = score_object.shape[0]
    k = min(k, n)
    shallow = py_round(k * alpha / 5)
    anchors = topk_indices(score_object, shallow)  # ascending
    near = torch.cat([anchors, anchors - 1, anchors + 1, anchors - width, anchors + width]).clamp(0, n - 1)
    buffer = torch.zeros(n, dtype=torch.bool)
    buffer[torch.unique(near)] = True
    deep = max(0, k - int(buffer.sum()))  # the authors' topk raises when anchors + buffers exceed the budget
    registers = topk_indices(score_deep - buffer.to(score_deep.dtype), deep)
    keep = buffer.clone()
    keep[registers] = True
    return keep, anchors, buffer


@implements("hiprune")
def hiprune(
    x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, alpha: float,
    k_per_frame: int | None,
) -> Reduction:
    """HiPrune.  x: [T, N, D] (not read: the selection uses attention only); signals.received_object [T, N] and
    signals.received [T, N] (attention received at the object and read-out layers).  Exactly k tokens per frame
    unless anchors and their neighbours alone exceed k (the authors' code crashes there; vtc keeps them all)."""
    t, n, _ = x.shape
    k = k_per_frame if k_per_frame is not None else max(1, trunc(ratio * n))
    obj = signals.require("received_object", "hiprune").float()
    deep = signals.require("received", "hiprune").float()
    keeps, anchors, over = [], [], 0
    for f in range(t):
        keep, anchor, _ = hiprune_frame(obj[f], deep[f], k, alpha, grid[1])
        keeps.append(keep)
        anchors.append(anchor)
        over += max(0, int(keep.sum()) - min(k, n))
    mask = torch.stack(keeps).reshape(-1)
    red = Reduction.select(torch.nonzero(mask).flatten(), t * n)
    red.info.update(per_frame=min(k, n), anchors_per_frame=int(anchors[0].numel()) if anchors else 0)
    if over:
        red.info["over_budget"] = over
    return red
