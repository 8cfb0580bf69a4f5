"""DyCoke (CVPR'25), TTM stage: position-wise temporal pruning against reference frames.
Follows KD-TAO/DyCoke @ dd74634 (`dycole_ttm`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vtc.methods.declare import implements
from vtc.ops import l2_normalize
from vtc.reduction import Reduction
from vtc.signals import Signals


def dycoke_plan(num_frames: int, reference_loops: bool) -> list[int | None]:
    """Reference frame of every frame: None = kept whole, -1 = dropped, r ≥ 0 = pruned against frame r.

    Odd frames are pruned against the frame before (pairs); frames 2, 6, 10, … against the frame two back
    (groups of four). With `reference_loops` the authors' loop bounds apply: the last frame of an odd T is
    dropped, and the final group of four is skipped (frame t ≡ 2 mod 4 is pruned only if t < T − 2).
    """
    plan: list[int | None] = []
    for t in range(num_frames):
        if reference_loops and num_frames % 2 == 1 and t == num_frames - 1:
            plan.append(-1)
        elif t % 2 == 1:
            plan.append(t - 1)
        elif t % 4 == 2 and (not reference_loops or t < num_frames - 2):
            plan.append(t - 2)
        else:
            plan.append(None)
    return plan


@implements("dycoke")
def dycoke(
    x: Tensor,
    *,
    grid: tuple[int, int],
    ratio: float | None,
    signals: Signals,
    prune_share: float | None,
    reference_loops: bool,
) -> Reduction:
    """DyCoke TTM.  x: [T, N, D].

    Frame t is kept whole or pruned to its q = int((1 − k)·N) positions with the lowest cos(x[ref, n], x[t, n])
    against its reference frame (see `dycoke_plan`). Nothing is averaged: TTM only drops tokens.
    With `prune_share` unset, q is the largest count meeting --ratio given the whole frames (which bound the
    achievable ratio from below: about 1/4 of the frames are kept whole).

    Deviations: the authors crash for T ≤ 4 and silently drop the last frame of an odd T; vtc (default) prunes
    that frame against its predecessor and handles any T ≥ 1. Output is in raster order inside each frame
    (the authors': ascending similarity, kept with `reference_loops`).
    """
    t, n, _ = x.shape
    plan = dycoke_plan(t, reference_loops)
    n_whole = sum(p is None for p in plan)
    n_pruned = sum(p is not None and p >= 0 for p in plan)
    if prune_share is not None:
        q = int((1 - prune_share) * n)
    elif ratio is None:
        q = int((1 - 0.7) * n)
    else:
        q = math.floor((ratio * t * n - n_whole * n) / n_pruned) if n_pruned else n
        q = max(0, min(n, q))
    xn = l2_normalize(x.float())
    index: list[Tensor] = []
    for f, ref in enumerate(plan):
        if ref is None:
            index.append(torch.arange(n) + f * n)
        elif ref >= 0:
            sim = (xn[ref] * xn[f]).sum(-1)
            keep = torch.topk(sim, min(q, n), largest=False).indices
            index.append((keep if reference_loops else keep.sort().values) + f * n)
    red = Reduction.select(torch.cat(index), t * n)
    red.info.update(kept_per_pruned_frame=q, whole_frames=n_whole, pruned_frames=n_pruned, budget_floor=n_whole * n)
    if reference_loops:
        red.info["order"] = "frame, then ascending similarity to the reference frame"
    return red
