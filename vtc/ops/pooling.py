"""Spatial pooling of a token grid as exact linear maps (bilinear, 2×2 average, adaptive average) and max pooling.

A linear pool is returned as a weight matrix P [n', N] over the grid's raster positions, so a method can compose
it with later merges and still hand back one exact `Reduction`. Max pooling is not linear: `max_pool_2x2` returns
the pooled values and the cells each output covers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def pool_matrix(grid: tuple[int, int], mode: str, size: tuple[int, int] | None = None) -> Tensor:
    """[n', h·w] float64 weights of a 2-D pool over an (h, w) raster grid; output in raster order of the pooled grid.

    mode: `bilinear` (`F.interpolate(mode='bilinear', align_corners=False)` to `size`, default ceil(h/2)×ceil(w/2),
    LLaVA-OneVision's `get_2dPool`), `average` (`F.avg_pool2d(2)`, floor: h//2 × w//2), `adaptive`
    (`F.adaptive_avg_pool2d` to `size`: windows [⌊i·n/o⌋, ⌈(i+1)·n/o⌉)).
    """
    h, w = grid
    eye = torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w)  # one picture per source position
    if mode == "bilinear":
        size = size or (math.ceil(h / 2), math.ceil(w / 2))
        out = F.interpolate(eye, size=size, mode="bilinear", align_corners=False)
    elif mode == "average":
        out = F.avg_pool2d(eye, 2) if h >= 2 and w >= 2 else eye
    elif mode == "adaptive":
        assert size is not None
        out = F.adaptive_avg_pool2d(eye, size)
    else:
        raise ValueError(f"unknown pool mode {mode!r}")
    return out.reshape(h * w, -1).T.contiguous()


def max_pool_2x2(x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """`F.max_pool2d(2)` (floor) of tokens x [B, h·w, D] on an (h, w) grid, element-wise.

    Returns (values [B, n', D], cells [n', 4] raster positions each output covers, top-left first).
    """
    h, w = grid
    b, _, d = x.shape
    if h < 2 or w < 2:
        return x, torch.arange(h * w)[:, None]
    pic = x.reshape(b, h, w, d).permute(0, 3, 1, 2)
    out = F.max_pool2d(pic, 2).permute(0, 2, 3, 1).reshape(b, -1, d)
    ys, xs = torch.meshgrid(torch.arange(h // 2) * 2, torch.arange(w // 2) * 2, indexing="ij")
    tl = (ys * w + xs).reshape(-1)
    cells = torch.stack([tl, tl + 1, tl + w, tl + w + 1], 1)
    return out, cells
