"""`--format webdataset`: batch outputs packed into tar shards for training pipelines (WebDataset layout).

    inputs (sorted) ──▶ shards of `shard_size` videos ──▶ each video's token file staged ──▶ one tar per shard:
        <key>.safetensors (the token file) + <key>.json (input, status, counts, method, model) per video

- A sample's key is its path relative to its input root without the extension, dots made underscores (WebDataset
  splits a name at its first dot): `sub/clip.v2.mp4` → `sub/clip_v2`.
- The shard is written atomically (`atomic_write`: a local rename, or one upload on object storage), and only then
  its records go to the manifest: one row per sample (`shard`, `key`, status, error) and one shard row
  (`input` = `shard:<name>`, `samples`, `ok`, `failed`) — the shard index. A video that failed has a row, not a
  tar member.
- Resume per shard: a shard is skipped when its row is `ok` with this configuration hash and the same sample keys,
  and its tar exists; `--retry-failed` redoes the shards that hold a failure (a tar is rewritten whole).
- Staging: token files go to a local temporary folder (the local engine), or under OUTDIR/.vtc-staging/<run>/ for
  other engines (the nodes of a cluster see OUTDIR), removed once their shard is written.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from vtc._version import __version__
from vtc.errors import UsageError, VtcError
from vtc.io.storage import RemotePath, location
from vtc.io.store import atomic_write
from vtc.run.finish import Job, Outcome
from vtc.run.remote import run_id

SHARD_PATTERN = "shard-{:06d}.tar"


def sample_key(rel: Path | PurePosixPath) -> str:
    """A WebDataset key for a video's relative path (no extension, no dots)."""
    return PurePosixPath(*PurePosixPath(rel.as_posix()).parts).with_suffix("").as_posix().replace(".", "_")


@dataclass
class Shard:
    """One tar shard: its name and the (key, input) of its samples, in order."""

    index: int
    name: str
    samples: list[tuple[str, Path | RemotePath]]


