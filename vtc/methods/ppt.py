"""PPT inside the ViT: per image and block, prune or pool (merge) r tokens, whichever the attention's spread
calls for.  Follows xjwu1024/PPT @ 706bcdd (`ppt_deit.py: pp_block_adaptive`, significance from ATS).

In each pp block, after the attention residual:
1. significance of each patch: CLS attention (summed over heads, with the size bias) × the L2 norm of its value
   vector (all heads), normalised over the patches; CLS scores 2 (always first);
2. S_op = variance of the patch significances (unbiased);
3. images with S_op < threshold (flat attention: little to tell tokens apart) pool: ToMe's bipartite matching on
   the head-mean keys, size-weighted means; the others prune: keep the L − r highest scores, in descending score
   order (the output order);
4. the block's r is the next entry of the schedule, clamped to (L − 1) // 2; sizes feed proportional attention.

`--ratio` sets r (the same at each pp block) unless given; the pp blocks default to a quarter, half and three
quarters of the blocks up to the read-out (DeiT-S: 3, 6, 9). The authors' code has no CLS-less path: on SigLIP vtc
scores with the attention each token receives (mean over queries, then heads) and protects no token (ToMe's
CLS-less matching); that is vtc's choice.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.errors import UsageError
from vtc.methods.declare import implements
from vtc.reduction import Reduction
from vtc.signals import Signals
from vtc.stages.in_encoder import BlockMerger, BlockView, bipartite_soft_matching, merge_wavg


def significance(attn: Tensor, v: Tensor, class_token: bool) -> Tensor:
    """ATS's significance.  attn: [B, H, L] the CLS row of the probabilities (with the size bias), or [B, L] the
    attention received (CLS-less); v: [B, H, L, hd] → [B, L]: 2.0 for CLS, then the patches' CLS attention × value
    norm, normalised to sum 1 (CLS-less: attention received × value norm, over every token)."""
    b, h, n, hd = v.shape
    v_norm = torch.linalg.norm(v.transpose(1, 2).reshape(b, n, h * hd), ord=2, dim=2)
    if not class_token:
        sig = attn * v_norm
        return sig / sig.sum(dim=1, keepdim=True)
    sig = (attn.sum(dim=1) * v_norm)[:, 1:]
    sig = sig / sig.sum(dim=1, keepdim=True)
    return torch.cat([torch.full_like(sig[:, :1], 2.0), sig], 1)


class PPTMerger(BlockMerger):
    """PPT's pp blocks as a block hook.  `blocks`: the pp blocks; `schedule[j]`: r of the j-th pp block."""

    def __init__(self, blocks: list[int], schedule: list[int], threshold: float, class_token: bool,
                 prop_attn: bool = True, floor: int | None = None) -> None:
        super().__init__()
        self.wants_probs = not class_token  # CLS-less: attention received needs the whole map
        self.blocks, self.schedule, self.threshold = list(blocks), list(schedule), threshold
        self.class_token, self.prop_attn, self.floor = class_token, prop_attn, floor
        self.records: dict[int, dict[str, Tensor]] = {}

    def start(self, x: Tensor, grid: tuple[int, int] | None = None) -> None:
        super().start(x, grid)
        self.records = {}

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"pp_blocks": self.blocks, "r": self.schedule, "threshold": self.threshold,
                                  "prop_attn": self.prop_attn}
        if self.floor is not None:
            out["budget_floor"] = self.floor
        return out

    def step(self, layer: int, x: Tensor, view: BlockView) -> Tensor:
        if layer not in self.blocks:
            return x
        j = self.blocks.index(layer)
        p = int(self.class_token)
        r = min(self.schedule[j] if j < len(self.schedule) else 0, (x.shape[1] - p) // 2)
        size = self.size if self.prop_attn and self.size is not None else torch.ones_like(x[..., :1])
        assert self.source is not None
        if self.class_token:
            attn = view.row_probs(0, self.key_bias())
        else:
            assert view.probs is not None
            attn = view.probs.mean(2).mean(1)
        scores = significance(attn, view.v, self.class_token)
        s_op = scores[:, p:].var(dim=-1) if x.shape[1] - p > 1 else scores.new_zeros(x.shape[0])
        pool = s_op < self.threshold
        rec: dict[str, Tensor] = {"scores": scores, "S_op": s_op, "pooling": pool, "r": torch.tensor(r)}
        self.records[layer] = rec
        if r <= 0:
            return x
        out_x = x.new_zeros(x.shape[0], x.shape[1] - r, x.shape[2])
        out_size = size.new_zeros(x.shape[0], x.shape[1] - r, 1)
        out_src = self.source.new_zeros(x.shape[0], x.shape[1] - r, self.source.shape[-1])
        if pool.any():
            m = bipartite_soft_matching(view.metric[pool], r, self.class_token)
            assert m is not None
            rec.update(pool_unm_idx=m.unm, pool_src_idx=m.src, pool_dst_idx=m.dst)
            out_x[pool], out_size[pool] = merge_wavg(m, x[pool], size[pool])
            out_src[pool] = m.merge(self.source[pool], "amax")
        if (~pool).any():
            keep = scores[~pool].argsort(dim=-1, descending=True)[:, : x.shape[1] - r]
            rec["prune_keep"] = keep
            out_x[~pool] = x[~pool].gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
            out_size[~pool] = size[~pool].gather(1, keep[..., None])
            out_src[~pool] = self.source[~pool].gather(1, keep[..., None].expand(-1, -1, out_src.shape[-1]))
        self.size, self.source = out_size, out_src
        return out_x


def ppt_merger(*, ratio: float, layers: int, tokens: int, protected: int, r: int | list[int] | None,
               pp_loc: list[int] | None, threshold: float, prop_attn: bool) -> PPTMerger:
    """The block hook the tower runs: `layers` blocks up to the read-out, `tokens` incl. `protected` (CLS)."""
    blocks = sorted(set(pp_loc)) if pp_loc is not None else sorted({layers // 4, layers // 2, 3 * layers // 4})
    if any(isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < layers for b in blocks):
        raise UsageError(f"parameter 'pp_loc' of 'ppt' takes block indices in 0..{layers - 1}, not {pp_loc!r}.")
    n = tokens - protected
    floor = None
    if r is None:
        goal = max(1, round(ratio * n))
        r = -(-(n - goal) // len(blocks)) if n > goal else 0
        left = n
        for _ in blocks:
            left -= min(r, left // 2)
        floor = left if left > goal else None
    if isinstance(r, int) and not isinstance(r, bool) and r >= 0:
        sched = [r] * len(blocks)
    elif isinstance(r, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in r):
        sched = list(r) + [0] * max(0, len(blocks) - len(r))
    else:
        raise UsageError(f"parameter 'r' of 'ppt' takes a whole number ≥ 0 or a list of them, not {r!r}.")
    return PPTMerger(blocks, sched, threshold, protected > 0, prop_attn, floor)


@implements("ppt", in_encoder=ppt_merger)
def ppt(
    x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, r: int | list[int] | None,
    pp_loc: list[int] | None, threshold: float, prop_attn: bool,
) -> Reduction:
    """Runs inside the encoder (`vtc compress`)."""
    raise UsageError("ppt prunes and pools tokens inside the encoder: use it with vtc compress; on features that "
                     "are already encoded use --method tome.")
