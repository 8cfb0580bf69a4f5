"""Bounded memory for long videos: where a video's encoder features are kept, and how much memory a run may use.

`FeatureBuffer` gathers a video's features [T, N, D] chunk by chunk: in RAM while they fit the budget, then in an
unnamed temporary file (removed by the system when closed, even if the process is killed) as float16, read back a
window of frames at a time. `window_frames` says how many frames a method may see at once within the budget; past it
the method runs on windows (`vtc.stages.window`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import IO

import numpy as np
import torch
from torch import Tensor

from vtc.errors import VtcError
from vtc.reduction import Groups
from vtc.stages.window import Entries

#: float32 copies a method makes of its input at the peak (normalised features, similarities, outputs)
WORK_FACTOR = 4
#: the default budget: this fraction of the memory available when the run starts
DEFAULT_FRACTION = 0.5


@contextlib.contextmanager
def spill_errors() -> Iterator[None]:
    """A failure to write a spill file (the temporary folder full or not writable) is said as such, not blamed on
    the video being processed."""
    try:
        yield
    except OSError as e:
        raise VtcError(f"cannot write features to the temporary folder {tempfile.gettempdir()} "
                       f"({e.strerror or e}); free space there, point TMPDIR at a larger disk, or raise "
                       f"--memory-budget.") from None


def available_bytes() -> int:
    """Memory available to new allocations (MemAvailable), or 8 GiB when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def budget_bytes(gigabytes: float | None) -> int:
    """The run's memory budget in bytes: `gigabytes` if given, else DEFAULT_FRACTION of the available memory."""
    if gigabytes is not None:
        return int(gigabytes * (1 << 30))
    return int(DEFAULT_FRACTION * available_bytes())


