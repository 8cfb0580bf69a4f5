"""`--engine ray`: the same pipeline on a Ray cluster with Ray Data.

    read list ──▶ decode (CPU tasks, one video each) ──▶ encode + compress + store (actors holding the model,
                  GPU when available) ──▶ records ──▶ the same manifest as the local engine

Outputs go to OUTDIR, which must be storage every node sees (NFS, a mounted bucket). Resume, retry-failed,
shards and failure records are the local engine's (`vtc.run.batch`): only the execution differs. Ray is optional:
`pip install 'vtc[ray]'`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vtc.errors import MissingDependencyError, VtcError
from vtc.run.batch import BatchSummary, Manifest, _clean_stale, _record, plan_items
from vtc.run.config import CompressConfig


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MissingDependencyError("--engine ray needs Ray Data: pip install 'vtc[ray]' (or pip install 'ray[data]')"
                                     ) from None
    return ray


def _decode_row(row: dict[str, Any], cfg_json: str, geometry: dict[str, Any]) -> dict[str, Any]:
    """Ray task: decode one video's sampled frames at the encoder's input size (or record the error)."""
    import numpy as np

    from vtc.io.decode import DecodeReport, Sampling, iter_frames, probe
    from vtc.io.encode import input_size

    cfg = CompressConfig(**json.loads(cfg_json))
    out: dict[str, Any] = {"input": row["input"], "output": row["output"], "error": None, "error_type": None}
    t0 = time.perf_counter()
    try:
        info = probe(row["input"])
        report = DecodeReport()
        size = lambda w, h: input_size(w, h, tuple(geometry["image_size"]), geometry["resize_mode"])  # noqa: E731
        frames = [f for _, f in iter_frames(row["input"], Sampling(cfg.frames, cfg.fps, cfg.every), size, info=info,
                                            allow_truncated=cfg.allow_truncated, report=report)]
        out["frames"] = np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)
        out["info"] = json.dumps(dataclasses.asdict(info))
        out["report"] = json.dumps(dataclasses.asdict(report))
    except VtcError as e:
        out.update(error=str(e), error_type=type(e).__name__, frames=np.zeros((0, 1, 1, 3), np.uint8), info="{}",
                   report="{}")
    out["t_decode"] = time.perf_counter() - t0
    return out


class _EncodeActor:
    """Ray actor: loads the model once; encodes, compresses and stores each decoded video."""

    def __init__(self, cfg_json: str) -> None:
        from vtc.io.encode import Encoder
        from vtc.run.pipeline import Engine, Plan

        self.cfg = CompressConfig(**json.loads(cfg_json))
        c = self.cfg
        encoder = Encoder(c.encoder_config())
        self.engine = Engine(Plan.make(c), encoder)
        self.cfg_hash = c.config_hash()

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        from vtc.io.decode import DecodeReport, VideoInfo
        from vtc.run.pipeline import Job, Outcome

        job = Job(0, Path(row["input"]), Path(row["output"]))
        if row["error"]:
            out = Outcome(job, False, VtcError(row["error"]), timings={"decode": row["t_decode"]})
            rec = _record(out, self.cfg_hash)
            rec["error_type"] = row["error_type"]
        else:
            info = VideoInfo(**json.loads(row["info"]))
            report = DecodeReport(**json.loads(row["report"]))
            _clean_stale(job.output)
            out = self.engine.process_decoded(job, info, report, list(row["frames"]))
            out.timings["decode"] = row["t_decode"]
            rec = _record(out, self.cfg_hash)
        return {"record": json.dumps(rec, default=str)}


def run_ray(
    inputs: list[str],
    outdir: str | os.PathLike[str],
    cfg: CompressConfig,
    *,
    address: str | None = None,
    shard: tuple[int, int] | None = None,
    retry_failed: bool = False,
    actors: int = 1,
    gpus_per_actor: float | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> BatchSummary:
    """Run a batch on Ray (see the module docstring); returns the same summary as `vtc.run.batch.run_batch`."""
    ray = _ray()
    from vtc.io.encode import Encoder

    t0 = time.perf_counter()
    out_root = Path(outdir)
    todo, summary, manifest_path = plan_items(inputs, out_root, cfg, shard=shard, retry_failed=retry_failed)
    notify = on_event or (lambda kind, data: None)
    notify("start", {"total": summary.total, "todo": len(todo), "skipped": summary.skipped})
    if not todo:
        summary.wall = time.perf_counter() - t0
        return summary
    probe_enc = Encoder(cfg.encoder_config(device="cpu", dtype="fp32", batch_size=1))
    geometry = {"image_size": list(probe_enc.image_size), "resize_mode": probe_enc.resize_mode}
    del probe_enc
    import logging

    for name in ("ray", "ray.data", "ray._private"):  # vtc reports progress itself; keep stdout clean (--json)
        logging.getLogger(name).setLevel(logging.ERROR)
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    cfg_json = json.dumps(dataclasses.asdict(cfg))
    rows = [{"input": str(it.input), "output": str(it.output(out_root))} for it in todo]
    ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 200))
    ds = ds.map(_decode_row, fn_kwargs={"cfg_json": cfg_json, "geometry": geometry}, num_cpus=1)
    ds = ds.map(_EncodeActor, fn_constructor_kwargs={"cfg_json": cfg_json},
                compute=ray.data.ActorPoolStrategy(size=max(1, actors)), num_gpus=gpus_per_actor,
                num_cpus=0 if gpus_per_actor else 1)
    manifest = Manifest(manifest_path)
    try:
        for row in ds.iter_rows():
            rec = json.loads(row["record"])
            manifest.write(rec)
            ok = rec["status"] == "ok"
            if ok:
                summary.ok += 1
                summary.frames += int(rec.get("frames", 0))
                summary.tokens += int(rec.get("tokens", 0))
                summary.encoder_busy += float(rec["timings"].get("encode", 0.0))
            else:
                summary.failed += 1
                summary.failures.append({"input": rec["input"], "error": rec["error"]})
            notify("file", {"ok": ok, "input": rec["input"], "tokens": rec.get("tokens", 0),
                            "frames": rec.get("frames", 0), "error": rec.get("error")})
    finally:
        manifest.close()
    summary.wall = time.perf_counter() - t0
    return summary
