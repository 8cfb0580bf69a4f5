"""Batch processing: many inputs (files, directories, globs) → a mirrored tree of token files + a manifest.

- Every input gets a manifest record (JSON lines in OUTDIR): input, output, status (ok/failed/skipped), error,
  timings, achieved ratio, config hash. A failure never stops the run (unless `fail_fast`).
- Resume: an input is skipped when its output exists *and* its latest record is `ok` with the same config hash.
- `retry_failed`: only inputs whose latest record is `failed`.
- `shard=(i, n)`: process every n-th input of the sorted list, starting at i; each shard writes its own
  manifest file, and readers merge them.
- Outputs are written atomically (temporary file + rename), so a run killed at any moment leaves no partial
  output; stale temporary files of killed runs are removed when their input is processed again.

This module is the batch core that both engines share: it plans (before any work), discovers, resumes, writes
the manifest and adds up the summary. An `Executor` only turns jobs into outcomes: `LocalExecutor` (threads on
this machine, `vtc.run.pipeline.Engine`) or `vtc.run.ray_engine.RayExecutor` (a Ray cluster).
"""

from __future__ import annotations

import datetime as _dt
import glob
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from vtc._version import __version__
from vtc.errors import UsageError, VtcError
from vtc.io.peek import read_header
from vtc.io.storage import RemotePath, is_url, location
from vtc.io.store import clean_stale, is_token_file, remote_header
from vtc.run.config import CompressConfig
from vtc.run.finish import Job, Outcome
from vtc.run.pipeline import Engine
from vtc.run.plan import Plan, check_outputs
from vtc.run.remote import ObjectManifest, discover_remote
from vtc.run.shards import ShardWriter, plan_shards
from vtc.targets.encoders import AnyEncoder, open_encoder

Notify = Callable[[str, dict[str, Any]], None]

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .mkv .webm .avi .mpg .mpeg .ts .mts .m2ts .flv .wmv .3gp .ogv .gif".split()
)
MANIFEST_PREFIX = "vtc-manifest"


@dataclass
class Item:
    """An input and where its output goes."""

    input: Path | RemotePath  # a local path or an object-storage URL
    rel: Path | PurePosixPath  # path relative to its root, mirrored under OUTDIR

    def output(self, outdir: Path | RemotePath) -> Path | RemotePath:
        return outdir / self.rel.with_suffix(".safetensors")


def discover(inputs: list[str]) -> list[Item]:
    """Expand files, directories (recursive) and glob patterns into a sorted, de-duplicated list of videos."""
    items: dict[Path | RemotePath, Item] = {}
    for raw in inputs:
        if is_url(raw):  # object storage: an object, a prefix (recursive) or a glob
            for obj, rel in discover_remote(raw, VIDEO_EXTENSIONS):
                items.setdefault(obj, Item(obj, rel))
            continue
        p = Path(raw)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS and not f.name.startswith("."):
                    items.setdefault(f.resolve(), Item(f, f.relative_to(p)))
        elif p.is_file():
            items.setdefault(p.resolve(), Item(p, Path(p.name)))
        elif any(ch in raw for ch in "*?["):
            matches = sorted(glob.glob(raw, recursive=True))
            root = Path(os.path.commonpath(matches)) if len(matches) > 1 else None
            for m in matches:
                f = Path(m)
                if f.is_file():
                    rel = f.relative_to(root) if root is not None and root.is_dir() else Path(f.name)
                    items.setdefault(f.resolve(), Item(f, rel))
        else:
            # a missing input is a failure of that input, recorded like any other
            items.setdefault(p.absolute(), Item(p, Path(p.name)))
    return sorted(items.values(), key=lambda it: str(it.rel))


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' → (i, n); 'auto' reads VTC_SHARD, SLURM_PROCID/SLURM_NTASKS or RANK/WORLD_SIZE."""
    if text is None:
        return None
    if text == "auto":
        env = os.environ
        if "VTC_SHARD" in env:
            text = env["VTC_SHARD"]
        elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
            text = f"{env['SLURM_PROCID']}/{env['SLURM_NTASKS']}"
        elif "RANK" in env and "WORLD_SIZE" in env:
            text = f"{env['RANK']}/{env['WORLD_SIZE']}"
        else:
            return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard must look like i/n (e.g. 0/4), not '{text}'.") from None
    if not (n >= 1 and 0 <= i < n):
        raise UsageError(f"--shard {text}: need 0 ≤ i < n.")
    return i, n


