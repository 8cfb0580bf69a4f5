"""Serving headline: time to first token and requests/s of a real vLLM engine on one clip, served as raw frames
(vLLM runs the vision tower), as the unpruned vtc file, and as vtc files at 50 % and 25 % kept (EVS), through vtc's
plugin.  Medians of 3.

    VTC_VLLM_PYTHON=/work/vllm-venv/bin/python python benchmarks/bench_serving.py [--frames 16] [--batch 8]

Run from vtc's environment: it builds a tiny random-weight Qwen2.5-VL (head size 32, vLLM's CPU attention), encodes
and compresses the clip with vtc, then times the engine in the vLLM virtualenv (scripts/make_vllm_venv.sh); the same
file with `--engine JOB` is that side, which imports only vLLM, torch and numpy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def engine(job_path: str) -> None:
    """The vLLM side: for each variant, TTFT of one request (max_tokens=1) and requests/s of a batch."""
    import numpy as np
    from vllm import LLM, SamplingParams

    job = json.loads(Path(job_path).read_text())
    llm = LLM(model=job["model"], dtype="float32", max_model_len=4096, max_num_seqs=job["batch"], seed=0,
              enable_mm_embeds=True, limit_mm_per_prompt={"video": 1, "image": 0}, enforce_eager=True)
    ids = job["prompt_token_ids"]
    frames = np.load(job["frames"])
    meta = {"total_num_frames": int(frames.shape[0]), "fps": job["fps"], "duration": frames.shape[0] / job["fps"],
            "frames_indices": list(range(frames.shape[0])), "video_backend": "pyav", "height": int(frames.shape[1]),
            "width": int(frames.shape[2]), "do_sample_frames": False}
    rows = []
    for name, path in [("raw frames", None)] + list(job["exports"].items()):
        mm = {"video": (frames, meta)} if path is None else torch.load(path)["multi_modal_data"]
        one, many = SamplingParams(max_tokens=1, temperature=0.0), SamplingParams(max_tokens=16, temperature=0.0,
                                                                                ignore_eos=True)
        prompt = {"prompt_token_ids": ids, "multi_modal_data": mm}
        llm.generate([prompt], one, use_tqdm=False)  # warm-up
        ttft, rps = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            out = llm.generate([prompt], one, use_tqdm=False)
            ttft.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            llm.generate([prompt] * job["batch"], many, use_tqdm=False)
            rps.append(job["batch"] / (time.perf_counter() - t0))
        rows.append({"input": name, "prompt_len": len(out[0].prompt_token_ids),
                     "ttft_ms": 1e3 * statistics.median(ttft), "req_per_s": statistics.median(rps)})
    Path(job["out"]).write_text(json.dumps(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--engine", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.engine:
        engine(args.engine)
        return
    import numpy as np

    import vtc
    from vtc.export import export
    from vtc.io.decode import Sampling, iter_frames
    from vtc.targets import TARGETS, checkpoint_geometry, read_checkpoint
    from vtc.testing import (
        TINY_QWEN_VIDEO_TOKEN,
        TINY_QWEN_VISION_END,
        TINY_QWEN_VISION_START,
        synth_clip,
        tiny_qwen2_5_vl,
    )

    python = os.environ.get("VTC_VLLM_PYTHON", "/work/vllm-venv/bin/python")
    tmp = Path(tempfile.mkdtemp(prefix="vtc-bench-serving-"))
    clip = synth_clip(tmp / "clip.mp4", seconds=4.0, size=(224, 168))
    ckpt = tiny_qwen2_5_vl(tmp / "ckpt", head_dim=32, max_pixels=224 * 168)
    geo = checkpoint_geometry(read_checkpoint(str(ckpt), TARGETS["qwen2.5-vl"]))
    frames = np.stack([f for _, f in iter_frames(clip, Sampling(frames=args.frames), geo.decode_size)])
    np.save(tmp / "frames.npy", frames)
    exports = {}
    for name, method, ratio in [("vtc, unpruned", "none", None), ("vtc, 50 % kept", "evs", 0.5),
                                ("vtc, 25 % kept", "evs", 0.25)]:
        res = vtc.compress(clip, output=tmp / f"{method}{ratio}.safetensors", method=method, ratio=ratio,
                           frames=args.frames, target="qwen2.5-vl", target_model=str(ckpt), dtype_out="float32")
        exports[name] = str(export(res.output, "vllm", tmp / f"{method}{ratio}.vllm.pt"))
    job = {"model": str(ckpt), "frames": str(tmp / "frames.npy"), "fps": args.frames / 4.0, "exports": exports,
           "batch": args.batch, "out": str(tmp / "rows.json"),
           "prompt_token_ids": [5, 6, TINY_QWEN_VISION_START, TINY_QWEN_VIDEO_TOKEN, TINY_QWEN_VISION_END, 7, 8, 9]}
    (tmp / "job.json").write_text(json.dumps(job))
    # vtc's plugin through its entry point, as `pip install 'vtc[vllm]'` declares it (a dist-info on PYTHONPATH)
    info = tmp / "ep" / "vtc_serving_bench-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vtc-serving-bench\nVersion: 0\n")
    (info / "entry_points.txt").write_text("[vllm.general_plugins]\nvtc = vtc.serving.vllm_plugin:register\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp / 'ep'}{os.pathsep}{ROOT}",
               VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    subprocess.run([python, __file__, "--engine", str(tmp / "job.json")], env=env, check=True)
    rows = json.loads((tmp / "rows.json").read_text())
    print(f"| input | prompt tokens | TTFT (ms) | requests/s (batch {args.batch}, 16 tokens) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['input']} | {r['prompt_len']} | {r['ttft_ms']:.1f} | {r['req_per_s']:.2f} |")


if __name__ == "__main__":
    main()
