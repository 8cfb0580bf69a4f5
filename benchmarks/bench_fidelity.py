"""The cost of a fidelity sweep: one video, 6 methods × 3 ratios, against doing the same by hand.

- sweep: `vtc.fidelity(video, methods=6, ratios=3, one prompt, N answer tokens, controls off)` — one decode and
  encode, the reference (greedy answer, cached), then one teacher-forced LLM forward per method × ratio;
  also timed with the random and pool controls on (the command's default), which add up to two runs each;
- by hand: 18 separate `vtc.compress` calls (each loads its encoder, decodes and encodes, as separate
  `vtc compress` runs do — the process start-up of a real command line is NOT counted, which favours this side)
  plus 18 LLM forwards of the same prompt + answer on the 18 files (the LLM loaded once).

Each measurement runs in a fresh process; the median of --runs is reported. The checkpoint is a random-weight
LLaVA-OneVision (vtc.testing.tiny_llava_onevision at 384 px: 27×27 patches → 14×14 tokens a frame, a small
Qwen2 language model), built once under --dir. The machine is shared and noisy: compare the ratio, not the seconds.

    python benchmarks/bench_fidelity.py [--runs 3] [--frames 32] [--video ../shared/media/bikes.mp4]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch
from _common import median, repeat

METHODS = "uniform,fastvid,dycoke,divprune,holitom,prunevid"
RATIOS = "0.1,0.25,0.5"

SWEEP = r"""
import sys, json, time, tempfile
import torch
torch.set_num_threads(int(sys.argv[5]))
t0 = time.perf_counter()
import vtc
video, ckpt, frames, controls = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
with tempfile.TemporaryDirectory() as d:
    s = vtc.fidelity([video], d, target="llava-onevision", target_model=ckpt, methods=sys.argv[6],
                     ratios=sys.argv[7], prompts=["Describe this video."], answer_tokens=8, frames=frames,
                     controls=controls)
print(json.dumps({"wall": time.perf_counter() - t0, "runs": s.computed, "forwards": s.llm_forwards,
                  "frames_encoded": s.frames_encoded}))
"""

BY_HAND = r"""
import sys, json, time, tempfile
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[4]))
t0 = time.perf_counter()
import vtc, vtc.hf
from transformers import AutoModelForImageTextToText
from vtc.testing import tiny_tokenizer
video, ckpt, frames = sys.argv[1], sys.argv[2], int(sys.argv[3])
methods, ratios = sys.argv[5].split(","), [float(r) for r in sys.argv[6].split(",")]
ids = [291] + tiny_tokenizer()("\nDescribe this video.\n", add_special_tokens=False).input_ids + [40] * 7
with tempfile.TemporaryDirectory() as d:
    files = []
    for m in methods:
        for r in ratios:  # a separate run each: its own encoder load, decode and encode
            out = Path(d) / f"{m}-{r}.safetensors"
            vtc.compress(video, output=out, method=m, ratio=r, target="llava-onevision", target_model=ckpt,
                         frames=frames, dtype_out="float32")
            files.append(out)
    t_compress = time.perf_counter() - t0
    model = AutoModelForImageTextToText.from_pretrained(ckpt).eval()
    for f in files:
        with torch.no_grad():
            model(**vtc.hf.video_inputs(f, model, ids))
print(json.dumps({"wall": time.perf_counter() - t0, "compress": t_compress, "runs": len(files)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--video", default=str(Path(__file__).resolve().parents[1].parent / "shared/media/bikes.mp4"))
    ap.add_argument("--dir", default=str(Path(tempfile.gettempdir()) / "vtc-bench-fidelity"))
    args = ap.parse_args()
    from vtc.testing import tiny_llava_onevision

    ckpt = Path(args.dir) / "llava-384"
    if not (ckpt / "config.json").exists():
        tiny_llava_onevision(ckpt, image_size=384, text_hidden=256, text_layers=4)
    common = (args.video, ckpt, args.frames)
    hand = repeat(BY_HAND, args.runs, *common, args.threads, METHODS, RATIOS)
    sweep = repeat(SWEEP, args.runs, *common, 0, args.threads, METHODS, RATIOS)
    ctl = repeat(SWEEP, args.runs, *common, 1, args.threads, METHODS, RATIOS)
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} torch threads "
                   f"(torch {torch.__version__})",
        "video": Path(args.video).name, "frames": args.frames, "methods": METHODS, "ratios": RATIOS,
        "by_hand_s": median(hand, "wall"), "by_hand_compress_s": median(hand, "compress"),
        "sweep_s": median(sweep, "wall"), "sweep_with_controls_s": median(ctl, "wall"),
        "sweep_forwards": sweep[0]["forwards"], "sweep_with_controls_forwards": ctl[0]["forwards"],
        "frames_encoded": sweep[0]["frames_encoded"], "runs": args.runs,
    }
    res["sweep_over_by_hand"] = round(res["sweep_s"] / res["by_hand_s"], 3)
    res["sweep_with_controls_over_by_hand"] = round(res["sweep_with_controls_s"] / res["by_hand_s"], 3)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
