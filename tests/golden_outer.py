"""Golden checks of the wave-3 outer methods (vscan, free_video_llm, grt, zoo_prune, recoverable, aim): each case's
stored inputs through vtc's functions, compared with what the authors' code produced (see
../shared/golden/README.md for the tensors and tolerances). `test_golden.py` runs them for every case it finds."""

from __future__ import annotations

import json

import torch

from vtc.methods import get_method
from vtc.signals import Signals


def _dense_map(t: dict[str, torch.Tensor], rows: int, sources: int) -> torch.Tensor:
    w = torch.zeros(rows, sources, dtype=torch.float64)
    w[t["merge_dst"].long(), t["merge_src"].long()] = t["merge_w"].double()
    return w


def check_aim(meta: dict, t: dict[str, torch.Tensor]) -> None:
    """Round counts, merge weights over the pooled tokens, tokens, and the exact map from the input (through the
    registry's `reference` variant)."""
    from vtc.methods.aim import aim_merge

    p = json.loads(meta["params"])
    x = t["features"]
    grid = tuple(p["grid"])
    pool = p["mm_spatial_pool_mode"] or "none"  # Qwen2-VL: no 2-D pool, the 2×2 merge happened in the tower
    values, weights, _, _, counts = aim_merge(x, grid, pool, p["variant"], None, False)
    assert counts == t["round_counts"].tolist(), "round counts"
    assert torch.allclose(weights, t["merge_weights"].double(), atol=1e-6, rtol=0), "merge weights"
    assert torch.allclose(values, t["tokens_per_frame"], atol=1e-5, rtol=0), "tokens per frame"
    spec = get_method("aim")
    red = spec.run(x, grid=grid, ratio=None, signals=Signals(),
                   params=spec.resolve({"mm_spatial_pool_mode": pool, "variant": p["variant"]}, "reference"))
    assert torch.allclose(red.apply(x), t["tokens"], atol=1e-5, rtol=0), "tokens"
    if "merge_src" in t:
        assert torch.allclose(red.dense(), _dense_map(t, red.num_outputs, x.shape[0] * x.shape[1]), atol=1e-6)


OUTER_CHECKS = {"aim": check_aim}
