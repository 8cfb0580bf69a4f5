"""Temporal segmenters: split T frames into contiguous, ordered segments.

Every segmenter returns segments [S, 2] int64 of inclusive [start, end] frame ranges covering 0..T-1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vtc.ops import adjacent_cosine, dpc_knn, l2_normalize
from vtc.signals import Signals


def segments_from_cuts(cuts: list[int], num_frames: int) -> Tensor:
    """A cut at t ends a segment after frame t.  → segments [S, 2]."""
    bounds, start = [], 0
    for c in sorted(set(int(c) for c in cuts if 0 <= c < num_frames - 1)):
        bounds.append((start, c))
        start = c + 1
    bounds.append((start, num_frames - 1))
    return torch.tensor(bounds, dtype=torch.long).reshape(-1, 2)


def segments_from_labels(labels: list[int]) -> Tensor:
    """Maximal runs of equal label → segments [S, 2]."""
    cuts = [t for t in range(len(labels) - 1) if labels[t] != labels[t + 1]]
    return segments_from_cuts(cuts, len(labels))


def dyseg(pooled: Tensor, *, min_segments: int = 8, tau: float = 0.9) -> Tensor:
    """FastVID's DySeg.  pooled: [T, D'] per-frame global embedding → segments [S, 2].

    s_t = cos(g_t, g_{t+1}); cuts = the (c − 1) smallest s_t ∪ {t : s_t < τ}.
    Deviation: the authors' top-k raises when T − 1 < c − 1 (T < 8 by default); vtc takes min(c − 1, T − 1).
    """
    t = pooled.shape[0]
    g = l2_normalize(pooled.float())
    s = (g[:-1] * g[1:]).sum(-1)
    k = max(0, min(min_segments - 1, t - 1))
    cuts = torch.topk(s, k, largest=False).indices.tolist() if k > 0 else []
    cuts += torch.nonzero(s < tau).flatten().tolist()
    return segments_from_cuts(cuts, t)


def static_run_lengths(sim: Tensor, tau: float) -> Tensor:
    """run[t, n] = number of consecutive transitions t, t+1, … with sim > τ.  sim: [T-1, N] → [T, N] int64."""
    t1, n = sim.shape
    run = torch.zeros(t1 + 1, n, dtype=torch.long)
    static = sim > tau
    for t in range(t1 - 1, -1, -1):  # loop over frames, vectorised over positions
        run[t] = torch.where(static[t], run[t + 1] + 1, torch.zeros_like(run[t + 1]))
    return run


def holitom_windows(x: Tensor, *, tau: float = 0.8, max_window_size: int = 1024) -> tuple[Tensor, int]:
    """HoliTom's dynamic-programming windows.  x: [T, N, D] → (segments [S, 2], tokens saved R_total).

    gain(s, e) = (e − s) · #{n static through s..e}; dp[i] = max(dp[i−1], max_L dp[i−L] + gain(i−L+1, i));
    ties favour the singleton, then the shortest window (the authors' candidate order, strict improvement).
    """
    t, n, _ = x.shape
    if t == 1:
        return torch.tensor([[0, 0]]), 0
    run = static_run_lengths(adjacent_cosine(x.float()), tau).numpy()  # [T, N]
    # static_count[s, l] = #{n : run[s, n] >= l}  (positions static over l transitions from s)
    hist = np.stack([np.bincount(r, minlength=t + 1) for r in run])  # [T, T+1]
    static_count = hist[:, ::-1].cumsum(1)[:, ::-1]  # [T, T+1]
    dp = np.zeros(t + 1, dtype=np.int64)  # dp[i+1] = best over frames 0..i
    choice = np.ones(t, dtype=np.int64)
    for i in range(t):
        best, best_len = dp[i], 1
        lmax = min(i + 1, max_window_size)
        if lmax >= 2:
            lens = np.arange(2, lmax + 1)
            starts = i - lens + 1
            vals = dp[starts] + static_count[starts, lens - 1] * (lens - 1)
            j = int(np.argmax(vals))
            if vals[j] > best:
                best, best_len = vals[j], int(lens[j])
        dp[i + 1], choice[i] = best, best_len
    bounds, i = [], t - 1
    while i >= 0:
        bounds.append((i - choice[i] + 1, i))
        i -= choice[i]
    return torch.tensor(bounds[::-1], dtype=torch.long), int(dp[t])


def prunevid_windows(x: Tensor, *, segment_ratio: float = 0.25, k: int = 7) -> Tensor:
    """PruneVid's clustered windows.  x: [T, N, D] → segments [S, 2].

    Frame means are clustered with DPC-kNN (C = int(T·segment_ratio) centers, nearest-center labels), then
    refined into contiguous runs: a label's runs shorter than its longest are unlabelled (all of them if the
    longest has length 1); each unlabelled run joins its longer neighbouring run (ties left; none → label 0).
    Deviations: the authors crash for T < k and for C = 0; vtc uses k = min(k, T) and C ≥ 1.
    """
    t = x.shape[0]
    if t == 1:
        return torch.tensor([[0, 0]])
    means = x.float().mean(1)
    peaks = dpc_knn(means, min(k, t))
    c = max(1, int(t * segment_ratio))
    centers = torch.topk(peaks.score, min(c, t)).indices
    labels = peaks.distance[:, centers].argmin(-1)
    labels[centers] = torch.arange(centers.numel())
    return segments_from_labels(refine_labels(labels.tolist()))


def _runs(labels: list[int]) -> list[tuple[int, int, int]]:
    """Maximal runs as (label, start, end inclusive)."""
    out, s = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[s]:
            out.append((labels[s], s, i - 1))
            s = i
    return out


def refine_labels(labels: list[int]) -> list[int]:
    """PruneVid's refinement of frame labels into contiguous runs (see `prunevid_windows`)."""
    lab = list(labels)
    for value in sorted(set(labels)):
        runs = [(s, e) for (v, s, e) in _runs(labels) if v == value]
        longest = max(e - s + 1 for s, e in runs)
        for s, e in runs:
            if longest == 1 or e - s + 1 < longest:
                for i in range(s, e + 1):
                    lab[i] = -1
    t, i = len(lab), 0
    while i < t:
        if lab[i] != -1:
            i += 1
            continue
        j = i
        while j + 1 < t and lab[j + 1] == -1:
            j += 1
        left_len = right_len = 0
        if i > 0:
            a = i - 1
            while a - 1 >= 0 and lab[a - 1] == lab[i - 1]:
                a -= 1
            left_len = i - a
        if j + 1 < t:
            b = j + 1
            while b + 1 < t and lab[b + 1] == lab[j + 1]:
                b += 1
            right_len = b - j
        if left_len == 0 and right_len == 0:
            new = 0
        elif left_len >= right_len:
            new = lab[i - 1]
        else:
            new = lab[j + 1]
        for q in range(i, j + 1):
            lab[q] = new
        i = j + 1
    return lab


