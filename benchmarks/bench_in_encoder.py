"""Encoder time with ToMe inside the ViT (`tome_vit`) against the full encoder: the ratio → time curve.

    python benchmarks/bench_in_encoder.py [--model ViT-B-16] [--frames 32] [--runs 3] [--ratios 0.75 0.5 0.25]

Random weights (speed does not depend on them); the read-out block is -2, as vtc's default; batches of 16 frames;
each measurement in a fresh process. `--inflect 0` measures ToMe's constant schedule instead of the default
front-loaded one.
"""

from __future__ import annotations

import argparse

from _common import median, repeat

CHILD = r"""
import json, sys, time
import numpy as np, torch
import open_clip
from vtc.io.encode import Encoder, EncoderConfig
from vtc.methods import get_method
torch.set_num_threads(2)
name, frames, ratio, inflect = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
model = open_clip.create_model(name, pretrained=None)
enc = Encoder(EncoderConfig(model=name, pretrained=None, device="cpu"), model=model, name=name)
h, w = enc.image_size
pixels = torch.randn(frames, 3, h, w)
merger = None
if ratio < 1:
    prefix = enc.tower.prefix_tokens
    merger = get_method("tome_vit").in_encoder(ratio=ratio, layers=enc.layer_index + 1,
                                               tokens=enc.num_patches + prefix, protected=prefix, inflect=inflect)
run = (lambda p: enc.encode_merging(p, merger)) if merger else (lambda p: enc.encode_pixels(p))
run(pixels[:2])  # warm-up
t0 = time.perf_counter()
k = 0
for i in range(0, frames, 16):
    k = run(pixels[i:i + 16])["patches"].shape[1]
print(json.dumps({"encode_s": time.perf_counter() - t0, "tokens": k, "patches": enc.num_patches,
                  "schedule": merger.schedule if merger else []}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.75, 0.5, 0.25])
    ap.add_argument("--inflect", type=float, default=-1.0)
    a = ap.parse_args()
    full = median(repeat(CHILD, a.runs, a.model, a.frames, 1.0, a.inflect), "encode_s")
    print(f"{a.model}, {a.frames} frames, medians of {a.runs}: full encoder {full:.2f} s")
    for r in a.ratios:
        rows = repeat(CHILD, a.runs, a.model, a.frames, r, a.inflect)
        t = median(rows, "encode_s")
        print(f"  tome_vit ratio {r:.2f}: {rows[0]['tokens']}/{rows[0]['patches']} tokens, {t:.2f} s "
              f"({full / t:.2f}x), schedule {rows[0]['schedule']}")


if __name__ == "__main__":
    main()
