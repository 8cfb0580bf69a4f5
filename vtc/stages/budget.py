"""Budgeters: share a token budget among frames (uniform, by query relevance, by audio saliency).

Every budgeter returns per-frame counts [T] int64 that sum to the total (as far as per-frame caps allow), each
between `minimum` and N.
"""

from __future__ import annotations

import torch
from torch import Tensor


def apportion(weights: Tensor, total: int, cap: int, minimum: int = 1) -> Tensor:
    """Integer shares of `total` proportional to `weights` [T] (largest remainder), each in [minimum, cap]."""
    t = weights.numel()
    total = max(min(total, t * cap), t * minimum)
    w = weights.double().clamp_min(0)
    w = w / w.sum() if float(w.sum()) > 0 else torch.full((t,), 1.0 / t, dtype=torch.float64)
    counts = torch.full((t,), minimum, dtype=torch.long)
    remaining = total - t * minimum
    for _ in range(t + 1):  # water-filling: redistribute what the caps cut off
        free = counts < cap
        if remaining <= 0 or not free.any():
            break
        share = w * free
        share = share / share.sum() if float(share.sum()) > 0 else free.double() / free.sum()
        raw = share * remaining
        add = torch.minimum(raw.floor().long(), cap - counts)
        rest = remaining - int(add.sum())
        frac = torch.where(free & (counts + add < cap), raw - raw.floor(), torch.full_like(raw, -1.0))
        for i in torch.argsort(frac, descending=True, stable=True)[:max(rest, 0)].tolist():
            if frac[i] >= 0:
                add[i] += 1
        counts += add
        remaining = total - int(counts.sum())
    return counts


def uniform_budget(num_frames: int, tokens_per_frame: int, ratio: float) -> Tensor:
    """round(ratio·T·N) tokens spread evenly over the frames."""
    return apportion(torch.ones(num_frames), round(ratio * num_frames * tokens_per_frame), tokens_per_frame)


def relevance_budget(relevance: Tensor, tokens_per_frame: int, ratio: float, temperature: float = 0.05) -> Tensor:
    """Frames that match the query get more: weights = softmax(relevance / temperature), at least 1 per frame.

    relevance: [T] (cosine of frame and query embeddings). A small temperature concentrates the budget.
    """
    w = torch.softmax(relevance.double() / max(temperature, 1e-6), 0)
    t = relevance.numel()
    return apportion(w, round(ratio * t * tokens_per_frame), tokens_per_frame)


def saliency_budget(saliency: Tensor, times: Tensor, tokens_per_frame: int, ratio: float,
                    tokens_per_sec: int = 25, window_seconds: float = 2.0) -> Tensor:
    """Frames in louder audio get more: each frame is weighted by the mean audio saliency of the window around
    it (OmniZip's 0.75 − 0.40·S mapping made proportional), at least 1 token per frame."""
    t = times.numel()
    w = torch.empty(t, dtype=torch.float64)
    half = int(window_seconds * tokens_per_sec / 2)
    for i, ts in enumerate(times.tolist()):
        c = int(round(ts * tokens_per_sec))
        seg = saliency[max(0, c - half) : c + half]
        w[i] = float(seg.mean()) if seg.numel() else 0.0
    keep_share = 1 - (0.75 - 0.40 * w)  # 0.25 for silence .. 0.65 for the loudest
    return apportion(keep_share, round(ratio * t * tokens_per_frame), tokens_per_frame)
