"""Benchmark batch processing: the streaming engine (decode threads ahead of the encoder, cross-video batches)
against the single-file path run file by file with the same loaded encoder.

    python benchmarks/bench_batch.py [--copies 1] [--frames 8] [--runs 3] [--workers 2] [--device auto]
    python benchmarks/bench_batch.py --short 100 --frames 5      # 100 short synthetic clips (cross-video batches)
    python benchmarks/bench_batch.py --s3 --frames 32            # one 30-s clip: local path vs the S3 test server

Input: every clip of ../shared/media (the truncated one fails, as data) plus `--copies` copies of each; or, with
`--short N`, N synthetic 1-s clips (fewer frames each than an encoder batch: the batch engine fills its batches
across videos, the one-by-one path cannot). The encoder is ViT-B-16 (`--model`) with random weights (speed does not
depend on the weights). Each measurement runs in a fresh process; reported: wall time, files/s, frames/s, encoder
utilisation (encoder busy / wall) and peak RSS. `--s3` compresses one 30-s clip from a local path and from
`s3://` on moto's server (127.0.0.1, started here; `pip install 'vtc[test]'`), output beside it.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from _common import median, run_child

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import open_clip
import vtc
from vtc.run.batch import LocalExecutor, discover, run_batch
from vtc.run.config import make_config
from vtc.io.encode import Encoder, EncoderConfig
import torch
mode, src, out, frames, workers, device, name = sys.argv[1:8]
model = open_clip.create_model(name)
import tempfile
ckpt = tempfile.mkstemp(suffix=".pt")[1]  # random weights, so no download is looked for
torch.save(model.state_dict(), ckpt)
cfg = make_config(method="fastvid", ratio=0.1, frames=int(frames), model=name, checkpoint=ckpt, device=device)
enc = Encoder(EncoderConfig(model=name, pretrained=None, device=device), model=model, name=name)
t0 = time.perf_counter()
res = {}
if mode in ("local", "s3"):
    r = vtc.compress(src, output=out, encoder=enc, method="fastvid", ratio=0.1, frames=int(frames), model=name,
                     checkpoint=ckpt)
    res = {"ok": 1, "failed": 0, "frames": int(frames), "encoder_busy": r.timings["encode"],
           "decode": r.timings["decode"], "store": r.timings["store"]}
elif mode == "batch":
    s = run_batch([src], out, cfg, executor=LocalExecutor(decode_workers=int(workers), encoder=enc))
    res = {"ok": s.ok, "failed": s.failed, "frames": s.frames, "encoder_busy": s.encoder_busy}
else:
    ok = failed = nframes = 0
    busy = 0.0
    for it in discover([src]):
        try:
            r = vtc.compress(it.input, output=it.output(Path(out)), encoder=enc, method="fastvid", ratio=0.1,
                             frames=int(frames), model=name, checkpoint=ckpt)
            ok += 1
            busy += r.timings["encode"]
            nframes += vtc.load(r.output).num_frames
        except vtc.VtcError:
            failed += 1
    res = {"ok": ok, "failed": failed, "frames": nframes, "encoder_busy": busy}
res["wall"] = time.perf_counter() - t0
res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
Path(ckpt).unlink()
print(json.dumps(res))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default="ViT-B-16", help="open_clip architecture (random weights)")
    ap.add_argument("--short", type=int, default=0, help="N synthetic 1-s clips instead of ../shared/media")
    ap.add_argument("--s3", action="store_true", help="one 30-s clip: local vs s3:// (moto server)")
    a = ap.parse_args()
    if a.s3:
        return s3_overhead(a)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        if a.short:
            from vtc.testing import synth_clip

            first = synth_clip(src / "c000.mp4", seconds=1.0, fps=12, size=(160, 120), audio=False)
            for i in range(1, a.short):
                shutil.copy(first, src / f"c{i:03d}.mp4")
        for clip in sorted(MEDIA.glob("*")) if not a.short else []:
            if clip.suffix in {".mp4", ".webm", ".mkv", ".avi"}:
                for c in range(a.copies + 1):
                    shutil.copy(clip, src / f"{clip.stem}_{c}{clip.suffix}")
        n_files = len(list(src.iterdir()))
        print(f"{n_files} files, frames={a.frames}, workers={a.workers}, device={a.device}, model={a.model}, "
              f"runs={a.runs}")
        for mode in ("one-by-one", "batch"):
            rows = [run_child(CHILD, mode, src, Path(tmp) / f"out-{mode}-{r}", a.frames, a.workers, a.device, a.model)
                    for r in range(a.runs)]
            wall, busy, rss = median(rows, "wall"), median(rows, "encoder_busy"), median(rows, "peak_rss_mb")
            x = rows[0]
            print(f"{mode:10s} wall {wall:7.2f} s  files/s {x['ok'] / wall:5.2f}  frames/s {x['frames'] / wall:6.1f}  "
                  f"encoder busy {busy:6.2f} s ({100 * busy / wall:4.1f}%)  peak RSS {rss:5.0f} MB  "
                  f"ok {x['ok']} failed {x['failed']}")


def s3_overhead(a: argparse.Namespace) -> None:
    """One 30-s clip compressed from a local path and from s3:// (moto's server on 127.0.0.1)."""
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.s3server import S3Server
    from vtc.testing import synth_clip

    server = S3Server()
    try:
        os.environ.update(server.env, AWS_ENDPOINT_URL=f"http://127.0.0.1:{server.port}")  # no relay in between
        with tempfile.TemporaryDirectory() as tmp:
            clip = MEDIA / "big_buck_bunny_0_30.webm"  # a real 30-s clip; else a synthetic one
            if not clip.is_file():
                clip = synth_clip(Path(tmp) / "clip30.mp4", seconds=30.0, fps=30, size=(640, 360), audio=False)
            server.bucket("bench")
            server.put(f"s3://bench/{clip.name}", clip)
            print(f"one 30-s clip ({clip.name}, {clip.stat().st_size / 1e6:.1f} MB), frames={a.frames}, "
                  f"device={a.device}, runs={a.runs}")
            for mode, src, out in (("local", clip, Path(tmp) / "o.safetensors"),
                                   ("s3", f"s3://bench/{clip.name}", "s3://bench/o.safetensors")):
                rows = [run_child(CHILD, mode, src, out, a.frames, a.workers, a.device, a.model) for _ in range(a.runs)]
                print(f"{mode:6s} wall {median(rows, 'wall'):6.2f} s  decode {median(rows, 'decode'):6.2f} s  "
                      f"encode {median(rows, 'encoder_busy'):6.2f} s  store {median(rows, 'store'):6.3f} s")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
