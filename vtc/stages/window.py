"""Windowed execution: a method run on consecutive frame windows, its reductions joined into one over the clip.

A long video's features need not fit in memory as float32 at once: each window [a, b) is read (from RAM or a
spill file, in whatever dtype it is kept), converted, compressed with the same ratio, and its `Reduction` shifted
to the clip's flat indices. Per-frame methods give exactly what one call over the clip gives; methods that decide
across frames (segments, merges over time, a global budget) decide within each window — the file records the
window so that this is never silent.

The joined map is a `WindowedReduction`: per-row facts (representative, size, frame) for the whole clip, but the
merge entries (and `Groups`) window by window in an `EntryStore` — in RAM, or on disk for an hour of video, where a
merging method has many members per source token (FastVID: one per anchor frame of its segment) and they would
outgrow the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from vtc.reduction import Groups, Reduction
from vtc.signals import Signals

#: one window's map in clip indices: entries (dst [E] int32, src [E] int32, weight [E] float32) and its groups
#: (`Groups`, possibly empty: dst, size, src int32, weight float32)
Entries = tuple[Tensor, Tensor, Tensor, Groups]


class Frames(Protocol):
    """Features readable by frame slices: a tensor [T, N, D], or a buffer that reads windows from disk."""

    @property
    def shape(self) -> torch.Size: ...

    def __getitem__(self, frames: slice) -> Tensor: ...


class EntryStore(Protocol):
    """Where a windowed reduction keeps its merge entries, one block per window, read back by block index."""

    def add(self, entries: Entries) -> None: ...

    def get(self, i: int) -> Entries: ...

    def close(self) -> None: ...


class MemoryEntries:
    """An `EntryStore` in RAM (12 bytes per entry, 4 per group member)."""

    def __init__(self) -> None:
        self.blocks: list[Entries] = []

    def add(self, entries: Entries) -> None:
        self.blocks.append(entries)

    def get(self, i: int) -> Entries:
        return self.blocks[i]

    def close(self) -> None:
        self.blocks = []


def frame_windows(num_frames: int, size: int, multiple: int = 1) -> list[tuple[int, int]]:
    """[0, T) cut into consecutive (a, b) windows of `size` frames (a multiple of `multiple`); the last window
    takes the remainder, joined to the one before when it would be shorter than half a window."""
    size = max(multiple, size // multiple * multiple)
    edges = list(range(0, num_frames, size)) + [num_frames]
    if len(edges) > 2 and edges[-1] - edges[-2] < size // 2:
        edges.pop(-2)
    return list(zip(edges[:-1], edges[1:], strict=True))


@dataclass
class WindowedReduction:
    """The reductions of consecutive frame windows, joined: K rows over T·N sources, rows in window order.

    Attributes:
        rep: [K] int64 representative flat source (clip indices; -1: none).
        frames: [K] int64 frame of each row (`Reduction.row_frames`).
        sizes_: [K] int32 entries per row.  source_: [T·N] int32 row of each source (-1: dropped).
        windows: the (a, b) frame windows; `counts` rows, `entry_counts` entries, `group_counts` groups and
            `member_counts` group members per window.
        entries: the merge entries of window i, in clip indices, from `entries.get(i)`.
        segments: [S, 2] clip frames, or None.  extra: [X, D] off-grid tokens of every window, renumbered after the
        grid (src T·N + i), with `extra_frames` [X].
    """

    rep: Tensor
    frames: Tensor
    sizes_: Tensor
    source_: Tensor
    num_sources: int
    grid_size: int
    windows: list[tuple[int, int]]
    counts: list[int]
    entry_counts: list[int]
    entries: EntryStore
    segments: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    extra: Tensor | None = None
    extra_frames: Tensor | None = None
    group_counts: list[int] = field(default_factory=list)
    member_counts: list[int] = field(default_factory=list)

    @property
    def num_outputs(self) -> int:
        return int(self.rep.numel())

    @property
    def num_entries(self) -> int:
        return sum(self.entry_counts)

    @property
    def num_groups(self) -> int:
        return sum(self.group_counts)

    @property
    def num_members(self) -> int:
        return sum(self.member_counts)

    def ratio(self) -> float:
        return self.num_outputs / max(self.num_sources, 1)

    def sizes(self) -> Tensor:
        return self.sizes_

    def source(self) -> Tensor:
        return self.source_

    def row_frames(self, tokens_per_frame: int) -> Tensor:
        assert tokens_per_frame == self.grid_size
        return self.frames

    def parts(self) -> Iterator[Entries]:
        """Every window's (dst, src, weight, groups) in row order."""
        for i in range(len(self.windows)):
            yield self.entries.get(i)

    def to_reduction(self) -> Reduction:
        """One in-memory `Reduction` with the same map (for inputs that fit)."""
        blocks = list(self.parts())
        empty = torch.zeros(0, dtype=torch.int32)
        dst = torch.cat([b[0] for b in blocks]) if blocks else empty
        src = torch.cat([b[1] for b in blocks]) if blocks else empty
        w = torch.cat([b[2] for b in blocks]) if blocks else empty.float()
        g = Groups.cat([b[3] for b in blocks])
        groups = Groups(g.dst.long(), g.weight.float(), g.size.long(), g.src.long()) if g.num_groups else None
        out = Reduction(dst.long(), src.long(), w.float(), self.rep, self.num_sources, self.segments, dict(self.info),
                        groups=groups)
        if self.extra is not None:
            out.with_extra(self.extra, self.extra_frames)
        return out

    def close(self) -> None:
        self.entries.close()


