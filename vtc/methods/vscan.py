"""VScan, stage 1 (the visual side): local picks by shallow-layer attention inside windows, global picks by the
read-out layer's attention, every other token merged into its most similar kept token.  Follows Tencent/
SelfEvolvingAgent `VScan/` @ a82450e (LLaVA: `llava/model/llava_arch.py` `window_cls_selection`, `token_merging`;
Qwen2.5-VL: `qwen/model/qwen2_5_vl_utils.py` `window_selection`, `token_merging`). Stage 2 acts inside the LLM.

Per frame, with k tokens kept (int(ratio·N), or `k_per_frame`):
1. local: int(k/2) tokens by `shallow_attn` (CLIP: head-mean CLS attention of block L/4, 1-based — 6 of
   CLIP-L's 24; SigLIP: attention received there, the authors' own rule for their CLS-less Qwen variant), spread
   over windows of `window_size` tokens: tokens in descending score, each taken while its window holds fewer than
   ⌈local / windows⌉ (border rows and columns belong to the last window row / column);
2. global: the k − int(k/2) best by `readout_attn` (the read-out block's) among the others;
3. kept tokens in raster order; each dropped token joins its most cosine-similar kept token anywhere in the frame;
   a kept token becomes the plain mean of itself and the tokens that joined it.

The authors' LLaVA code, kept by `reference` (`local_rule=windows`): 16 windows of 6×6 on a 24×24 grid only (it
asserts N = 576) and ⌊local/16⌋ picks per window, never made up (100 tokens keep 98); their Qwen code
(`local_rule=greedy`, `window_size=4`, variant `qwen`) is vtc's rule, except that a side shorter than the window
divides by zero there (vtc uses one window along that side).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vtc.errors import UsageError
from vtc.methods.declare import implements
from vtc.ops.merge import mean_groups
from vtc.ops.similarity import l2_normalize
from vtc.ops.topk import trunc
from vtc.reduction import Reduction
from vtc.signals import Signals


def window_topk(score: Tensor, local: int, grid: tuple[int, int], window: int = 6) -> Tensor:
    """The authors' LLaVA rule: ⌊local / windows⌋ top tokens in each window of a grid that windows tile exactly
    (16 windows of 6×6 on 24×24), windows row-major, top-k order inside.  score: [N] → raster indices [16·k]."""
    h, w = grid
    if h % window or w % window:
        raise UsageError(f"vscan (reference): the authors' LLaVA rule tiles the grid with {window}×{window} windows "
                         f"(it asserts 24×24); a {h}×{w} grid does not fit; use the default variant.")
    nh, nw = h // window, w // window
    k = local // (nh * nw)
    out = []
    pic = score.reshape(h, w)
    for i in range(nh):
        for j in range(nw):
            cell = pic[i * window : (i + 1) * window, j * window : (j + 1) * window].reshape(-1)
            top = torch.topk(cell, k).indices
            out.append((i * window + top // window) * w + j * window + top % window)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def window_greedy(score: Tensor, local: int, grid: tuple[int, int], window: int = 4) -> Tensor:
    """The authors' Qwen rule (`window_selection`): tokens in descending score, each taken while its window holds
    fewer than ⌈local / (n_h·n_w)⌉, until `local`.  Windows: n_h = ⌊h/window⌋ rows of them (at least 1), the rows
    beyond n_h·window fold into the last; the same for columns.  score: [N] → raster indices [local], greedy order."""
    h, w = grid
    nh, nw = max(1, h // window), max(1, w // window)
    limit = math.ceil(local / (nh * nw)) if local else 0
    rows = torch.clamp(torch.arange(h) // window, max=nh - 1)
    cols = torch.clamp(torch.arange(w) // window, max=nw - 1)
    win = (rows[:, None] * nw + cols[None, :]).reshape(-1).tolist()
    held = [0] * (nh * nw)
    picks: list[int] = []
    for i in torch.argsort(score, descending=True, stable=True).tolist():
        if len(picks) >= local:
            break
        if held[win[i]] < limit:
            held[win[i]] += 1
            picks.append(i)
    return torch.tensor(picks, dtype=torch.long)


def vscan_frame(x: Tensor, shallow: Tensor, deep: Tensor, k: int, grid: tuple[int, int], *, local_rule: str,
                window_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One frame.  x: [N, D] (the space merging runs in), shallow/deep: [N] → (local picks, global picks [top-k
    order], kept [raster], assign [N]: the kept slot every token ends in)."""
    local_n = trunc(k * 0.5)
    if local_rule == "windows":
        local = window_topk(shallow, local_n, grid, window_size)
    else:
        local = window_greedy(shallow, local_n, grid, window_size)
    d = deep.clone()
    d[local] = 0  # the authors zero the local picks (attention is positive: they rank last)
    glob = torch.topk(d, max(0, min(k - local_n, d.numel() - local.numel()))).indices
    keep = torch.zeros(x.shape[0], dtype=torch.bool)
    keep[local] = True
    keep[glob] = True
    kept = torch.nonzero(keep).flatten()
    assign = torch.empty(x.shape[0], dtype=torch.long)
    assign[kept] = torch.arange(kept.numel())
    drop = torch.nonzero(~keep).flatten()
    if drop.numel() and kept.numel():
        xn = l2_normalize(x.float(), eps=1e-8)
        assign[drop] = (xn[drop] @ xn[kept].T).argmax(-1)
    return local, glob, kept, assign


@implements("vscan")
def vscan(
    x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, k_per_frame: int | None,
    local_rule: str, window_size: int, merge: bool,
) -> Reduction:
    """VScan stage 1.  x: [T, N, D]; signals shallow_attn, readout_attn [T, N].  Kept tokens in raster order."""
    t, n, _ = x.shape
    k = min(n, k_per_frame if k_per_frame is not None else max(1, trunc(ratio * n)))
    shallow = signals.require("shallow_attn", "vscan").float()
    deep = signals.require("readout_attn", "vscan").float()
    dst, src, wts, reps, off = [], [], [], [], 0
    for f in range(t):
        _, _, kept, assign = vscan_frame(x[f], shallow[f], deep[f], k, grid, local_rule=local_rule,
                                         window_size=window_size)
        if not merge:
            assign = torch.where(torch.isin(torch.arange(n), kept), assign, -1)
        w, _ = mean_groups(assign, kept.numel())
        members = torch.nonzero(assign >= 0).flatten()
        dst.append(assign[members] + off)
        src.append(members + f * n)
        wts.append(w[members])
        reps.append(kept + f * n)
        off += kept.numel()
    red = Reduction.build(torch.cat(dst), torch.cat(src), torch.cat(wts), torch.cat(reps), t * n)
    red.info.update(per_frame=k)
    return red
