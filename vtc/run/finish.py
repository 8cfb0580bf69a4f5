"""Finish one video: gather its signals, run the planned method, write the token file.

Both engines hand a `Video` (encoder outputs gathered, decode facts) to `finish`; nothing here looks a method up
or resolves a parameter again: the plan did.
"""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vtc._version import __version__
from vtc.errors import VtcError
from vtc.io.audio import SALIENCY_NAME, audio_saliency
from vtc.io.decode import DecodeReport, VideoInfo, content_hash
from vtc.io.storage import RemotePath, etag, is_url, location
from vtc.io.store import Streamed, TokenMap, out_dtype, token_tensors, write
from vtc.reduction import Reduction
from vtc.run.plan import Plan
from vtc.run.spill import EntryFile, FeatureBuffer, release_free_memory, window_frames
from vtc.signals import Signals
from vtc.stages.in_encoder import reduction_from_sources
from vtc.stages.pre_encoder import PreEncoderRule
from vtc.stages.window import WindowedReduction, run_windowed_parts, windowed_rows
from vtc.targets.encoders import AnyEncoder


@dataclass
class Job:
    """One video to process."""

    index: int
    input: Path | RemotePath  # a local path or an object-storage URL
    output: Path | RemotePath


@dataclass
class Outcome:
    """What happened to one job: its facts, or an error."""

    job: Job
    ok: bool
    error: VtcError | None = None
    num_tokens: int = 0
    num_source_tokens: int = 0
    ratio_achieved: float = 0.0
    frames: int = 0
    truncated: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    #: the ratio the run asked for (the option, else the method's paper setting; None when the method's own knob
    #: sets the count) and, when the file's ratio differs from it, why
    ratio_asked: float | None = None
    ratio_note: str | None = None
    #: the machine (Ray node) that processed it, when a cluster did
    node: str = ""


def ratio_note(asked: float | None, got: float, info: dict[str, Any], num_sources: int) -> str | None:
    """Why a run kept another share of the tokens than it asked for (None when they agree to 0.1 %)."""
    if asked is None or f"{100 * asked:.1f}" == f"{100 * got:.1f}":
        return None
    if isinstance(info.get("count_rule"), str):  # the method's own rule sets the count, whatever the ratio
        return info["count_rule"]
    floor = info.get("budget_floor")
    kept = round(got * num_sources)
    # a floor is named only when it is one: within the tokens there are, and not above what was kept
    real_floor = isinstance(floor, int) and not isinstance(floor, bool) and floor <= min(kept, num_sources)
    if real_floor and floor > asked * num_sources:
        return f"the method keeps at least {floor} of {num_sources} tokens"
    if got > asked:
        return "the method's own rules kept more (whole frames, merge steps or rounding); vtc show FILE lists " \
               "what it reported"
    return "the method's own rules kept fewer (merge steps or rounding); vtc show FILE lists what it reported"


@dataclass
class FrameReuse:
    """Per-video state of a pre-encoder rule: the previous frame's view and outputs, and what was saved."""

    rule: PreEncoderRule
    last_view: Tensor | None = None
    last_out: dict[str, Tensor] | None = None
    skipped: int = 0
    patches_encoded: int = 0
    patches_total: int = 0

    def describe(self) -> dict[str, Any]:
        return {"rule": self.rule.description, "tau": self.rule.tau, "frames_skipped": self.skipped,
                "patches_encoded": self.patches_encoded, "patches_total": self.patches_total,
                "changed_patches_only": self.rule.changed_only}


