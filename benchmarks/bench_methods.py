"""Time every registered method on [T, N, D] feature grids (median of runs), CPU and GPU when present.

    python benchmarks/bench_methods.py [--shapes 32x196x1152,32x729x1152] [--runs 5] [--device cpu]

Inputs are video-like (static background, drift, a scene cut) with softmax attention and pooled embeddings, so
temporal methods find both static and dynamic tokens. The time covers the method and building its Reduction and
applying it (the output tokens), i.e. what `compress_features` costs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vtc.methods import all_methods
from vtc.signals import Signals


def inputs(t: int, n: int, d: int, device: str) -> tuple[torch.Tensor, Signals]:
    g = torch.Generator().manual_seed(0)
    base, other = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    drift = torch.randn(t, n, d, generator=g) * 0.05
    scenes = torch.stack([(base if i < t * 3 // 5 else other) for i in range(t)])
    x = scenes + drift * torch.linspace(0, 1, t)[:, None, None]
    side = int(round(n**0.5))
    frames = torch.full((t, side * 16, side * 16, 3), 90, dtype=torch.uint8)
    for i in range(t):  # a moving bright block over a static background
        x0 = (i * 16) % (side * 16 - 32)
        frames[i, 32:96, x0 : x0 + 32] = 230
    sig = Signals(attn=torch.softmax(torch.randn(t, n, generator=g) * 3, -1).to(device),
                  frames=frames, times=torch.arange(t, dtype=torch.float64),
                  audio_saliency=torch.rand(t * 25, generator=g),
                  pooled=x.mean(1).to(device), cls_attn=torch.softmax(torch.randn(t, n, generator=g), -1).to(device),
                  cls_token=x.mean(1).to(device), keys=torch.randn(t, n + 1, 64, generator=g).to(device),
                  received=torch.softmax(torch.randn(t, n, generator=g), -1).to(device),
                  received_object=torch.softmax(torch.randn(t, n, generator=g), -1).to(device),
                  shallow_attn=torch.softmax(torch.randn(t, n, generator=g) * 3, -1).to(device),
                  readout_attn=torch.softmax(torch.randn(t, n, generator=g) * 3, -1).to(device),
                  last_cls_attn=torch.softmax(torch.randn(t, n, generator=g) * 3, -1).to(device),
                  last_keys=torch.randn(t, n + 1, d, generator=g).to(device),
                  patch_embed=torch.randn(t, n, 768, generator=g).to(device),
                  query_embed=torch.nn.functional.normalize(torch.randn(768, generator=g), dim=0).to(device),
                  relevance=torch.randn(t, generator=g).to(device),
                  sensitivity=torch.rand(t, n, generator=g).to(device))
    return x.to(device), sig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shapes", default="32x196x1152,32x729x1152")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--methods", default="")
    a = ap.parse_args()
    print(f"device={a.device} torch={torch.__version__} threads={torch.get_num_threads()} ratio={a.ratio}")
    wanted = set(filter(None, a.methods.split(",")))
    for shape in a.shapes.split(","):
        t, n, d = map(int, shape.split("x"))
        x, sig = inputs(t, n, d, a.device)
        side = int(round(n**0.5))
        for spec in all_methods():
            if wanted and spec.name not in wanted:
                continue
            times = []
            for _ in range(a.runs + 1):
                t0 = time.perf_counter()
                red = spec.run(x, grid=(side, side), ratio=a.ratio, signals=sig, params=spec.defaults())
                red.apply(x)
                if a.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            med = statistics.median(times[1:])  # first run is a warm-up
            print(f"[{t},{n},{d}] {spec.name:10s} median {1000 * med:9.1f} ms  K={red.num_outputs}")


if __name__ == "__main__":
    main()
