"""G-Prune: importance propagated over a token-similarity graph; the top tokens of each frame are kept.
Follows jytmelon/G-Prune @ 762c637 (`llava_arch.py`, lines 239-290), one graph per frame.

Per frame, over its tokens X [N, D]:
1. cosine graph A = X̂ X̂ᵀ, edges below `similarity` removed, divided by `temperature`;
2. removed edges (|A| < 1e-6) masked to -5000, row softmax (masked entries become exactly 0);
3. degree_i = #{j : A_ij > 0} (self included);
4. P = A^iterate_num; score_j = Σ_i ‖x_i‖ · P_ij / degree_j;
5. keep the int(ratio · N) best scores (truncated, as the authors' `int(keep_ratio * N)`), in raster order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vtc.methods.declare import implements
from vtc.ops import topk_indices
from vtc.ops.topk import trunc
from vtc.reduction import Reduction
from vtc.signals import Signals


def gprune_scores(x: Tensor, similarity: float, temperature: float, iterate_num: int) -> tuple[Tensor, Tensor]:
    """Propagated importance of one frame's tokens.  x: [N, D] → (score [N] float32, degree [N] int64)."""
    x = x.float()
    xn = F.normalize(x, dim=-1)
    a = xn @ xn.T
    a = torch.where(a < similarity, torch.zeros_like(a), a) / temperature
    a = torch.where(a.abs() < 1e-6, torch.full_like(a, -5000.0), a)
    a = torch.softmax(a, dim=1)
    degree = (a > 0).sum(1)
    p = torch.linalg.matrix_power(a, iterate_num)
    score = (x.norm(dim=-1)[None] @ p)[0] / degree
    return score, degree


@implements("gprune")
def gprune(
    x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, similarity: float,
    temperature: float, iterate_num: int,
) -> Reduction:
    """G-Prune, one graph per frame.  x: [T, N, D]; keeps max(1, int(ratio·N)) tokens per frame in raster order
    (the authors keep int(keep_ratio·N), which can be 0; vtc keeps at least one token per frame)."""
    t, n, _ = x.shape
    k = max(1, trunc(ratio * n))
    scores = torch.stack([gprune_scores(x[f], similarity, temperature, iterate_num)[0] for f in range(t)])
    keep = topk_indices(scores, k)  # [T, k], ascending
    offs = (keep + (torch.arange(t) * n)[:, None]).reshape(-1)
    red = Reduction.select(offs, t * n)
    red.info.update(per_frame=k)
    return red
