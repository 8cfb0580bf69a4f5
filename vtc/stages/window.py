"""Windowed execution: a method run on consecutive frame windows, its reductions joined into one over the clip.

A long video's features need not fit in memory as float32 at once: each window [a, b) is read (from RAM or a
spill file, in whatever dtype it is kept), converted, compressed with the same ratio, and its `Reduction` shifted
to the clip's flat indices. Per-frame methods give exactly what one call over the clip gives; methods that decide
across frames (segments, merges over time, a global budget) decide within each window — the file records the
window so that this is never silent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import Tensor

from vtc.reduction import Reduction
from vtc.signals import Signals


class Frames(Protocol):
    """Features readable by frame slices: a tensor [T, N, D], or a buffer that reads windows from disk."""

    @property
    def shape(self) -> torch.Size: ...

    def __getitem__(self, frames: slice) -> Tensor: ...


def frame_windows(num_frames: int, size: int, multiple: int = 1) -> list[tuple[int, int]]:
    """[0, T) cut into consecutive (a, b) windows of `size` frames (a multiple of `multiple`); the last window
    takes the remainder, joined to the one before when it would be shorter than half a window."""
    size = max(multiple, size // multiple * multiple)
    edges = list(range(0, num_frames, size)) + [num_frames]
    if len(edges) > 2 and edges[-1] - edges[-2] < size // 2:
        edges.pop(-2)
    return list(zip(edges[:-1], edges[1:], strict=True))


def run_windowed(
    run: Callable[[Tensor, Signals], Reduction],
    x: Frames,
    signals: Signals,
    size: int,
    *,
    multiple: int = 1,
    dtype: torch.dtype = torch.float32,
) -> Reduction:
    """`run(window_features [b − a, N, D], window_signals)` on every window of `x` [T, N, D]; → one Reduction over
    T·N sources, rows in window order. Off-grid tokens (a CLS, a thumbnail) of every window are kept, renumbered
    after the grid; segments are shifted to clip frames. `info` keeps the first window's facts and `windowed`."""
    t, n = int(x.shape[0]), int(x.shape[1])
    total = t * n
    dsts, srcs, ws, reps, segs, extras, extra_frames = [], [], [], [], [], [], []
    rows = extra_off = 0
    infos: list[dict[str, Any]] = []
    counts: list[int] = []
    for a, b in frame_windows(t, size, multiple):
        red = run(x[a:b].to(dtype), signals.window(a, b))
        local = (b - a) * n
        shift = a * n

        def to_clip(idx: Tensor, local: int = local, shift: int = shift, extra: int = extra_off) -> Tensor:
            # grid sources move by a·N; off-grid ones (≥ local) go after the clip's grid, in window order
            return torch.where(idx >= local, idx - local + total + extra, torch.where(idx >= 0, idx + shift, idx))

        dsts.append(red.dst + rows)
        srcs.append(to_clip(red.src))
        ws.append(red.weight.double())
        reps.append(to_clip(red.rep))
        if red.segments is not None:
            segs.append(red.segments + a)
        if red.extra is not None:
            extras.append(red.extra)
            ef = red.extra_frames if red.extra_frames is not None else torch.full((red.extra.shape[0],), -1)
            extra_frames.append(torch.where(ef >= 0, ef + a, ef))
            extra_off += int(red.extra.shape[0])
        rows += red.num_outputs
        infos.append(red.info)
        counts.append(red.num_outputs)
    info = dict(infos[0]) if infos else {}
    info["windowed"] = {"frames": size, "windows": len(infos), "tokens_per_window": counts}
    out = Reduction.build(torch.cat(dsts), torch.cat(srcs), torch.cat(ws), torch.cat(reps), total,
                          torch.cat(segs) if segs else None, info)
    if extras:
        out.with_extra(torch.cat(extras), torch.cat(extra_frames))
    return out


def windowed_rows(red: Reduction, x: Frames, size: int, dtype: torch.dtype = torch.float32) -> Iterator[Tensor]:
    """The output tokens of a reduction made by `run_windowed` (same `size`), one window's rows at a time, in row
    order: each block summed in float32 from that window's frames (and its off-grid tokens), then cast to `dtype`.
    Only one window of features and of tokens exists at a time."""
    t, n, d = (int(v) for v in x.shape)
    total = t * n
    w = red.weight.to(torch.float32)
    extra = red.extra.to(torch.float32).reshape(-1, d) if red.extra is not None else None
    lo = 0
    for (a, b), count in zip(frame_windows(t, size), red.info["windowed"]["tokens_per_window"], strict=True):
        hi = lo + count
        mine = (red.dst >= lo) & (red.dst < hi)
        on_grid = mine & (red.src < total)
        acc = torch.zeros(count, d, dtype=torch.float32)
        entries = torch.nonzero(on_grid).flatten()
        if entries.numel():
            flat = x[a:b].reshape(-1, d)
            for part in entries.split(1 << 16):  # a merging method can have many entries per token: gather in parts
                rows = flat[red.src[part] - a * n].to(torch.float32)
                acc.index_add_(0, red.dst[part] - lo, rows * w[part, None])
        off = mine & (red.src >= total)
        if extra is not None and bool(off.any()):
            acc.index_add_(0, red.dst[off] - lo, extra[red.src[off] - total] * w[off, None])
        yield acc.to(dtype)
        lo = hi

