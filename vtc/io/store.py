"""Store: vtc token files, format v1 / v2 (safetensors).  Writes are atomic; reads validate.

A file whose map has groups (`vtc.reduction.Groups`: FastVID) is version 2; any other file is written as
version 1, unchanged, and both versions are read.

Tensors (K output tokens, T frames, N = h·w patches per frame, D channels, E merge-map entries):

| name          | dtype, shape      | meaning                                                                  |
|---------------|-------------------|--------------------------------------------------------------------------|
| tokens        | f16/bf16/f32 [K,D] | the kept tokens                                                          |
| positions     | int32 [K, 3]      | frame, row, col of each token's representative source (-1 = none)        |
| timestamps    | float32 [K]       | seconds of the representative's frame                                    |
| frame_times   | float32 [T]       | presentation time of every sampled frame                                 |
| sizes         | int32 [K]         | how many source tokens each output token stands for                      |
| source        | int32 [T·N]       | output row each source token went to (largest weight), -1 = dropped      |
| merge_src/dst | int32 [E]         | exact map: tokens[dst] += merge_w · features.reshape(T·N, D)[src]        |
| merge_w       | float32 [E]       |                                                                          |
| merge_group_  | int32 [G]         | v2, groups: tokens[dst[g]] += w[g] · Σ features.reshape(T·N, D)[s] over  |
|   dst/size    |                   | group g's members s: the next size[g] values of merge_group_src          |
| merge_group_w | float32 [G]       | (a (dst, src) pair is in the entries or in one group, never both)        |
| merge_group_  | int32 [M]         |                                                                          |
|   src         |                   |                                                                          |
| segments      | int32 [S, 2]      | inclusive frame ranges of temporal segments (methods that have them)     |
| extra_tokens  | [X, D]            | off-grid sources (CLS tokens, thumbnail tokens): merge_src T·N + i       |
| newline       | [D]               | target files only: the model's newline embedding, placed by consumers    |

String metadata: see `build_metadata`; values that are not plain strings are JSON. `space` says which token space
the file is in ({"kind": "encoder"} or {"kind": "target", "target", "checkpoint", "vision_sha256", "hidden_size",
...}; files without it are encoder-space) and `newline` where a target's newline tokens go.
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from vtc.errors import FormatError, UsageError, VtcError
from vtc.io.peek import (
    CHECKED,
    FORMAT_NAME,
    FORMAT_VERSION,
    FORMAT_VERSION_PLAIN,
    check_contents,
    check_header,
    header_shapes,
    read_header,
    value_summaries,
)
from vtc.io.storage import RemotePath, atomic_upload, is_url, location, read_via_copy
from vtc.reduction import Groups, Reduction
from vtc.stages.window import WindowedReduction

OUT_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
              "float32": torch.float32, "fp32": torch.float32}


def out_dtype(name: str) -> torch.dtype:
    if name not in OUT_DTYPES:
        raise UsageError(f"--dtype-out must be float16, bfloat16 or float32, not '{name}'.")
    return OUT_DTYPES[name]


#: what a token file is written from: a `Reduction`, or a `WindowedReduction` whose entries come window by window
#: (written as `Streamed` merge tensors, never all in memory)
TokenMap = Reduction | WindowedReduction


def merge_tensors(reduction: TokenMap) -> dict[str, Tensor | Streamed]:
    """merge_src / merge_dst / merge_w (and the merge_group_* tensors of a map with `Groups`) of a reduction:
    tensors, or `Streamed` blocks of a windowed one's parts."""
    if isinstance(reduction, Reduction):
        out: dict[str, Tensor | Streamed] = {
            "merge_src": reduction.src.int().contiguous(), "merge_dst": reduction.dst.int().contiguous(),
            "merge_w": reduction.weight.float().contiguous()}
        g = reduction.groups
        if g is not None and g.num_groups:
            out.update(merge_group_dst=g.dst.int().contiguous(), merge_group_w=g.weight.float().contiguous(),
                       merge_group_size=g.size.int().contiguous(), merge_group_src=g.src.int().contiguous())
        return out
    parts, count = reduction.parts, (reduction.num_entries,)

    def column(i: int, dtype: torch.dtype) -> Streamed:
        return Streamed(count, dtype, lambda: (p[i].to(dtype).contiguous() for p in parts()))

    def group_column(name: str, dtype: torch.dtype, rows: int) -> Streamed:
        return Streamed((rows,), dtype, lambda: (getattr(p[3], name).to(dtype).contiguous() for p in parts()))

    out = {"merge_dst": column(0, torch.int32), "merge_src": column(1, torch.int32),
           "merge_w": column(2, torch.float32)}
    if reduction.num_groups:
        g, m = reduction.num_groups, reduction.num_members
        out.update(merge_group_dst=group_column("dst", torch.int32, g),
                   merge_group_w=group_column("weight", torch.float32, g),
                   merge_group_size=group_column("size", torch.int32, g),
                   merge_group_src=group_column("src", torch.int32, m))
    return out


