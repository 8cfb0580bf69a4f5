"""A token file's metadata and small tensors without torch: what `vtc show` prints starts in a fraction of a second.

`peek` validates like `vtc.io.store.load` (format name and version, required tensors, row counts), reading the
safetensors header and only the small tensors it needs (positions, frame times, segments) as numpy arrays.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vtc.errors import FormatError, InputError
from vtc.io.storage import is_url, read_via_copy

FORMAT_NAME = "vtc-tokens"
#: the newest version (2: a merge map may add groups, the merge_group_* tensors); files without groups are written as
#: version 1, which they are, and every version in READ_VERSIONS is read
FORMAT_VERSION = "2"
FORMAT_VERSION_PLAIN = "1"
READ_VERSIONS = ("1", "2")
REQUIRED = ("tokens", "positions", "timestamps", "frame_times", "sizes", "source", "merge_src", "merge_dst", "merge_w")
#: a merge map's groups (version 2): all four or none
GROUP_TENSORS = ("merge_group_dst", "merge_group_w", "merge_group_size", "merge_group_src")
#: the tensors whose values (index ranges, finiteness) the readers check
CHECKED = ("positions", "frame_times", "segments", "source", "merge_src", "merge_dst", "merge_w", "sizes",
           *GROUP_TENSORS)
#: metadata keys whose values are JSON
JSON_KEYS = ("params", "grid", "image_size", "signals", "sampling", "video", "encoder", "info", "decode", "features",
             "pre_encoder", "space", "newline")
NUMBER_KEYS = ("T", "N", "D", "K", "ratio_requested", "ratio_achieved", "truncated")
DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I32": "int32", "I64": "int64",
          "U8": "uint8", "BOOL": "bool"}
#: the longest header vtc reads (a token file's header is a few kB; this bounds a hostile file)
MAX_HEADER = 100_000_000


def decode_meta(raw: dict[str, str]) -> dict[str, Any]:
    """String metadata → values (JSON where the key says so or the value looks like JSON)."""
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        if not isinstance(v, str):
            raise FormatError(f"metadata '{k}' is not a string.")
        if k in JSON_KEYS or k in NUMBER_KEYS or v[:1] in ("{", "["):
            try:
                meta[k] = json.loads(v)
                continue
            except (json.JSONDecodeError, RecursionError):
                pass
        meta[k] = v
    return meta


#: metadata fields and the JSON types they must have when present
_META_TYPES: dict[str, tuple[type, ...]] = {
    "params": (dict,), "signals": (dict,), "sampling": (dict,), "video": (dict,), "encoder": (dict,), "info": (dict,),
    "decode": (dict,), "features": (dict,), "pre_encoder": (dict,), "space": (dict,), "newline": (dict,),
    "live": (dict,), "ratio_requested": (int, float, type(None)), "ratio_achieved": (int, float),
    "truncated": (bool,), "method": (str,), "variant": (str,), "order": (str,),
}
#: integer tensors and their allowed dtypes
_INTS = ("I8", "I16", "I32", "I64", "U8", "U16", "U32")


def _int(meta: dict[str, Any], key: str, where: str) -> int | None:
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FormatError(f"{where}: metadata '{key}' must be a whole number ≥ 0, not {str(value)[:40]!r}.")
    return value


def check_contents(where: Path | str, meta: dict[str, Any], shapes: dict[str, tuple[str, tuple[int, ...]]],
                   arrays: dict[str, np.ndarray]) -> tuple[int, int, int]:
    """Validate a token file beyond its format name: metadata types, tensor dtypes and shapes, and every index
    range of the arrays given (`shapes`: name → (safetensors dtype, shape) for every tensor; `arrays`: the ones
    read).  Every failure is a FormatError naming the field.  → (T, h, w)."""
    if isinstance(meta.get("space"), str):  # files of vtc ≤ 0.1 said space="features"
        if meta["space"] not in ("features", "encoder"):
            raise FormatError(f"{where}: metadata 'space' is not JSON ({meta['space'][:40]!r}).")
        meta["space"] = {"kind": meta["space"]}
    for key, kinds in _META_TYPES.items():
        if key in meta and (not isinstance(meta[key], kinds) or (isinstance(meta[key], bool) and bool not in kinds)):
            raise FormatError(f"{where}: metadata '{key}' has the wrong type ({type(meta[key]).__name__}).")
    grid = meta.get("grid")
    if not (isinstance(grid, list) and len(grid) == 2 and all(isinstance(g, int) and not isinstance(g, bool)
                                                               and g >= 1 for g in grid)):
        raise FormatError(f"{where}: metadata 'grid' must be [h, w] with h, w ≥ 1, not {str(grid)[:40]!r}.")
    h, w = grid
    dtype_tok, tok = shapes["tokens"]
    if len(tok) != 2 or tok[0] < 1 or tok[1] < 1:
        raise FormatError(f"{where}: 'tokens' must be [K ≥ 1, D ≥ 1], not {list(tok)}.")
    k = tok[0]
    _, ft = shapes["frame_times"]
    if len(ft) != 1 or ft[0] < 1:
        raise FormatError(f"{where}: 'frame_times' must be [T ≥ 1], not {list(ft)}.")
    t = ft[0]
    for key, want in (("T", t), ("K", k)):
        got = _int(meta, key, str(where))
        if got is not None and got != want:
            raise FormatError(f"{where}: metadata '{key}' is {got} but the tensors say {want}.")
    _int(meta, "N", str(where))
    _int(meta, "D", str(where))
    expect = {"positions": (k, 3), "timestamps": (k,), "sizes": (k,), "source": None, "merge_src": None,
              "merge_dst": None, "merge_w": None}
    for name, shape in expect.items():
        dtype, got = shapes[name]
        if shape is not None and tuple(got) != shape:
            raise FormatError(f"{where}: '{name}' has shape {list(got)}, expected {list(shape)}.")
        if name in ("positions", "sizes", "source", "merge_src", "merge_dst") and dtype not in _INTS:
            raise FormatError(f"{where}: '{name}' must hold integers, not {dtype}.")
    e = shapes["merge_src"][1]
    if len(e) != 1 or shapes["merge_dst"][1] != e or shapes["merge_w"][1] != e:
        raise FormatError(f"{where}: merge_src, merge_dst and merge_w must be vectors of one length.")
    members = _check_group_shapes(where, meta, shapes)
    src_len = shapes["source"][1]
    if len(src_len) != 1 or src_len[0] != t * h * w:
        raise FormatError(f"{where}: 'source' must be [T·h·w] = [{t * h * w}] for {t} frames on the {h}×{w} grid, "
                          f"not {list(src_len)}.")
    extra = shapes.get("extra_tokens", (None, (0, tok[1])))[1]
    if len(extra) != 2:
        raise FormatError(f"{where}: 'extra_tokens' must be [X, D], not {list(extra)}.")
    n_src = src_len[0] + extra[0]
    if "segments" in shapes:
        dtype, seg = shapes["segments"]
        if len(seg) != 2 or seg[1] != 2 or dtype not in _INTS:
            raise FormatError(f"{where}: 'segments' must be integer [S, 2], not {dtype} {list(seg)}.")
    check_space(where, meta, shapes, t, h, w)
    ranges = {"positions": None, "source": (-1, k), "merge_dst": (0, k), "merge_src": (0, n_src),
              "segments": (0, t), "sizes": (0, None), "merge_group_dst": (0, k), "merge_group_src": (0, n_src),
              "merge_group_size": (0, None)}
    if members is not None:
        sizes = arrays.get("merge_group_size.sum", arrays.get("merge_group_size", np.zeros(0, np.int64)))
        if int(sizes.astype(np.int64, copy=False).sum()) != members:
            raise FormatError(f"{where}: merge_group_size must add up to the {members} entries of merge_group_src.")
    for name, arr in arrays.items():
        if name == "positions":
            p = arr.astype(np.int64, copy=False).reshape(-1, 3)
            bad = ((p[:, 0] < -1) | (p[:, 0] >= t) | (p[:, 1] < -1) | (p[:, 1] >= h) | (p[:, 2] < -1)
                   | (p[:, 2] >= w)).any()
            if bad:
                raise FormatError(f"{where}: 'positions' point outside the {t} frames × {h}×{w} grid.")
        elif name in ("frame_times", "timestamps", "merge_w", "merge_group_w"):
            if name != "timestamps" and not np.isfinite(arr.astype(np.float64, copy=False)).all():
                raise FormatError(f"{where}: '{name}' holds non-finite values.")
        elif name in ranges and ranges[name] is not None and arr.size:
            lo, hi = ranges[name]
            v = arr.astype(np.int64, copy=False)
            if v.min() < lo or (hi is not None and v.max() >= hi):
                raise FormatError(f"{where}: '{name}' has indices outside [{lo}, {hi}).")
    return t, h, w


def _check_group_shapes(where: Path | str, meta: dict[str, Any],
                        shapes: dict[str, tuple[str, tuple[int, ...]]]) -> int | None:
    """A merge map's groups: all four merge_group_* tensors or none, integer indices, dst / w / size of one length
    G, src a vector; only in a version-2 file.  → M, the members (None: no groups)."""
    present = [n for n in GROUP_TENSORS if n in shapes]
    if not present:
        return None
    if len(present) != len(GROUP_TENSORS):
        raise FormatError(f"{where}: a merge map's groups need all of {', '.join(GROUP_TENSORS)} "
                          f"(has only {', '.join(present)}).")
    if str(meta.get("format_version", FORMAT_VERSION)) == FORMAT_VERSION_PLAIN:
        raise FormatError(f"{where}: merge_group_* tensors in a version-{FORMAT_VERSION_PLAIN} file.")
    g = shapes["merge_group_dst"][1]
    if len(g) != 1 or shapes["merge_group_w"][1] != g or shapes["merge_group_size"][1] != g:
        raise FormatError(f"{where}: merge_group_dst, merge_group_w and merge_group_size must be vectors of one "
                          f"length.")
    if len(shapes["merge_group_src"][1]) != 1:
        raise FormatError(f"{where}: merge_group_src must be a vector.")
    for name in ("merge_group_dst", "merge_group_size", "merge_group_src"):
        if shapes[name][0] not in _INTS:
            raise FormatError(f"{where}: '{name}' must hold integers, not {shapes[name][0]}.")
    return shapes["merge_group_src"][1][0]


#: the targets whose files carry Qwen's video fields (video_grid_thw, retention_mask, M-RoPE or DeepStack): every
#: Qwen family in vtc.targets
QWEN_SPACES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl", "qwen3.5")


def _whole(value: Any, lo: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_space(where: Path | str, meta: dict[str, Any], shapes: dict[str, tuple[str, tuple[int, ...]]],
                t: int, h: int, w: int) -> None:
    """The token-space fields: `space.kind`, and for a target file every field its consumers (`vtc export`,
    `vtc.hf`) read — the Qwen video grid, retention mask, M-RoPE positions, DeepStack planes, frame timestamps, the
    newline tensor's width — by type and shape.  A FormatError names the field."""
    space = meta.get("space")
    if space is None:
        return
    kind = space.get("kind")
    if kind not in ("encoder", "features", "target"):
        raise FormatError(f"{where}: metadata 'space' has kind {str(kind)[:40]!r}; expected encoder, features or "
                          f"target.")
    k, d = shapes["tokens"][1]
    if kind != "target":
        return
    if not isinstance(space.get("target"), str):
        raise FormatError(f"{where}: a target file whose 'space' names no target.")
    if "hidden_size" in space and space["hidden_size"] != d:
        raise FormatError(f"{where}: space 'hidden_size' is {str(space['hidden_size'])[:20]} but the tokens have "
                          f"D = {d}.")
    newline = meta.get("newline") or {}
    layout = newline.get("layout", "none")
    if not isinstance(layout, str):
        raise FormatError(f"{where}: newline layout must be a name, not {str(layout)[:40]!r}.")
    if layout != "none" and "newline" not in shapes:
        raise FormatError(f"{where}: newline layout '{layout}' but no 'newline' tensor.")
    if "newline" in shapes and shapes["newline"][1] != (d,):
        raise FormatError(f"{where}: 'newline' has shape {list(shapes['newline'][1])}, expected [{d}] (the tokens' "
                          f"width).")
    target = space["target"]
    if target not in QWEN_SPACES:
        return

    def need(name: str, shape: tuple[int, ...] | None, ints: bool = False, dtypes: tuple[str, ...] = ()) -> None:
        if name not in shapes:
            raise FormatError(f"{where}: a {target} file without its '{name}' tensor.")
        dtype, got = shapes[name]
        if (shape is not None and got != shape) or (ints and dtype not in _INTS) or (dtypes and dtype not in dtypes):
            want = list(shape) if shape is not None else "?"
            raise FormatError(f"{where}: '{name}' is {dtype} {list(got)}, expected {want}"
                              + (" integers" if ints else "") + ".")

    m = space.get("spatial_merge_size")
    if not _whole(m):
        raise FormatError(f"{where}: space 'spatial_merge_size' must be a whole number ≥ 1, not {str(m)[:40]!r}.")
    thw = space.get("video_grid_thw")
    if thw != [t, h * m, w * m] or not all(_whole(v) for v in thw):
        raise FormatError(f"{where}: space 'video_grid_thw' must be [{t}, {h * m}, {w * m}] ({t} frames of the "
                          f"{h}×{w} token grid, merge {m}), not {str(thw)[:60]}.")
    need("retention_mask", (t * h * w,), dtypes=("BOOL", "U8"))
    if "frame_timestamps" not in space:  # Qwen2-VL / Qwen2.5-VL: M-RoPE positions in the file
        need("mrope_positions", (k, 3), ints=True)
        if (target == "qwen2.5-vl" or "second_per_grid_t" in space) and \
                (not _finite(space.get("second_per_grid_t")) or space["second_per_grid_t"] < 0):
            raise FormatError(f"{where}: space 'second_per_grid_t' must be a number ≥ 0, not "
                              f"{str(space.get('second_per_grid_t'))[:40]!r}.")
        if not _whole(space.get("max_position"), 0):
            raise FormatError(f"{where}: space 'max_position' must be a whole number, not "
                              f"{str(space.get('max_position'))[:40]!r}.")
    else:  # Qwen3-VL / Qwen3.5: a timestamp per token frame, DeepStack planes where the checkpoint has them
        planes = space.get("deepstack_planes")
        if not _whole(planes, 0):
            raise FormatError(f"{where}: space 'deepstack_planes' must be a whole number, not {str(planes)[:40]!r}.")
        if planes:
            need("deepstack", (k, planes, d))
        stamps = space.get("frame_timestamps")
        if not (isinstance(stamps, list) and len(stamps) == t and all(_finite(v) for v in stamps)):
            raise FormatError(f"{where}: space 'frame_timestamps' must be {t} numbers (one per token frame), not "
                              f"{str(stamps)[:60]}.")
        for key in ("vision_start_token_id", "vision_end_token_id"):
            if key in space and space[key] is not None and not _whole(space[key], 0):
                raise FormatError(f"{where}: space '{key}' must be a token id, not {str(space[key])[:40]!r}.")


