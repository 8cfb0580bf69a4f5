"""`--engine ray`: the same pipeline on a Ray cluster with Ray Data.

    read list ──▶ decode (CPU tasks, one video each) ──▶ encode + compress + store (actors holding the model,
                  GPU when available) ──▶ records ──▶ the same manifest as the local engine

A decode task ships a video's sampled frames to the actor as one row, so a video whose frames would take more than
an eighth of the memory budget (an hour-long one) is not decoded there: its row says `stream` and the actor
decodes it itself, frames streamed into the encoder as on the local engine (memory stays flat).

Outputs go to OUTDIR, which must be storage every node sees (NFS, a mounted bucket). Resume, retry-failed,
shards and failure records are the local engine's (`vtc.run.batch`): only the execution differs. Ray is optional:
`pip install 'vtc[ray]'`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

import vtc.errors as errors
from vtc.errors import MissingDependencyError, UsageError, VtcError
from vtc.io.decode import DecodeReport, VideoInfo, planned_frames, probe
from vtc.io.geometry import FrameGeometry
from vtc.io.storage import location, set_options
from vtc.io.storage import options as storage_options
from vtc.run.batch import Notify
from vtc.run.config import CompressConfig
from vtc.run.finish import Job, Outcome
from vtc.run.pipeline import Engine, decode_failure, decode_video
from vtc.run.plan import Plan
from vtc.run.spill import budget_bytes
from vtc.targets.encoders import encoder_geometry, open_encoder

#: a video whose decoded frames exceed this share of the memory budget is decoded by the actor, streamed
FRAMES_SHARE = 1 / 8
#: seconds the encoder actors get to start (each loads the model) before the run is refused: work is handed out
#: only once every actor is up, so a node whose actor loads slowly still gets its share (`VTC_RAY_ACTOR_START_S`)
ACTOR_START_S = 600


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise MissingDependencyError("--engine ray needs Ray Data: pip install 'vtc[ray]' (or pip install 'ray[data]')"
                                     ) from None
    return ray


def _plan(cfg_json: str) -> Plan:
    """The driver's plan, rebuilt on a worker (the driver validated it; workers need not check the encoder)."""
    return Plan.make(CompressConfig.from_flat(json.loads(cfg_json)), check_encoder=False)


