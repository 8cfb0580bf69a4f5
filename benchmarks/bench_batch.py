"""Benchmark batch processing: the streaming engine (decode threads ahead of the encoder, cross-video batches)
against the single-file path run file by file with the same loaded encoder.

    python benchmarks/bench_batch.py [--copies 1] [--frames 8] [--runs 3] [--workers 2] [--device auto]

Input: every clip of ../shared/media (the truncated one fails, as data) plus `--copies` copies of each. The encoder
is ViT-B-16 sized with random weights (speed does not depend on the weights). Each measurement runs in a fresh
process; reported: wall time, files/s, frames/s, encoder utilisation (encoder busy / wall) and peak RSS.
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
mode, src, out, frames, workers, device = sys.argv[1:7]
cfg = make_config(method="fastvid", ratio=0.1, frames=int(frames), model="ViT-B-16", pretrained=None, device=device)
enc = Encoder(EncoderConfig(model="ViT-B-16", pretrained=None, device=device), model=open_clip.create_model("ViT-B-16"),
              name="ViT-B-16")
t0 = time.perf_counter()
res = {}
if mode == "batch":
    s = run_batch([src], out, cfg, executor=LocalExecutor(decode_workers=int(workers), encoder=enc))
    res = {"ok": s.ok, "failed": s.failed, "frames": s.frames, "encoder_busy": s.encoder_busy}
else:
    ok = failed = nframes = 0
    busy = 0.0
    for it in discover([src]):
        try:
            r = vtc.compress(it.input, output=it.output(Path(out)), encoder=enc, method="fastvid", ratio=0.1,
                             frames=int(frames))
            ok += 1
            busy += r.timings["encode"]
            nframes += vtc.load(r.output).num_frames
        except vtc.VtcError:
            failed += 1
    res = {"ok": ok, "failed": failed, "frames": nframes, "encoder_busy": busy}
res["wall"] = time.perf_counter() - t0
res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(res))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for clip in sorted(MEDIA.glob("*")):
            if clip.suffix in {".mp4", ".webm", ".mkv", ".avi"}:
                for c in range(a.copies + 1):
                    shutil.copy(clip, src / f"{clip.stem}_{c}{clip.suffix}")
        n_files = len(list(src.iterdir()))
        print(f"{n_files} files, frames={a.frames}, workers={a.workers}, device={a.device}, runs={a.runs}")
        for mode in ("one-by-one", "batch"):
            rows = [run_child(CHILD, mode, src, Path(tmp) / f"out-{mode}-{r}", a.frames, a.workers, a.device)
                    for r in range(a.runs)]
            wall, busy, rss = median(rows, "wall"), median(rows, "encoder_busy"), median(rows, "peak_rss_mb")
            x = rows[0]
            print(f"{mode:10s} wall {wall:7.2f} s  files/s {x['ok'] / wall:5.2f}  frames/s {x['frames'] / wall:6.1f}  "
                  f"encoder busy {busy:6.2f} s ({100 * busy / wall:4.1f}%)  peak RSS {rss:5.0f} MB  "
                  f"ok {x['ok']} failed {x['failed']}")


if __name__ == "__main__":
    main()
