"""Hour-long videos: wall time, peak RSS and tokens kept per method at 10 and 60 minutes, and decode time
sequential vs parallel.

    python benchmarks/bench_long.py [--methods pool,evs,fastvid] [--minutes 10,60] [--runs 3]
                                    [--memory-budget 2] [--cache /tmp/vtc-bench-long]

The videos are synthetic (`vtc.testing.long_video`: 128×72 H.264, 15 fps, a scene cut every 20 s, a moving square,
a keyframe every 10 s), made once under --cache. They are sampled at 1 fps through the real engine (`vtc.compress`:
decode, batching, feature buffer, compress, store), but the encoder's output is *injected*: a tiny random-weight
CLIP tower with a 27×27 grid (54 px, patch 2) is loaded and its `encode_pixels` replaced by features of
SigLIP-so400m's shape ([729, 1152] per frame) — a random walk per patch with a jump at every scene cut, `attn`,
`cls_attn` and `received` softmaxes of random logits, `pooled` and `cls_token` the mean feature, `keys` [730, 72]
noise — so that what is measured is vtc's own handling of long inputs, not a vision tower. Every measurement
runs in a fresh process (peak RSS = its VmHWM).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from pathlib import Path

from _common import run_child

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media" / "one_by_one_person_detection.mp4"

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
import vtc
from vtc.io.encode import Encoder, EncoderConfig

video, method, budget, cfg, ckpt = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
N, D, GRID = 729, 1152, (27, 27)


class Injected(Encoder):
    # SigLIP-so400m-shaped features for whatever frames arrive: a random walk per patch, a jump every 20 frames
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.grid, self.width = GRID, D
        self.gen = torch.Generator().manual_seed(0)
        self.state = torch.randn(N, D, generator=self.gen)
        self.seen = 0

    def encode_pixels(self, pixels, want=frozenset()):
        rows = []
        for _ in range(pixels.shape[0]):
            if self.seen % 20 == 0:
                self.state = torch.randn(N, D, generator=self.gen)
            self.state = self.state + 0.05 * torch.randn(N, D, generator=self.gen)
            rows.append(self.state)
            self.seen += 1
        x = torch.stack(rows)
        t = x.shape[0]
        out = {"patches": x}
        for name in ("attn", "cls_attn", "received", "received_object"):
            if name in want:
                out[name] = torch.softmax(torch.randn(t, N, generator=self.gen), -1)
        if "pooled" in want:
            out["pooled"] = x.mean(1)
        if "cls_token" in want:
            out["cls_token"] = x.mean(1)
        if "keys" in want:  # head-mean keys of so400m: [N + 1, 72]
            out["keys"] = torch.randn(t, N + 1, 72, generator=self.gen)
        for name in set(want) - set(out):
            raise SystemExit(f"signal {name} is not injected")
        return out

    def grid_for(self, height, width):
        return GRID


enc = Injected(EncoderConfig(model=cfg, pretrained=None, checkpoint=ckpt), text=False)
t1 = time.perf_counter()
r = vtc.compress(video, output="/tmp/vtc_bench_long.safetensors", encoder=enc, model=cfg, pretrained=None,
                 checkpoint=ckpt, method=method, fps=1.0, ratio=0.1, memory_budget=budget)
wall = time.perf_counter() - t1
f = vtc.load(r.output)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
map_mb = sum(v.numel() * v.element_size() for k, v in f.tensors.items() if k.startswith("merge_")) / 2**20
print(json.dumps({"wall": round(wall, 2), "frames": f.num_frames, "tokens": r.num_tokens,
                  "peak_rss_mb": int(hwm.split()[1]) // 1024, "windowed": f.meta["info"].get("windowed"),
                  "map_mb": round(map_mb, 1), "tokens_mb": round(f.tokens.numel() * f.tokens.element_size() / 2**20, 1),
                  "timings": {k: round(v, 2) for k, v in r.timings.items()}}))
"""

DECODE = r"""
import json, sys, time
from vtc.io.decode import DecodeReport, Sampling, iter_frames, probe
video, workers = sys.argv[1], int(sys.argv[2])
info = probe(video)
t0 = time.perf_counter()
n = sum(1 for _ in iter_frames(video, Sampling(frames=None, fps=1.0), lambda w, h: (224, 224), info=info,
                               workers=workers, seek=False))
print(json.dumps({"seconds": round(time.perf_counter() - t0, 3), "frames": n}))
"""


