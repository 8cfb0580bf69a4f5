"""Live latency: frame arrival → its tokens durable in the index, at real-time pace.

    python benchmarks/bench_live.py [VIDEO] [--seconds 60] [--fps 1,2] [--chunk 10] [--runs 3]

A muxer (tests/live_source.py) streams VIDEO as MPEG-TS over a local TCP socket at real-time pace; `vtc compress
--live` reads it with a ViT-B-16-sized encoder (random weights saved once under /tmp: speed does not depend on the
weights), with a per-frame method (fastervlm, 0.25) and a clip method run per chunk (fastvid, 0.1).
Reported per setting: latency p50 / p95 over every sampled frame (median of the runs' values), the encode time of a
chunk (median), and the goal `chunk + encode of a chunk`.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import child_argv, child_env

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "media" / "one_by_one_person_detection.mp4"
SOURCE = ROOT / "tests" / "live_source.py"

CHILD = r"""
import json, sys
import numpy as np
import vtc
port, out, fps, chunk, ckpt, method, ratio = sys.argv[1:8]
s = vtc.compress_live(f"tcp://127.0.0.1:{port}", out, fps=float(fps), chunk=float(chunk), model="ViT-B-16",
                      pretrained=None, checkpoint=ckpt, method=method, ratio=float(ratio))
index = json.load(open(f"{out}/index.json"))
print(json.dumps({"p50": s.latency(0.5), "p95": s.latency(0.95), "chunks": s.chunks, "frames": s.frames,
                  "encode": float(np.median([c["encode_s"] for c in index["chunks"]]))}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def once(video: str, seconds: float, fps: float, chunk: float, ckpt: Path, method: str, ratio: float,
         out: Path) -> dict:
    port = free_port()
    mux = subprocess.Popen([sys.executable, str(SOURCE), video, f"tcp://127.0.0.1:{port}?listen=1", "--seconds",
                            str(seconds)])
    time.sleep(0.5)
    try:
        p = subprocess.run(child_argv(CHILD, port, out, fps, chunk, ckpt, method, ratio), capture_output=True,
                           text=True, check=True, cwd=ROOT, env=child_env())
    finally:
        mux.kill()
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("video", nargs="?", default=str(DEFAULT))
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--fps", default="1,2")
    ap.add_argument("--chunk", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--methods", default="fastervlm:0.25,fastvid:0.1")
    a = ap.parse_args()
    import shutil
    import tempfile

    import torch

    print(f"video={a.video} seconds={a.seconds} chunk={a.chunk} runs={a.runs} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} cuda={torch.cuda.is_available()}")
    ckpt = Path("/tmp/vtc-bench-vit-b-16-random.pt")
    if not ckpt.exists():
        import open_clip

        torch.save(open_clip.create_model("ViT-B-16", pretrained=None).state_dict(), ckpt)
    for spec in a.methods.split(","):
        method, ratio = spec.split(":")
        for fps in (float(f) for f in a.fps.split(",")):
            rows = []
            for _ in range(a.runs):
                d = Path(tempfile.mkdtemp(prefix="vtc-bench-live-"))
                try:
                    rows.append(once(a.video, a.seconds, fps, a.chunk, ckpt, method, float(ratio), d / "o"))
                finally:
                    shutil.rmtree(d, ignore_errors=True)
            med = {k: statistics.median(r[k] for r in rows) for k in ("p50", "p95", "encode")}
            print(f"{method}:{ratio} fps {fps:g}: latency p50 {med['p50']:.2f} s, p95 {med['p95']:.2f} s; encode of "
                  f"a chunk {med['encode']:.2f} s; goal ≤ {a.chunk + med['encode']:.2f} s "
                  f"({rows[0]['chunks']} chunks, {rows[0]['frames']} frames per run)", flush=True)


if __name__ == "__main__":
    main()
