"""The Python API: `compress`, `compress_features`, `load`.  The CLI is a thin shell over these."""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vtc import __version__
from vtc.errors import UsageError
from vtc.io.decode import DecodeReport, Sampling, VideoInfo, content_hash, probe
from vtc.io.encode import Encoder
from vtc.io.store import load, out_dtype
from vtc.methods import get_method
from vtc.reduction import Reduction
from vtc.run.config import CompressConfig, make_config
from vtc.signals import Signals

__all__ = ["CompressResult", "FeatureResult", "compress", "compress_features", "load", "default_output"]


@dataclass
class FeatureResult:
    """What `compress_features` returns: the tokens [K, D], the reduction (provenance) and its facts."""

    tokens: Tensor
    reduction: Reduction
    method: str
    params: dict[str, Any]
    ratio_requested: float | None

    @property
    def ratio_achieved(self) -> float:
        return self.reduction.ratio()


@dataclass
class CompressResult:
    """What `compress` returns: where the file went, and timings in seconds."""

    output: Path
    num_tokens: int
    num_source_tokens: int
    ratio_achieved: float
    timings: dict[str, float] = field(default_factory=dict)
    truncated: bool = False


def default_output(path: str | os.PathLike[str]) -> Path:
    """`clip.mp4` → `clip.safetensors`, beside the input."""
    return Path(path).with_suffix(".safetensors")


def compress_features(
    features: Tensor,
    *,
    method: str = "fastvid",
    ratio: float | None = None,
    grid: tuple[int, int] | None = None,
    params: dict[str, Any] | None = None,
    **signals: Tensor | None,
) -> FeatureResult:
    """Compress features from any encoder.

    features: [T, N, D] (N = h·w, row-major) or [T, h, w, D]. `grid` (h, w) defaults to a square N.
    Signals a method needs are passed by name: attn [T, N], pooled [T, D'], cls_attn [T, N], cls_token [T, D],
    keys [T, N+1, d], audio_saliency [A], relevance [T]. Method parameters go in `params` (vtc or authors' names).
    """
    if features.dim() == 4:
        grid = grid or (features.shape[1], features.shape[2])
        features = features.reshape(features.shape[0], -1, features.shape[-1])
    if features.dim() != 3:
        raise UsageError(f"features must be [T, N, D] or [T, h, w, D], got shape {tuple(features.shape)}.")
    t, n, _ = features.shape
    if grid is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise UsageError(f"N = {n} is not a square: pass grid=(h, w).")
        grid = (side, side)
    if grid[0] * grid[1] != n:
        raise UsageError(f"grid {grid} does not match N = {n}.")
    if ratio is not None and not 0.0 < float(ratio) <= 1.0:
        raise UsageError(f"ratio must be in (0, 1] — the fraction of tokens kept — not {ratio}.")
    spec = get_method(method)
    unknown = set(signals) - set(Signals.names())
    if unknown:
        raise UsageError(f"unknown signal(s) {', '.join(sorted(unknown))}; known: {', '.join(Signals.names())}.")
    sig = Signals(**{k: v for k, v in signals.items() if v is not None})
    resolved = spec.resolve(params or {})
    red = spec.run(features, grid=tuple(grid), ratio=ratio, signals=sig, params=resolved)
    return FeatureResult(red.apply(features), red, spec.name, resolved, ratio)


def compress(
    path: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    preset: str | None = None,
    encoder: Encoder | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
    **options: Any,
) -> CompressResult:
    """Decode → encode → compress → store one video.

    Options have the CLI's names (see `CompressConfig`): method, ratio, params, frames, fps, every, model,
    pretrained, checkpoint, layer, device, dtype, batch_size, dtype_out, allow_truncated. A `preset` (name or
    TOML path) fills what is not given. An `encoder` can be passed to reuse a loaded model.
    Nothing is written unless every stage succeeds; the write itself is atomic.
    """
    from vtc.run.pipeline import Engine, Job, Plan

    cfg: CompressConfig = make_config(preset, **options)
    plan = Plan.make(cfg)
    out_dtype(cfg.dtype_out)
    out_path = Path(output) if output is not None else default_output(path)
    if out_path.is_dir():  # -o DIR for one file: write DIR/<name>.safetensors
        out_path = out_path / default_output(Path(path).name)
    t0 = time.perf_counter()
    probe(path)  # fail fast on a bad input before loading a model
    if encoder is None:
        encoder = Encoder(cfg.encoder_config())
    load_time = time.perf_counter() - t0
    seen = {"frames": 0}

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if progress is not None and kind in ("decoded", "encoded"):
            seen[kind] = seen.get(kind, 0) + int(data["frames"])
            progress("decode" if kind == "decoded" else "encode", seen[kind], None)

    engine = Engine(plan, encoder, decode_workers=1, on_event=on_event)
    (outcome,) = list(engine.run([Job(0, Path(path), out_path)]))
    if not outcome.ok:
        assert outcome.error is not None
        raise outcome.error
    return CompressResult(out_path, outcome.num_tokens, outcome.num_source_tokens, outcome.ratio_achieved,
                          {"load": load_time, **outcome.timings}, outcome.truncated)


def build_metadata(
    path: str | os.PathLike[str],
    info: VideoInfo,
    cfg: CompressConfig,
    encoder: Encoder,
    result: FeatureResult,
    report: DecodeReport,
    sampling: Sampling,
    signals: list[str],
    shape: torch.Size,
) -> dict[str, Any]:
    """The string metadata of a token file (format v1)."""
    t, n, d = shape
    red = result.reduction
    enc = encoder.describe()
    sources = encoder.signal_sources()
    return {
        "vtc_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "method": result.method,
        "params": result.params,
        "ratio_requested": result.ratio_requested,
        "ratio_achieved": round(red.ratio(), 6),
        "order": red.info.get("order", "frame-row-col"),
        "model": enc["model"],
        "pretrained": enc["pretrained"],
        "checkpoint": enc["checkpoint"],
        "checkpoint_sha256": enc["checkpoint_sha256"],
        "layer": str(cfg.layer),
        "image_size": enc["image_size"],
        "grid": list(encoder.grid),
        "T": t,
        "N": n,
        "D": d,
        "K": red.num_outputs,
        "signals": {s: sources.get(s, "") for s in signals},
        "encoder": enc,
        "sampling": sampling.describe(),
        "video": {
            "path": str(Path(path).resolve()),
            "size_bytes": info.size_bytes,
            "sha256": content_hash(path),
            "duration": info.duration,
            "fps": info.fps,
            "width": info.width,
            "height": info.height,
            "rotation": info.rotation,
            "codec": info.codec,
            "container": info.container,
            "has_audio": info.has_audio,
        },
        "truncated": report.truncated,
        "decode": {"decoded_frames": report.decoded_frames, "last_time": report.last_time, "error": report.error},
        "info": red.info,
    }