def token_tensors(
    reduction: TokenMap, tokens: Tensor | Streamed, grid: tuple[int, int], frame_times: Tensor, dtype: torch.dtype
) -> dict[str, Tensor | Streamed]:
    """All tensors of a token file from a reduction and its output tokens [K, D] (or their `Streamed` rows)."""
    h, w = grid
    n = h * w
    rep = reduction.rep.long()
    frame = reduction.row_frames(n)
    cell = torch.where(rep >= 0, rep % n, torch.full_like(rep, -1))
    row = torch.where(cell >= 0, cell // w, cell)
    col = torch.where(cell >= 0, cell % w, cell)
    ft = frame_times.float()
    ts = torch.where(frame >= 0, ft[frame.clamp(0, max(ft.numel() - 1, 0))], torch.tensor(float("nan")))
    out = {
        "tokens": tokens if isinstance(tokens, Streamed) else tokens.to(dtype).contiguous(),
        "positions": torch.stack([frame, row, col], 1).int().contiguous(),
        "timestamps": ts.float().contiguous(),
        "frame_times": ft.contiguous(),
        "sizes": reduction.sizes().int().contiguous(),
        "source": reduction.source().int().contiguous(),
        **merge_tensors(reduction),
    }
    if reduction.segments is not None:
        out["segments"] = reduction.segments.int().contiguous()
    if reduction.extra is not None:
        out["extra_tokens"] = reduction.extra.to(dtype).contiguous()
    return out


def _encode_meta(meta: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in meta.items()}


def file_mode() -> int:
    """The permissions a new file gets under the process umask (mkstemp's temporaries are 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path | RemotePath, write_to: Any,
                 check: Callable[[str], None] | None = None) -> Path | RemotePath:
    """Call `write_to(temporary path)` for a temporary file beside `path`, give it the usual permissions (mkstemp's
    are 0600), run `check(temporary path)` (a file its reader would refuse is never renamed into place), then
    rename it over `path`: readers never see a half-written file.  An OS failure (disk full, folder not writable)
    is a VtcError naming `path`; the temporary is removed whatever happens.  On object storage the temporary file
    is local and is uploaded in one atomic step (`vtc.io.storage.atomic_upload`)."""
    if isinstance(path, RemotePath):
        return atomic_upload(path, write_to, check)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write_to(tmp)
        os.chmod(tmp, file_mode())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except OSError as e:
        raise VtcError(f"cannot write {path}: {e.strerror or e}; nothing was written.") from None
    finally:
        if tmp is not None and os.path.lexists(tmp):
            Path(tmp).unlink(missing_ok=True)
    return path


def clean_stale(output: Path | RemotePath) -> None:
    """Remove the temporary files (`.NAME.*.tmp`) a killed run left beside `output` (object storage has none:
    uploads are atomic)."""
    if isinstance(output, RemotePath):
        return
    try:
        if output.parent.is_dir():
            for tmp in output.parent.glob(f".{glob.escape(output.name)}.*.tmp"):
                tmp.unlink(missing_ok=True)
    except OSError:
        pass  # a folder we may not clean: the temporaries stay, harmless


def is_vtc_report(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a report `vtc show --html/--png` wrote (its generator mark in the first 4 kB)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return REPORT_MARK_HTML in head or REPORT_MARK_PNG in head


#: how reports mark themselves (an HTML meta tag; a PNG tEXt chunk "Software")
REPORT_MARK_HTML = b'<meta name="generator" content="vtc'
REPORT_MARK_PNG = b"tEXtSoftware\x00vtc"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output(input: Path | RemotePath | None, output: Path | RemotePath, *,
                 replaceable: Callable[[Any], bool] | None = None, overwrite: bool = False, option: str = "-o",
                 kind: str = "a vtc token file") -> None:
    """The one check of every file vtc writes (token files, exports, reports), before any work: the output is not
    the input, not a folder, its folder is a writable folder, and an existing file there is replaced only when
    `replaceable(output)` says it is vtc's own output of this kind (default: a token file) and it is writable —
    or when `overwrite` is given.  Else a UsageError naming the output.  An object-storage output (or input) is
    checked by `check_remote_outputs`."""
    if isinstance(output, RemotePath) or isinstance(input, RemotePath):
        refused = check_remote_outputs([(input, output)], replaceable=replaceable, overwrite=overwrite,
                                       option=option, kind=kind)
        if refused:
            raise next(iter(refused.values()))
        if isinstance(output, RemotePath):
            return
        input = None  # a local output of a remote input: the local checks below, no same-file test
    replaceable = replaceable or is_token_file
    if input is not None and _same_file(output, input):
        raise UsageError(f"the output {output} is the input itself; choose another {option}.")
    if output.is_dir():
        raise UsageError(f"the output {output} is a directory; give a file name ({option} FILE).")
    parent = next((p for p in output.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"cannot write {output}: {parent} is a file, not a directory.")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {output}: the folder {parent} is not writable.")
    if (output.exists() or output.is_symlink()) and not overwrite:
        if not output.is_file() or not replaceable(output):
            raise UsageError(f"refusing to overwrite {output}: it is not {kind}. Remove it, choose another "
                             f"{option}, or pass --overwrite.")
        if not os.access(output, os.W_OK) or not output.stat().st_mode & 0o222:
            raise UsageError(f"refusing to overwrite {output}: the file is read-only. Make it writable, choose "
                             f"another {option}, or pass --overwrite.")


def check_remote_outputs(pairs: list[tuple[Path | RemotePath | None, Path | RemotePath]], *,
                         replaceable: Callable[[Any], bool] | None = None, overwrite: bool = False,
                         option: str = "-o", kind: str = "a vtc token file") -> dict[RemotePath, UsageError]:
    """Outputs on object storage: no two inputs share one and none is its input (a UsageError for the run); an
    existing object is replaced only when `replaceable` says so (default: a vtc token file, judged by header for
    the existing ones only, found by one listing per output folder) or `overwrite`: → {output: its error} for
    those refused (each fails its input alone, as `check_outputs` does for local files)."""
    replaceable = replaceable or is_token_file
    seen: dict[str, Path | RemotePath | None] = {}
    for src, dst in pairs:
        key = str(dst)
        if key in seen:
            raise UsageError(f"{seen[key]} and {src} would both be written to {dst}; rename one of them or run them "
                             f"in separate batches.")
        seen[key] = src
        if src is not None and str(src) == key:
            raise UsageError(f"the output {dst} is the input itself; choose another {option}.")
    remote = [dst for _, dst in pairs if isinstance(dst, RemotePath)]
    if overwrite or not remote:
        return {}
    buckets: dict[str, RemotePath] = {}
    for dst in remote:
        fs, path = dst.fs()
        buckets.setdefault(f"{dst.scheme}://{path.split('/', 1)[0]}", dst)
    for bucket, dst in buckets.items():  # a missing bucket fails the run here, not after the work of each input
        fs, path = dst.fs()
        try:
            found = fs.exists(path.split("/", 1)[0])
        except Exception:  # noqa: BLE001 - not allowed to look (a write-only key): the upload will tell
            found = True
        if not found:
            raise UsageError(f"cannot write {dst}: no such bucket {bucket}. Create it or choose another {option}.")
    roots: dict[str, RemotePath] = {}
    for dst in remote:
        roots.setdefault(dst.parent.url, dst.parent)
    # one listing per distinct output folder, cut to a common root when there are many
    urls = [r.url for r in roots.values()]
    if len(urls) > 8:
        common = os.path.commonpath([u.split("://", 1)[1] for u in urls])
        scheme = next(iter(roots.values())).scheme
        roots = {f"{scheme}://{common}": RemotePath(f"{scheme}://{common}")}
    existing: set[str] = set()
    for root in roots.values():
        existing |= {o.url for o in root.find()}
    refused: dict[RemotePath, UsageError] = {}
    for dst in remote:
        if dst.url in existing and not replaceable(dst):
            refused[dst] = UsageError(f"refusing to overwrite {dst}: it is not {kind}. Remove it, choose another "
                                      f"{option}, or pass --overwrite.")
    return refused


@dataclass
class Streamed:
    """A tensor written block by block (rows in order) without ever existing whole: `blocks()` yields [k_i, ...]
    tensors of `dtype` whose rows add up to `shape[0]`."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    blocks: Callable[[], Iterator[Tensor]]

    def element_size(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()

    def numel(self) -> int:
        return math.prod(self.shape)


_ST_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64",
              torch.int8: "I8", torch.int16: "I16", torch.int32: "I32", torch.int64: "I64", torch.uint8: "U8",
              torch.bool: "BOOL"}


def _raw(t: Tensor) -> memoryview:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return memoryview(t.numpy()).cast("B")


def save_streaming(tensors: dict[str, Tensor | Streamed], path: str | os.PathLike[str],
                   metadata: dict[str, str]) -> None:
    """Write a safetensors file tensor by tensor from the tensors' own memory (no serialised copy of the whole
    file, as `safetensors.torch.save_file` makes: an hour of tokens would need it twice); a `Streamed` entry is
    written block by block."""
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))  # larger items first: aligned data
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name in order:
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in order:
            t = tensors[name]
            if isinstance(t, Streamed):
                written = 0
                for block in t.blocks():
                    if block.dtype != t.dtype or tuple(block.shape[1:]) != t.shape[1:]:
                        raise ValueError(f"{name}: a block of {block.dtype} {list(block.shape)} in {t}")
                    written += int(block.shape[0])
                    if block.numel():
                        f.write(_raw(block))
                if written != t.shape[0]:
                    raise ValueError(f"{name}: {written} rows written, {t.shape[0]} declared")
            elif t.numel():
                f.write(_raw(t))