def fixed_windows(num_frames: int, *, window: int = 4) -> Tensor:
    """Fixed windows of `window` frames (the last one may be shorter)."""
    starts = list(range(0, num_frames, max(1, window)))
    return torch.tensor([(s, min(s + window, num_frames) - 1) for s in starts], dtype=torch.long)


def _seg_dyseg(x: Tensor, signals: Signals, **p: Any) -> Tensor:
    return dyseg(signals.require("pooled", "dyseg"), **p)


def _seg_holitom(x: Tensor, signals: Signals, **p: Any) -> Tensor:
    return holitom_windows(x, **p)[0]


def _seg_prunevid(x: Tensor, signals: Signals, **p: Any) -> Tensor:
    return prunevid_windows(x, **p)


def _seg_fixed(x: Tensor, signals: Signals, **p: Any) -> Tensor:
    return fixed_windows(x.shape[0], **p)


def _seg_none(x: Tensor, signals: Signals, **p: Any) -> Tensor:
    return torch.tensor([[0, x.shape[0] - 1]])


#: name → fn(x [T, N, D], signals, **params) → segments [S, 2]
SEGMENTERS: dict[str, Callable[..., Tensor]] = {
    "dyseg": _seg_dyseg,
    "holitom": _seg_holitom,
    "prunevid": _seg_prunevid,
    "fixed": _seg_fixed,
    "single": _seg_none,
}


def segment(name: str, x: Tensor, signals: Signals, *, native: str, **native_params: Any) -> Tensor:
    """Segments [S, 2] of x [T, N, D] by segmenter `name`.

    A method passes its own segmenter as `native` with its own knobs (e.g. FastVID's DySeg c and τ); those knobs
    reach only that segmenter, any other runs with its defaults (e.g. FastVID with HoliTom's windows).
    """
    return SEGMENTERS[name](x, signals, **(native_params if name == native else {}))
