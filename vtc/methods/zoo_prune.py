"""ZOO-Prune: zeroth-order projector sensitivity, then sensitivity-weighted diverse selection, per frame.
Follows AIM-SKKU/ZOO-Prune (`LLaVA/llava/model/llava_arch.py` @ c735dc7: `select_tokens_sads`;
`llava_arch_llava_next_7b.py` @ 2d1194b: `zoo_prune_get_sensitivity`, `select_tokens_sads_multi_frames`).

1. sensitivity s_i of the target's projector at each pre-projector token (signal `sensitivity`: m = 64 seeded
   unit directions, h = 0.01, pooled to the token grid like the tokens);
2. w = (s − min) / (max − min + 1e-8);
3. greedy on the post-projector tokens: first the most sensitive token, then the token maximising its cosine
   distance to the picked set times w; k = int(ratio·N) per frame (`k_per_frame` overrides), kept in raster order.

Needs --target llava-onevision / llava-video: an open_clip tower has no nonlinear projector (under a linear one
every token is equally sensitive and the method reduces to plain diversity), so vtc refuses it there.
Deviations, kept by `reference`: the authors' directions come from the global, unseeded RNG (vtc seeds them: 0,
recorded in the file); k = int(ratio·N) may be 0 (the authors then keep no visual token; vtc keeps at least one);
the NeXT path has no guard for equal sensitivities (`guard=false`); the NeXT low-rank projector is an SVD of the
untrained weights (vtc uses the checkpoint's projector).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.methods.declare import implements
from vtc.ops.sensitivity import sensitivity_weights, weighted_diverse_order
from vtc.ops.topk import trunc
from vtc.reduction import Reduction
from vtc.signals import Signals


@implements("zoo_prune")
def zoo_prune(
    x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, k_per_frame: int | None,
    guard: bool, at_least_one: bool,
) -> Reduction:
    """ZOO-Prune.  x: [T, N, D] post-projector tokens; signals.sensitivity [T, N].  Kept tokens in raster order."""
    t, n, _ = x.shape
    s = signals.require("sensitivity", "zoo_prune").float()
    k = k_per_frame if k_per_frame is not None else trunc(ratio * n)
    if at_least_one:
        k = max(1, k)
    keep, orders = [], []
    for f in range(t):
        order = weighted_diverse_order(x[f], sensitivity_weights(s[f], guard), k)
        orders.append(order)
        keep.append(order.sort().values + f * n)
    red = Reduction.select(torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long), t * n)
    red.info.update(per_frame=min(k, n))
    return red
