"""Encoder time with a method inside the ViT against the full encoder: the ratio → time curve of every in-encoder
method (ToMe, vid-TLDR, SAINT, STA, PPT, FlowCut, GTP-ViT).

    python benchmarks/bench_in_encoder.py [--model ViT-B-16] [--frames 32] [--runs 3] [--ratios 0.75 0.5 0.25]
                                          [--methods tome_vit flowcut ...] [--device cpu]

Random weights (speed does not depend on them); the read-out block is -2, as vtc's default; batches of 16 frames;
each run a fresh process that measures the full encoder and every (method, ratio) once, after a warm-up; medians
over the runs; every method with its defaults (`--inflect 0` measures ToMe's constant
schedule instead of the default front-loaded one).
"""

from __future__ import annotations

import argparse

from _common import median, repeat

CHILD = r"""
import json, sys, time
import torch
import open_clip
from vtc.io.encode import Encoder, EncoderConfig
from vtc.methods import get_method
torch.set_num_threads(2)
name, frames, inflect, device, jobs = (sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4],
                                       json.loads(sys.argv[5]))
model = open_clip.create_model(name, pretrained=None)
enc = Encoder(EncoderConfig(model=name, pretrained=None, device=device), model=model, name=name)
h, w = enc.image_size
pixels = torch.randn(frames, 3, h, w)
prefix = enc.tower.prefix_tokens
out = []
for method, ratio in jobs:
    merger = None
    if method != "none":
        spec = get_method(method)
        params = spec.resolve({"inflect": inflect} if method == "tome_vit" else {})
        merger = spec.in_encoder(ratio=ratio, layers=enc.layer_index + 1, tokens=enc.num_patches + prefix,
                                 protected=prefix, **params)
    run = (lambda p: enc.encode_merging(p, merger)) if merger else (lambda p: enc.encode_pixels(p))
    run(pixels[:2])  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    k = 0
    for i in range(0, frames, 16):
        k = run(pixels[i:i + 16])["patches"].shape[1]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    out.append({"method": method, "ratio": ratio, "encode_s": time.perf_counter() - t0, "tokens": k,
                "patches": enc.num_patches, "merging": merger.describe() if merger else {}})
print(json.dumps({"rows": out}))
"""

METHODS = ["tome_vit", "vid_tldr", "saint", "sta", "ppt", "flowcut", "gtp_vit"]


def main() -> None:
    import json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.75, 0.5, 0.25])
    ap.add_argument("--inflect", type=float, default=-1.0)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    jobs = [("none", 1.0)] + [(m, r) for m in a.methods for r in a.ratios]
    runs = [run["rows"] for run in repeat(CHILD, a.runs, a.model, a.frames, a.inflect, a.device, json.dumps(jobs))]
    full = median([run[0] for run in runs], "encode_s")
    print(f"{a.model}, {a.frames} frames, {a.device}, medians of {a.runs}: full encoder {full:.2f} s", flush=True)
    for j in range(1, len(jobs)):
        rows = [run[j] for run in runs]
        t = median(rows, "encode_s")
        print(f"  {rows[0]['method']} ratio {rows[0]['ratio']:.2f}: {rows[0]['tokens']}/{rows[0]['patches']} tokens, "
              f"{t:.2f} s ({full / t:.2f}x), {rows[0]['merging']}", flush=True)


if __name__ == "__main__":
    main()