def make_shards(items: list[Any], size: int) -> list[Shard]:
    """Consecutive groups of `size` items (sorted by their relative path) → shards."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise UsageError(f"--shard-size must be an integer ≥ 1, not {size!r}.")
    keys: dict[str, Any] = {}
    for it in items:
        k = sample_key(it.rel)
        if k in keys:
            raise UsageError(f"{keys[k].input} and {it.input} would both be sample '{k}'; rename one of them.")
        keys[k] = it
    pairs = [(sample_key(it.rel), it.input) for it in items]
    return [Shard(i, SHARD_PATTERN.format(i), pairs[s : s + size]) for i, s in enumerate(range(0, len(pairs), size))]


def shard_done(shard: Shard, rec: dict[str, Any] | None, cfg_hash: str, out_root: Path | RemotePath) -> bool:
    return (rec is not None and rec.get("status") == "ok" and rec.get("config_hash") == cfg_hash
            and rec.get("samples") == [k for k, _ in shard.samples] and (out_root / shard.name).is_file())


def sample_json(key: str, out: Outcome, meta: dict[str, Any] | None) -> dict[str, Any]:
    """The `<key>.json` member: what a training loop filters on without opening the tensors."""
    d: dict[str, Any] = {"key": key, "input": str(out.job.input), "status": "ok", "tokens": out.num_tokens,
                         "source_tokens": out.num_source_tokens, "frames": out.frames,
                         "ratio_achieved": round(out.ratio_achieved, 6), "truncated": out.truncated}
    if meta:
        d.update({k: meta.get(k) for k in ("method", "variant", "model", "grid", "T", "N", "D", "K", "space")
                  if k in meta})
        d["video"] = meta.get("video")
    return d


def _header_meta(raw: bytes) -> dict[str, Any]:
    size = int.from_bytes(raw[:8], "little")
    meta = (json.loads(raw[8 : 8 + size]).get("__metadata__") or {})
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def write_tar(target: Path | RemotePath, members: list[tuple[str, bytes]]) -> None:
    """A tar of (name, bytes) members, written atomically; fixed mtime and modes (the same bytes for the same
    members)."""

    def write(tmp: str) -> None:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))

    atomic_write(target, write)


class ShardWriter:
    """Collects outcomes; when every sample of a shard is in, writes its tar and returns its manifest rows."""

    def __init__(self, shards: list[Shard], out_root: Path | RemotePath, cfg_hash: str, local_staging: bool) -> None:
        self.out_root = out_root
        self.cfg_hash = cfg_hash
        self.run = run_id()
        if local_staging:
            self.staging: Path | RemotePath = Path(tempfile.mkdtemp(prefix="vtc-shards-"))
        else:
            self.staging = out_root / ".vtc-staging" / self.run
        self.shard_of: dict[str, Shard] = {}
        self.key_of: dict[str, str] = {}
        self.pending: dict[str, dict[str, Outcome]] = {}
        for sh in shards:
            self.pending[sh.name] = {}
            for key, inp in sh.samples:
                self.shard_of[str(inp)] = sh
                self.key_of[str(inp)] = key

    def jobs(self, shards: list[Shard]) -> list[Job]:
        out, i = [], 0
        for sh in shards:
            for key, inp in sh.samples:
                out.append(Job(i, inp, self.staging / f"{key}.safetensors"))
                i += 1
        return out

    def add(self, out: Outcome) -> tuple[Shard, list[dict[str, Any]]] | None:
        """Count one outcome; → (the shard, its rows) when this completed (and wrote) a shard."""
        sh = self.shard_of[str(out.job.input)]
        got = self.pending[sh.name]
        got[self.key_of[str(out.job.input)]] = out
        if len(got) < len(sh.samples):
            return None
        return sh, self._write(sh, got)

    def _write(self, sh: Shard, got: dict[str, Outcome]) -> list[dict[str, Any]]:
        members: list[tuple[str, bytes]] = []
        rows: list[dict[str, Any]] = []
        for key, _ in sh.samples:
            out = got[key]
            if out.ok:
                try:
                    staged = location(out.job.output)
                    raw = staged.read_bytes()
                    meta = _header_meta(raw)
                except (OSError, VtcError, ValueError) as e:
                    out.ok, out.error = False, VtcError(f"{out.job.input}: its staged token file is gone ({e}).")
                else:
                    members.append((f"{key}.safetensors", raw))
                    members.append((f"{key}.json", json.dumps(sample_json(key, out, meta)).encode()))
            rows.append(self._sample_row(sh, key, out))
        write_tar(self.out_root / sh.name, members)
        for key, _ in sh.samples:
            self._unstage(got[key].job.output)
        n_ok = sum(1 for r in rows if r["status"] == "ok")
        rows.append({"input": f"shard:{sh.name}", "kind": "shard", "shard": sh.name,
                     "output": str(self.out_root / sh.name), "status": "ok", "config_hash": self.cfg_hash,
                     "samples": [k for k, _ in sh.samples], "ok": n_ok, "failed": len(rows) - n_ok,
                     "vtc_version": __version__, "finished": _now()})
        del self.pending[sh.name]
        return rows

    def _sample_row(self, sh: Shard, key: str, out: Outcome) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "input": str(out.job.input), "output": f"{self.out_root / sh.name}#{key}" if out.ok else None,
            "shard": sh.name, "key": key, "status": "ok" if out.ok else "failed",
            "error": None if out.ok else str(out.error),
            "error_type": None if out.ok else type(out.error).__name__, "config_hash": self.cfg_hash,
            "vtc_version": __version__, "timings": {k: round(v, 4) for k, v in out.timings.items()},
            "finished": _now()}
        if out.node:
            rec["node"] = out.node
        if out.ok:
            rec.update(frames=out.frames, tokens=out.num_tokens, ratio_achieved=round(out.ratio_achieved, 6),
                       truncated=out.truncated)
        return rec

    def _unstage(self, path: Path | RemotePath) -> None:
        try:
            path.unlink(missing_ok=True)
        except (OSError, VtcError):
            pass

    def close(self) -> None:
        if isinstance(self.staging, Path):
            shutil.rmtree(self.staging, ignore_errors=True)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def plan_shards(items: list[Any], size: int, previous: dict[str, dict[str, Any]], cfg_hash: str,
                out_root: Path | RemotePath, *, retry_failed: bool) -> tuple[list[Shard], list[Shard]]:
    """→ (every shard, the shards to write now)."""
    shards = make_shards(items, size)
    todo = []
    for sh in shards:
        rec = previous.get(f"shard:{sh.name}")
        if retry_failed:
            if rec is not None and rec.get("failed"):
                todo.append(sh)
        elif not shard_done(sh, rec, cfg_hash, out_root):
            todo.append(sh)
    return shards, todo