def run_windowed_parts(
    run: Callable[[Tensor, Signals], Reduction],
    x: Frames,
    signals: Signals,
    size: int,
    *,
    multiple: int = 1,
    dtype: torch.dtype = torch.float32,
    store: EntryStore | None = None,
) -> WindowedReduction:
    """`run(window_features [b − a, N, D], window_signals)` on every window of `x` [T, N, D]; → their join, the
    entries of each window put in `store` (default: RAM) as soon as it is done. Off-grid tokens (a CLS, a
    thumbnail) of every window are kept, renumbered after the grid; segments are shifted to clip frames. `info`
    keeps the first window's facts and `windowed`."""
    t, n = int(x.shape[0]), int(x.shape[1])
    total = t * n
    store = store if store is not None else MemoryEntries()
    windows = frame_windows(t, size, multiple)
    reps, frames, sizes, sources, segs, extras, extra_frames = [], [], [], [], [], [], []
    rows = extra_off = 0
    infos: list[dict[str, Any]] = []
    counts: list[int] = []
    entry_counts: list[int] = []
    group_counts: list[int] = []
    member_counts: list[int] = []
    for a, b in windows:
        red = run(x[a:b].to(dtype), signals.window(a, b))
        local = (b - a) * n
        shift = a * n

        def to_clip(idx: Tensor, local: int = local, shift: int = shift, extra: int = extra_off) -> Tensor:
            # grid sources move by a·N; off-grid ones (≥ local) go after the clip's grid, in window order
            return torch.where(idx >= local, idx - local + total + extra, torch.where(idx >= 0, idx + shift, idx))

        gr = red.groups if red.groups is not None else Groups.empty()
        store.add(((red.dst + rows).int(), to_clip(red.src).int(), red.weight.float(),
                   Groups((gr.dst + rows).int(), gr.weight.float(), gr.size.int(), to_clip(gr.src).int())))
        reps.append(to_clip(red.rep))
        f = red.row_frames(n)
        frames.append(torch.where(f >= 0, f + a, f))
        sizes.append(red.sizes())
        s = red.source()
        sources.append(torch.where(s >= 0, s + rows, s).int())
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
        entry_counts.append(int(red.dst.numel()))
        group_counts.append(gr.num_groups)
        member_counts.append(gr.num_members)
        del red, gr
    info = dict(infos[0]) if infos else {}
    floors = [i.get("budget_floor") for i in infos]
    if infos and all(isinstance(f, int) and not isinstance(f, bool) for f in floors):
        info["budget_floor"] = sum(floors)  # each window keeps its floor: the clip's floor is their sum
    info["windowed"] = {"frames": size, "windows": len(infos), "tokens_per_window": counts}
    return WindowedReduction(
        rep=torch.cat(reps).long(), frames=torch.cat(frames).long(), sizes_=torch.cat(sizes).int(),
        source_=torch.cat(sources), num_sources=total, grid_size=n, windows=windows, counts=counts,
        entry_counts=entry_counts, entries=store, segments=torch.cat(segs) if segs else None, info=info,
        extra=torch.cat(extras) if extras else None, extra_frames=torch.cat(extra_frames) if extras else None,
        group_counts=group_counts, member_counts=member_counts)


def windowed_rows(red: WindowedReduction, x: Frames, dtype: torch.dtype = torch.float32) -> Iterator[Tensor]:
    """The output tokens of a windowed reduction, one window's rows at a time, in row order: each block summed in
    float32 from that window's frames of `x` [T, N, D] (and its off-grid tokens), then cast to `dtype`. Only one
    window of features, entries and tokens exists at a time."""
    t, n, d = (int(v) for v in x.shape)
    total = t * n
    extra = red.extra.to(torch.float32).reshape(-1, d) if red.extra is not None else None
    lo = 0
    for (a, b), count, (dst, src, w, groups) in zip(red.windows, red.counts, red.parts(), strict=True):
        if groups.num_groups:  # the groups spelled out as entries: one window's worth at a time
            g_of = groups.member_group()
            dst = torch.cat([dst, groups.dst[g_of]])
            src = torch.cat([src, groups.src])
            w = torch.cat([w, groups.weight[g_of]])
        dst, src = dst.long() - lo, src.long()
        acc = torch.zeros(count, d, dtype=torch.float32)
        on_grid = src < total
        if bool(on_grid.any()):
            flat = x[a:b].reshape(-1, d)
            g_dst, g_src, g_w = dst[on_grid], src[on_grid] - a * n, w[on_grid]
            for s in range(0, g_src.numel(), 1 << 16):  # many entries per token (a merging method): in parts
                part = slice(s, s + (1 << 16))
                acc.index_add_(0, g_dst[part], flat[g_src[part]].to(torch.float32) * g_w[part, None])
        off = ~on_grid
        if extra is not None and bool(off.any()):
            acc.index_add_(0, dst[off], extra[src[off] - total] * w[off, None])
        yield acc.to(dtype)
        lo += count
