"""Benchmark decode, encode and end-to-end compression of one video: time (median of runs) and peak memory.

    python benchmarks/bench_pipeline.py [VIDEO] [--frames 32] [--runs 3] [--device auto] [--modes cmd,naive]

Each measurement runs in a fresh subprocess so that its peak RSS is its own; `wall` is timed by this script from
spawning the process to its exit (interpreter start-up and teardown included). The encoder is ViT-B-16 sized
(random weights: the hub is not needed; speed and memory do not depend on the weights).

- `cmd`: the user's command, `vtc compress VIDEO --model ViT-B-16 --checkpoint CKPT --method none --frames N`
  (random weights saved once under /tmp), run through the CLI's own entry point, with timers around its parts so
  that every second of the wall time is accounted for: interpreter start, importing torch and vtc, the CLI's
  start-up (option parsing, the plan), the model (vtc builds the CLIP ViT from open_clip's JSON config on the meta
  device without importing open_clip, and assigns the memory-mapped weights; hashing the checkpoint is cached after
  the first run; `open_clip_imported` says whether open_clip was imported at all), the pipeline (encoding on this
  thread while a decode thread feeds it; compress; store; what the encoder waited for frames) and teardown;
- `naive`: the same job as a short script without vtc would do it — decode every frame to RGB, sample N, load the
  model with open_clip's own loader (full model, random init then the checkpoint), preprocess with its PIL
  transforms, encode, save the patch tokens; `cmd`/`naive` is the headline ratio (runs alternate between the
  modes, so both see the same machine load); `naive_decode` is its decoding alone;
- `cli` / `cli_full`: `vtc.compress` in-process, vision tower only vs the full model loaded by open_clip;
- `decode`, `encode`, `e2e`: the stages alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from _common import median, run_child

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "media" / "one_by_one_person_detection.mp4"

CHILD = r"""
import json, resource, sys, time
import numpy as np
mode, video, frames, device = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
t0 = time.perf_counter()
out = {}
if mode == "cmd":  # the real command line, instrumented (see the module docstring)
    import contextlib, io, re
    ckpt = sys.argv[5]
    t_start = time.time()
    import torch
    t_torch = time.time()
    import vtc.io.encode as E
    import vtc.run.plan  # noqa: F401  (the plan imports the method registry)
    t_vtc = time.time()
    spent = {"open_clip": 0.0, "hash": 0.0}
    def timed(key, fn):
        def wrapper(*a, **k):
            s = time.time()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.time() - s
        return wrapper
    E.load_open_clip = timed("open_clip", E.load_open_clip)
    E.file_sha256 = timed("hash", E.file_sha256)
    import atexit
    import vtc.cli as cli
    sys.argv = ["vtc", "compress", video, "-o", "/tmp/vtc_bench_cmd.safetensors", "--overwrite", "--model",
                "ViT-B-16", "--checkpoint", ckpt, "--method", "none", "--frames", str(frames), "--device", device]
    real, buf = sys.stdout, io.StringIO()

    def report():  # the console script ends the process after the atexit handlers: report from one
        t_end = time.time()
        sys.stdout = real
        line = buf.getvalue()
        num = lambda name: float(re.search(name + r" ([0-9.]+)s", line).group(1))
        total = float(re.search(r" in ([0-9.]+)s", line).group(1))
        out.update(start=t_start, end=t_end, torch=t_torch - t_start, open_clip_imported="open_clip" in sys.modules,
                   vtc=t_vtc - t_torch, cli_total=total, startup=num("start-up"), model=num("model"),
                   decode=num("decode"), encode=num("encode"), compress=num("compress"), store=num("store"),
                   open_clip=spent["open_clip"], hash=spent["hash"], seconds=t_end - t_start,
                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(json.dumps(out), flush=True)

    atexit.register(report)
    sys.stdout = buf
    cli.run()  # the console-script entry point (its own exit)
elif mode in ("cli", "cli_full"):  # vtc.compress through --checkpoint, method none: the user's path (from start-up)
    import vtc
    from vtc.io.encode import Encoder, EncoderConfig
    ckpt = sys.argv[5]
    enc = None
    if mode == "cli_full":  # the previous loader: both towers, open_clip's own checkpoint loading
        enc = Encoder(EncoderConfig(model="ViT-B-16", pretrained=None, checkpoint=ckpt, device=device), text=True)
    r = vtc.compress(video, output="/tmp/vtc_bench.safetensors", encoder=enc, model="ViT-B-16", pretrained=None,
                     checkpoint=ckpt, method="none", frames=frames, device=device)
    out.update({k: round(v, 3) for k, v in r.timings.items()})
elif mode in ("naive", "naive_decode"):  # the same job without vtc: decode everything, sample, then encode
    import av
    with av.open(video) as c:
        allf = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    idx = np.linspace(0, len(allf) - 1, frames).round().astype(int)
    picked = [allf[i] for i in idx]
    out["frames"] = len(allf)
    out["decode"] = time.perf_counter() - t0
    if mode == "naive":  # open_clip's own loading (full model) and preprocessing, the ViT's patch tokens, saved
        import open_clip, torch
        from PIL import Image
        from safetensors.torch import save_file
        t1 = time.perf_counter()
        model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16", pretrained=sys.argv[5])
        model.eval()
        model.visual.output_tokens = True
        out["model"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        with torch.inference_mode():
            x = torch.stack([preprocess(Image.fromarray(a)) for a in picked])
            tokens = torch.cat([model.visual(x[i:i + 16])[1] for i in range(0, len(x), 16)])
        out["encode"] = time.perf_counter() - t1
        save_file({"tokens": tokens.half().contiguous()}, "/tmp/vtc_bench_naive.safetensors")
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
    ap.add_argument("--modes", default="cmd,naive")
    a = ap.parse_args()
    import torch

    print(f"video={a.video} frames={a.frames} runs={a.runs} device={a.device} torch={torch.__version__} "
          f"threads={torch.get_num_threads()} cuda={torch.cuda.is_available()}")
    ckpt = Path("/tmp/vtc-bench-vit-b-16-random.pt")
    if not ckpt.exists() and {"cli", "cli_full", "cmd", "naive"} & set(a.modes.split(",")):
        import open_clip

        torch.save(open_clip.create_model("ViT-B-16", pretrained=None).state_dict(), ckpt)
    modes = a.modes.split(",")
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for _ in range(a.runs):  # round robin: every mode sees the same stretch of machine load
        for mode in modes:
            results[mode].append(run_child(CHILD, mode, a.video, a.frames, a.device, ckpt))
    for mode in modes:
        res = results[mode]
        med, wall, mem = median(res, "seconds"), median(res, "wall"), median(res, "peak_rss_mb")
        extra = {k: round(v, 3) for k, v in res[0].items() if k not in ("seconds", "peak_rss_mb", "wall", "spawned",
                                                                          "start", "end")}
        print(f"{mode:8s} wall {wall:7.3f} s (inside {med:7.3f} s)  peak RSS {mem:7.0f} MB  {extra}")
        if mode == "cmd":
            print(breakdown(res))
    if "cmd" in results and "naive" in results:
        c, n = median(results["cmd"], "wall"), median(results["naive"], "wall")
        pairs = sorted(x["wall"] / y["wall"] for x, y in zip(results["cmd"], results["naive"], strict=True))
        print(f"time to the first token file: vtc compress {c:.2f} s / naive decode-everything {n:.2f} s = "
              f"{c / n:.2f}x (medians of {a.runs}; per pair {', '.join(f'{p:.2f}' for p in pairs)}); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def breakdown(res: list[dict]) -> str:
    """Where every second of `vtc compress` goes (medians over runs; the parts of each run add up to its wall)."""
    rows: dict[str, list[float]] = {}
    for r in res:
        parts = {
            "interpreter start (and numpy)": r["start"] - r["spawned"],
            "import torch": r["torch"],
            "import vtc (method registry, io)": r["vtc"],
            "CLI start-up (options, plan)": r["startup"],
            "model: build the tower on meta + assign mmap'd weights": r["open_clip"],
            "model: checkpoint hash (cached after the first run)": r["hash"],
            "model: config, probe, encoder set-up": r["model"] - r["open_clip"] - r["hash"],
            "encode (this thread; decode runs beside it)": r["encode"],
            "decode not hidden behind encode (waits, thread start)": r["cli_total"] - r["startup"] - r["model"]
            - r["encode"] - r["compress"] - r["store"],
            "compress + store": r["compress"] + r["store"],
            "CLI outside its timers (the last line, leaving the command)": (r["end"] - r["start"]) - r["torch"]
            - r["vtc"] - r["cli_total"],
            "exit (the console script skips the teardown)": (r["spawned"] + r["wall"]) - r["end"],
            "(decode thread's own time, overlapped)": r["decode"],
        }
        for k, v in parts.items():
            rows.setdefault(k, []).append(v)
    wall = statistics.median(r["wall"] for r in res)
    lines = [f"  where the {wall:.2f} s of `vtc compress` go (medians of {len(res)}):"]
    lines += [f"    {statistics.median(v):6.2f} s  {k}" for k, v in rows.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
