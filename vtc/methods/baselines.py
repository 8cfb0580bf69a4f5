"""Baselines: keep everything, a uniform spatio-temporal lattice, per-frame spatial pooling, a seeded random
selection (the control `vtc fidelity` runs beside every method)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vtc.methods.declare import implements
from vtc.reduction import Reduction
from vtc.signals import Signals


@implements("none")
def keep_all(x: Tensor, *, grid: tuple[int, int], ratio: float | None, signals: Signals) -> Reduction:
    """All T·N tokens, in (frame, row, col) order.  x: [T, N, D]."""
    t, n, _ = x.shape
    red = Reduction.select(torch.arange(t * n), t * n)
    red.info["budget_floor"] = t * n  # ignores --ratio by definition
    return red


def lattice_factors(t: int, h: int, w: int, ratio: float) -> tuple[int, int, int]:
    """Strides (st, sh, sw) ≥ 1 of the densest lattice with ceil(t/st)·ceil(h/sh)·ceil(w/sw) ≤ ratio·t·h·w.

    Spatial strides are tried before temporal ones (square-ish first); among lattices meeting the budget the one
    keeping most tokens wins.
    """
    budget = max(1.0, ratio * t * h * w)
    best: tuple[int, tuple[int, int, int]] = (0, (t, h, w))
    for st in range(1, t + 1):
        for sh in range(1, h + 1):
            for sw in range(max(1, sh - 1), min(w, sh + 1) + 1) if h > 1 and w > 1 else range(1, w + 1):
                k = math.ceil(t / st) * math.ceil(h / sh) * math.ceil(w / sw)
                if k <= budget and k > best[0]:
                    best = (k, (st, sh, sw))
    return best[1]


@implements("uniform")
def uniform(x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals) -> Reduction:
    """Keep the tokens on a regular (frame, row, col) lattice; count ≤ ratio·T·N.  x: [T, N, D]."""
    t, n, _ = x.shape
    h, w = grid
    st, sh, sw = lattice_factors(t, h, w, ratio)
    ft, fh, fw = (torch.arange(0, t, st), torch.arange(sh // 2, h, sh), torch.arange(sw // 2, w, sw))
    idx = (ft[:, None, None] * n + fh[None, :, None] * w + fw[None, None, :]).reshape(-1)
    red = Reduction.select(idx, t * n)
    red.info.update(strides=[st, sh, sw])
    return red


def _bilinear_weights(src: int, dst: int) -> Tensor:
    """[dst, src] 1-D interpolation matrix of `F.interpolate(mode='bilinear', align_corners=False)`."""
    eye = torch.eye(src, dtype=torch.float64)[None]  # [1, src, src] as channels × length
    return torch.nn.functional.interpolate(eye, size=dst, mode="linear", align_corners=False)[0].T


def _pool_weights(src: int, dst: int, mode: str) -> Tensor:
    """[dst, src] 1-D pooling matrix: 'bilinear' (LLaVA-OneVision) or 'average' (LLaVA-Video)."""
    if mode == "bilinear":
        return _bilinear_weights(src, dst)
    stride = max(1, src // dst)
    m = torch.zeros(dst, src, dtype=torch.float64)
    for i in range(dst):
        m[i, i * stride : i * stride + stride] = 1.0 / stride
    return m


@implements("pool")
def pool(
    x: Tensor,
    *,
    grid: tuple[int, int],
    ratio: float,
    signals: Signals,
    stride: int | None,
    mode: str,
) -> Reduction:
    """Resize each frame's h×w grid to ceil(h/s)×ceil(w/s) (bilinear) or floor (average).  x: [T, N, D].

    With `stride` unset, s is the smallest integer whose pooled grid meets --ratio. Output rows are exact linear
    combinations of the source tokens (the interpolation weights), in (frame, row, col) order.
    """
    t, n, _ = x.shape
    h, w = grid
    size = math.ceil if mode == "bilinear" else (lambda v: max(1, math.floor(v)))
    if stride is None:
        stride = 1
        while size(h / stride) * size(w / stride) > ratio * n and (size(h / stride) > 1 or size(w / stride) > 1):
            stride += 1
    oh, ow = size(h / stride), size(w / stride)
    wh, ww = _pool_weights(h, oh, mode), _pool_weights(w, ow, mode)  # [oh, h], [ow, w]
    kernel = torch.einsum("ah,bw->abhw", wh, ww).reshape(oh * ow, n)  # [K_f, N]
    rows, cols = torch.nonzero(kernel, as_tuple=True)
    vals = kernel[rows, cols]
    # representative: the source with the largest weight of each output row
    rep_f = kernel.argmax(-1)
    off = torch.arange(t) * n
    kf = oh * ow
    dst = (rows[None] + (torch.arange(t) * kf)[:, None]).reshape(-1)
    src = (cols[None] + off[:, None]).reshape(-1)
    red = Reduction.build(dst, src, vals.repeat(t), (rep_f[None] + off[:, None]).reshape(-1), t * n)
    red.info.update(stride=stride, pooled_grid=[oh, ow])
    return red


@implements("random")
def random_selection(x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, seed: int
                     ) -> Reduction:
    """Keep K = max(1, round(ratio·T·N)) tokens drawn uniformly without replacement by a generator seeded with
    `seed` (independent of the features' values), in (frame, row, col) order.  x: [T, N, D].

    The random-selection control of UniPruneBench and VTC-Bench: a method that does not beat it at the same
    kept fraction adds nothing.
    """
    t, n, _ = x.shape
    total = t * n
    k = min(total, max(1, round(ratio * total)))
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(total, generator=gen)[:k].sort().values
    red = Reduction.select(idx, total)
    red.info.update(seed=int(seed))
    return red
