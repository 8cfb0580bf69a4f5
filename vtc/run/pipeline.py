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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vtc.errors import InputError, ModelError, VtcError
from vtc.io.decode import DecodeReport, VideoInfo, iter_frames, planned_frames, probe
from vtc.io.geometry import FrameGeometry
from vtc.run.finish import FrameReuse, Job, Outcome, Video, finish
from vtc.run.plan import Plan
from vtc.run.spill import budget_bytes, release_free_memory
from vtc.targets.encoders import AnyEncoder


def decode_video(path: Path, plan: Plan, geometry: FrameGeometry, report: DecodeReport
                 ) -> tuple[VideoInfo, Iterator[tuple[float, np.ndarray]]]:
    """Probe `path` and stream its planned frames at the encoder's decode size: (info, iterator of (time, frame)).

    Both engines decode through here; wrap the iteration with `decode_failure` for their shared error policy.
    """
    info = probe(path)
    frames = iter_frames(path, plan.sampling, geometry.decode_size, info=info,
                         allow_truncated=plan.cfg.allow_truncated, report=report)
    return info, frames


def decode_failure(path: Path, e: Exception) -> VtcError:
    """The error an input's decoding ends with: vtc's own, or an unexpected decoder failure as an InputError."""
    if isinstance(e, VtcError):
        return e
    return InputError(f"{path}: decoding failed ({type(e).__name__}: {e}).")


def as_failure(job: Job, e: Exception) -> VtcError:
    """An error while encoding, compressing or storing `job`, as the VtcError its record keeps."""
    return e if isinstance(e, VtcError) else VtcError(f"{job.input}: {type(e).__name__}: {e}")


def first_nonfinite(x: Tensor) -> int | None:
    """Index of the first frame of `x` [T, ...] holding a NaN or an infinity, or None."""
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    return None if bool(finite.all()) else int((~finite).nonzero()[0, 0])


def no_frames(path: Path) -> InputError:
    return InputError(f"{path}: no frame could be sampled (empty or unreadable video stream).")


_END = object()


