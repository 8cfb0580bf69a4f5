"""The streaming engine: decode in worker threads ahead of the encoder, batch frames across videos, compress and
store in a writer thread.  `vtc.compress` (one file) and `vtc.run.batch` (many) both run on it.

    decode workers ──(bounded queue of frame chunks)──▶ encoder (main thread) ──▶ writer thread (compress+store)

Memory stays flat: only chunks in the queue (at most `queue_chunks` × batch_size frames at the encoder's input
size), the pending encoder batch and the features of videos in flight are held.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vtc.errors import InputError, UsageError, VtcError
from vtc.io.decode import DecodeReport, Sampling, VideoInfo, iter_frames, probe
from vtc.io.encode import Encoder
from vtc.methods import MethodSpec, get_method
from vtc.run.config import CompressConfig
from vtc.signals import provided_by


@dataclass
class Plan:
    """A run's resolved configuration: method, parameters, sampling and what the encoder must produce."""

    cfg: CompressConfig
    spec: MethodSpec
    params: dict[str, Any]
    sampling: Sampling
    want: frozenset[str]
    keep_views: bool
    keep_pixels: bool
    skip_tau: float | None = None  # RLT pre-encoder: skip frames with no changed patch (threshold τ)
    changed_only: bool = False  # encode only the changed patches (out of distribution for CLIP; opt-in)

    @classmethod
    def make(cls, cfg: CompressConfig) -> Plan:
        spec = get_method(cfg.method)
        params = spec.resolve(cfg.params)
        sampling = Sampling(frames=cfg.frames, fps=cfg.fps, every=cfg.every).validate()
        want = set(spec.wanted_signals & provided_by("encoder"))
        if cfg.query:
            if "relevance" not in set(spec.signals) | set(spec.optional_signals):
                raise UsageError(f"--query needs a query-aware method; '{spec.name}' is not. Use --method budgeted "
                                 f"-p budget=query (or --preset query-attention).")
            want.add("pooled")
        # RLT's pre-encoder skip uses the previous-frame rule, so only with compare="previous"
        skip = (float(params.get("tau", 0.1))
                if params.get("skip_static_frames") and params.get("compare", "previous") == "previous" else None)
        return cls(cfg, spec, params, sampling, frozenset(want), "frames" in spec.signals,
                   spec.extra_images is not None, skip, bool(params.get("encode_changed_only", False)))


@dataclass
class Job:
    """One video to process."""

    index: int
    input: Path
    output: Path


@dataclass
class Outcome:
    """What happened to one job: a result (dict of facts) or an error."""

    job: Job
    ok: bool
    error: VtcError | None = None
    num_tokens: int = 0
    num_source_tokens: int = 0
    ratio_achieved: float = 0.0
    frames: int = 0
    truncated: bool = False
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class _Video:
    """A video in flight: its decoded info and the encoder outputs gathered so far."""

    job: Job
    info: VideoInfo | None = None
    report: DecodeReport = field(default_factory=DecodeReport)
    times: list[float] = field(default_factory=list)
    outputs: dict[str, list[Tensor]] = field(default_factory=dict)
    views: list[Tensor] = field(default_factory=list)
    pixels: list[Tensor] = field(default_factory=list)
    queued: int = 0  # frames sent to the encoder queue
    encoded: int = 0  # frames encoded
    decoded: bool = False
    t_decode: float = 0.0
    t_encode: float = 0.0
    error: VtcError | None = None
    last_view: Tensor | None = None  # pre-encoder state: the previous frame as the encoder saw it
    last_out: dict[str, Tensor] | None = None  # and its encoder outputs
    skipped: int = 0
    patches_encoded: int = 0
    patches_total: int = 0


_END = object()


