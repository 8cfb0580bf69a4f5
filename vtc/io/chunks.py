"""A live run's output: a directory of chunk token files and the index that lists them.

    OUT/index.json                 {"format": "vtc-live", "chunks": [{"file", "t0", "t1", "frames", ...}], ...}
    OUT/chunk_000000.safetensors   an ordinary vtc token file (format v1) for stream seconds [t0, t1)
    OUT/chunk_000001.safetensors   ...

A chunk file is written (atomically) before the index names it, and the index is replaced atomically (a new file
renamed over the old one, both fsynced): a reader that goes through the index never sees a half chunk. Each chunk
is consumable alone; `frame_times` are stream seconds of the whole run (0 = its first frame), and `join` reads
several chunks as one video (frames, positions, provenance renumbered after each other).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vtc.errors import FormatError, InputError, UsageError
from vtc.io.store import TokenFile, file_mode, load

INDEX_NAME = "index.json"
INDEX_FORMAT = "vtc-live"
INDEX_VERSION = 1


def chunk_name(index: int) -> str:
    return f"chunk_{index:06d}.safetensors"


def is_live_dir(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a directory with a live index."""
    return (Path(path) / INDEX_NAME).is_file()


def write_index(directory: Path, index: dict[str, Any]) -> None:
    """Replace DIR/index.json atomically and durably (fsync of the file, then of the directory)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{INDEX_NAME}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, directory / INDEX_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def fsync_file(path: Path) -> None:
    """Make a written file durable before the index names it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_index(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The index of a live directory, checked (format, chunk entries).  InputError when there is none."""
    path = Path(directory) / INDEX_NAME
    if not path.is_file():
        raise InputError(f"{directory}: no {INDEX_NAME}; not a live output directory (vtc compress --live -o DIR).")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: unreadable index ({e}).") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        kind = index.get("format") if isinstance(index, dict) else index
        raise FormatError(f"{path}: not a vtc live index (format {str(kind)[:40]!r}).")
    if index.get("version") != INDEX_VERSION:
        raise FormatError(f"{path}: live index version {index.get('version')!r}; this vtc reads {INDEX_VERSION}.")
    chunks = index.get("chunks")
    if not isinstance(chunks, list) or not all(isinstance(c, dict) and isinstance(c.get("file"), str)
                                               and "/" not in c["file"] and "\\" not in c["file"] for c in chunks):
        raise FormatError(f"{path}: 'chunks' must list entries with a plain 'file' name.")
    return index


def load_chunks(directory: str | os.PathLike[str], last: int | None = None) -> list[TokenFile]:
    """The chunk files the index lists (the `last` N of them), each read and validated."""
    index = read_index(directory)
    entries = index["chunks"] if last is None else index["chunks"][-last:] if last > 0 else []
    if not entries:
        raise InputError(f"{directory}: the live index lists no chunk yet.")
    return [load(Path(directory) / c["file"]) for c in entries]


def join(files: list[TokenFile]) -> TokenFile:
    """Consecutive chunk files read as one video: tokens, positions, frame times and the merge map of each chunk
    renumbered after the ones before (frames and sources of chunk i follow those of chunk i − 1).

    Every chunk must share the grid, the token width and the token space (one run writes them so)."""
    if len(files) == 1:
        return files[0]
    first = files[0]
    grid, d = first.grid, int(first.tokens.shape[1])
    for f in files[1:]:
        if f.grid != grid or int(f.tokens.shape[1]) != d:
            raise FormatError(f"{f.path}: grid {f.grid} × D {int(f.tokens.shape[1])} differs from {first.path}'s "
                              f"{grid} × {d}; chunks of one run share them.")
        if f.meta.get("space", {}).get("kind", "encoder") != first.meta.get("space", {}).get("kind", "encoder"):
            raise FormatError(f"{f.path}: another token space than {first.path}.")
    if first.meta.get("space", {}).get("kind") == "target":
        raise UsageError(f"{first.path.parent}: the chunks of a live run in a target's space are separate video "
                         f"items (positions, timestamps and grids count from each chunk's start); read them one at "
                         f"a time (vtc.load(DIR, last=1), or a chunk file) and give each to the model as a video.")
    total_sources = sum(int(f["source"].numel()) for f in files)
    out: dict[str, list[Tensor]] = {}
    t_off = k_off = s_off = x_off = 0
    for f in files:
        t = f.tensors
        tc, kc, sc = int(t["frame_times"].numel()), int(t["tokens"].shape[0]), int(t["source"].numel())
        pos = t["positions"].clone()
        pos[:, 0] = torch.where(pos[:, 0] >= 0, pos[:, 0] + t_off, pos[:, 0])
        src = t["merge_src"].long()
        src = torch.where(src < sc, src + s_off, src - sc + total_sources + x_off)
        source = t["source"].long()
        add = {
            "tokens": t["tokens"], "positions": pos, "timestamps": t["timestamps"], "frame_times": t["frame_times"],
            "sizes": t["sizes"], "source": torch.where(source >= 0, source + k_off, source).int(),
            "merge_src": src.int(), "merge_dst": (t["merge_dst"].long() + k_off).int(), "merge_w": t["merge_w"],
        }
        if "merge_group_src" in t:  # a map with groups (format 2): rows and members renumbered like the entries
            g_src = t["merge_group_src"].long()
            add.update(merge_group_dst=(t["merge_group_dst"].long() + k_off).int(), merge_group_w=t["merge_group_w"],
                       merge_group_size=t["merge_group_size"].int(),
                       merge_group_src=torch.where(g_src < sc, g_src + s_off, g_src - sc + total_sources + x_off).int())
        if "segments" in t:
            add["segments"] = t["segments"] + t_off
        if "extra_tokens" in t:
            add["extra_tokens"] = t["extra_tokens"]
            x_off += int(t["extra_tokens"].shape[0])
        for name, value in add.items():
            out.setdefault(name, []).append(value)
        t_off, k_off, s_off = t_off + tc, k_off + kc, s_off + sc
    tensors = {name: torch.cat(parts) for name, parts in out.items()}
    if "segments" in tensors and len(out["segments"]) != len(files):
        del tensors["segments"]  # only some chunks have segments: no whole-run segmentation to report
    meta = dict(files[-1].meta)
    meta.update(T=t_off, K=k_off, ratio_achieved=round(k_off / max(s_off, 1), 6),
                live={"chunks": [str(f.path.name) for f in files], **meta.get("live", {})})
    return TokenFile(Path(first.path.parent), tensors, meta)
