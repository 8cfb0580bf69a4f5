"""FasterVLM (arXiv 2412.01818): per-frame top-k by CLS attention.  Follows Theia-4869/FasterVLM @ f5d5f12."""

from __future__ import annotations

from torch import Tensor

from vtc.methods.registry import Param, register
from vtc.ops import topk_indices
from vtc.ops.topk import py_round
from vtc.reduction import Reduction
from vtc.signals import Signals


@register(
    "fastervlm",
    summary="FasterVLM: keep each frame's tokens with the highest CLS attention",
    paper="Zhang et al., [CLS] Attention is All You Need for Training-Free Visual Token Pruning, 2024",
    params=[Param("k_per_frame", "tokens kept per frame (default: round(ratio·N))", "k_per_frame", lo=1)],
    paper_ratio=0.25,
    signals=("cls_attn",),
    scope="frame",
)
def fastervlm(
    x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, k_per_frame: int | None = None
) -> Reduction:
    """FasterVLM.  x: [T, N, D]; signals.cls_attn [T, N] (head-mean CLS-query attention of the chosen block).

    SigLIP towers have no CLS: vtc substitutes the attention-pool probe's attention (recorded in the metadata).
    Kept tokens are in raster order per frame.
    """
    t, n, _ = x.shape
    k = k_per_frame if k_per_frame is not None else max(1, py_round(ratio * n))
    keep = topk_indices(signals.require("cls_attn", "fastervlm").float(), k)  # [T, k] ascending
    offs = (keep + (keep.new_tensor(range(t)) * n)[:, None]).reshape(-1)
    return Reduction.select(offs, t * n)
