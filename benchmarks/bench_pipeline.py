"""Benchmark decode, encode and end-to-end compression of one video: time (median of runs) and peak memory.

    python benchmarks/bench_pipeline.py [VIDEO] [--frames 32] [--runs 3] [--device auto]

Each measurement runs in a fresh subprocess so that its peak RSS is its own. The encoder is ViT-B-16 sized
(random weights: the hub is not needed; speed and memory do not depend on the weights). `naive` decodes every
frame to RGB first and samples afterwards — what streaming avoids. `cli` is the user's path — `vtc.compress` with a
ViT-B-16 `--checkpoint` (random weights saved once under /tmp), method none, counted from process start — and
`cli_full` the same with the full model loaded by open_clip (both towers), as before vision-only loading.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import median, repeat

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "media" / "one_by_one_person_detection.mp4"

CHILD = r"""
import json, resource, sys, time
import numpy as np
mode, video, frames, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
t0 = time.perf_counter()
out = {}
if mode in ("cli", "cli_full"):  # vtc.compress through --checkpoint, method none: the user's path (from start-up)
    import vtc
    from vtc.io.encode import Encoder, EncoderConfig
    ckpt = sys.argv[5]
    enc = None
    if mode == "cli_full":  # the previous loader: both towers, open_clip's own checkpoint loading
        enc = Encoder(EncoderConfig(model="ViT-B-16", pretrained=None, checkpoint=ckpt, device=device), text=True)
    r = vtc.compress(video, output="/tmp/vtc_bench.safetensors", encoder=enc, model="ViT-B-16", pretrained=None,
                     checkpoint=ckpt, method="none", frames=frames, device=device)
    out.update({k: round(v, 3) for k, v in r.timings.items()})
elif mode == "naive":
    import av
    with av.open(video) as c:
        allf = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    idx = np.linspace(0, len(allf) - 1, frames).round().astype(int)
    picked = [allf[i] for i in idx]
    out["frames"] = len(allf)
elif mode == "decode":  # streaming decode alone, at ViT-B/16's input size (shortest side 224)
    from vtc.io.decode import Sampling, iter_frames
    size = lambda w, h: (round(w * 224 / min(w, h)), round(h * 224 / min(w, h)))
    t0 = time.perf_counter()
    out["frames"] = sum(1 for _ in iter_frames(video, Sampling(frames=frames), size))
else:
    import open_clip, torch
    from vtc.io.encode import Encoder, EncoderConfig
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    enc = Encoder(EncoderConfig(model="ViT-B-16", pretrained=None, device=device), model=model, name="ViT-B-16")
    t0 = time.perf_counter()
    if mode == "encode":
        w, h = enc.input_size(768, 432)
        x = np.random.default_rng(0).integers(0, 255, (frames, h, w, 3), dtype=np.uint8)
        enc.encode(x[:2], {"attn", "pooled"})  # warm-up
        if enc.device.type == "cuda": torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(0, frames, 16):
            enc.encode(x[i:i + 16], {"attn", "pooled"})
        if enc.device.type == "cuda": torch.cuda.synchronize()
    elif mode == "e2e":
        import vtc
        r = vtc.compress(video, output="/tmp/vtc_bench.safetensors", encoder=enc, method="fastvid", ratio=0.1,
                         frames=frames)
        out.update({k: round(v, 3) for k, v in r.timings.items()})
out["seconds"] = time.perf_counter() - t0
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("video", nargs="?", default=str(DEFAULT))
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--modes", default="decode,encode,e2e,cli,cli_full,naive")
    a = ap.parse_args()
    import torch

    print(f"video={a.video} frames={a.frames} runs={a.runs} device={a.device} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} cuda={torch.cuda.is_available()}")
    ckpt = Path("/tmp/vtc-bench-vit-b-16-random.pt")
    if not ckpt.exists() and {"cli", "cli_full"} & set(a.modes.split(",")):
        import open_clip

        torch.save(open_clip.create_model("ViT-B-16", pretrained=None).state_dict(), ckpt)
    for mode in a.modes.split(","):
        res = repeat(CHILD, a.runs, mode, a.video, a.frames, a.device, ckpt)
        med, mem = median(res, "seconds"), median(res, "peak_rss_mb")
        extra = {k: v for k, v in res[0].items() if k not in ("seconds", "peak_rss_mb")}
        print(f"{mode:7s} median {med:7.3f} s  peak RSS {mem:7.0f} MB  {extra}")


if __name__ == "__main__":
    main()
