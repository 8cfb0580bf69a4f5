"""FasterVLM (arXiv 2412.01818): per-frame top-k by CLS attention.  Follows Theia-4869/FasterVLM @ f5d5f12."""

from __future__ import annotations

from torch import Tensor

from vtc.methods.declare import implements
from vtc.ops import topk_indices
from vtc.ops.topk import py_round
from vtc.reduction import Reduction
from vtc.signals import Signals


@implements("fastervlm")
def fastervlm(
    x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, k_per_frame: int | None
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
