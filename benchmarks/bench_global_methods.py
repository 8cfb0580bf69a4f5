"""Global methods on long inputs: wall time and peak RSS of `vtc.compress_features` at [T, N, D], per feature family.

    python benchmarks/bench_global_methods.py [--shape 256,196,768] [--ratio 0.1] [--runs 3] [--threads 2]
        [--methods divprune,llava_scissor,holitom,prunevid,fastvid,sttm,tome] [--data walk,drift,noise]

Feature families (`--data`, comma-separated):
- `walk`: every patch follows a random walk (step 0.3 of unit noise) from its own random start and jumps to a new
  random vector every 37 frames (a scene cut);
- `drift`: a static background per patch plus a slowly decaying drift, x_t = b + 0.3·Σ_{s≤t} ε_s / √(t+1) (many
  near-duplicates at short range, few at long range — what used to stall LLaVA-Scissor's τ search);
- `noise`: independent Gaussian tokens (no token has a near neighbour: the hardest case for DivPrune's first pick).
`attn` is a softmax of random logits and `pooled` the mean token, for methods that want them. Each run is a fresh
process (peak RSS = its VmHWM); a run past `--timeout` seconds is reported as such.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess

from _common import child_argv, child_env

CHILD = r"""
import json, sys, time
import torch
import vtc
t, n, d = (int(v) for v in sys.argv[1].split(","))
method, ratio, data = sys.argv[2], float(sys.argv[3]), sys.argv[4]
torch.set_num_threads(int(sys.argv[5]))
g = torch.Generator().manual_seed(0)
if data == "noise":
    x = torch.randn(t, n, d, generator=g)
elif data == "drift":
    x = torch.randn(1, n, d, generator=g) + 0.3 * torch.randn(t, n, d, generator=g).cumsum(0) / (
        torch.arange(t)[:, None, None] + 1).sqrt()
else:
    x = torch.empty(t, n, d)
    cur = torch.randn(n, d, generator=g)
    for i in range(t):
        cur = torch.randn(n, d, generator=g) if i % 37 == 0 else cur + 0.3 * torch.randn(n, d, generator=g)
        x[i] = cur
attn = torch.softmax(torch.randn(t, n, generator=g), -1)  # for methods that want signals: plausible shapes
pooled = x.mean(1)
from vtc.methods import get_method
wanted = get_method(method).wanted_signals
sig = {k: v for k, v in {"attn": attn, "pooled": pooled}.items() if k in wanted}
t0 = time.perf_counter()
r = vtc.compress_features(x, method=method, ratio=ratio, **sig)
wall = time.perf_counter() - t0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
print(json.dumps({"wall": round(wall, 2), "tokens": int(r.tokens.shape[0]), "peak_rss_mb": int(hwm.split()[1]) // 1024,
                  "input_mb": x.numel() * 4 // 2**20}))
"""


def run(timeout: float, *args: object) -> dict | None:
    """One measurement in a fresh interpreter, or None past `timeout` seconds."""
    try:
        p = subprocess.run(child_argv(CHILD, *args), capture_output=True, text=True, check=True, timeout=timeout,
                           env=child_env())
    except subprocess.TimeoutExpired:
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="256,196,768")
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds before a run counts as not finished")
    ap.add_argument("--methods", default="divprune,llava_scissor,holitom,prunevid,fastvid,sttm,tome")
    ap.add_argument("--data", default="walk,drift,noise")
    args = ap.parse_args()
    for data in args.data.split(","):
        for method in args.methods.split(","):
            rows = []
            for _ in range(args.runs):
                rows.append(run(args.timeout, args.shape, method, args.ratio, data, args.threads))
                if rows[-1] is None:  # one run past the timeout: the median would be too
                    break
            if rows[-1] is None:
                print(f"{method:<14} [{args.shape}] {data:<5}: not finished in {args.timeout:.0f} s", flush=True)
                continue
            wall = statistics.median(r["wall"] for r in rows)
            peak = statistics.median(r["peak_rss_mb"] for r in rows)
            print(f"{method:<14} [{args.shape}] {data:<5}: {wall:.2f} s (median of {args.runs}; runs "
                  f"{', '.join(str(r['wall']) for r in rows)}), {rows[0]['tokens']} tokens, peak RSS {peak:.0f} MB "
                  f"for {rows[0]['input_mb']} MB of features", flush=True)


if __name__ == "__main__":
    main()
