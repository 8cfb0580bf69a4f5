"""`budgeted`: a budgeter (uniform, query relevance, audio saliency) feeding a per-frame selector.

The composition QuoTA-style query-aware selection and audio-guided budgets share: per-frame relevance →
per-frame budget → any per-frame selector. Presets combine them (see `presets/query-*.toml`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.errors import UsageError
from vtc.methods.declare import implements
from vtc.ops import max_min_diversity, topk_indices
from vtc.reduction import Reduction
from vtc.signals import Signals
from vtc.stages.budget import relevance_budget, saliency_budget, uniform_budget


def select_frame(x: Tensor, k: int, selector: str, attn: Tensor | None, grid: tuple[int, int]) -> Tensor:
    """k token indices of one frame x [N, D], ascending."""
    n = x.shape[0]
    k = max(0, min(k, n))
    if k == n:
        return torch.arange(n)
    if selector == "attn":
        if attn is None:
            raise UsageError("selector 'attn' needs the attention signal.")
        return topk_indices(attn.float(), k)
    if selector == "diversity":
        return max_min_diversity(x, k).sort().values
    return torch.linspace(0, n - 1, k).round().long().unique()  # uniform stride in raster order


@implements("budgeted")
def budgeted(
    x: Tensor,
    *,
    grid: tuple[int, int],
    ratio: float,
    signals: Signals,
    budget: str,
    selector: str,
    temperature: float,
) -> Reduction:
    """Budget then select.  x: [T, N, D]; relevance [T] (query), audio_saliency [A] + times [T] (audio), attn [T, N].

    Frames keep at least one token. Without the signal its budget needs (no query, no audio track), the budget
    falls back to uniform and `info["budget"]` says so.
    """
    t, n, _ = x.shape
    r = ratio
    used = budget
    if budget == "query" and signals.relevance is not None:
        counts = relevance_budget(signals.relevance, n, r, temperature)
    elif budget == "audio" and signals.audio_saliency is not None and signals.audio_saliency.numel() > 0 \
            and float(signals.audio_saliency.max() - signals.audio_saliency.min()) > 1e-8:
        times = signals.times if signals.times is not None else torch.arange(t, dtype=torch.float64)
        counts = saliency_budget(signals.audio_saliency, times, n, r)
    else:
        counts = uniform_budget(t, n, r)
        used = "uniform" if budget == "uniform" else f"uniform (no {budget} signal)"
    idx = [select_frame(x[f], int(counts[f]), selector, None if signals.attn is None else signals.attn[f], grid)
           + f * n for f in range(t)]
    red = Reduction.select(torch.cat(idx), t * n)
    red.info.update(budget=used, selector=selector, tokens_per_frame_budget=counts.tolist())
    if signals.relevance is not None:
        red.info["relevance"] = [round(float(v), 5) for v in signals.relevance]
    return red
