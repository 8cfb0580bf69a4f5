"""Shared by the benchmark scripts: run a measurement in a fresh Python process (so peak RSS is its own)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Any


def run_child(code: str, *args: object) -> dict[str, Any]:
    """Run `code` with `args` in a new interpreter; it prints one JSON object as its last stdout line. Added to it:
    `wall` (seconds from spawning the process to its exit) and `spawned` (the epoch time it was spawned)."""
    spawned = time.time()
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out.update(wall=time.time() - spawned, spawned=spawned)
    return out


def repeat(code: str, runs: int, *args: object) -> list[dict[str, Any]]:
    """`runs` independent measurements."""
    return [run_child(code, *args) for _ in range(runs)]


def median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rows)
