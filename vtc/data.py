"""Training-side readers: token files and WebDataset shards as torch datasets, and a padding collate.

```python
from torch.utils.data import DataLoader
import vtc.data

ds = vtc.data.TokenShards("s3://bucket/tokens/")            # or a list of shard-*.tar paths / URLs
for batch in DataLoader(ds, batch_size=8, collate_fn=vtc.data.collate, num_workers=2):
    batch["tokens"]      # [B, K_max, D] (zero-padded)      batch["mask"]       [B, K_max] bool (True = a token)
    batch["positions"]   # [B, K_max, 3] frame, row, col (-1 = padding or off-grid)
    batch["timestamps"]  # [B, K_max] seconds (0 on padding)   batch["lengths"] [B]   batch["keys"] [B]
```

A sample is a dict: `key`, `tokens` [K, D] (the stored dtype), `positions` [K, 3] int64, `timestamps` [K] float32,
`meta` (the file's metadata) and `info` (the shard's `<key>.json`, or the file's facts). The shards are plain tars
(`<key>.safetensors` + `<key>.json`), so the `webdataset` package reads them too.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from vtc.errors import FormatError, UsageError
from vtc.io.storage import RemotePath, location

Sample = dict[str, Any]


def sample_from_bytes(key: str, raw: bytes, info: dict[str, Any] | None = None) -> Sample:
    """A sample from a token file's bytes."""
    try:
        size = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + size])
        tensors = load_bytes(raw)
    except Exception as e:  # safetensors raises its own error types
        raise FormatError(f"{key}: not a safetensors token file ({e}).") from None
    meta: dict[str, Any] = {}
    for k, v in (header.get("__metadata__") or {}).items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    if "tokens" not in tensors or "positions" not in tensors:
        raise FormatError(f"{key}: no tokens/positions tensors: not a vtc token file.")
    k = int(tensors["tokens"].shape[0])
    ts = tensors.get("timestamps", torch.zeros(k))
    return {"key": key, "tokens": tensors["tokens"], "positions": tensors["positions"].long(),
            "timestamps": ts.float(), "meta": meta, "info": info or {}}


def _files(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], suffix: str) -> list[Path | RemotePath]:
    """A folder or prefix (recursive), or a list of files/URLs → sorted files ending in `suffix`."""
    if isinstance(source, (str, os.PathLike)):
        root = location(source)
        if isinstance(root, RemotePath):
            found = [root] if root.is_file() else [p for p in root.find() if p.name.endswith(suffix)]
        elif root.is_dir():
            found = sorted(p for p in root.rglob(f"*{suffix}") if not p.name.startswith("."))
        else:
            found = [root]
        if not found:
            raise UsageError(f"{source}: no *{suffix} files found.")
        return list(found)
    return [location(s) for s in source]


class TokenFiles(Dataset):
    """Map-style dataset over vtc token files (a folder, a prefix URL, or a list)."""

    def __init__(self, source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> None:
        self.files = _files(source, ".safetensors")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Sample:
        f = self.files[i]
        raw = f.read_bytes()
        return sample_from_bytes(str(f), raw, {"path": str(f)})


def iter_shard(shard: Path | RemotePath) -> Iterator[Sample]:
    """The samples of one tar shard, streamed (members paired by key, in order)."""
    fileobj: Any
    if isinstance(shard, RemotePath):
        fs, path = shard.fs()
        fileobj = fs.open(path, "rb", block_size=8 << 20)
    else:
        fileobj = open(shard, "rb")  # noqa: SIM115 (closed below)
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            key, parts = None, {}
            for m in tar:
                if not m.isfile():
                    continue
                base = m.name.rsplit("/", 1)
                stem, _, ext = base[-1].partition(".")
                k = (base[0] + "/" + stem) if len(base) == 2 else stem
                f = tar.extractfile(m)
                data = f.read() if f is not None else b""
                if key is not None and k != key:
                    yield from _emit(shard, key, parts)
                    parts = {}
                key = k
                parts[ext] = data
            if key is not None:
                yield from _emit(shard, key, parts)
    finally:
        fileobj.close()


def _emit(shard: Path | RemotePath, key: str, parts: dict[str, bytes]) -> Iterator[Sample]:
    if "safetensors" not in parts:
        return
    info = json.loads(parts["json"]) if "json" in parts else {}
    info["shard"] = str(shard)
    yield sample_from_bytes(key, parts["safetensors"], info)


class TokenShards(IterableDataset):
    """Iterable dataset over tar shards (a folder, a prefix URL, or a list): each DataLoader worker (and each
    rank, with `rank`/`world_size`) reads its own shards."""

    def __init__(self, source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, rank: int = 0,
                 world_size: int = 1) -> None:
        self.shards = _files(source, ".tar")
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[Sample]:
        wi = get_worker_info()
        workers, wid = (wi.num_workers, wi.id) if wi is not None else (1, 0)
        step, start = workers * self.world_size, self.rank * workers + wid
        for shard in self.shards[start::step]:
            yield from iter_shard(shard)


def collate(samples: list[Sample]) -> dict[str, Any]:
    """Pad a list of samples to the longest: tokens [B, K_max, D] (zeros), mask [B, K_max] (True = token),
    positions [B, K_max, 3] (-1 on padding), timestamps [B, K_max] (0 on padding), lengths [B], keys, info."""
    if not samples:
        raise UsageError("collate needs at least one sample.")
    b = len(samples)
    lengths = torch.tensor([int(s["tokens"].shape[0]) for s in samples], dtype=torch.long)
    k_max = int(lengths.max()) if b else 0
    dims = {int(s["tokens"].shape[1]) for s in samples}
    if len(dims) != 1:
        raise UsageError(f"samples have different token widths {sorted(dims)}: batch files of one model together.")
    d = dims.pop()
    dtype = samples[0]["tokens"].dtype
    tokens = torch.zeros(b, k_max, d, dtype=dtype)
    positions = torch.full((b, k_max, 3), -1, dtype=torch.long)
    timestamps = torch.zeros(b, k_max, dtype=torch.float32)
    for i, s in enumerate(samples):
        n = int(lengths[i])
        tokens[i, :n] = s["tokens"].to(dtype)
        positions[i, :n] = s["positions"]
        timestamps[i, :n] = torch.nan_to_num(s["timestamps"], nan=0.0)
    mask = torch.arange(k_max)[None, :] < lengths[:, None]
    return {"tokens": tokens, "mask": mask, "positions": positions, "timestamps": timestamps, "lengths": lengths,
            "keys": [s["key"] for s in samples], "info": [s["info"] for s in samples]}


def read_tensor_bytes(raw: bytes) -> dict[str, Tensor]:
    """The tensors of a token file's bytes (e.g. a `<key>.safetensors` member a `webdataset` pipeline yields)."""
    return load_bytes(raw)


__all__ = ["TokenFiles", "TokenShards", "collate", "iter_shard", "read_tensor_bytes", "sample_from_bytes"]