def read_manifest(outdir: Path | RemotePath, problems: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Latest record per input across every manifest file in `outdir` (tolerates a torn last line).  Lines that
    are not records (torn, foreign, of the wrong shape) are skipped and, when `problems` is given, counted there."""
    latest: dict[str, dict[str, Any]] = {}
    for f in sorted(outdir.glob(f"{MANIFEST_PREFIX}*.jsonl")):
        try:
            text = f.read_text(errors="replace") if f.is_file() else ""
        except (OSError, VtcError):
            if problems is not None:
                problems.append(f"{f} is unreadable (its inputs are redone)")
            continue  # unreadable: as if absent (its inputs are redone)
        bad = 0
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                bad += 1
                continue  # a torn or foreign line
            if not (isinstance(rec, dict) and isinstance(rec.get("input"), str)
                    and isinstance(rec.get("finished", ""), str) and isinstance(rec.get("status", ""), str)):
                bad += 1
                continue  # a record of the wrong shape is ignored, not trusted
            keys = {rec["input"]}  # as typed, and (a local path) resolved here
            if not is_url(rec["input"]):
                keys.add(str(Path(rec["input"]).resolve()))
            if isinstance(rec.get("input_resolved"), str):  # and as resolved where it ran (another cwd)
                keys.add(rec["input_resolved"])
            for key in keys:
                prev = latest.get(key)
                if prev is None or rec.get("finished", "") >= prev.get("finished", ""):
                    latest[key] = rec
        if bad and problems is not None:
            problems.append(f"{bad} malformed line(s) in {f} were ignored")
    return latest


def output_config_hash(path: Path | RemotePath) -> str | None:
    """The settings hash a token file records (`config_hash`), from its header alone; None if it has none."""
    if isinstance(path, RemotePath):
        meta = (remote_header(path) or {}).get("__metadata__") or {}
    else:
        try:
            meta = read_header(path).get("__metadata__") or {}
        except VtcError:
            return None
    value = meta.get("config_hash") if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


class Manifest:
    """Append-only JSON-lines manifest; one line per record, flushed and synced."""

    def __init__(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)
        except OSError as e:
            raise UsageError(f"cannot write the manifest {path} ({e.strerror or e}); choose a writable -o.") from None
        try:  # one run per manifest at a time: a second run into the same OUTDIR (and shard) is refused
            import fcntl

            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not on POSIX: the settings hash in each output still guards resume
            pass
        except OSError:
            self._f.close()
            raise UsageError(f"another vtc run is writing {path.parent} (its manifest {path.name} is locked); wait "
                             f"for it to finish or choose another -o.") from None
        try:  # a torn last line (a killed run) ends here, so the next record starts on a line of its own
            if path.stat().st_size:
                with open(path, "rb") as f:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        self._f.write("\n")
                        self._f.flush()
        except OSError:
            pass
        self.path = path
        #: the first write error (disk full, ...): the run goes on, its records are missing, the summary says so
        self.error: str | None = None

    def write(self, record: dict[str, Any]) -> None:
        if self.error is not None:
            return
        try:
            self._f.write(json.dumps(record, default=str) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            self.error = f"could not write the manifest {self.path} ({e.strerror or e}): later inputs have no " \
                         f"record, so a resume redoes them"

    def close(self) -> None:
        try:
            self._f.close()
        except OSError as e:
            self.error = self.error or f"could not close the manifest {self.path} ({e.strerror or e})"


@dataclass
class BatchSummary:
    """Totals of a batch run."""

    total: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    frames: int = 0
    tokens: int = 0
    source_tokens: int = 0
    wall: float = 0.0
    encoder_busy: float = 0.0
    load: float = 0.0
    #: a problem that did not stop the run (the manifest could not be written)
    warning: str | None = None
    manifest: str = ""
    failures: list[dict[str, str]] = field(default_factory=list)

    def add(self, out: Outcome) -> None:
        """Count one outcome."""
        if out.ok:
            self.ok += 1
            self.frames += out.frames
            self.tokens += out.num_tokens
            self.source_tokens += out.num_source_tokens
        else:
            self.failed += 1
            self.failures.append({"input": str(out.job.input), "error": str(out.error)})

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["files_per_s"] = round(self.ok / self.wall, 3) if self.wall else 0.0
        d["frames_per_s"] = round(self.frames / self.wall, 2) if self.wall else 0.0
        d["encoder_utilisation"] = round(self.encoder_busy / self.wall, 3) if self.wall else 0.0
        return d


def _record(out: Outcome, cfg_hash: str) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "input": str(out.job.input),
        "input_resolved": str(out.job.input.resolve() if isinstance(out.job.input, RemotePath)
                              else Path(out.job.input).resolve()),
        "output": str(out.job.output) if out.ok else None,
        "status": "ok" if out.ok else "failed",
        "error": None if out.ok else str(out.error),
        "error_type": None if out.ok else type(out.error).__name__,
        "config_hash": cfg_hash,
        "vtc_version": __version__,
        "timings": {k: round(v, 4) for k, v in out.timings.items()},
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
    }
    if out.node:
        rec["node"] = out.node
    if out.ok:
        rec.update(frames=out.frames, tokens=out.num_tokens, ratio_achieved=round(out.ratio_achieved, 6),
                   truncated=out.truncated)
        if out.ratio_note:
            rec.update(ratio_asked=out.ratio_asked, ratio_note=out.ratio_note)
    return rec


def plan_items(
    inputs: list[str], out_root: Path | RemotePath, cfg: CompressConfig, *, shard: tuple[int, int] | None = None,
    retry_failed: bool = False,
) -> tuple[list[Item], list[tuple[Item, UsageError]], BatchSummary, Path | RemotePath]:
    """Discover, shard and filter inputs by the manifest (resume / retry-failed).  → (to do, inputs refused before
    any work with their errors, summary, manifest)."""
    cfg_hash = cfg.config_hash()
    items = discover(inputs)
    if not items:
        raise UsageError(f"no videos found in {', '.join(inputs)} (extensions: {', '.join(sorted(VIDEO_EXTENSIONS))}).")
    # over every shard (they share OUTDIR); an output vtc may not replace fails its input alone, not the batch
    refused = check_outputs([(it.input, it.output(out_root)) for it in items])
    if shard is not None:
        items = items[shard[0] :: shard[1]]
    name = manifest_name(shard)
    if (out_root / name).is_dir():
        raise UsageError(f"the manifest {out_root / name} is a directory; remove it or choose another -o.")
    problems: list[str] = []
    previous = read_manifest(out_root, problems) if out_root.is_dir() else {}
    summary = BatchSummary(total=len(items), manifest=str(out_root / name),
                           warning="; ".join(problems) if problems else None)
    todo: list[Item] = []
    failed: list[tuple[Item, UsageError]] = []
    for it in items:
        if it.output(out_root) in refused:
            failed.append((it, refused[it.output(out_root)]))
            continue
        rec = previous.get(str(it.input)) or previous.get(str(it.input.resolve()))
        # done: recorded ok with this configuration, and the output is still a vtc token file made with these
        # settings (not deleted, damaged or replaced by another run since)
        done = (rec is not None and rec.get("status") == "ok" and rec.get("config_hash") == cfg_hash
                and is_token_file(it.output(out_root)) and output_config_hash(it.output(out_root)) == cfg_hash)
        if retry_failed:  # the inputs whose last run failed, whatever options they failed with
            if rec is None or rec.get("status") != "failed":
                summary.skipped += 1
                continue
        elif done:
            summary.skipped += 1
            clean_stale(it.output(out_root))  # a killed rerun of a finished input may have left one
            continue
        todo.append(it)
    return todo, failed, summary, out_root / name


def manifest_name(shard: tuple[int, int] | None) -> str:
    """The manifest file of a run (one per shard)."""
    return f"{MANIFEST_PREFIX}.jsonl" if shard is None else f"{MANIFEST_PREFIX}.shard-{shard[0]}-of-{shard[1]}.jsonl"


class Executor(Protocol):
    """Turns jobs into outcomes (in any order).  After `execute`, `load` and `encoder_busy` hold seconds spent."""

    load: float
    encoder_busy: float

    def execute(self, plan: Plan, jobs: list[Job], *, fail_fast: bool, notify: Notify) -> Iterator[Outcome]: ...


class LocalExecutor:
    """This machine: decode threads ahead of one encoder (`vtc.run.pipeline.Engine`)."""

    def __init__(self, decode_workers: int = 2, encoder: AnyEncoder | None = None) -> None:
        self.decode_workers = decode_workers
        self.encoder = encoder
        self.load = 0.0
        self.encoder_busy = 0.0

    def execute(self, plan: Plan, jobs: list[Job], *, fail_fast: bool, notify: Notify) -> Iterator[Outcome]:
        t0 = time.perf_counter()
        encoder = self.encoder or open_encoder(plan.cfg.encoder, text=bool(plan.cfg.query))
        self.load = time.perf_counter() - t0
        engine = Engine(plan, encoder, decode_workers=self.decode_workers, on_event=notify)
        try:
            yield from engine.run(jobs, fail_fast=fail_fast)
        finally:
            self.encoder_busy = engine.encoder_busy


def run_batch(
    inputs: list[str],
    outdir: str | os.PathLike[str] | RemotePath,
    cfg: CompressConfig,
    *,
    shard: tuple[int, int] | None = None,
    retry_failed: bool = False,
    fail_fast: bool = False,
    executor: Executor | None = None,
    on_event: Notify | None = None,
    out_format: str = "files",
    shard_size: int = 1000,
) -> BatchSummary:
    """Process many videos; see the module docstring.  Returns totals; the manifest has the details.

    The plan is made first: a bad option fails here, before any input is decoded or a model loaded.
    `out_format="webdataset"` packs the outputs into tar shards of `shard_size` videos (`vtc.run.shards`).
    """
    t0 = time.perf_counter()
    plan = Plan.make(cfg)
    out_root = location(outdir)
    if out_format == "webdataset":
        return run_shard_batch(inputs, out_root, plan, shard_size, shard=shard, retry_failed=retry_failed,
                               fail_fast=fail_fast, executor=executor, on_event=on_event, t0=t0)
    if out_format != "files":
        raise UsageError(f"--format must be files or webdataset, not '{out_format}'.")
    cfg_hash = cfg.config_hash()
    remote = isinstance(out_root, RemotePath)
    if not remote:
        plan_items(inputs, out_root, cfg, shard=shard, retry_failed=retry_failed)  # every check, nothing written yet
    # the lock (local): one run per manifest; object storage has no lock, each run writes its own segments
    manifest: Manifest | ObjectManifest = (ObjectManifest(out_root / manifest_name(shard)) if remote
                                           else Manifest(out_root / manifest_name(shard)))
    try:
        # planned again under the lock: what another run finished meanwhile is seen
        todo, refused, summary, _ = plan_items(inputs, out_root, cfg, shard=shard, retry_failed=retry_failed)
    except BaseException:
        manifest.close()
        raise
    notify = on_event or (lambda kind, data: None)
    notify("start", {"total": summary.total, "todo": len(todo) + len(refused), "skipped": summary.skipped})
    executor = executor or LocalExecutor()
    try:
        for it, err in refused:  # outputs vtc may not replace: these inputs fail, recorded, the others run
            out = Outcome(Job(-1, it.input, it.output(out_root)), False, err)
            manifest.write(_record(out, cfg_hash))
            summary.add(out)
            notify("file", {"ok": False, "input": str(it.input), "tokens": 0, "frames": 0, "error": str(err)})
            if fail_fast:
                todo = []
        if todo:
            jobs = [Job(i, it.input, it.output(out_root)) for i, it in enumerate(todo)]
            for job in jobs:
                clean_stale(job.output)
            for out in executor.execute(plan, jobs, fail_fast=fail_fast, notify=notify):
                manifest.write(_record(out, cfg_hash))
                summary.add(out)
                notify("file", {"ok": out.ok, "input": str(out.job.input), "tokens": out.num_tokens,
                                "frames": out.frames, "error": None if out.ok else str(out.error)})
            summary.load, summary.encoder_busy = executor.load, executor.encoder_busy
    finally:
        manifest.close()
    summary.wall = time.perf_counter() - t0
    summary.warning = "; ".join(w for w in (summary.warning, manifest.error) if w) or None
    return summary


def run_shard_batch(
    inputs: list[str], out_root: Path | RemotePath, plan: Plan, shard_size: int, *,
    shard: tuple[int, int] | None, retry_failed: bool, fail_fast: bool, executor: Executor | None,
    on_event: Notify | None, t0: float,
) -> BatchSummary:
    """`run_batch` with `--format webdataset`: shards planned and resumed whole (see `vtc.run.shards`);
    `shard=(i, n)` takes every n-th tar shard."""
    cfg_hash = plan.cfg.config_hash()
    items = discover(inputs)
    if not items:
        raise UsageError(f"no videos found in {', '.join(inputs)} (extensions: {', '.join(sorted(VIDEO_EXTENSIONS))}).")
    problems: list[str] = []
    previous = read_manifest(out_root, problems) if out_root.is_dir() else {}
    shards, todo = plan_shards(items, shard_size, previous, cfg_hash, out_root, retry_failed=retry_failed)
    if shard is not None:
        shards, todo = shards[shard[0] :: shard[1]], [s for s in todo if s.index % shard[1] == shard[0]]
    name = manifest_name(shard)
    summary = BatchSummary(total=sum(len(s.samples) for s in shards), manifest=str(out_root / name),
                           warning="; ".join(problems) if problems else None)
    summary.skipped = summary.total - sum(len(s.samples) for s in todo)
    notify = on_event or (lambda kind, data: None)
    notify("start", {"total": summary.total, "todo": summary.total - summary.skipped, "skipped": summary.skipped})
    executor = executor or LocalExecutor()
    writer = ShardWriter(todo, out_root, cfg_hash, local_staging=isinstance(executor, LocalExecutor))
    manifest_path = out_root / name
    manifest = ObjectManifest(manifest_path) if isinstance(manifest_path, RemotePath) else Manifest(manifest_path)
    try:
        if todo:
            for out in executor.execute(plan, writer.jobs(todo), fail_fast=fail_fast, notify=notify):
                done = writer.add(out)
                summary.add(out)
                notify("file", {"ok": out.ok, "input": str(out.job.input), "tokens": out.num_tokens,
                                "frames": out.frames, "error": None if out.ok else str(out.error)})
                if done is not None:
                    for rec in done[1]:
                        manifest.write(rec)
            summary.load, summary.encoder_busy = executor.load, executor.encoder_busy
    finally:
        writer.close()
        manifest.close()
    summary.wall = time.perf_counter() - t0
    summary.warning = "; ".join(w for w in (summary.warning, manifest.error) if w) or None
    return summary