def read_header(path: Path) -> dict[str, Any]:
    """The safetensors JSON header of `path` (bounded read).  Missing file: InputError; not safetensors:
    FormatError."""
    if not path.exists():
        raise InputError(f"{path}: no such file.")
    if not path.is_file():
        raise InputError(f"{path} is not a regular file.")
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= min(MAX_HEADER, max(0, path.stat().st_size - 8)):
                raise ValueError("bad header length")
            header = json.loads(f.read(size))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: not a safetensors file ({e}). Is it a vtc token file?") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: not a safetensors file (header is not a table).")
    return header


def check_header(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    """Validate a token file's header like `load` does.  → its decoded metadata."""
    raw = header.get("__metadata__") or {}
    if not isinstance(raw, dict):
        raise FormatError(f"{path}: not a vtc token file (metadata is not a table).")
    if raw.get("format") != FORMAT_NAME:
        raise FormatError(f"{path}: not a vtc token file (format '{raw.get('format', '')}').")
    if raw.get("format_version") not in READ_VERSIONS:
        raise FormatError(f"{path}: format version {raw.get('format_version')} is not supported by this vtc "
                          f"(reads versions {', '.join(READ_VERSIONS)}); upgrade vtc.")
    missing = [k for k in REQUIRED if k not in header]
    if missing:
        raise FormatError(f"{path}: missing tensors {', '.join(missing)}.")
    try:
        return decode_meta(raw)
    except FormatError as e:
        raise FormatError(f"{path}: {e}") from None


def header_shapes(path: Path, header: dict[str, Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name → (dtype, shape) of every tensor in a safetensors header."""
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            out[name] = (str(entry["dtype"]), tuple(int(v) for v in entry["shape"]))
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{path}: malformed header entry for '{name}'.") from None
    return out


_NP_DTYPES = {"I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "U8": np.uint8, "F16": np.float16,
              "F32": np.float32, "F64": np.float64}
#: the long per-source arrays, checked by their range only: read memory-mapped a block at a time, never whole
_LONG = ("source", "merge_src", "merge_dst", "merge_w", "sizes", *GROUP_TENSORS)


def value_summaries(path: Path, header: dict[str, Any], block: int = 1 << 22) -> dict[str, np.ndarray]:
    """What `check_contents` needs of a written file's values, in bounded memory: the small arrays (positions,
    frame times, segments) whole, and for each long array (an hour's merge map has tens of millions of entries)
    its [min, max] (integers) or [0] / [nan] (whether all weights are finite), read memory-mapped by blocks."""
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
    data_bytes = path.stat().st_size - 8 - size
    out: dict[str, np.ndarray] = {}
    for name in CHECKED:
        entry = header.get(name)
        if not isinstance(entry, dict) or entry.get("dtype") not in _NP_DTYPES:
            continue
        dtype = np.dtype(_NP_DTYPES[entry["dtype"]])
        a, b = (int(v) for v in entry["data_offsets"])
        count = math.prod(int(v) for v in entry["shape"])
        if not 0 <= a <= b <= data_bytes or b - a != count * dtype.itemsize:
            raise FormatError(f"{path}: the data of '{name}' lies outside the file or does not match its shape.")
        data = np.memmap(path, dtype=dtype, mode="r", offset=8 + size + a, shape=(count,)) if count else \
            np.zeros(0, dtype)
        if name not in _LONG:
            out[name] = np.array(data).reshape(entry["shape"])
        elif name in ("merge_w", "merge_group_w"):
            finite = all(np.isfinite(data[i : i + block]).all() for i in range(0, count, block))
            out[name] = np.array([0.0 if finite else np.nan])
        elif count:
            lo = min(int(data[i : i + block].min()) for i in range(0, count, block))
            hi = max(int(data[i : i + block].max()) for i in range(0, count, block))
            out[name] = np.array([lo, hi], np.int64)
            if name == "merge_group_size":  # the members they add up to
                total = sum(int(data[i : i + block].astype(np.int64).sum()) for i in range(0, count, block))
                out["merge_group_size.sum"] = np.array([total], np.int64)
        del data
    return out


@dataclass
class Peek:
    """What `vtc show` needs: metadata, the tokens' shape and dtype, positions [K, 3], frame_times [T], segments."""

    path: Path
    meta: dict[str, Any]
    tokens_shape: tuple[int, ...]
    tokens_dtype: str
    positions: np.ndarray
    frame_times: np.ndarray
    segments: np.ndarray | None = None
    names: list[str] = field(default_factory=list)

    def tokens_per_frame(self) -> list[int]:
        t = int(self.meta.get("T", self.frame_times.size))
        f = self.positions[:, 0].astype(np.int64) if self.positions.size else np.zeros(0, np.int64)
        return np.bincount(f[f >= 0], minlength=t).tolist()


def peek(path: str | os.PathLike[str]) -> Peek:
    """Read and validate a token file's header and small tensors (no torch); a URL is fetched first."""
    if is_url(path):
        return read_via_copy(path, peek)

    p = Path(path)
    header = read_header(p)
    meta = check_header(p, header)
    shapes = header_shapes(p, header)
    try:  # every index range, as `load` checks (the long arrays by blocks: bounded memory)
        arrays = value_summaries(p, header)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise FormatError(f"{p}: cannot read its tensors ({str(e)[:200]}).") from None
    for name in ("positions", "frame_times"):
        if name not in arrays:
            raise FormatError(f"{p}: '{name}' has an unreadable dtype ({shapes[name][0]}).")
    check_contents(p, meta, shapes, arrays)
    tok = header["tokens"]
    return Peek(p, meta, tuple(int(s) for s in tok["shape"]), DTYPES.get(tok["dtype"], str(tok["dtype"]).lower()),
                arrays["positions"], arrays["frame_times"], arrays.get("segments"),
                [n for n in header if n != "__metadata__"])
