"""Batch mode on object storage: discovering videos under a URL, a manifest without appends (output checks by
listing: `vtc.io.store.check_remote_outputs`).

An object store has no append: a manifest line cannot be added to an existing object. `ObjectManifest` keeps this
run's records in memory and rewrites its current *segment* object (`vtc-manifest.<run>-<n>.jsonl`, at most
`SEGMENT_RECORDS` records) after every record, each PUT atomic; a full segment is left as it is and the next one
begins. A run killed at any moment leaves finished segments and at most the last record unwritten (its output
then has no `ok` record, so a resume redoes it). A PUT that fails (the network) is repeated with the next record,
since the segment is always written whole, so a short outage loses no record. Readers (`read_manifest`) merge every
`vtc-manifest*.jsonl` object, as they merge the per-shard files of local runs.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import uuid
from pathlib import PurePosixPath
from typing import Any

from vtc.errors import UsageError, VtcError
from vtc.io.storage import RemotePath, location

#: records per manifest segment object (a PUT rewrites at most this many lines)
SEGMENT_RECORDS = 500


def run_id() -> str:
    """A name for this run's manifest segments: UTC time and a random suffix (sortable, unique)."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def discover_remote(raw: str, extensions: frozenset[str]) -> list[tuple[RemotePath, PurePosixPath]]:
    """Videos named by a URL: one object, every video under a prefix (recursive), or a glob pattern.
    → (object, path relative to its root) pairs; a URL that names nothing is returned as itself (its failure is
    recorded like a missing local file's)."""
    target = location(raw)
    assert isinstance(target, RemotePath)
    if target.scheme in ("http", "https"):  # a web URL names one video; "?" starts its query (a signature)
        return [(target, PurePosixPath(target.name or "input"))]
    if any(ch in raw.split("://", 1)[1] for ch in "*?["):
        fs, path = target.fs()
        try:
            found = sorted(fs.glob(raw.split("://", 1)[1]))
        except Exception as e:
            raise UsageError(f"{raw}: cannot list ({type(e).__name__}: {' '.join(str(e).split())[:200]}).") from None
        objs = [RemotePath(f"{target.scheme}://{p}") for p in found]
        objs = [o for o in objs if o.suffix.lower() in extensions]
        if not objs:
            return []
        common = os.path.commonpath([o.url.split("://", 1)[1] for o in objs]) if len(objs) > 1 else None
        root = RemotePath(f"{target.scheme}://{common}") if common else None
        out = []
        for o in objs:
            rel = o.relative_to(root) if root is not None and root != o else PurePosixPath(o.name)
            out.append((o, rel))
        return out
    if not raw.endswith("/") and target.is_file():
        return [(target, PurePosixPath(target.name))]
    objs = [o for o in target.find() if o.suffix.lower() in extensions
            and not any(part.startswith(".") for part in o.relative_to(target).parts)]
    if objs:
        return [(o, o.relative_to(target)) for o in objs]
    return [(target, PurePosixPath(target.name or "input"))]


class ObjectManifest:
    """The manifest of one run on object storage (see the module docstring).  Same interface as `Manifest`."""

    def __init__(self, path: RemotePath) -> None:
        self.base = path  # …/vtc-manifest[.shard-i-of-n].jsonl: segments are named after it
        self.run = run_id()
        self.segment = 0
        self.lines: list[str] = []
        self.pending = False
        #: the first error that lost records (the network down at close): the summary says so
        self.error: str | None = None
        self.path = self._segment_path()

    def _segment_path(self) -> RemotePath:
        stem = self.base.name[: -len(".jsonl")] if self.base.name.endswith(".jsonl") else self.base.name
        return self.base.parent / f"{stem}.{self.run}-{self.segment:04d}.jsonl"

    def _flush(self) -> bool:
        try:
            self.path.write_text("".join(self.lines))
        except VtcError:
            self.pending = True
            return False
        self.pending = False
        return True

    def write(self, record: dict[str, Any]) -> None:
        self.lines.append(json.dumps(record, default=str) + "\n")
        if self._flush() and len(self.lines) >= SEGMENT_RECORDS:
            self.segment += 1
            self.lines = []
            self.path = self._segment_path()

    def close(self) -> None:
        if self.pending and not self._flush():
            self.error = (f"could not write the manifest {self.path} (storage unreachable): {len(self.lines)} "
                          f"records are missing, so a resume redoes those inputs")
