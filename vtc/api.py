"""The Python API: `compress`, `compress_features`, `load`.  The CLI is a thin shell over these."""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vtc import __version__
from vtc.config import CompressConfig, make_config
from vtc.decode import DecodeReport, Sampling, VideoInfo, content_hash, iter_frames, probe
from vtc.encode import Encoder, EncoderConfig
from vtc.errors import InputError, UsageError
from vtc.methods import get_method
from vtc.reduction import Reduction
from vtc.signals import Signals
from vtc.store import TokenFile, load, out_dtype, token_tensors, write

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
    for name in spec.signals:
        sig.require(name, spec.name)
    resolved = spec.resolve(params or {})
    red = spec.fn(features, grid=tuple(grid), ratio=ratio, signals=sig, **resolved)
    return FeatureResult(red.apply(features), red, spec.name, resolved, ratio)


def _progress_noop(kind: str, done: int, total: int | None) -> None:
    return None


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
    cfg: CompressConfig = make_config(preset, **options)
    progress = progress or _progress_noop
    spec = get_method(cfg.method)
    params = spec.resolve(cfg.params)
    dtype_out = out_dtype(cfg.dtype_out)
    sampling = Sampling(frames=cfg.frames, fps=cfg.fps, every=cfg.every).validate()
    out_path = Path(output) if output is not None else default_output(path)
    timings: dict[str, float] = {}

    t0 = time.perf_counter()
    info = probe(path)
    if encoder is None:
        encoder = Encoder(EncoderConfig(cfg.model, cfg.pretrained, cfg.checkpoint, cfg.layer, cfg.device,
                                        cfg.dtype, cfg.batch_size))
    timings["load"] = time.perf_counter() - t0
    want = set(spec.signals) | {s for s in spec.optional_signals if s in ("attn", "pooled", "cls_attn", "keys")}
    want &= {"attn", "pooled", "cls_attn", "cls_token", "keys"}

    report = DecodeReport()
    outputs: dict[str, list[Tensor]] = {}
    batch: list[np.ndarray] = []
    times: list[float] = []
    t_dec = t_enc = 0.0

    pixels: list[Tensor] = []
    views: list[Tensor] = []

    def flush() -> None:
        nonlocal t_enc
        if not batch:
            return
        te = time.perf_counter()
        if spec.extra_images is not None:
            pixels.append(encoder.preprocess(np.stack(batch)))
        if "frames" in spec.signals:
            views.append(encoder.view(np.stack(batch)))
        res = encoder.encode(np.stack(batch), want)
        t_enc += time.perf_counter() - te
        for k, v in res.items():
            outputs.setdefault(k, []).append(v)
        progress("encode", len(times), None)
        batch.clear()

    td = time.perf_counter()
    for ft, frame in iter_frames(path, sampling, encoder.input_size, info=info,
                                 allow_truncated=cfg.allow_truncated, report=report):
        batch.append(frame)
        times.append(ft)
        progress("decode", len(times), None)
        if len(batch) >= cfg.batch_size:
            t_dec += time.perf_counter() - td
            flush()
            td = time.perf_counter()
    t_dec += time.perf_counter() - td
    flush()
    if not times:
        raise InputError(f"{path}: no frame could be sampled (the video stream is empty or unreadable).")
    timings["decode"] = t_dec
    timings["encode"] = t_enc

    feats = torch.cat(outputs.pop("patches"))
    sig_tensors = {k: torch.cat(v) for k, v in outputs.items()}
    if views:
        sig_tensors["frames"] = torch.cat(views)
    if spec.extra_images is not None:  # e.g. TS-LLaVA's thumbnail: build the picture, encode it for real
        te = time.perf_counter()
        for name, image in spec.extra_images(torch.cat(pixels), **params).items():
            sig_tensors[name] = encoder.encode_pixels(image)["patches"].reshape(-1, feats.shape[-1])
        timings["encode"] += time.perf_counter() - te
    tc = time.perf_counter()
    result = compress_features(feats, method=spec.name, ratio=cfg.ratio, grid=encoder.grid, params=params,
                               **sig_tensors)
    timings["compress"] = time.perf_counter() - tc

    ts = time.perf_counter()
    frame_times = torch.tensor(times, dtype=torch.float32)
    tensors = token_tensors(result.reduction, result.tokens, encoder.grid, frame_times, dtype_out)
    meta = build_metadata(path, info, cfg, encoder, result, report, sampling, sorted(want), feats.shape)
    write(out_path, tensors, meta)
    timings["store"] = time.perf_counter() - ts
    return CompressResult(out_path, result.reduction.num_outputs, result.reduction.num_sources,
                          result.ratio_achieved, timings, report.truncated)


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


def load_tokens(path: str | os.PathLike[str]) -> TokenFile:
    """Alias of `vtc.load`."""
    return load(path)