#: every method that runs on injected features: not `none` (an hour of uncompressed tokens is a 6 GB file) and not
#: the in-encoder ones (tome_vit, vid_tldr), which need a real tower's blocks
DEFAULT_METHODS = ("pool", "uniform", "evs", "dycoke", "fastvid", "holitom", "prunevid", "framefusion", "tome",
                   "rlt", "sttm", "omnizip", "budgeted", "visionzip", "fastervlm", "hiprune", "gprune", "ts_llava",
                   "divprune", "llava_scissor")


def prepare(cache: Path, minutes: list[float]) -> tuple[dict[float, Path], Path, Path]:
    from vtc.testing import long_video, save_random_checkpoint, tiny_clip_config

    cache.mkdir(parents=True, exist_ok=True)
    videos = {}
    for m in minutes:
        path = cache / f"long-{m:g}min.mp4"
        if not path.exists():
            print(f"making a {m:g}-minute video …", flush=True)
            long_video(path, minutes=m)
        videos[m] = path
    # a tiny tower whose own grid is SigLIP-so400m's (54 px, patch 2: 27×27), so its view of a frame tiles the
    # injected grid (RLT compares the pixels of each patch)
    cfg = tiny_clip_config(cache / "tiny-clip-54.json", image_size=54, patch=2)
    ckpt = cache / "tiny-clip-54.pt"
    if not ckpt.exists():
        save_random_checkpoint(cfg, ckpt)
    return videos, cfg, ckpt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    ap.add_argument("--minutes", default="10,60")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--memory-budget", type=float, default=2.0, help="GiB (vtc's --memory-budget)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/vtc-bench-long"))
    ap.add_argument("--skip-decode", action="store_true")
    args = ap.parse_args()
    minutes = [float(m) for m in args.minutes.split(",")]
    videos, cfg, ckpt = prepare(args.cache, minutes)
    if not args.skip_decode:
        targets = [videos[max(minutes)]] + ([MEDIA] if MEDIA.exists() else [])
        for video in targets:
            row = {}
            for workers in (1, 2):
                rows = [run_child(DECODE, video, workers) for _ in range(args.runs)]
                row[workers] = statistics.median(r["seconds"] for r in rows)
            print(f"decode {video.name} at 1 fps: sequential {row[1]:.2f} s, parallel (2 threads) {row[2]:.2f} s "
                  f"→ {row[1] / row[2]:.2f}× (median of {args.runs})", flush=True)
    print(f"{'method':<12}{'min':>5}{'frames':>8}{'tokens':>9}{'wall s':>9}{'ms/frame':>10}{'peak MB':>9}  windows"
          f"  map MB / tokens MB in the file")
    for method in args.methods.split(","):
        per = {}
        for m in minutes:
            try:
                rows = [run_child(CHILD, videos[m], method, args.memory_budget, cfg, ckpt) for _ in range(args.runs)]
            except subprocess.CalledProcessError as e:
                print(f"{method:<12}{m:>5g}  failed: {(e.stderr or '').strip().splitlines()[-1:]}", flush=True)
                break
            wall = statistics.median(r["wall"] for r in rows)
            peak = statistics.median(r["peak_rss_mb"] for r in rows)
            r0 = rows[0]
            per[m] = (wall / r0["frames"], peak)
            win = r0["windowed"]["windows"] if r0["windowed"] else 1
            ms = 1000 * wall / r0["frames"]
            print(f"{method:<12}{m:>5g}{r0['frames']:>8}{r0['tokens']:>9}{wall:>9.1f}{ms:>10.1f}{peak:>9.0f}  {win}"
                  f"  {r0['map_mb']} / {r0['tokens_mb']}", flush=True)
        if len(minutes) >= 2 and len(per) == len(minutes):
            lo, hi = min(minutes), max(minutes)
            print(f"{'':<12}{hi:g} vs {lo:g} min: time/frame ×{per[hi][0] / per[lo][0]:.2f}, "
                  f"peak RSS ×{per[hi][1] / per[lo][1]:.2f}", flush=True)


if __name__ == "__main__":
    main()