class Engine:
    """Runs jobs through decode → encode → compress → store with overlap.  See the module docstring."""

    def __init__(
        self,
        plan: Plan,
        encoder: AnyEncoder,
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
        #: half the memory budget for a video's features in RAM, half for the method's working set
        self.feature_budget = budget_bytes(plan.cfg.memory_budget) // 2
        self.query_embedding = encoder.encode_text(plan.cfg.query) if plan.cfg.query else None
        #: frames per token frame (2 for Qwen: a batch never splits a pair, so batches are a multiple of it)
        self.tp = encoder.temporal_patch
        self.batch = -(-plan.cfg.batch_size // self.tp) * self.tp
        #: an in-encoder method's block merger (ToMe inside the ViT), built for this encoder's depth and tokens
        self.merger = None
        if plan.spec.in_encoder is not None:
            prefix = encoder.tower.prefix_tokens
            ratio = plan.cfg.ratio if plan.cfg.ratio is not None else plan.spec.paper_ratio
            self.merger = plan.spec.in_encoder(ratio=ratio, layers=encoder.layer_index + 1,
                                               tokens=encoder.num_patches + prefix, protected=prefix, **plan.params)

    # ------------------------------------------------------------------ decode side (worker threads)
    def _decode(self, video: Video, q: queue.Queue[Any], stop: threading.Event) -> None:
        bs = self.batch
        t0 = time.perf_counter()
        chunk: list[np.ndarray] = []
        times: list[float] = []
        path = video.job.input
        try:
            video.info, frames = decode_video(path, self.plan, self.encoder.geometry, video.report)
            video.planned_frames = planned_frames(video.info, self.plan.sampling)
            for ft, frame in frames:
                if stop.is_set():
                    return
                chunk.append(frame)
                times.append(ft)
                if len(chunk) >= bs:
                    q.put(("frames", video, chunk, times))
                    chunk, times = [], []
            if chunk:
                while len(chunk) % self.tp:  # an odd last frame pairs with itself, as Qwen's processor does
                    chunk.append(chunk[-1])
                    times.append(times[-1])
                q.put(("frames", video, chunk, times))
            if not video.report.frame_times:
                raise no_frames(path)
        except Exception as e:  # a failure of this input only
            video.error = decode_failure(path, e)
        finally:
            video.t_decode = time.perf_counter() - t0
            q.put(("done", video, None, None))

    def _feeder(self, videos: Iterator[Video], q: queue.Queue[Any], stop: threading.Event) -> None:
        """Hand videos to the decode pool in order, at most `decode_workers` at a time."""
        sem = threading.Semaphore(self.decode_workers)

        def run(v: Video) -> None:
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
    def _encode(self, pending: list[tuple[Video, np.ndarray, float]]) -> None:
        """Encode a batch of frames (possibly of several videos), in runs that make pictures of one size.  With a
        method inside the encoder, runs never mix videos: its steps that see every frame of a run (STA's frame
        chain, a count over the frames) must not see another video's."""
        geo = self.encoder.geometry
        sizes: list[Any] = [geo.output_size(*f.shape[:2], v.planned_frames) for v, f, _ in pending]
        if self.merger is not None:
            sizes = [(size, id(v)) for size, (v, _, _) in zip(sizes, pending, strict=True)]
        i = 0
        while i < len(pending):
            j = i
            while j < len(pending) and sizes[j] == sizes[i]:
                j += 1
            self._encode_run(pending[i:j])
            i = j

    def _encode_run(self, pending: list[tuple[Video, np.ndarray, float]]) -> None:
        t0 = time.perf_counter()
        geo = self.encoder.geometry
        pixels = geo.preprocess_many([f for _, f, _ in pending], [v.planned_frames for v, _, _ in pending])
        views = geo.view(pixels) if self.plan.keep_views or self.plan.pre_encoder is not None else None
        if self.plan.pre_encoder is not None:
            assert views is not None
            res = self._encode_reusing(pending, pixels, views)
        elif self.plan.embed_gate is not None:
            assert views is not None
            res = self._encode_gated(pending, pixels, views)
        elif self.merger is not None:
            res = self.encoder.encode_merging(pixels, self.merger)
        else:
            res = self.encoder.encode_pixels(pixels, self.plan.encoder_signals)
        dt = time.perf_counter() - t0
        self.encoder_busy += dt
        self.frames_encoded += len(pending)
        picture = (int(pixels.shape[-2]), int(pixels.shape[-1]))
        tp = self.tp
        i = 0
        while i < len(pending):  # split the batch back into per-video runs, in order
            v = pending[i][0]
            j = i
            while j < len(pending) and pending[j][0] is v:
                j += 1
            rows = slice(i // tp, j // tp)  # token frames: one per `tp` sampled frames (runs are whole pairs)
            bad = first_nonfinite(res["patches"][rows])
            if bad is not None:  # NaN/Inf features would make an all-NaN token file: this video fails, named
                if v.error is None:
                    frame = v.encoded // tp + bad
                    v.error = ModelError(
                        f"{v.job.input}: the encoder gave NaN/Inf features for token frame {frame} "
                        f"(t = {pending[i + bad * tp][2]:.2f} s); check the model's weights, or pass --dtype fp32 "
                        f"if half precision overflowed.")
                i = j
                continue
            v.add({k: val[rows] for k, val in res.items()}, views[i:j:tp] if self.plan.keep_views else None,
                  pixels[i:j:tp] if self.plan.keep_pixels else None)
            v.grid, v.picture = self.encoder.grid_for(*picture), picture
            if self.merger is not None:
                v.merging = self.merger.describe()
            v.encoded += j - i
            v.t_encode += dt * (j - i) / len(pending)
            i = j
        release_free_memory()  # the batch's freed arrays go back to the system: memory stays flat over a long video
        self.on_event("encoded", {"frames": len(pending)})

    def _encode_reusing(self, pending: list[tuple[Video, np.ndarray, float]], pixels: Tensor,
                        views: Tensor) -> dict[str, Tensor]:
        """Apply the plan's pre-encoder rule: a frame with no changed patch (vs the previous frame) is not encoded
        and takes the previous frame's outputs; with `changed_only`, only its changed patches go through the
        tower and the rest are copied from the previous frame."""
        enc = self.encoder
        assert self.plan.pre_encoder is not None
        masks: list[Tensor | None] = []
        for i, (v, _, _) in enumerate(pending):
            if v.reuse is None:
                v.reuse = FrameReuse(self.plan.pre_encoder)
            masks.append(v.reuse.rule.changed(views[i], v.reuse.last_view, enc.grid))
            v.reuse.last_view = views[i]
        changed_only = self.plan.pre_encoder.changed_only
        full = [i for i, m in enumerate(masks) if m is None or (not changed_only and bool(m.any()))]
        res_full = enc.encode_pixels(pixels[full], self.plan.encoder_signals) if full else {}
        row_of = {i: k for k, i in enumerate(full)}
        out: dict[str, list[Tensor]] = {}
        for i, (v, _, _) in enumerate(pending):
            state, m = v.reuse, masks[i]
            assert state is not None
            state.patches_total += enc.num_patches
            if i in row_of:
                cur = {k: val[row_of[i]] for k, val in res_full.items()}
                state.patches_encoded += enc.num_patches
            else:
                assert state.last_out is not None
                cur = {k: val.clone() for k, val in state.last_out.items()}
                if m is not None and bool(m.any()):  # changed_only: encode just the changed patches
                    cur["patches"][m] = enc.encode_patches(pixels[i : i + 1], m)
                    state.patches_encoded += int(m.sum())
                else:
                    state.skipped += 1
            state.last_out = cur
            for k, val in cur.items():
                out.setdefault(k, []).append(val)
        return {k: torch.stack(val) for k, val in out.items()}

    def _encode_gated(self, pending: list[tuple[Video, np.ndarray, float]], pixels: Tensor,
                      views: Tensor) -> dict[str, Tensor]:
        """GRT's gate: each frame's static patches keep the previous frame's patch embedding inside the tower (per
        video, across batches); the gate's counts go to the file's metadata."""
        gate = self.plan.embed_gate
        assert gate is not None
        keep: list[Tensor] = []
        previous: list[Tensor | None] = []
        for i, (v, _, _) in enumerate(pending):
            if v.gate is None:
                v.gate = {"rule": gate.description, "threshold": gate.threshold, "metric": gate.metric,
                          "scale": gate.scale, "patches_moved": 0, "patches_total": 0}
            st = v.gate
            keep.append(gate.moved(views[i], st.get("view"), self.encoder.grid))
            first_in_run = i == 0 or pending[i - 1][0] is not v
            previous.append(st.get("embed") if first_in_run else None)
            st["view"] = views[i]
            st["patches_moved"] += int(keep[-1].sum())
            st["patches_total"] += int(keep[-1].numel())
        res, emb = self.encoder.encode_gated(pixels, self.plan.encoder_signals, torch.stack(keep), previous)
        for i, (v, _, _) in enumerate(pending):  # in order: each video keeps its last frame's embeddings
            v.gate["embed"] = emb[i]
        return res

    def _encode_safe(self, pending: list[tuple[Video, np.ndarray, float]]) -> None:
        """Encode; if the batch fails, fail the videos in it (and only them), keep the run going."""
        try:
            self._encode(pending)
        except Exception as e:
            for v in {id(p[0]): p[0] for p in pending}.values():
                if v.error is None:
                    v.error = as_failure(v.job, e)

    def _finish(self, video: Video) -> Outcome:
        self.on_event("finishing", {"input": str(video.job.input)})
        return finish(self.plan, self.encoder, video, self.query_embedding)

    # ------------------------------------------------------------------ frames decoded elsewhere (Ray actors, live)
    def open_video(self, job: Job, info: VideoInfo, report: DecodeReport, planned: int) -> Video:
        """A video whose sampled frames are decoded elsewhere and fed with `encode_frames`."""
        return Video(job, info=info, report=report, decoded=True, feature_budget=self.feature_budget,
                     planned_frames=planned)

    def encode_frames(self, video: Video, frames: list[np.ndarray], times: list[float]) -> None:
        """Encode sampled frames of `video` (in batches of the run's size; a multiple of the temporal patch)."""
        bs = self.batch
        for s in range(0, len(frames), bs):
            chunk = [(video, f, t) for f, t in zip(frames[s : s + bs], times[s : s + bs], strict=True)]
            video.queued += len(chunk)
            self._encode(chunk)
            if video.error is not None:  # e.g. NaN/Inf features: this video fails, named
                raise video.error

    def complete(self, video: Video, frames: list[np.ndarray], times: list[float]) -> Outcome:
        """Encode the last frames of `video` (an odd last frame pairs with itself, as Qwen's processor does), then
        compress and store it."""
        if video.queued + len(frames) == 0:
            raise no_frames(video.job.input)
        if frames and len(frames) % self.tp:
            frames = frames + [frames[-1]] * (self.tp - len(frames) % self.tp)
            times = times + [times[-1]] * (len(frames) - len(times))
        self.encode_frames(video, frames, times)
        return self._finish(video)

    def process_decoded(self, job: Job, info: VideoInfo, report: DecodeReport, frames: list[np.ndarray]) -> Outcome:
        """Encode (in batches), compress and store one video whose sampled frames were decoded elsewhere."""
        v = self.open_video(job, info, report, len(frames))
        try:
            return self.complete(v, frames, list(report.frame_times))
        except Exception as e:  # one input's failure, recorded as data
            v.close()
            return Outcome(job, False, as_failure(job, e), timings={"encode": v.t_encode})

    # ------------------------------------------------------------------ the loop
    def run(self, jobs: Iterable[Job], *, fail_fast: bool = False) -> Iterator[Outcome]:
        """Process jobs; yield one Outcome per job as it completes (not necessarily in input order)."""
        q: queue.Queue[Any] = queue.Queue(maxsize=self.queue_chunks)
        stop = threading.Event()
        videos = (Video(j, feature_budget=self.feature_budget) for j in jobs)
        feeder = threading.Thread(target=self._feeder, args=(videos, q, stop), daemon=True, name="vtc-feeder")
        feeder.start()
        writer = ThreadPoolExecutor(1, thread_name_prefix="vtc-writer")
        in_flight: list[tuple[Video, Future[Outcome]]] = []
        pending: list[tuple[Video, np.ndarray, float]] = []
        done_decoding: list[Video] = []
        bs = self.batch

        def ready(v: Video) -> bool:
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
                    except Exception as e:  # keep the run going; the error is recorded for this input
                        yield Outcome(v.job, False, as_failure(v.job, e),
                                      timings={"decode": v.t_decode, "encode": v.t_encode})

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
