"""Shared by the benchmark scripts: run a measurement in a fresh Python process (so peak RSS is its own).

The child imports the vtc of this checkout (the folder above `benchmarks/`), or the one PYTHONPATH names: to
compare two checkouts, run one script with `PYTHONPATH=/path/to/other`. Its code runs from a file in the temporary
folder, not with `python -c`, which would put the working directory first on the import path.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def child_argv(code: str, *args: object) -> list[str]:
    """The command that runs `code` with `args` in a new interpreter (see the module doc for which vtc it sees)."""
    folder = Path(tempfile.gettempdir()) / "vtc-bench"
    folder.mkdir(exist_ok=True)
    script = folder / f"child-{hashlib.sha256(code.encode()).hexdigest()[:16]}.py"
    if not script.exists():
        tmp = script.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(code)
        os.replace(tmp, script)
    return [sys.executable, str(script), *map(str, args)]


def child_env() -> dict[str, str]:
    """The environment of a child: PYTHONPATH as given, else this checkout."""
    return {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH") or str(ROOT)}


def run_child(code: str, *args: object) -> dict[str, Any]:
    """Run `code` with `args` in a new interpreter; it prints one JSON object as its last stdout line. Added to it:
    `wall` (seconds from spawning the process to its exit) and `spawned` (the epoch time it was spawned)."""
    spawned = time.time()
    p = subprocess.run(child_argv(code, *args), capture_output=True, text=True, check=True, env=child_env())
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out.update(wall=time.time() - spawned, spawned=spawned)
    return out


def repeat(code: str, runs: int, *args: object) -> list[dict[str, Any]]:
    """`runs` independent measurements."""
    return [run_child(code, *args) for _ in range(runs)]


def median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rows)