def _decode_row(row: dict[str, Any], cfg_json: str, geometry: dict[str, Any],
                storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ray task: decode one video's sampled frames at the encoder's decode size (or record the error), unless
    they would be too many to ship as one row: then only mark it `stream` (the actor decodes it)."""
    set_options(storage_options or {})
    path = location(row["input"])
    out: dict[str, Any] = {"input": row["input"], "output": row["output"], "error": None, "error_type": None,
                           "frames": np.zeros((0, 1, 1, 3), np.uint8), "info": "{}", "report": "{}",
                           "stream": False}
    t0 = time.perf_counter()
    report = DecodeReport()
    plan, geom = _plan(cfg_json), FrameGeometry.from_dict(geometry)
    try:
        info = probe(path)
        w, h = geom.decode_size(info.width, info.height)
        count = planned_frames(info, plan.sampling)
        if not count or count * w * h * 3 > FRAMES_SHARE * budget_bytes(plan.cfg.memory_budget):
            out["stream"] = True  # unknown or long: streamed by the actor, never held as one array
        else:
            info, frames = decode_video(path, plan, geom, report)
            decoded = [f for _, f in frames]
            if decoded:
                out["frames"] = np.stack(decoded)
            out["info"] = json.dumps(dataclasses.asdict(info))
            out["report"] = json.dumps(dataclasses.asdict(report))
    except Exception as e:  # the same policy as the local engine's decode workers
        err = decode_failure(path, e)
        out.update(error=str(err), error_type=type(err).__name__)
    out["t_decode"] = time.perf_counter() - t0
    return out


def _outcome_row(out: Outcome) -> dict[str, Any]:
    """An Outcome as a Ray row (the driver rebuilds it with `_outcome`)."""
    d = {f.name: getattr(out, f.name) for f in dataclasses.fields(Outcome) if f.name not in ("job", "error")}
    d.update(input=str(out.job.input), output=str(out.job.output), index=out.job.index,
             error=None if out.error is None else str(out.error),
             error_type=None if out.error is None else type(out.error).__name__)
    return {"outcome": json.dumps(d, default=str)}


def _outcome(row: dict[str, Any]) -> Outcome:
    d = json.loads(row["outcome"])
    job = Job(d.pop("index"), location(d.pop("input")), location(d.pop("output")))
    message, kind = d.pop("error"), d.pop("error_type")
    error = None if message is None else getattr(errors, kind, VtcError)(message)
    return Outcome(job, error=error, **d)


class _EncodeActor:
    """Ray actor: loads the model once; encodes, compresses and stores each decoded video."""

    def __init__(self, cfg_json: str, storage_options: dict[str, Any] | None = None) -> None:
        set_options(storage_options or {})  # object storage: the driver's --storage-option values
        self.node = str(_ray().get_runtime_context().get_node_id())
        plan = _plan(cfg_json)
        self.engine = Engine(plan, open_encoder(plan.cfg.encoder, text=bool(plan.cfg.query)))

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        job = Job(0, location(row["input"]), location(row["output"]))
        if row["error"]:
            out = Outcome(job, False, getattr(errors, row["error_type"], VtcError)(row["error"]))
        elif row["stream"]:  # decoded here, frames streamed into the encoder (the local engine's loop)
            out = next(iter(self.engine.run([job])))
            out.timings["decode"] = out.timings.get("decode", 0.0) + row["t_decode"]
            out.node = self.node
            return _outcome_row(out)
        else:
            frames = list(row["frames"])
            out = self.engine.process_decoded(job, VideoInfo(**json.loads(row["info"])),
                                              DecodeReport(**json.loads(row["report"])), frames)
        out.timings["decode"] = row["t_decode"]
        out.node = self.node
        return _outcome_row(out)


class RayExecutor:
    """A Ray cluster: decode tasks (CPU) → encoder actors (a GPU each when the cluster has GPUs)."""

    def __init__(self, address: str | None = None, actors: int = 1, gpus_per_actor: float | None = None, *,
                 cpus_per_actor: float | None = None, cpus_per_decode: float = 1.0,
                 node_ip_address: str | None = None) -> None:
        self.address = address
        self.actors = actors
        self.gpus_per_actor = gpus_per_actor
        #: CPUs an actor holds (default: none with a GPU, else 1) and a decode task takes; on small nodes
        #: fractions let both run side by side
        env = os.environ
        self.cpus_per_actor = cpus_per_actor if cpus_per_actor is not None else (
            float(env["VTC_RAY_ACTOR_CPUS"]) if env.get("VTC_RAY_ACTOR_CPUS") else None)
        self.cpus_per_decode = float(env.get("VTC_RAY_DECODE_CPUS") or cpus_per_decode)
        #: the address this driver binds to (e.g. 127.0.0.1 to keep a test's traffic on loopback)
        self.node_ip_address = node_ip_address or os.environ.get("VTC_RAY_NODE_IP") or None
        self.actor_start_s = int(env.get("VTC_RAY_ACTOR_START_S") or ACTOR_START_S)
        self.load = 0.0
        self.encoder_busy = 0.0

    def execute(self, plan: Plan, jobs: list[Job], *, fail_fast: bool, notify: Notify) -> Iterator[Outcome]:
        ray = _ray()
        geometry = encoder_geometry(plan.cfg.encoder).as_dict()  # from config files: no weights on the driver
        for name in ("ray", "ray._private"):  # vtc reports progress itself; keep stdout clean (--json)
            logging.getLogger(name).setLevel(logging.ERROR)
        # Ray Data logs every exception it raises, with its stack, before raising it; vtc reports the exception
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        started = not ray.is_initialized()
        if started:
            extra = {"_node_ip_address": self.node_ip_address} if self.node_ip_address else {}
            ray.init(address=self.address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING, **extra)
        # Ray prints the cluster's warnings (a node lost, a task retried) on stdout, which is vtc's result (--json),
        # as late as its shutdown: they go to stderr with vtc's own progress
        with contextlib.redirect_stdout(sys.stderr):
            try:
                yield from self._run(ray, plan, jobs, geometry, fail_fast)
            finally:
                if started:  # this run's connection (or local instance) ends with it
                    ray.shutdown()

    def _run(self, ray: Any, plan: Plan, jobs: list[Job], geometry: dict[str, Any],
             fail_fast: bool) -> Iterator[Outcome]:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.wait_for_min_actors_s = self.actor_start_s  # all actors up before the first row is handed out
        gpus = self.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        cfg_json = json.dumps(plan.cfg.as_flat())
        rows = [{"input": str(j.input), "output": str(j.output), "index": j.index} for j in jobs]
        ds = ray.data.from_items(rows, override_num_blocks=min(len(rows), 200))
        storage = storage_options()
        ds = ds.map(_decode_row, fn_kwargs={"cfg_json": cfg_json, "geometry": geometry, "storage_options": storage},
                    num_cpus=self.cpus_per_decode)
        actor_cpus = self.cpus_per_actor if self.cpus_per_actor is not None else (0 if gpus else 1)
        ds = ds.map(_EncodeActor, fn_constructor_kwargs={"cfg_json": cfg_json, "storage_options": storage},
                    # two rows in flight per actor: one encoding, one waiting (a row can be a whole decoded video)
                    compute=ray.data.ActorPoolStrategy(size=max(1, self.actors), max_tasks_in_flight_per_actor=2),
                    num_gpus=gpus,
                    num_cpus=actor_cpus, scheduling_strategy="SPREAD")  # one actor per node where it can
        index = {str(j.input): j.index for j in jobs}
        try:
            results = iter(ds.iter_rows())
            first = next(results, None)  # the actors have started once the first result is out
        except ray.exceptions.GetTimeoutError:
            need = f"{actor_cpus:g} CPU" + (f", {gpus:g} GPU" if gpus else "")
            raise UsageError(f"the Ray cluster did not start {self.actors} encoder actor(s) ({need} each) within "
                             f"{self.actor_start_s} s: lower --actors, add nodes, or raise VTC_RAY_ACTOR_START_S"
                             ) from None
        for row in itertools.chain([] if first is None else [first], results):
            out = _outcome(row)
            out.job.index = index.get(str(out.job.input), 0)
            self.encoder_busy += out.timings.get("encode", 0.0)
            yield out
            if fail_fast and not out.ok:
                return
