"""A token file's metadata and small tensors without torch: what `vtc show` prints starts in a fraction of a second.

`peek` validates like `vtc.io.store.load` (format name and version, required tensors, row counts), reading the
safetensors header and only the small tensors it needs (positions, frame times, segments) as numpy arrays.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vtc.errors import FormatError, InputError

FORMAT_NAME = "vtc-tokens"
FORMAT_VERSION = "1"
REQUIRED = ("tokens", "positions", "timestamps", "frame_times", "sizes", "source", "merge_src", "merge_dst", "merge_w")
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
        if k in JSON_KEYS or k in NUMBER_KEYS or v[:1] in ("{", "["):
            try:
                meta[k] = json.loads(v)
                continue
            except json.JSONDecodeError:
                pass
        meta[k] = v
    return meta


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
    if raw.get("format") != FORMAT_NAME:
        raise FormatError(f"{path}: not a vtc token file (format '{raw.get('format', '')}').")
    if raw.get("format_version") != FORMAT_VERSION:
        raise FormatError(f"{path}: format version {raw.get('format_version')} is not supported by this vtc "
                          f"(reads version {FORMAT_VERSION}); upgrade vtc.")
    missing = [k for k in REQUIRED if k not in header]
    if missing:
        raise FormatError(f"{path}: missing tensors {', '.join(missing)}.")
    try:
        k = int(header["tokens"]["shape"][0])
        for name in ("positions", "timestamps", "sizes"):
            if int(header[name]["shape"][0]) != k:
                raise FormatError(f"{path}: '{name}' has {header[name]['shape'][0]} rows, tokens has {k}.")
    except (KeyError, TypeError, IndexError, ValueError):
        raise FormatError(f"{path}: malformed tensor entries in the header.") from None
    return decode_meta(raw)


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
    """Read and validate a token file's header and small tensors (no torch)."""
    from safetensors import safe_open

    p = Path(path)
    header = read_header(p)
    meta = check_header(p, header)
    try:
        with safe_open(str(p), framework="np") as f:
            arrays = {n: f.get_tensor(n) for n in ("positions", "frame_times", "segments") if n in header}
    except Exception as e:  # safetensors raises its own error types
        raise FormatError(f"{p}: cannot read its tensors ({e}).") from None
    tok = header["tokens"]
    return Peek(p, meta, tuple(int(s) for s in tok["shape"]), DTYPES.get(tok["dtype"], str(tok["dtype"]).lower()),
                arrays["positions"], arrays["frame_times"], arrays.get("segments"),
                [n for n in header if n != "__metadata__"])