@dataclass
class Video:
    """A video in flight: decode facts and the encoder outputs gathered so far."""

    job: Job
    info: VideoInfo | None = None
    report: DecodeReport = field(default_factory=DecodeReport)
    outputs: dict[str, list[Tensor]] = field(default_factory=dict)
    reuse: FrameReuse | None = None
    #: GRT's patch-embedding gate state: the previous view and embeddings, and the counts for the metadata
    gate: dict[str, Any] | None = None
    queued: int = 0  # frames sent to the encoder
    encoded: int = 0  # frames encoded
    decoded: bool = False
    t_decode: float = 0.0
    t_encode: float = 0.0
    error: VtcError | None = None
    #: how many frames the sampling plan takes from this video (Qwen3-VL's frame size depends on it)
    planned_frames: int = 0
    #: the token grid and picture size of this video (they vary per video for Qwen targets)
    grid: tuple[int, int] | None = None
    picture: tuple[int, int] | None = None
    #: what an in-encoder method's merger reported (its schedule)
    merging: dict[str, Any] | None = None
    #: bytes of RAM the features may take before they spill to disk (half the run's memory budget)
    feature_budget: int = 1 << 62
    features: FeatureBuffer | None = None
    #: per-frame arrays that grow with the video like the features (attention keys, the encoder's views of the
    #: frames, pixels kept for an extra image): each in RAM up to an eighth of the feature budget, then spilled
    buffers: dict[str, FeatureBuffer] = field(default_factory=dict)
    #: a windowed reduction's merge entries, on disk
    entries: EntryFile | None = None
    #: a chunk of a live stream: {"chunk", "t0", "t1", "source"} (no file to hash)
    live: dict[str, Any] | None = None

    def entry_file(self) -> EntryFile:
        self.entries = EntryFile()
        return self.entries

    def close(self) -> None:
        """Free the features, buffers and entries (and their spill files)."""
        for held in (self.features, self.entries, *self.buffers.values()):
            if held is not None:
                held.close()

    def _buffer(self, name: str, x: Tensor) -> None:
        if name not in self.buffers:
            self.buffers[name] = FeatureBuffer(self.feature_budget // 8)
        self.buffers[name].append(x)

    def add(self, outputs: dict[str, Tensor], views: Tensor | None, pixels: Tensor | None) -> None:
        """Append one run of encoded frames (patch features, keys, views and pixels go to FeatureBuffers)."""
        for k, v in outputs.items():
            if k == "patches":
                if self.features is None:
                    self.features = FeatureBuffer(self.feature_budget)
                self.features.append(v)
            elif k in BUFFERED:
                self._buffer(k, v)
            else:
                self.outputs.setdefault(k, []).append(v)
        if views is not None:
            self._buffer("frames", views)
        if pixels is not None:
            self._buffer("pixels", pixels)


#: encoder outputs [T, N, ·] kept in FeatureBuffers (the small per-frame ones stay lists of tensors)
BUFFERED = frozenset({"keys"})


def finish(plan: Plan, encoder: AnyEncoder, video: Video, query_embedding: Tensor | None, *,
           close: bool = True) -> Outcome:
    """Compress and store one fully encoded video (its features freed afterwards unless `close` is False: then
    the same encoded video can be finished again with another plan, as `vtc fidelity` does).  → its Outcome."""
    try:
        return _finish(plan, encoder, video, query_embedding)
    finally:
        if close:
            video.close()


def _finish(plan: Plan, encoder: AnyEncoder, video: Video, query_embedding: Tensor | None) -> Outcome:
    t0 = time.perf_counter()
    assert video.info is not None and video.features is not None
    buffer = video.features
    t, n, d = (int(v) for v in buffer.shape)
    window = window_frames(t, n, d, video.feature_budget)
    in_memory = plan.spec.in_encoder is not None or (window is None and not buffer.spilled)
    # [T, N, D] (T: token frames; Qwen pairs sampled frames); a spilled buffer is read a window at a time
    feats = buffer.tensor() if in_memory else buffer
    grid = video.grid or encoder.grid
    sampled = video.report.frame_times
    token_times = sampled[:: encoder.temporal_patch]  # the first sampled frame of each token frame
    sig: dict[str, Any] = {k: torch.cat(v) for k, v in video.outputs.items()}
    # keys and frames: whole tensors for a run in memory, buffers that windows slice otherwise
    sig.update({k: (b.tensor() if in_memory else b) for k, b in video.buffers.items() if k != "pixels"})
    sources = {k: v for k, v in encoder.signal_sources().items() if k in plan.encoder_signals}
    timings = {"decode": video.t_decode, "encode": video.t_encode}
    if "times" in plan.signals:
        sig["times"] = torch.tensor(token_times, dtype=torch.float64)
    if query_embedding is not None:  # per-frame relevance to the query, in the joint embedding space
        sig["relevance"] = torch.nn.functional.normalize(sig["pooled"].float(), dim=-1) @ query_embedding
        sources["relevance"] = f"query {plan.cfg.query!r}: cosine of frame and text embeddings"
        if "query_embed" in plan.signals:
            sig["query_embed"] = query_embedding.float()
            sources["query_embed"] = f"query {plan.cfg.query!r}: text embedding"
    if "audio_saliency" in plan.signals:
        sal = audio_saliency(video.job.input, start=video.info.start_time) if video.info.has_audio else None
        sources["audio_saliency"] = SALIENCY_NAME if sal is not None else "none (no audio track)"
        if sal is not None:
            sig["audio_saliency"] = sal
    if plan.keep_pixels:  # e.g. TS-LLaVA's thumbnail, encoded for real
        assert plan.spec.extra_images is not None
        te = time.perf_counter()
        for name, image in plan.spec.extra_images(video.buffers["pixels"], **plan.params).items():
            sig[name] = encoder.encode_pixels(image)["patches"].reshape(-1, feats.shape[-1])
        timings["encode"] += time.perf_counter() - te
        t0 = time.perf_counter()
    # a target's carried planes (Qwen3-VL's DeepStack features) follow each token's own D channels: the method
    # decides on those D, the same map reduces the planes
    carried = int(getattr(encoder, "carried", 0))
    dm = int(feats.shape[-1]) // (1 + carried)

    def own(x: Tensor) -> Tensor:
        return x[..., :dm].contiguous() if carried else x

    shape = torch.Size([*feats.shape[:2], dm])
    red: Reduction | WindowedReduction
    planes: Tensor | Streamed | None = None
    if plan.spec.in_encoder is not None:  # merged inside the encoder: the tokens are the encoder's, the map records
        source = sig.pop("source")  # [T, K, N]: which patches each token stands for
        sig.pop("size", None)
        red = reduction_from_sources(source)
        red.info.update(video.merging or {}, tokens_per_frame=int(feats.shape[1]))
        tokens = buffer.tensor().reshape(-1, feats.shape[-1])
        shape = torch.Size([feats.shape[0], source.shape[-1], feats.shape[-1]])
    elif in_memory:
        red = plan.spec.run(own(feats), grid=grid, ratio=plan.cfg.ratio, signals=Signals(**sig), params=plan.params)
        tokens = red.apply(feats)
        if carried:
            tokens, planes = tokens[:, :dm], tokens[:, dm:].reshape(-1, carried, dm)
    else:  # the clip does not fit the memory budget at once: the method sees windows of frames
        size = window or t

        def run_window(xw: Tensor, sw: Signals) -> Reduction:
            part = plan.spec.run(own(xw), grid=grid, ratio=plan.cfg.ratio, signals=sw, params=plan.params)
            release_free_memory()  # the window's working arrays go back to the system
            return part

        red = run_windowed_parts(run_window, buffer, Signals(**sig), size, store=video.entry_file())
        if window is not None:
            red.info["windowed"]["reason"] = (f"{t} frames × [{n}, {d}] exceed the memory budget "
                                              f"({2 * video.feature_budget / 2**30:.2f} GiB)")
        else:
            red.info.pop("windowed")
        if buffer.spilled:
            red.info["features_spilled"] = "float16 on disk (past half the memory budget)"
        dtype = out_dtype(plan.cfg.dtype_out)  # rows go to the file a window at a time, never all in memory
        k = red.num_outputs
        tokens = Streamed((k, dm), dtype, lambda: (b[:, :dm].contiguous() for b in windowed_rows(red, buffer, dtype)))
        if carried:
            planes = Streamed((k, carried, dm), dtype, lambda: (b[:, dm:].reshape(-1, carried, dm)
                                                                 for b in windowed_rows(red, buffer, dtype)))
    timings["compress"] = time.perf_counter() - t0
    ts = time.perf_counter()
    frame_times = torch.tensor(token_times, dtype=torch.float32)
    tensors = token_tensors(red, tokens, grid, frame_times, out_dtype(plan.cfg.dtype_out))
    meta = build_metadata(plan, encoder, video, red, sources, shape, grid)
    # the token space: a target's newline embedding (placed by consumers, never compressed), Qwen's M-RoPE
    # positions and retention mask
    space, extra = encoder.file_extras(tensors["positions"], red.rep, grid, int(feats.shape[0]), list(sampled),
                                       video.info, video.picture or (0, 0))
    meta.update(space)
    for name, value in extra.items():
        # embeddings (float32, e.g. the newline) follow --dtype-out; times (float64) keep their precision
        tensors[name] = value.to(tensors["tokens"].dtype).contiguous() if value.dtype == torch.float32 else value
    if planes is not None:  # [K, L, D]: what the model adds to its first L decoder layers at each kept token
        tensors["deepstack"] = planes if isinstance(planes, Streamed) else \
            planes.to(out_dtype(plan.cfg.dtype_out)).contiguous()
    for name in ("relevance", "audio_saliency"):
        if name in sig:
            tensors[name] = sig[name].float().contiguous()
    write(video.job.output, tensors, meta)
    timings["store"] = time.perf_counter() - ts
    asked = plan.cfg.ratio if plan.cfg.ratio is not None else plan.spec.paper_ratio
    return Outcome(video.job, True, None, red.num_outputs, red.num_sources, red.ratio(), int(shape[0]),
                   video.report.truncated, timings, asked, ratio_note(asked, red.ratio(), red.info, red.num_sources))


def build_metadata(plan: Plan, encoder: AnyEncoder, video: Video, red: TokenMap, sources: dict[str, str],
                   shape: torch.Size, grid: tuple[int, int]) -> dict[str, Any]:
    """The string metadata of a token file (format v1)."""
    t, n, d = shape
    info, report, cfg = video.info, video.report, plan.cfg
    assert info is not None
    enc = encoder.describe()
    path = video.job.input
    remote = is_url(path)  # object storage: identified by its ETag, not re-read whole for a sha256
    meta: dict[str, Any] = {
        "vtc_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "method": plan.spec.name,
        "variant": plan.variant or "",
        "params": plan.params,
        "ratio_requested": cfg.ratio,
        "ratio_achieved": round(red.ratio(), 6),
        "order": red.info.get("order", "frame-row-col"),
        "model": enc["model"],
        "pretrained": enc["pretrained"],
        "checkpoint": enc["checkpoint"],
        "checkpoint_sha256": enc["checkpoint_sha256"],
        "layer": str(enc.get("layer", cfg.encoder.layer)),
        "image_size": enc["image_size"],
        "grid": list(grid),
        "T": t,
        "N": n,
        "D": d,
        "K": red.num_outputs,
        "config_hash": cfg.config_hash(),  # the settings that made it: a resume trusts only its own
        "signals": sources,
        "encoder": enc,
        "sampling": plan.sampling.describe(),
        "video": {
            "path": (str(path) if remote else str(Path(path).resolve())) if video.live is None
            else video.live["source"],
            "size_bytes": info.size_bytes,
            "sha256": None if remote or video.live is not None else content_hash(path),
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
        "decode": {"decoded_frames": report.decoded_frames, "last_time": report.last_time, "error": report.error,
                   **({"data_end": report.data_end} if report.data_end is not None else {})},
        "info": red.info,
    }
    if remote and video.live is None:
        meta["video"]["etag"] = etag(location(path))
    if video.reuse is not None:
        meta["pre_encoder"] = video.reuse.describe()
    if video.live is not None:
        meta["live"] = video.live
    if video.gate is not None:
        meta["embedding_gate"] = {k: v for k, v in video.gate.items() if k not in ("view", "embed")}
    if cfg.query:
        meta["query"] = cfg.query
    return meta
