"""AIM (ICCV'25), the pre-LLM merge: pool each frame 2×2, then rounds of bipartite matching with plain means.
Follows LaVi-Lab/AIM @ edc24e9 (`llava/model/token_merge.py` `bipartite_soft_matching_merge`, `llava_arch.py`
`get_2dPool`; the Qwen2-VL call sequence in `modeling_qwen2_vl.py`). The in-LLM pruning is out of scope.

Per frame:
1. pool the (h, w) grid: `bilinear` to ceil(h/2)×ceil(w/2) (LLaVA-OneVision), `average` or `max` 2×2 (floor);
   n0 tokens;
2. round 1 with r = n0 // 2, round 2 with r = n0 // 4 (`schedule=qwen2_vl`: a third round down to (h//2)·(w//2),
   so the count matches Qwen2-VL's M-RoPE grid); each round is ToMe's matching (A = even slots, B = odd, each A
   token's most similar B token, the r best merge) with a **plain mean** (a B token becomes the mean of its value
   and its sources' values, whatever they already stand for); output order [unmerged A by score, B].
196 → 98 → 49 on a 27×27 grid (6.7 %). With --ratio the rounds continue (r = min(n − target, n//2)) down to
round(ratio·N) per frame instead of the fixed schedule.

Deviations from the authors' code, each kept by `reference`: fewer than 4 tokens make a round's r zero, and the
authors' function then returns None and the caller crashes; vtc skips that round. `pool=identity` is the
authors' `mm_spatial_pool_mode="identity"`, which returns before the merge (no AIM at all); `pool=none` merges the
unpooled grid (use it on a target whose tokens are already pooled, e.g. --target llava-onevision).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vtc.errors import UsageError
from vtc.methods.declare import implements
from vtc.ops.matching import mean_matching_round
from vtc.ops.pooling import max_pool_2x2, pool_matrix
from vtc.ops.topk import py_round
from vtc.reduction import Reduction
from vtc.signals import Signals


def aim_pool(x: Tensor, grid: tuple[int, int], pool: str) -> tuple[Tensor, Tensor | None, Tensor]:
    """x [T, N, D] → (pooled values [T, n0, D] float32, P [n0, N] float64 or None for max pooling, cover
    [n0, N] float64: the cells each pooled token is drawn from, for its representative)."""
    h, w = grid
    if pool in ("none", "identity") or (pool != "bilinear" and (h < 2 or w < 2)):
        eye = torch.eye(h * w, dtype=torch.float64)
        return x.float(), eye, eye
    pic = x.float().reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
    if pool == "max":
        values, _ = max_pool_2x2(x.float(), grid)
        cover = pool_matrix(grid, "average")
        return values, None, cover
    p = pool_matrix(grid, pool)
    out = F.interpolate(pic, size=((h + 1) // 2, (w + 1) // 2), mode="bilinear", align_corners=False) \
        if pool == "bilinear" else F.avg_pool2d(pic, 2)
    return out.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[-1]), p, p


def aim_schedule(n0: int, grid: tuple[int, int], schedule: str, target: int | None) -> list[int]:
    """The r of every round: fixed (n0//2, n0//4 [, to (h//2)·(w//2)]) or, with a target, rounds of
    r = min(n − target, n//2) (each round's r before the n//2 clamp of `mean_matching_round`)."""
    if target is not None:
        rs, n = [], n0
        while n > target and (r := min(n - target, n // 2)) > 0:
            rs.append(r)
            n -= r
        return rs
    rs = [n0 // 2, n0 // 4]
    if schedule == "qwen2_vl":
        n = n0
        for r in rs:
            n -= min(r, n // 2) if r > 0 else 0
        rs.append(n - (grid[0] // 2) * (grid[1] // 2))
    return rs


def aim_merge(x: Tensor, grid: tuple[int, int], pool: str, schedule: str, target: int | None,
              skip_empty_rounds: bool = True) -> tuple[Tensor, Tensor, Tensor | None, Tensor, list[int]]:
    """Pool and merge every frame.  x: [T, N, D] → (tokens [T, K, D] float32, merge weights [T, K, n0] over the
    pooled tokens, P [n0, N] or None (max), cover [n0, N], the token count before and after every round)."""
    t = x.shape[0]
    values, p, cover = aim_pool(x, grid, pool)
    n0 = values.shape[1]
    weights = torch.eye(n0, dtype=torch.float64).expand(t, n0, n0).clone()
    counts = [n0]
    if pool == "identity":
        return values, weights, p, cover, counts
    for r in aim_schedule(n0, grid, schedule, target):
        if min(r, values.shape[1] // 2) <= 0:
            if not skip_empty_rounds:
                raise UsageError(f"aim (reference): a merge round with r = 0 on {values.shape[1]} tokens; the "
                                 f"authors' code returns None here and crashes (use the default variant).")
            continue
        values, weights = mean_matching_round(values, weights, r)
        counts.append(values.shape[1])
    return values, weights, p, cover, counts


@implements("aim")
def aim(
    x: Tensor, *, grid: tuple[int, int], ratio: float | None, signals: Signals, pool: str,
    schedule: str, skip_empty_rounds: bool,
) -> Reduction:
    """AIM.  x: [T, N, D] on an (h, w) grid → K tokens per frame, in AIM's order (frame-major).

    Without --ratio the counts come from the fixed schedule (49 of 729 on 27×27); with it, per frame
    round(ratio·N) (or the pooled count, if that is already lower: recorded as `budget_floor`)."""
    t, n, _ = x.shape
    target = None if ratio is None else max(1, py_round(ratio * n))
    values, weights, p, cover, counts = aim_merge(x, grid, pool, schedule, target, skip_empty_rounds)
    k = values.shape[1]
    cov = weights @ cover  # [T, K, N]: which cells each token draws on
    rep = cov.argmax(-1) + (torch.arange(t) * n)[:, None]  # [T, K]
    if p is not None:
        full = weights @ p  # [T, K, N]
        f, row, col = torch.nonzero(full > 0, as_tuple=True)
        red = Reduction.build(f * k + row, f * n + col, full[f, row, col], rep.reshape(-1), t * n)
    else:  # max pooling is not linear: the pooled tokens are off-grid rows, the map works on them
        n0 = weights.shape[-1]
        f, row, col = torch.nonzero(weights > 0, as_tuple=True)
        red = Reduction.build(f * k + row, t * n + f * n0 + col, weights[f, row, col], rep.reshape(-1), t * n)
        red.with_extra(_pooled_max(x, grid), torch.arange(t).repeat_interleave(n0))
    red.info.update(round_counts=counts, pool=pool)
    if ratio is not None and k > max(1, py_round(ratio * n)):
        red.info["budget_floor"] = t * k
    return red


def _pooled_max(x: Tensor, grid: tuple[int, int]) -> Tensor:
    """Max-pooled tokens of every frame, flattened [T·n0, D] (the off-grid rows of `pool=max`)."""
    values, _ = max_pool_2x2(x.float(), grid)
    return values.reshape(-1, x.shape[-1]).to(x.dtype)
