"""Encoder time with and without RLT's pre-encoder step, at equal frame sampling.

    python benchmarks/bench_pre_encoder.py [VIDEO] [--fps 1] [--runs 3] [--device auto]

Three settings of the `rlt` method: no skipping (every sampled frame encoded), skipping frames with no changed
patch (the default), and encoding only changed patches (experimental). Encoder: ViT-B-16 sized, random weights.
Reported: median encoder seconds, frames skipped, patches encoded, tokens kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import median, repeat

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "media" / "one_by_one_person_detection.mp4"

CHILD = r"""
import json, sys
import open_clip, vtc
from vtc.io.encode import Encoder, EncoderConfig
video, fps, device, setting = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
params = {"none": {"skip_static_frames": False}, "skip": {}, "changed": {"encode_changed_only": True}}[setting]
enc = Encoder(EncoderConfig(model="ViT-B-16", pretrained=None, device=device), model=open_clip.create_model("ViT-B-16"),
              name="ViT-B-16")
r = vtc.compress(video, output="/tmp/vtc_bench_rlt.safetensors", encoder=enc, method="rlt", fps=fps, params=params)
f = vtc.load(r.output)
pre = f.meta.get("pre_encoder", {})
print(json.dumps({"encode": r.timings["encode"], "frames": f.num_frames, "tokens": r.num_tokens,
                  "source_tokens": r.num_source_tokens, "skipped": pre.get("frames_skipped", 0),
                  "patches_encoded": pre.get("patches_encoded", r.num_source_tokens)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("video", nargs="?", default=str(DEFAULT))
    ap.add_argument("--fps", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    print(f"video={a.video} fps={a.fps} runs={a.runs} device={a.device}")
    for setting in ("none", "skip", "changed"):
        rows = repeat(CHILD, a.runs, a.video, a.fps, a.device, setting)
        enc = median(rows, "encode")
        x = rows[0]
        print(f"{setting:8s} encoder {enc:7.2f} s  frames {x['frames']}  skipped {x['skipped']}  patches encoded "
              f"{x['patches_encoded']}/{x['source_tokens']}  tokens kept {x['tokens']} "
              f"({100 * x['tokens'] / x['source_tokens']:.1f}%)")


if __name__ == "__main__":
    main()
