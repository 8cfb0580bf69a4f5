"""STA inside the ViT: after whole blocks, drop r tokens per temporal unit, scored by how much semantic mass the
previous unit sends them (accumulated along the units) and by their activation.  Follows Mark12Ding/STA @ faf10be
(`model_vit.py: VisionTransformer.merge`).

After the MLP of blocks 0, depth//3 and 2·depth//3 (stage j), with the block's head-mean keys m (L2-normalised) and
its output x, the tokens split into units (the authors: 8, 4, 2 units of the clip's tubelet slices), visited in
order (stage 1 backwards):
1. first unit: A = even positions, B = odd; each A token's best cosine to B; order [B in position order, A by
   ascending best cosine] and drop the last r (the A tokens most similar to B);
2. next unit: softmax over its tokens of m_cur · m_prevᵀ against every token of the first unit; accumulated mass
   acc = Σ_prev;
3. later units: the same against the previous unit's kept tokens, acc = P · acc_prev;
4. each non-first unit: s = acc · (1 − c), with c the unit's min–max normalised L1 norms of x; keep the n − r
   tokens of smallest s (in ascending s), acc ← acc[kept] renormalised;
5. units concatenated in unit order.

vtc's towers attend within each frame, so vtc's port keeps one frame per unit at every stage (forward, backward,
forward over the frames encoded together) and removes r per frame and stage; the authors' stages 2–3 group 2 and
4 tubelet slices per unit instead. CLS (CLIP) stays out of the units. `--ratio` sets r (the same at every stage)
unless given.
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


def sta_stages(depth: int) -> dict[int, int]:
    """Block → stage: blocks 0, depth//3 and 2·depth//3 (a block listed twice acts once, as the authors' elif)."""
    out: dict[int, int] = {}
    for j, blk in enumerate((0, depth // 3, 2 * depth // 3)):
        out.setdefault(blk, j)
    return out


def sta_merge(x: Tensor, metric: Tensor, units: int, r: int, backward: bool) -> tuple[Tensor, Tensor]:
    """One STA stage.  x: [B, U·n, D] block output, metric: [B, U·n, d] head-mean keys, U = `units` → (x
    [B, U·(n − r), D], kept positions [B, U·(n − r)] into the input, in output order)."""
    b, length, c = x.shape
    n = length // units
    perm = list(range(units))[::-1] if backward else list(range(units))
    xs = x.reshape(b, units, n, c)
    m = metric.reshape(b, units, n, -1)
    m = m / m.norm(dim=-1, keepdim=True)
    caam = xs.abs().sum(-1)
    lo, hi = caam.min(dim=-1, keepdim=True)[0], caam.max(dim=-1, keepdim=True)[0]
    caam = (caam - lo) / (hi - lo)
    kept: dict[int, Tensor] = {}
    u0 = perm[0]
    a, bb = m[:, u0, ::2], m[:, u0, 1::2]
    node_max = (a @ bb.transpose(-1, -2)).max(dim=-1)[0]
    edge = node_max.argsort(dim=-1, descending=False)
    pos = torch.arange(n, device=x.device).expand(b, -1)
    order = torch.cat([pos[:, 1::2], pos[:, ::2].gather(1, edge)], 1)  # B in position order, A by best match
    kept[u0] = order[:, : n - r]
    prev_m = m[:, u0].gather(1, order[..., None].expand(-1, -1, m.shape[-1]))
    acc = None
    for t in range(1, units):
        cur = m[:, perm[t]]
        p = (cur @ prev_m.transpose(-1, -2)).softmax(dim=1)
        acc = p.sum(dim=-1, keepdim=True) if t == 1 else p @ acc
        s = acc[..., 0] * (1 - caam[:, perm[t]])
        idx = s.topk(k=n - r, dim=1, largest=False)[1]
        kept[perm[t]] = idx
        acc = acc.gather(1, idx[..., None])
        acc = acc / acc.sum(dim=1, keepdim=True)
        prev_m = cur.gather(1, idx[..., None].expand(-1, -1, m.shape[-1]))
    index = torch.cat([kept[u] + u * n for u in range(units)], 1)
    return x.gather(1, index[..., None].expand(-1, -1, c)), index


class STAMerger(BlockMerger):
    """STA's stages as an after-block hook.  `units`: None = one frame per unit (vtc's towers: the frames of the
    batch are the units); or the authors' unit count per stage, splitting each batch element's sequence (a video
    ViT that attends over the whole clip)."""

    prop_attn = False

    def __init__(self, r: int, depth: int, protected: int, units: list[int] | None = None,
                 floor: int | None = None) -> None:
        super().__init__()
        self.r, self.depth, self.protected, self.units = r, depth, protected, units
        #: the fewest patches per frame r can leave (reported when the budget asked for fewer)
        self.floor = floor
        self.stages = sta_stages(depth)
        self.records: dict[int, Tensor] = {}

    def start(self, x: Tensor, grid: tuple[int, int] | None = None) -> None:
        super().start(x, grid)
        self.records = {}

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"r": self.r, "stage_blocks": sorted(self.stages), "units": self.units or "frames"}
        if self.floor is not None:
            out["budget_floor"] = self.floor
        return out

    def after_block(self, layer: int, x: Tensor, view: BlockView) -> Tensor:
        if layer not in self.stages or self.r <= 0:
            return x
        j, p = self.stages[layer], self.protected
        backward = j == 1
        tok, met = x[:, p:], view.metric[:, p:]
        if self.units is None:  # frames are the units
            t, n, c = tok.shape
            _, idx = sta_merge(tok.reshape(1, t * n, c), met.reshape(1, t * n, -1), t, self.r, backward)
            idx = idx.reshape(t, n - self.r) - torch.arange(t, device=x.device)[:, None] * n
        else:
            _, idx = sta_merge(tok, met, self.units[j], self.r, backward)
        b = x.shape[0]
        index = torch.cat([torch.arange(p, device=x.device).expand(b, -1), idx + p], 1)
        self.records[j] = index
        self.gather(index)
        return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def sta_merger(*, ratio: float, layers: int, tokens: int, protected: int, r: int | None) -> STAMerger:
    """The after-block hook the tower runs; r per frame and stage from --ratio unless given."""
    n = tokens - protected
    stages = len(sta_stages(layers))
    most = (n - 1) // stages
    floor = None
    if r is None:
        goal = max(1, round(ratio * n))
        r = min(math.ceil((n - goal) / stages), most) if n > goal else 0
        if n - stages * r > goal:  # every stage removes the same r and each frame keeps a token
            floor = n - stages * r
    elif r < 0 or r > most:
        raise UsageError(f"parameter 'r' of 'sta' must be in 0..{most} for {n} patches and {stages} stages, not {r}.")
    return STAMerger(r, layers, protected, floor=floor)


@implements("sta", in_encoder=sta_merger)
def sta(x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, r: int | None) -> Reduction:
    """Runs inside the encoder (`vtc compress`)."""
    raise UsageError("sta drops tokens inside the encoder: use it with vtc compress; on features that are already "
                     "encoded use a post-encoder method (e.g. dycoke).")
