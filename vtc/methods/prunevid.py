"""PruneVid (ACL'25 Findings), stage 1: clustered temporal windows, static/dynamic split, density-peak
spatial merging.  Follows Visual-AI/PruneVid @ b12600c (`merge_frames_dynamic`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.methods.declare import implements
from vtc.ops import dpc_knn, l2_normalize
from vtc.reduction import Reduction
from vtc.signals import Signals
from vtc.stages import segment


def _group_count(size: int, cluster_ratio: float, min_cluster_size: int) -> int:
    return size if size < min_cluster_size else max(1, int(size * cluster_ratio))


def _fit_cluster_ratio(sizes: list[int], budget: float, min_cluster_size: int) -> float:
    """Largest cluster_ratio in (0, 1] whose output count stays within `budget` (bisection; count is monotone)."""
    lo, hi = 0.0, 1.0
    if sum(_group_count(s, hi, min_cluster_size) for s in sizes) <= budget:
        return 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if sum(_group_count(s, mid, min_cluster_size) for s in sizes) <= budget:
            lo = mid
        else:
            hi = mid
    return max(lo, 1e-9)


@implements("prunevid")
def prunevid(
    x: Tensor,
    *,
    grid: tuple[int, int],
    ratio: float | None,
    signals: Signals,
    tau: float,
    segment_ratio: float,
    cluster_ratio: float | None,
    knn: int,
    spatial_knn: int,
    min_cluster_size: int,
    segmenter: str,
) -> Reduction:
    """PruneVid stage 1.  x: [T, N, D].

    1. Windows: DPC-kNN clusters of frame means, refined into contiguous runs (`prunevid_windows`).
    2. In a window of W frames, position n is static iff the mean pairwise cosine over its W tokens > τ;
       a static position becomes its time mean (W = 1: everything is dynamic).
    3. Each group (the window's static tokens; each frame's dynamic tokens) with ≥ min_cluster_size tokens
       is clustered: int(size·cluster_ratio) DPC-kNN centers, every token joins the nearest center, output =
       plain cluster mean, in descending center score. Smaller groups are kept as they are.
    4. Output per window: static group, then the frames' dynamic groups.

    With --ratio and no `cluster_ratio`, the largest cluster_ratio meeting the ratio is found by bisection (the
    count is monotone in it); when the unmerged small groups alone exceed the budget, groups of ≥ 2 are clustered.

    Deviations: the authors crash for T < 7 and when int(size·cluster_ratio) = 0; vtc uses k = min(k, T) and
    at least one cluster. Ties in density break by index instead of random jitter.
    """
    t, n, d = x.shape
    segments = segment(segmenter, x, signals, native="prunevid", segment_ratio=segment_ratio, k=knn)
    # every group: (features [n_g, D], sources [n_g, W] flat indices, weights per source, rep [n_g])
    plan: list[tuple[Tensor, Tensor, Tensor]] = []
    for s, e in segments.tolist():
        w = e - s + 1
        xw = x[s : e + 1].float()
        if w > 1:
            xn = l2_normalize(xw)
            gram = torch.einsum("wnd,vnd->n", xn, xn)
            static = (gram - w) / (w * (w - 1)) > tau
        else:
            static = torch.zeros(n, dtype=torch.bool)
        pos = torch.nonzero(static).flatten()
        frames = torch.arange(s, e + 1)
        if pos.numel():
            plan.append((xw[:, pos].mean(0), (frames[None, :] * n + pos[:, None]), s * n + pos))
        for f in range(s, e + 1):
            dyn = torch.nonzero(~static).flatten()
            if dyn.numel():
                plan.append((x[f, dyn].float(), (f * n + dyn)[:, None], f * n + dyn))
    sizes = [p[0].shape[0] for p in plan]
    if cluster_ratio is None and ratio is not None:
        budget = ratio * t * n
        if sum(_group_count(s, 0.0, min_cluster_size) for s in sizes) > budget:
            min_cluster_size = 2  # small groups alone exceed the budget: cluster them too (vtc extension)
        cluster_ratio = _fit_cluster_ratio(sizes, budget, min_cluster_size)
    elif cluster_ratio is None:
        cluster_ratio = 0.5
    groups: list[tuple[Tensor, Tensor, int]] = []
    for feats, srcs, reps in plan:
        size, width = srcs.shape
        if size < min_cluster_size:
            for i in range(size):
                groups.append((srcs[i], torch.full((width,), 1.0 / width), int(reps[i])))
            continue
        m = _group_count(size, cluster_ratio, min_cluster_size)
        peaks = dpc_knn(feats, spatial_knn)
        centers = torch.topk(peaks.score, m).indices  # score order = output order
        assign = peaks.distance[:, centers].argmin(-1)
        assign[centers] = torch.arange(m)
        for j in range(m):
            members = srcs[assign == j]  # [n_j, W]
            groups.append((members.reshape(-1), torch.full((members.numel(),), 1.0 / members.numel()),
                           int(reps[centers[j]])))
    red = Reduction.from_groups(groups, t * n, segments=segments)
    red.info.update(cluster_ratio=cluster_ratio, min_cluster_size=min_cluster_size,
                    order="window, then the static group before each frame's dynamic group; clusters by score")
    return red
