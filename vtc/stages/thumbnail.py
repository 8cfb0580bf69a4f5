"""TS-LLaVA's thumbnail: pick frames, tile them into one image, sample token indices (float32 linspace rule)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def linspace_indices(last: int, count: int) -> Tensor:
    """round(linspace(0, last, count)) with torch's float32 linspace and half-to-even rounding (the authors')."""
    return torch.linspace(0, last, count, dtype=torch.float32).round().long().clamp(0, max(last, 0))


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols): the factor pair of n with the smallest |rows − cols|, rows ≥ cols (6 → 3×2, 8 → 4×2)."""
    best = (n, 1)
    for cols in range(1, n + 1):
        if n % cols == 0 and n // cols >= cols and (n // cols - cols) < (best[0] - best[1]):
            best = (n // cols, cols)
    return best


def compose_thumbnail(frames: Tensor, picks: Tensor, rows: int, cols: int) -> Tensor:
    """Tile frames[picks] row by row into one image of the frames' size.  frames: [T, C, H, W] → [C, H, W].

    Each cell is (H // rows) × (W // cols): area interpolation when shrinking, bilinear otherwise; the aspect
    ratio of the frames is not preserved, as in the authors' code.
    """
    _, c, h, w = frames.shape
    ch, cw = h // rows, w // cols
    sel = frames[picks].float()
    shrink = ch <= h and cw <= w
    cells = F.interpolate(sel, size=(ch, cw), mode="area") if shrink else F.interpolate(
        sel, size=(ch, cw), mode="bilinear", align_corners=False)
    out = torch.zeros(c, h, w, dtype=sel.dtype)
    for i in range(picks.numel()):
        r, q = divmod(i, cols)
        out[:, r * ch : (r + 1) * ch, q * cw : (q + 1) * cw] = cells[i]
    return out
