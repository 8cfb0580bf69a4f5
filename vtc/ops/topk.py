"""Top-k selection and the authors' counting rules."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def topk_indices(score: Tensor, k: int, *, largest: bool = True, sort_index: bool = True) -> Tensor:
    """Indices of the k best entries along the last dim.  score: [..., n] → [..., k].

    k is clamped to [0, n]. With `sort_index` the indices come back ascending (raster order), otherwise in
    score order.
    """
    k = max(0, min(int(k), score.shape[-1]))
    idx = torch.topk(score, k, dim=-1, largest=largest).indices
    return idx.sort(dim=-1).values if sort_index else idx


def py_round(x: float) -> int:
    """Python's round-half-to-even, as the authors' code counts tokens (`round(0.5·49) = 24`)."""
    return int(round(x))


def trunc(x: float) -> int:
    """`int()` of a float: truncation toward zero, as `int(N·r)` in the reference code."""
    return int(x)


def ceil(x: float) -> int:
    """`math.ceil` on a float product."""
    return int(math.ceil(x))