def write(path: str | os.PathLike[str], tensors: dict[str, Tensor | Streamed], metadata: dict[str, Any]) -> Path:
    """Write a token file atomically (`atomic_write`), with 0644-style permissions under umask 022."""
    version = FORMAT_VERSION if "merge_group_src" in tensors else FORMAT_VERSION_PLAIN
    meta = {"format": FORMAT_NAME, **metadata, "format_version": version}
    target = location(path)
    return atomic_write(target, lambda tmp: save_streaming(tensors, tmp, _encode_meta(meta)),  # type: ignore[return-value]
                        check=lambda tmp: check_written(target, Path(tmp)))


def check_written(path: Path | RemotePath, tmp: Path) -> None:
    """Validate a just-written token file (its temporary `tmp`) as `load` would: vtc never leaves a file at `path`
    that its own reader refuses (a FormatError instead, and nothing written)."""
    try:
        header = read_header(tmp)
        meta = check_header(tmp, header)
        shapes = header_shapes(tmp, header)
        check_contents(path, meta, shapes, value_summaries(tmp, header))
    except FormatError as e:
        why = str(e).replace(str(tmp), str(path)).removeprefix(f"{path}: ")
        raise FormatError(f"refusing to write {path}, which vtc's reader would reject: {why}") from None


@dataclass
class TokenFile:
    """A loaded vtc token file: its tensors and its (decoded) metadata."""

    path: Path
    tensors: dict[str, Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Tensor:
        return self.tensors[name]

    @property
    def tokens(self) -> Tensor:
        return self.tensors["tokens"]

    @property
    def positions(self) -> Tensor:
        return self.tensors["positions"]

    @property
    def num_frames(self) -> int:
        return int(self.meta.get("T", self.tensors["frame_times"].numel()))

    @property
    def grid(self) -> tuple[int, int]:
        g = self.meta.get("grid", [0, 0])
        return int(g[0]), int(g[1])

    def reduction(self) -> Reduction:
        """The stored merge map as a `Reduction` (positions give the representatives)."""
        t = self.tensors
        h, w = self.grid
        pos = t["positions"].long()
        rep = torch.where(pos[:, 1] >= 0, pos[:, 0] * h * w + pos[:, 1] * w + pos[:, 2], torch.full_like(pos[:, 0], -1))
        seg = t.get("segments")
        groups = None
        if "merge_group_src" in t and t["merge_group_dst"].numel():
            groups = Groups(t["merge_group_dst"].long(), t["merge_group_w"].float(), t["merge_group_size"].long(),
                            t["merge_group_src"].long())
        return Reduction(t["merge_dst"].long(), t["merge_src"].long(), t["merge_w"].float(), rep,
                         int(t["source"].numel()), None if seg is None else seg.long(), groups=groups)

    def merge_entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """The whole stored map as COO entries (dst [E'], src [E'], weight [E']) sorted by (dst, src): the merge_*
        entries with every group spelled out (a version-1 file: merge_dst, merge_src, merge_w as stored)."""
        return self.reduction().entries()

    def raster_order(self) -> Tensor:
        """Row order [K] that sorts the tokens by their representative's (frame, row, column) — an LLM's sequence
        order; rows without a representative cell come first in their frame (stable)."""
        h, w = self.grid
        pos = self.positions.long()
        frame, row, col = pos[:, 0], pos[:, 1], pos[:, 2]
        cell = torch.where(row >= 0, row * w + col, torch.full_like(row, -1))
        key = torch.where(frame >= 0, frame * (h * w + 1) + cell + 1, torch.full_like(frame, -1))
        return torch.argsort(key, stable=True)

    def tokens_per_frame(self) -> Tensor:
        """[T] int64: output tokens whose representative lies in each frame."""
        f = self.positions[:, 0].long()
        return torch.bincount(f[f >= 0], minlength=self.num_frames)


def _read(path: Path, error: type[VtcError], hint: str) -> tuple[dict[str, str], dict[str, Tensor]]:
    """Metadata and tensors of a safetensors file; a missing or unreadable file raises `error`."""
    if not path.is_file():
        raise error(f"{path}: no such file.")
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise error(f"{path}: not a safetensors file ({e}). {hint}") from None


def load(path: str | os.PathLike[str]) -> TokenFile:
    """Read and validate a vtc token file (a local path or a URL).  Raises FormatError with what is wrong."""
    if is_url(path):  # fetched whole into a temporary file (safetensors reads a local file)
        return read_via_copy(path, load)
    path = Path(path)
    header = read_header(path)  # a missing file is an input error (exit 2); a bounded check before the tensors
    meta = check_header(path, header)  # format, version, required tensors, metadata decoding
    shapes = header_shapes(path, header)
    _, tensors = _read(path, FormatError, "Is it a vtc token file?")
    arrays = {n: tensors[n].numpy() for n in CHECKED if n in tensors}
    check_contents(path, meta, shapes, arrays)  # every shape, dtype and index range: a FormatError, exit 4
    return TokenFile(path, tensors, meta)


def load_features(path: str | os.PathLike[str]) -> tuple[Tensor, dict[str, Tensor], tuple[int, int] | None]:
    """A features file for `vtc compress-features`: safetensors with `features` [T, N, D] or [T, h, w, D] and
    optional signal tensors under vtc's signal names; metadata `grid` ("h,w" or JSON [h, w]) is optional.
    → (features, signals, grid or None)."""
    path = Path(path)
    meta, tensors = _read(path, UsageError, "Write one with safetensors.torch.save_file({'features': x}, PATH).")
    if "features" not in tensors:
        raise UsageError(f"{path}: no 'features' tensor [T, N, D] (has: {', '.join(sorted(tensors)) or 'nothing'}).")
    grid = None
    if meta.get("grid"):
        try:
            h, w = (int(v) for v in meta["grid"].strip("[] ").split(","))
            grid = (h, w)
        except (ValueError, TypeError):
            raise UsageError(f"{path}: metadata grid must be 'h,w' or [h, w], not {meta['grid']!r}.") from None
    features = tensors.pop("features")
    return features, tensors, grid


def is_token_file(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a vtc token file, judged from its safetensors header alone (bounded read)."""
    if is_url(path):
        return is_remote_token_file(location(path))  # type: ignore[arg-type]
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= 100_000_000:
                return False
            header = json.loads(f.read(size))
    except (OSError, ValueError):
        return False
    return isinstance(header, dict) and (header.get("__metadata__") or {}).get("format") == FORMAT_NAME


def is_remote_token_file(target: RemotePath) -> bool:
    """`is_token_file` for an object: two ranged reads (the length, then the header)."""
    header = remote_header(target)
    return header is not None and (header.get("__metadata__") or {}).get("format") == FORMAT_NAME


def remote_header(target: RemotePath) -> dict[str, Any] | None:
    """An object's safetensors header by two ranged reads (the length, then the header); None if it has none."""
    try:
        size = int.from_bytes(target.read_range(0, 8), "little")
        if not 2 <= size <= 100_000_000:
            return None
        header = json.loads(target.read_range(8, 8 + size))
    except (VtcError, ValueError):
        return None
    return header if isinstance(header, dict) else None