def window_frames(frames: int, tokens: int, dim: int, budget: int, multiple: int = 1) -> int | None:
    """Frames a method may see at once so that its float32 working set (WORK_FACTOR copies of [W, N, D]) fits
    `budget`; None when the whole clip fits (no windows)."""
    per_frame = WORK_FACTOR * tokens * dim * 4
    if frames * per_frame <= budget:
        return None
    w = max(multiple, int(budget // max(per_frame, 1)) // multiple * multiple)
    return w if w < frames else None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's `malloc_trim`; nothing elsewhere).

    The engine calls it after every encoded batch and every window of a long video: glibc raises its mmap threshold
    each time a large block is freed (up to 32 MiB), after which an encoder's outputs and a method's per-window
    arrays come from the heap, whose free space fragments; without the trim the resident size crept up with the
    video's length (FastVID: 3.1 GB at 60 minutes against 2.1 GB at 10). A trim costs a walk of the free lists;
    fixing the threshold low instead (mallopt) kept memory flat too but made FastVID 50 % slower (page faults)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _pread(file: IO[bytes], out: np.ndarray, offset: int) -> None:
    """Fill `out` from `file` at byte `offset` (no mapping: the pages never count against the process)."""
    view, done = memoryview(out).cast("B"), 0
    file.flush()
    while done < len(view):
        got = os.preadv(file.fileno(), [view[done:]], offset + done)
        if got <= 0:
            raise OSError(f"a spill file ended early ({done} of {len(view)} bytes at {offset})")
        done += got


class FeatureBuffer:
    """A video's per-frame arrays [T, ...] (features [T, N, D], attention keys, frames), appended in chunks [t, ...];
    in RAM up to `budget` bytes, then spilled.

    Reads by frame slices (`buffer[a:b]`, `buffer.shape`) or frame indices (`buffer[tensor]`), in the dtype the
    chunks had: a spilled window is read from the file into a fresh array (`pread`), so the file's pages never
    count against the process's memory. Floating-point arrays are spilled as float16, others as they are.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.chunks: list[Tensor] = []
        self.file: IO[bytes] | None = None
        self.frames = 0
        self.tail: tuple[int, ...] | None = None  # the shape of one frame's array
        self.dtype: torch.dtype | None = None
        self.spill_dtype: np.dtype = np.dtype(np.float16)
        self.nbytes = 0

    @property
    def spilled(self) -> bool:
        return self.file is not None

    def append(self, x: Tensor) -> None:
        """Add the arrays [t, ...] of the next frames."""
        x = x.detach().cpu()
        if self.tail is None:
            self.tail, self.dtype = tuple(int(v) for v in x.shape[1:]), x.dtype
            if not x.is_floating_point():
                self.spill_dtype = torch.empty(0, dtype=x.dtype).numpy().dtype
        self.frames += int(x.shape[0])
        if self.file is None and self.nbytes + x.numel() * x.element_size() > self.budget:
            with spill_errors():
                self.file = tempfile.TemporaryFile(prefix="vtc-features-")  # in $TMPDIR
                for c in self.chunks:
                    self._write(c)
            self.chunks = []
        if self.file is not None:
            with spill_errors():
                self._write(x)
        else:
            self.chunks.append(x)
            self.nbytes += x.numel() * x.element_size()

    def _write(self, x: Tensor) -> None:
        assert self.file is not None
        arr = x.float().numpy() if x.is_floating_point() else x.numpy()
        self.file.write(np.ascontiguousarray(arr.astype(self.spill_dtype, copy=False)).tobytes())

    @property
    def shape(self) -> torch.Size:  # type: ignore[override]
        """[T, ...] of all frames so far."""
        return torch.Size([self.frames, *(self.tail or ())])

    def tensor(self) -> Tensor:
        """All frames [T, ...] as one tensor in RAM (for a spilled buffer, prefer windows)."""
        if self.tail is None:
            raise ValueError("no features were added")
        if self.file is not None:
            return self[0 : self.frames]
        out = torch.cat(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
        self.chunks = [out]
        return out

    def __getitem__(self, frames: slice | Tensor) -> Tensor:
        """Frames [a, b) → [b − a, ...], or the frames at indices [k] → [k, ...]."""
        if isinstance(frames, Tensor):
            if self.file is None:
                return self.tensor()[frames]
            rows = [self[i : i + 1] for i in frames.reshape(-1).tolist()]
            return torch.cat(rows) if rows else self[0:0]
        a, b, _ = frames.indices(self.frames)
        if self.file is None:
            return self.tensor()[a:b]
        per_frame = math.prod(self.tail or ())
        out = np.empty((max(b - a, 0), *(self.tail or ())), dtype=self.spill_dtype)
        _pread(self.file, out, a * per_frame * out.itemsize)
        assert self.dtype is not None
        return torch.from_numpy(out).to(self.dtype)

    def close(self) -> None:
        """Free the arrays (and the spill file)."""
        self.chunks = []
        if self.file is not None:
            self.file.close()
            self.file = None


class EntryFile:
    """An `EntryStore` on disk: each window's merge entries (int32 dst, int32 src, float32 weight: 12 bytes each)
    and groups (int32 dst, float32 weight, int32 size: 12 bytes per group, then 4 per member) appended to an
    unnamed temporary file and read back by window. A merging method's map of an hour of video (FastVID: tens of
    millions of group members) then never sits in memory."""

    def __init__(self) -> None:
        with spill_errors():
            self.file: IO[bytes] | None = tempfile.TemporaryFile(prefix="vtc-entries-")  # in $TMPDIR
        self.blocks: list[tuple[int, int, int, int]] = []  # (byte offset, entries, groups, members)
        self.end = 0

    def add(self, entries: Entries) -> None:
        assert self.file is not None
        dst, src, w, groups = entries
        columns = (dst.int(), src.int(), w.float(), groups.dst.int(), groups.weight.float(), groups.size.int(),
                   groups.src.int())
        with spill_errors():
            for column in columns:
                self.file.write(column.contiguous().numpy().tobytes())
        e, g, m = int(dst.numel()), groups.num_groups, groups.num_members
        self.blocks.append((self.end, e, g, m))
        self.end += 4 * (3 * e + 3 * g + m)

    def get(self, i: int) -> Entries:
        assert self.file is not None
        offset, e, g, m = self.blocks[i]
        raw = np.empty(3 * e + 3 * g + m, dtype=np.int32)
        _pread(self.file, raw, offset)
        t = torch.from_numpy(raw)
        cuts = [0, e, 2 * e, 3 * e, 3 * e + g, 3 * e + 2 * g, 3 * e + 3 * g, 3 * e + 3 * g + m]
        c = [t[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        return c[0], c[1], c[2].view(torch.float32), Groups(c[3], c[4].view(torch.float32), c[5], c[6])

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