class Engine:
    """Runs jobs through decode → encode → compress → store with overlap.  See the module docstring."""

    def __init__(
        self,
        plan: Plan,
        encoder: Encoder,
        *,
        decode_workers: int = 2,
        queue_chunks: int = 4,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.plan = plan
        self.encoder = encoder
        self.decode_workers = max(1, decode_workers)
        self.queue_chunks = max(1, queue_chunks)
        self.on_event = on_event or (lambda kind, data: None)
        self.encoder_busy = 0.0
        self.frames_encoded = 0
        self.query_embedding = encoder.encode_text(plan.cfg.query) if plan.cfg.query else None

    # ------------------------------------------------------------------ decode side (worker threads)
    def _decode(self, video: _Video, q: queue.Queue[Any], stop: threading.Event) -> None:
        cfg, bs = self.plan.cfg, self.plan.cfg.batch_size
        t0 = time.perf_counter()
        chunk: list[np.ndarray] = []
        times: list[float] = []
        try:
            video.info = probe(video.job.input)
            for ft, frame in iter_frames(video.job.input, self.plan.sampling, self.encoder.input_size,
                                         info=video.info, allow_truncated=cfg.allow_truncated, report=video.report):
                if stop.is_set():
                    return
                chunk.append(frame)
                times.append(ft)
                if len(chunk) >= bs:
                    q.put(("frames", video, chunk, times))
                    chunk, times = [], []
            if chunk:
                q.put(("frames", video, chunk, times))
            if not video.report.frame_times:
                raise InputError(f"{video.job.input}: no frame could be sampled (empty or unreadable video stream).")
        except VtcError as e:
            video.error = e
        except Exception as e:  # an unexpected decoder failure is still a failure of this input only
            video.error = InputError(f"{video.job.input}: decoding failed ({type(e).__name__}: {e}).")
        finally:
            video.t_decode = time.perf_counter() - t0
            q.put(("done", video, None, None))

    def _feeder(self, videos: Iterator[_Video], q: queue.Queue[Any], stop: threading.Event) -> None:
        """Hand videos to the decode pool in order, at most `decode_workers` at a time."""
        sem = threading.Semaphore(self.decode_workers)

        def run(v: _Video) -> None:
            try:
                self._decode(v, q, stop)
            finally:
                sem.release()

        with ThreadPoolExecutor(self.decode_workers, thread_name_prefix="vtc-decode") as pool:
            for v in videos:
                sem.acquire()
                if stop.is_set():
                    sem.release()
                    break
                pool.submit(run, v)
        q.put(_END)

    # ------------------------------------------------------------------ encode side (caller's thread)
    def _encode(self, pending: list[tuple[_Video, np.ndarray, float]]) -> None:
        t0 = time.perf_counter()
        pixels = self.encoder.preprocess_many([f for _, f, _ in pending])  # videos may differ in size
        if self.plan.skip_tau is not None:
            views = self.encoder.view(pixels)
            res = self._encode_changed(pending, pixels, views)
        else:
            res = self.encoder.encode_pixels(pixels, self.plan.want)
            views = self.encoder.view(pixels) if self.plan.keep_views else None
        if not self.plan.keep_pixels:
            pixels = None
        dt = time.perf_counter() - t0
        self.encoder_busy += dt
        self.frames_encoded += len(pending)
        i = 0
        while i < len(pending):  # split the batch back into per-video runs, in order
            v = pending[i][0]
            j = i
            while j < len(pending) and pending[j][0] is v:
                j += 1
            for k, val in res.items():
                v.outputs.setdefault(k, []).append(val[i:j])
            if views is not None:
                v.views.append(views[i:j])
            if pixels is not None:
                v.pixels.append(pixels[i:j])
            v.encoded += j - i
            v.t_encode += dt * (j - i) / len(pending)
            i = j
        self.on_event("encoded", {"frames": len(pending)})

    def _encode_changed(self, pending: list[tuple[_Video, np.ndarray, float]], pixels: Tensor,
                        views: Tensor) -> dict[str, Tensor]:
        """RLT before the encoder: frames with no changed patch (vs the previous frame) are not encoded — they
        take the previous frame's outputs; with `changed_only`, only changed patches go through the ViT and the
        rest are copied from the previous frame."""
        from vtc.stages.pre_encoder import normalise, patch_change

        enc, tau = self.encoder, float(self.plan.skip_tau or 0.0)
        h, w = enc.grid
        patch = views.shape[1] // h
        masks: list[Tensor | None] = []
        for i, (v, _, _) in enumerate(pending):
            if v.last_view is None:
                masks.append(None)  # first frame: everything
            else:
                change = patch_change(normalise(views[i : i + 1]), normalise(v.last_view[None]), patch)[0]
                masks.append(change.reshape(-1) > tau)
            v.last_view = views[i]
        full = [i for i, m in enumerate(masks) if m is None or (not self.plan.changed_only and bool(m.any()))]
        res_full = enc.encode_pixels(pixels[full], self.plan.want) if full else {}
        row_of = {i: k for k, i in enumerate(full)}
        out: dict[str, list[Tensor]] = {}
        for i, (v, _, _) in enumerate(pending):
            m = masks[i]
            v.patches_total += h * w
            if i in row_of:
                cur = {k: val[row_of[i]] for k, val in res_full.items()}
                v.patches_encoded += h * w
            else:
                assert v.last_out is not None
                cur = {k: val.clone() for k, val in v.last_out.items()}
                if m is not None and bool(m.any()):  # changed_only: encode just the changed patches
                    cur["patches"][m] = enc.encode_patches(pixels[i : i + 1], m)
                    v.patches_encoded += int(m.sum())
                else:
                    v.skipped += 1
            v.last_out = cur
            for k, val in cur.items():
                out.setdefault(k, []).append(val)
        return {k: torch.stack(val) for k, val in out.items()}

    def _encode_safe(self, pending: list[tuple[_Video, np.ndarray, float]]) -> None:
        """Encode; if the batch fails, fail the videos in it (and only them), keep the run going."""
        try:
            self._encode(pending)
        except Exception as e:
            err = e if isinstance(e, VtcError) else VtcError(f"encoding failed ({type(e).__name__}: {e})")
            for v in {id(p[0]): p[0] for p in pending}.values():
                if v.error is None:
                    v.error = VtcError(f"{v.job.input}: {err}")

    # ------------------------------------------------------------------ finish (writer thread)
    def _finish(self, video: _Video) -> Outcome:
        from vtc.api import build_metadata, compress_features
        from vtc.io.store import out_dtype, token_tensors, write

        plan, enc = self.plan, self.encoder
        t0 = time.perf_counter()
        feats = torch.cat(video.outputs.pop("patches"))
        sig = {k: torch.cat(v) for k, v in video.outputs.items()}
        if video.views:
            sig["frames"] = torch.cat(video.views)
        wanted = set(plan.spec.signals) | set(plan.spec.optional_signals)
        if self.query_embedding is not None:  # per-frame relevance to the query, in the joint embedding space
            pooled = torch.nn.functional.normalize(sig["pooled"].float(), dim=-1)
            sig["relevance"] = pooled @ self.query_embedding
        if "times" in wanted:
            sig["times"] = torch.tensor(video.report.frame_times, dtype=torch.float64)
        if "audio_saliency" in wanted and video.info is not None and video.info.has_audio:
            from vtc.io.audio import audio_saliency

            sig["audio_saliency"] = audio_saliency(video.job.input, start=video.info.start_time)
        timings = {"decode": video.t_decode, "encode": video.t_encode}
        if plan.spec.extra_images is not None:  # e.g. TS-LLaVA's thumbnail, encoded for real
            te = time.perf_counter()
            for name, image in plan.spec.extra_images(torch.cat(video.pixels), **plan.params).items():
                sig[name] = enc.encode_pixels(image)["patches"].reshape(-1, feats.shape[-1])
            timings["encode"] += time.perf_counter() - te
            t0 = time.perf_counter()
        result = compress_features(feats, method=plan.spec.name, ratio=plan.cfg.ratio, grid=enc.grid,
                                   params=plan.params, **sig)
        timings["compress"] = time.perf_counter() - t0
        ts = time.perf_counter()
        frame_times = torch.tensor(video.report.frame_times, dtype=torch.float32)
        tensors = token_tensors(result.reduction, result.tokens, enc.grid, frame_times, out_dtype(plan.cfg.dtype_out))
        assert video.info is not None
        meta = build_metadata(video.job.input, video.info, plan.cfg, enc, result, video.report, plan.sampling,
                              sorted(plan.want), feats.shape)
        if plan.skip_tau is not None:
            meta["pre_encoder"] = {"rule": "rlt (mean |Δ| per patch vs the previous frame, ImageNet units)",
                                   "tau": plan.skip_tau, "frames_skipped": video.skipped,
                                   "patches_encoded": video.patches_encoded, "patches_total": video.patches_total,
                                   "changed_patches_only": plan.changed_only}
        if self.query_embedding is not None:
            meta["signals"]["relevance"] = f"query {plan.cfg.query!r}: cosine of frame and text embeddings"
            meta["query"] = plan.cfg.query
            tensors["relevance"] = sig["relevance"].float().contiguous()
        if "audio_saliency" in wanted:
            from vtc.io.audio import SALIENCY_NAME

            sal = sig.get("audio_saliency")
            meta["signals"]["audio_saliency"] = SALIENCY_NAME if sal is not None else "none (no audio track)"
            if sal is not None:
                tensors["audio_saliency"] = sal.float().contiguous()
        write(video.job.output, tensors, meta)
        timings["store"] = time.perf_counter() - ts
        return Outcome(video.job, True, None, result.reduction.num_outputs, result.reduction.num_sources,
                       result.ratio_achieved, int(feats.shape[0]), video.report.truncated, timings)

    # ------------------------------------------------------------------ one decoded video (Ray actors)
    def process_decoded(self, job: Job, info: VideoInfo, report: DecodeReport, frames: list[np.ndarray]) -> Outcome:
        """Encode (in batches), compress and store one video whose sampled frames were decoded elsewhere."""
        v = _Video(job, info=info, report=report, decoded=True)
        try:
            bs = self.plan.cfg.batch_size
            for s in range(0, len(frames), bs):
                chunk = [(v, f, t) for f, t in zip(frames[s : s + bs], report.frame_times[s : s + bs], strict=True)]
                v.queued += len(chunk)
                self._encode(chunk)
            return self._finish(v)
        except VtcError as e:
            return Outcome(job, False, e)
        except Exception as e:  # one input's failure, recorded as data
            return Outcome(job, False, VtcError(f"{job.input}: {type(e).__name__}: {e}"))

    # ------------------------------------------------------------------ the loop
    def run(self, jobs: Iterable[Job], *, fail_fast: bool = False) -> Iterator[Outcome]:
        """Process jobs; yield one Outcome per job as it completes (not necessarily in input order)."""
        q: queue.Queue[Any] = queue.Queue(maxsize=self.queue_chunks)
        stop = threading.Event()
        videos = (_Video(j) for j in jobs)
        feeder = threading.Thread(target=self._feeder, args=(videos, q, stop), daemon=True, name="vtc-feeder")
        feeder.start()
        writer = ThreadPoolExecutor(1, thread_name_prefix="vtc-writer")
        in_flight: list[tuple[_Video, Future[Outcome]]] = []
        pending: list[tuple[_Video, np.ndarray, float]] = []
        done_decoding: list[_Video] = []
        bs = self.plan.cfg.batch_size

        def ready(v: _Video) -> bool:
            return v.decoded and v.encoded == v.queued

        def submit_ready() -> Iterator[Outcome]:
            for v in list(done_decoding):
                if v.error is not None:
                    done_decoding.remove(v)
                    yield Outcome(v.job, False, v.error, timings={"decode": v.t_decode})
                elif ready(v):
                    done_decoding.remove(v)
                    in_flight.append((v, writer.submit(self._finish, v)))

        def collect(block: bool) -> Iterator[Outcome]:
            for item in list(in_flight):
                v, fut = item
                if block or fut.done():
                    in_flight.remove(item)
                    try:
                        yield fut.result()
                    except VtcError as e:
                        yield Outcome(v.job, False, e, timings={"decode": v.t_decode, "encode": v.t_encode})
                    except Exception as e:  # keep the run going; the error is recorded for this input
                        yield Outcome(v.job, False, VtcError(f"{v.job.input}: {type(e).__name__}: {e}"))

        try:
            while True:
                item = q.get()
                if item is _END:
                    break
                kind, v, frames, times = item
                if kind == "frames":
                    if v.error is not None:
                        continue
                    v.queued += len(frames)
                    pending.extend((v, f, t) for f, t in zip(frames, times, strict=True))
                    self.on_event("decoded", {"frames": len(frames), "input": str(v.job.input)})
                    while len(pending) >= bs:
                        batch, pending = pending[:bs], pending[bs:]
                        self._encode_safe(batch)
                else:  # done decoding this video
                    v.decoded = True
                    if v.error is not None:  # drop its frames still waiting in the encoder batch
                        pending = [p for p in pending if p[0] is not v]
                    elif v.encoded < v.queued and any(p[0] is v for p in pending) and q.empty():
                        # nothing else is coming soon: encode what is pending rather than wait for a full batch
                        self._encode_safe(pending)
                        pending = []
                    done_decoding.append(v)
                for out in submit_ready():
                    yield out
                    if fail_fast and not out.ok:
                        stop.set()
                        return
                for out in collect(block=False):
                    yield out
                    if fail_fast and not out.ok:
                        stop.set()
                        return
            if pending:
                self._encode_safe(pending)
                pending = []
            yield from submit_ready()
            for out in collect(block=True):
                yield out
                if fail_fast and not out.ok:
                    stop.set()
                    return
        finally:
            stop.set()
            while feeder.is_alive():  # unblock workers waiting on a full queue
                try:
                    q.get_nowait()
                except queue.Empty:
                    feeder.join(timeout=0.05)
            writer.shutdown(wait=True)
