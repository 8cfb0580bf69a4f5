"""FlowCut inside the ViT: prune patches by their share of the information flow (CLS attention and value
similarity, weighted by value magnitude), accumulated over blocks, with an entropy-adaptive count.  Follows
TungChintao/FlowCut @ a2ecd24 (`flowcut/modeling_clip_flowcut.py`, `utils_flowcut.py`; CLS-less:
`FlowCut_Qwen/modeling_qwen2_vl_flowcut.py`).

In every block while more than the target remain (after the attention residual; the MLP is token-wise):
1. score each patch: (CLS attention / its sum + value-similarity attention / its sum) · ‖head-mean value‖₁, where
   the value similarity is the softmax over tokens of v_CLS · v_j per head (no scale), averaged over heads;
2. accumulate: cum ← score at the first block, then cum ← ½·cum + ½·score;
3. when the remaining-layer count rpl (blocks left before the read-out block) is even: prune
   n = (N − target) / √rpl · (1 − (H / log N)²) patches (H = entropy of the CLS attention; rpl 0: straight to the
   target), keeping the highest cum in position order; cum follows the kept patches.

CLS-less towers (SigLIP) use the authors' Qwen2-VL rule: the attention of the mean query, averaged over heads,
times the value norm (no similarity term); the count's entropy is unnormalised, and the remaining layers count to
the last block run.

The authors count over the frames of a call and take the largest count (`count="batch"`, the `reference`
variant): frames encoded together are pruned alike. vtc counts per frame by default (each frame alone, as the
authors' code does for one image): counts then differ between frames inside the encoder, and each frame still ends
with the target; the frames then run through the blocks one at a time, which costs speed (the batch count keeps
the batch). By default the blocks keep the fused attention kernel and the CLS row is computed on the side
(the same decisions; float32 rounding differs slightly); the `reference` variant also computes the whole softmax
map, as the authors' eager CLIP attention. `--ratio` sets the target.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vtc.errors import UsageError
from vtc.methods.declare import implements
from vtc.reduction import Reduction
from vtc.signals import Signals
from vtc.stages.in_encoder import BlockMerger, BlockView


def flow_score(cls_attn: Tensor, semantic_attn: Tensor, value: Tensor) -> Tensor:
    """cls_attn, semantic_attn: [B, N] (patch columns); value: [B, N, hd] head-mean values → [B, N]."""
    relation = cls_attn / cls_attn.sum(dim=-1, keepdim=True)
    semantic = semantic_attn / semantic_attn.sum(dim=-1, keepdim=True)
    return (relation + semantic) * torch.norm(value, p=1, dim=-1)


def prune_count(attn: Tensor, rpl: int, target: int, *, normalise: bool, batch_max: bool) -> tuple[int, Tensor]:
    """The entropy-adaptive count.  attn: [B, N] → (count, unrounded count per frame [B]).  `normalise`: the CLIP
    rule (renormalise, plain log); otherwise the Qwen rule (log(a + 1e-7)).  `batch_max`: the largest count of the
    frames (the authors' CLIP code); otherwise a single frame's."""
    n = attn.shape[-1]
    if normalise:
        prob = attn / attn.sum(dim=-1, keepdim=True)
        entropy = -torch.sum(torch.where(prob > 0, prob * torch.log(prob), 0.0), dim=-1)  # 0·log 0 = 0
    else:
        entropy = -torch.sum(attn * torch.log(attn + 1e-7), dim=-1)
    ratio = entropy / torch.log(torch.tensor(n, device=attn.device))
    r = (n - target) / rpl**0.5 * (1 - ratio**2)
    per_frame = r
    if batch_max and r.shape[0] > 1:
        r = r.max(0).values
    return int(r.round()) if r.dim() == 0 else int(r[0].round()), per_frame


class FlowCutMerger(BlockMerger):
    """FlowCut as a block hook: `target` patches kept after the pruning blocks, `depth` blocks run (the last is the
    read-out), `count` "frame" (each frame alone) or "batch" (the largest count of the frames)."""

    prop_attn = False

    def __init__(self, target: int, depth: int, class_token: bool, count: str = "frame",
                 attention: str = "fused", patches: int | None = None) -> None:
        super().__init__()
        self.patches = patches
        self.target, self.depth, self.class_token, self.count = target, depth, class_token, count
        self.per_frame = count == "frame"
        #: "explicit": the whole softmax map, as the authors' eager attention (bit-closer, slower)
        self.wants_probs = attention == "explicit" and class_token
        self.cum: Tensor | None = None
        #: this call's runs (one per frame with count="frame"): block → what it computed
        self.runs: list[dict[int, dict[str, object]]] = []

    def begin(self, batch: int) -> None:
        self.runs = []

    def start(self, x: Tensor, grid: tuple[int, int] | None = None) -> None:
        super().start(x, grid)
        self.cum = None
        self.runs.append({})

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"target": self.target, "count": self.count, "read_out_block": self.depth - 1}
        if self.class_token and self.depth < 2 and self.patches:  # no block before the read-out: nothing pruned
            out["budget_floor"] = self.patches
        return out

    def step(self, layer: int, x: Tensor, view: BlockView) -> Tensor:
        p = int(self.class_token)
        if x.shape[1] - p <= self.target:
            return x
        if self.class_token:
            v = view.v.float()
            row = view.probs[:, :, 0] if view.probs is not None else view.row_probs(0)
            cls_attn = row.float()[..., 1:].mean(dim=1)
            semantic = (v[:, :, :1] @ v.transpose(-1, -2)).softmax(dim=-1).mean(1)[:, 0]
            score = flow_score(cls_attn, semantic[:, 1:], v.mean(1)[:, 1:])
            rpl = self.depth - 2 - layer
        else:
            q, k, v = view.q.float(), view.k.float(), view.v.float()
            logits = q.mean(2, keepdim=True) @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            cls_attn = torch.softmax(logits, dim=-1, dtype=torch.float32).mean(1)[:, 0]
            score = cls_attn * torch.norm(v.mean(1), p=1, dim=-1)
            rpl = self.depth - 1 - layer
        self.cum = score if self.cum is None else 0.5 * self.cum + 0.5 * score
        rec: dict[str, object] = {"score": score, "cum_pre": self.cum}
        self.runs[-1][layer] = rec
        if rpl % 2 or rpl < 0:
            return x
        length = x.shape[1]
        if rpl:
            n, raw = prune_count(cls_attn, rpl, self.target, normalise=self.class_token,
                                 batch_max=self.count == "batch")
            rec.update(prune_num=n, raw=raw)
        else:
            n = length
        keep = torch.topk(self.cum, max(length - n, self.target + p) - p, dim=1)[1].sort(dim=1).values
        rec["keep_local"] = keep
        self.cum = self.cum.gather(1, keep)
        index = torch.cat([torch.zeros_like(keep[:, :p]), keep + p], 1)
        self.gather(index)
        return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def flowcut_merger(*, ratio: float, layers: int, tokens: int, protected: int, count: str,
                   attention: str) -> FlowCutMerger:
    """The block hook the tower runs: `layers` blocks up to the read-out, `tokens` incl. `protected` (CLS)."""
    if count not in ("frame", "batch"):
        raise UsageError(f"parameter 'count' of 'flowcut' must be frame or batch, not {count!r}.")
    n = tokens - protected
    return FlowCutMerger(max(1, min(n, round(ratio * n))), layers, protected > 0, count, attention, n)


@implements("flowcut", in_encoder=flowcut_merger)
def flowcut(x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, count: str,
            attention: str) -> Reduction:
    """Runs inside the encoder (`vtc compress`)."""
    raise UsageError("flowcut prunes tokens inside the encoder: use it with vtc compress; on features that are "
                     "already encoded use a post-encoder method (e.g. fastervlm).")
