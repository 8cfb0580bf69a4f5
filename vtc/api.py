"""The Python API: `compress`, `compress_features`, `load`.  The CLI is a thin shell over these."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vtc._version import __version__
from vtc.errors import UsageError
from vtc.fidelity_plot import write_html as write_fidelity_html
from vtc.fidelity_plot import write_png as write_fidelity_png
from vtc.io.chunks import is_live_dir, join, load_chunks
from vtc.io.decode import check_input, planned_frames, probe
from vtc.io.storage import RemotePath, location, set_options
from vtc.io.store import TokenFile, clean_stale, out_dtype, token_tensors, write
from vtc.io.store import load as load_file
from vtc.methods.registry import parse_method
from vtc.reduction import Reduction
from vtc.run.batch import BatchSummary, LocalExecutor, run_batch
from vtc.run.config import make_config
from vtc.run.fidelity import FidelitySummary, run_fidelity
from vtc.run.finish import Job
from vtc.run.live import LiveOptions, LiveRun, LiveSummary, check_live_plan
from vtc.run.pipeline import Engine, first_nonfinite
from vtc.run.plan import Plan, check_output
from vtc.run.ray_engine import RayExecutor
from vtc.signals import Signals
from vtc.stages.window import run_windowed_parts
from vtc.targets.encoders import AnyEncoder, open_encoder

__all__ = ["CompressResult", "FeatureResult", "FidelitySummary", "LiveSummary", "compress", "compress_batch",
           "compress_features", "compress_live", "default_output", "fidelity", "load"]


@dataclass
class FeatureResult:
    """What `compress_features` returns: the tokens [K, D], the reduction (provenance) and its facts."""

    tokens: Tensor
    reduction: Reduction
    method: str
    params: dict[str, Any]
    ratio_requested: float | None
    variant: str | None = None
    grid: tuple[int, int] = (0, 0)  # (h, w) of the features' patch grid

    @property
    def ratio_achieved(self) -> float:
        return self.reduction.ratio()

    def save(self, path: str | os.PathLike[str], *, frame_times: Tensor | None = None,
             dtype_out: str = "float16", source: dict[str, Any] | None = None) -> Path:
        """Write these tokens as a vtc token file (format v1; v2 for a map with groups; atomic).  frame_times [T]
        default to 0, 1, 2, …"""
        red, grid = self.reduction, self.grid
        t = red.num_sources // (grid[0] * grid[1])
        times = frame_times if frame_times is not None else torch.arange(t, dtype=torch.float32)
        tensors = token_tensors(red, self.tokens, grid, times, out_dtype(dtype_out))
        meta = {"vtc_version": __version__, "method": self.method, "variant": self.variant or "",
                "params": self.params, "ratio_requested": self.ratio_requested,
                "ratio_achieved": round(self.ratio_achieved, 6), "order": red.info.get("order", "frame-row-col"),
                "grid": list(grid), "T": t, "N": grid[0] * grid[1], "D": int(self.tokens.shape[-1]),
                "K": red.num_outputs, "space": {"kind": "features"}, "features": source or {}, "info": red.info}
        return write(path, tensors, meta)


@dataclass
class CompressResult:
    """What `compress` returns: where the file went, and timings in seconds."""

    output: Path | RemotePath
    num_tokens: int
    num_source_tokens: int
    ratio_achieved: float
    timings: dict[str, float] = field(default_factory=dict)
    truncated: bool = False
    #: the ratio asked for (option or the method's paper setting; None: the method's own knob) and, when the
    #: achieved ratio differs, why
    ratio_asked: float | None = None
    ratio_note: str | None = None


def default_output(path: str | os.PathLike[str] | RemotePath) -> Path | RemotePath:
    """`clip.mp4` → `clip.safetensors`, beside the input (a URL's beside the object)."""
    return location(path).with_suffix(".safetensors")


def compress_features(
    features: Tensor,
    *,
    method: str = "fastvid",
    ratio: float | None = None,
    grid: tuple[int, int] | None = None,
    params: dict[str, Any] | None = None,
    window: int | None = None,
    **signals: Tensor | None,
) -> FeatureResult:
    """Compress features from any encoder.

    features: [T, N, D] (N = h·w, row-major) or [T, h, w, D]. `grid` (h, w) defaults to a square N.
    `method` is a name or `name:variant` (e.g. "dycoke:reference", the authors' exact behaviour).
    Signals a method needs are passed by name: attn [T, N], pooled [T, D'], cls_attn [T, N], cls_token [T, D],
    keys [T, N+1, d], frames [T, H, W, 3], times [T], audio_saliency [A], relevance [T], thumbnail [N', D].
    Method parameters go in `params` (vtc or authors' names). `window` (frames): run the method on consecutive
    windows of that many frames (bounded memory for long inputs; `info["windowed"]` says so).
    """
    if not isinstance(features, Tensor):
        raise UsageError(f"features must be a torch.Tensor [T, N, D], not {type(features).__name__}.")
    if features.dim() == 4:
        grid = grid or (features.shape[1], features.shape[2])
        features = features.reshape(features.shape[0], -1, features.shape[-1])
    if features.dim() != 3 or features.shape[0] < 1 or features.shape[1] < 1:
        raise UsageError(f"features must be [T ≥ 1, N ≥ 1, D] or [T, h, w, D], got shape {tuple(features.shape)}.")
    t, n, _ = features.shape
    if grid is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise UsageError(f"N = {n} is not a square: pass grid=(h, w).")
        grid = (side, side)
    if len(grid) != 2 or any(int(g) != g or g < 1 for g in grid):
        raise UsageError(f"grid must be (h, w) with whole h, w ≥ 1, not {tuple(grid)}.")
    grid = (int(grid[0]), int(grid[1]))
    if grid[0] * grid[1] != n:
        raise UsageError(f"grid {grid} does not match N = {n}.")
    if features.shape[-1] < 1:
        raise UsageError(f"features have D = 0 channels (shape {tuple(features.shape)}); each token needs D ≥ 1.")
    if not features.is_floating_point():
        raise UsageError(f"features must be floating point, not {features.dtype}.")
    bad = first_nonfinite(features)
    if bad is not None:
        raise UsageError(f"features frame {bad} holds NaN or Inf values; vtc compresses finite features only.")
    if ratio is not None and not 0.0 < float(ratio) <= 1.0:
        raise UsageError(f"ratio must be in (0, 1] — the fraction of tokens kept — not {ratio}.")
    spec, variant = parse_method(method)
    unknown = set(signals) - set(Signals.names())
    if unknown:
        raise UsageError(f"unknown signal(s) {', '.join(sorted(unknown))}; known: {', '.join(Signals.names())}.")
    sig = Signals(**{k: v for k, v in signals.items() if v is not None})
    resolved = spec.resolve(params or {}, variant)
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise UsageError(f"window must be a number of frames ≥ 1, not {window!r}.")
    sig.check(t, n)
    if window is not None and window < t:
        red = run_windowed_parts(lambda xw, sw: spec.run(xw, grid=tuple(grid), ratio=ratio, signals=sw,
                                                         params=resolved),
                                 features, sig, window, dtype=features.dtype).to_reduction()
    else:
        red = spec.run(features, grid=tuple(grid), ratio=ratio, signals=sig, params=resolved)
    return FeatureResult(red.apply(features), red, spec.name, resolved, ratio, variant, (int(grid[0]), int(grid[1])))


def compress(
    path: str | os.PathLike[str],
    *,
    output: str | os.PathLike[str] | None = None,
    preset: str | None = None,
    encoder: AnyEncoder | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
    storage_options: dict[str, Any] | None = None,
    overwrite: bool = False,
    **options: Any,
) -> CompressResult:
    """Decode → encode → compress → store one video.

    Options have the CLI's names (see `CompressConfig.option_names()`): method, ratio, params, frames, fps,
    every, model, pretrained, checkpoint, layer, device, dtype, target, target_model, batch_size, dtype_out,
    allow_truncated, query.
    A `preset` (name or TOML path) fills what is not given. An `encoder` can be passed to reuse a loaded model.
    `progress(stage, done, total)` hears the stages ("loading model", "decoding", "encoding" with frame counts and
    the planned total, "compressing and writing"). An existing file at `output` is replaced only when it is a
    writable vtc token file, or with `overwrite`.
    Every option is validated before the video is opened; nothing is written unless every stage succeeds, and
    the write itself is atomic.
    """
    t0 = time.perf_counter()
    if storage_options is not None:
        set_options(storage_options)
    check_input(path)  # a missing input is named first, before the options' models are looked up
    cfg = make_config(preset, **options)
    source = location(path)
    out_path = location(output) if output is not None else default_output(source)
    # -o DIR (or a URL ending in /) for one file: write DIR/<name>.safetensors
    if (isinstance(out_path, RemotePath) and str(output or "").endswith("/")) or out_path.is_dir():
        out_path = out_path / default_output(source.name).name
    check_output(source, out_path, overwrite=overwrite)
    plan = Plan.make(cfg)
    info = probe(path)  # fail fast on a bad input before loading a model
    total = planned_frames(info, plan.sampling) or None
    if encoder is None:
        if progress is not None:
            progress("loading model", 0, None)
        encoder = open_encoder(plan.cfg.encoder, text=bool(plan.cfg.query))
    load_time = time.perf_counter() - t0
    seen: dict[str, int] = {}

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if progress is None:
            return
        if kind in ("decoded", "encoded"):
            seen[kind] = seen.get(kind, 0) + int(data["frames"])
            progress("decoding" if kind == "decoded" else "encoding", seen[kind], total)
        elif kind == "finishing":
            progress("compressing and writing", 0, None)

    if not isinstance(out_path, RemotePath):
        clean_stale(out_path)  # what a killed earlier run left beside this output
    engine = Engine(plan, encoder, decode_workers=1, on_event=on_event)
    (outcome,) = list(engine.run([Job(0, source, out_path)]))
    if not outcome.ok:
        assert outcome.error is not None
        raise outcome.error
    return CompressResult(out_path, outcome.num_tokens, outcome.num_source_tokens, outcome.ratio_achieved,
                          {"load": load_time, **outcome.timings}, outcome.truncated, outcome.ratio_asked,
                          outcome.ratio_note)


def compress_batch(
    inputs: list[str],
    outdir: str | os.PathLike[str],
    *,
    preset: str | None = None,
    shard: tuple[int, int] | None = None,
    retry_failed: bool = False,
    fail_fast: bool = False,
    engine: str = "local",
    workers: int = 2,
    ray_address: str | None = None,
    actors: int = 1,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    out_format: str = "files",
    shard_size: int = 1000,
    storage_options: dict[str, Any] | None = None,
    **options: Any,
) -> BatchSummary:
    """Many videos (files, directories, globs) → OUTDIR with a manifest; see `vtc.run.batch`.

    `engine` is "local" (threads on this machine) or "ray" (a Ray cluster); both share the plan, the manifest,
    resume and the summary. Options as for `compress`; they are validated before anything runs.
    Inputs and OUTDIR may be URLs (`s3://bucket/videos/`, see `vtc.io.storage`); `storage_options` go to every
    fsspec filesystem (credentials and endpoints otherwise come from the environment). `out_format="webdataset"`
    writes tar shards of `shard_size` videos instead of one file each (`vtc.run.shards`).
    """
    if storage_options is not None:
        set_options(storage_options)
    cfg = make_config(preset, **options)
    if engine == "local":
        executor: Any = LocalExecutor(decode_workers=workers)
    elif engine == "ray":
        executor = RayExecutor(address=ray_address, actors=actors)
    else:
        raise UsageError(f"--engine must be local or ray, not '{engine}'.")
    return run_batch(inputs, outdir, cfg, shard=shard, retry_failed=retry_failed, fail_fast=fail_fast,
                     executor=executor, on_event=on_event, out_format=out_format, shard_size=shard_size)


def compress_live(
    source: str,
    output: str | os.PathLike[str],
    *,
    chunk: float = 10.0,
    reconnect: int = 0,
    stall_timeout: float = 10.0,
    live_format: str | None = None,
    preset: str | None = None,
    encoder: AnyEncoder | None = None,
    stop: threading.Event | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    **options: Any,
) -> LiveSummary:
    """Compress a live stream as it arrives into the directory `output`: one token file per `chunk` seconds and an
    index (see `vtc.run.live`).  `source`: a network URL (rtsp://, srt://, udp://, tcp://, http(s):// HLS), "-"
    for standard input, or a capture device with `live_format` (e.g. "v4l2").  Sampling by `fps` (default 1) or
    `every`.  Runs until the source ends or `stop` is set (the current chunk is written); a source that drops or
    stalls is reopened `reconnect` times.  Options as for `compress`.  A run into an existing live directory with
    the same settings continues its index.
    """
    if options.get("frames") is not None:
        raise UsageError("--live samples by rate: pass --fps F (or --every n); --frames needs the whole video.")
    if options.get("fps") is None and options.get("every") is None:
        options["fps"] = 1.0
    cfg = make_config(preset, **options)
    plan = Plan.make(cfg)
    live = LiveOptions(chunk=chunk, reconnect=reconnect, stall_timeout=stall_timeout, format=live_format)
    check_live_plan(plan, source, live)
    if encoder is None:
        encoder = open_encoder(plan.cfg.encoder, text=bool(plan.cfg.query))
    run = LiveRun(plan, encoder, source, Path(output), live, on_event=on_event)
    return run.run(stop)


def load(path: str | os.PathLike[str], *, last: int | None = None) -> TokenFile:
    """Read a token file, or a live output directory as one video (its chunks joined; `last`: only the last N)."""
    if is_live_dir(path):
        return join(load_chunks(path, last))
    if last is not None:
        raise UsageError(f"{path}: last= applies to a live output directory, not a token file.")
    return load_file(path)


def fidelity(
    videos: Sequence[str | os.PathLike[str]],
    outdir: str | os.PathLike[str],
    *,
    target: str | None = None,
    target_model: str | None = None,
    methods: str | Sequence[str] = ("fastvid", "dycoke", "divprune"),
    ratios: str | Sequence[float] = (0.1, 0.25, 0.5),
    prompts: str | os.PathLike[str] | Sequence[str] | None = None,
    answer_tokens: int = 8,
    seed: int = 0,
    controls: bool = True,
    params: dict[str, dict[str, Any]] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
    picture: bool = True,
    **options: Any,
) -> FidelitySummary:
    """How far each method × ratio moves the target LLM's answers from the uncompressed run, per video, label-free.

    Each video is decoded and encoded once; the uncompressed run's greedy answer (`answer_tokens` tokens per
    prompt) and its next-token distributions are cached under OUTDIR/reference; every method × ratio and its
    controls (seeded `random` selection and `pool`ing at the run's achieved ratio) are scored by one teacher-forced
    forward per prompt: KL(reference ‖ compressed) on the first answer token and over the answer, top-1
    agreement, flip rate, first divergent token, achieved ratio, compress and prefill time. Results are appended
    to OUTDIR/fidelity.jsonl as they complete (a second call resumes); fidelity.json and fidelity.csv hold the
    records, the table over videos and the Pareto front in words. `methods` and `ratios` take lists or
    comma-separated text; `prompts` a list or a text file (one a line; default: generic video questions);
    `params` method parameters per method name; `options` the sampling and encoder options of `compress`.
    With `picture`, OUTDIR/fidelity.html (self-contained) and fidelity.png draw kept fraction vs KL and vs
    agreement per method, with the controls.
    """
    summary = run_fidelity(videos, outdir, target=target, target_model=target_model, methods=methods, ratios=ratios,
                           prompts=prompts, answer_tokens=answer_tokens, seed=seed, controls=controls,
                           params=params, on_event=on_event, **options)
    if picture:
        data = summary.as_dict()
        write_fidelity_html(data, summary.outdir / "fidelity.html")
        try:
            write_fidelity_png(data, summary.outdir / "fidelity.png")
        except UsageError as e:  # no Pillow: the page still has the picture
            summary.notes.append(str(e))
    return summary
