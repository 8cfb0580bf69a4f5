"""SAINT inside the ViT: drop tokens that are redundant by key similarity, between attention and MLP.
Follows ArmenJeddi/saint @ baaff95, two variants of the authors' code:

`mode="iterative"` (the LLaVA variant, `VLM/saint/prune.py: iterative_drop_full_graph`), in one block:
1. cosine graph of the head-mean keys of the patches (CLS left out), self-similarity included;
2. while more than `keep` patches remain: each candidate's score is its row sum over the remaining candidates;
   drop the min(n − keep, n // r) highest-scoring (most redundant) ones, where r is overwritten by each drop count
   (the authors' re-assignment: drops alternate, 576 → 375: 36, 15, 35, 14, …);
3. output [CLS, kept patches in position order]: every frame keeps exactly `keep` patches.

`mode="drop"` (the ViT variant, `ViT/saint/prune.py: saint_drop`), in each of the first blocks:
1. split the patches (protected tokens left out) by parity into A (even) and B (odd); cosines A·Bᵀ of the keys;
2. valid pairs: cosine ≥ sim_threshold; r = int(batch mean of #{a : ≥ K valid partners}) (one r per batch);
3. score each A token count·exp(gamma·(mean valid cosine − threshold)), or its mean cosine when it has no valid
   partner; drop the r best-scoring A tokens;
4. output [protected, surviving A in descending score, every B in position order].
The thresholds decide the count in this mode (--ratio does not apply).

`--ratio` sets `keep` (iterative). The block defaults to three before the read-out (LLaVA: 19 of 24, read-out 22).
Where the authors' loop would divide by zero (fewer than r patches at the first iteration), vtc drops one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from vtc.errors import UsageError
from vtc.methods.declare import implements
from vtc.reduction import Reduction
from vtc.signals import Signals
from vtc.stages.in_encoder import BlockMerger, BlockView


def iterative_drop(keys: Tensor, keep: int, r: int) -> tuple[Tensor, list[int]]:
    """One frame's kept patches.  keys: [N, d] head-mean keys of the patches → (kept positions [keep] ascending,
    the drop count of each iteration)."""
    k = F.normalize(keys.float(), p=2, dim=-1)
    sim = k @ k.transpose(0, 1)
    cand = torch.arange(keys.shape[0], device=keys.device)
    drops: list[int] = []
    while cand.shape[0] > keep:
        n = cand.shape[0]
        scores = sim[cand][:, cand].sum(dim=-1)
        r = min(n - keep, max(1, n // r))
        mask = torch.ones(n, dtype=torch.bool, device=keys.device)
        mask[scores.argsort(descending=True)[:r]] = False
        cand = cand[mask]
        drops.append(r)
    return cand, drops


def saint_drop(metric: Tensor, threshold: float, k_min: int, gamma: float) -> tuple[int, Tensor]:
    """The ViT rule on the patches' head-mean keys metric [B, N, d] → (r, surviving A positions [B, |A| − r] in
    descending score order).  Cosines are normalise-then-matmul in float32, as the authors'."""
    m = metric.float()
    m = m / m.norm(dim=-1, keepdim=True)
    a, b = m[..., ::2, :], m[..., 1::2, :]
    scores = a @ b.transpose(-1, -2)
    valid = scores >= threshold
    counts = valid.sum(dim=-1)
    r = int((counts >= k_min).float().sum(dim=-1).mean().item())
    if r <= 0:
        return 0, torch.empty(0)
    mean_valid = (scores * valid).sum(dim=-1) / counts.clamp(min=1)
    candidate = counts * torch.exp(gamma * (mean_valid - threshold))
    alternative = scores.sum(dim=-1) / scores.size(-1)
    final = torch.where(counts > 0, candidate, alternative)
    return r, final.argsort(dim=-1, descending=True)[..., r:]


class SaintMerger(BlockMerger):
    """SAINT's rules as a block hook (see the module docstring).  `thresholds[l]`: drop mode's threshold in block
    l (None: no drop there); `block`: the iterative block; `keep`: patches kept there."""

    prop_attn = False

    def __init__(self, mode: str, protected: int, *, thresholds: list[float | None] | None = None, k_min: int = 5,
                 gamma: float = 10.0, block: int = 0, keep: int = 1, r: int = 16) -> None:
        super().__init__()
        self.mode, self.protected = mode, protected
        self.thresholds = thresholds or []
        self.k_min, self.gamma = k_min, gamma
        self.block, self.keep, self.r = block, keep, r
        self.records: dict[int, object] = {}

    def start(self, x: Tensor, grid: tuple[int, int] | None = None) -> None:
        super().start(x, grid)
        self.records = {}

    def describe(self) -> dict[str, object]:
        if self.mode == "iterative":
            return {"mode": self.mode, "block": self.block, "keep": self.keep, "r": self.r}
        return {"mode": self.mode, "thresholds": list(self.thresholds), "K": self.k_min, "gamma": self.gamma}

    def step(self, layer: int, x: Tensor, view: BlockView) -> Tensor:
        p = self.protected
        if self.mode == "iterative":
            if layer != self.block or x.shape[1] - p <= self.keep:
                return x
            keys = view.metric[:, p:]
            kept = []
            for f in range(x.shape[0]):
                cand, drops = iterative_drop(keys[f], self.keep, self.r)
                kept.append(cand)
                self.records.setdefault(layer, []).append(drops)  # type: ignore[union-attr]
            index = torch.cat([torch.arange(p, device=x.device).expand(x.shape[0], -1), torch.stack(kept) + p], 1)
        else:
            thr = self.thresholds[layer] if layer < len(self.thresholds) else None
            if thr is None or x.shape[1] - p < 2:
                return x
            r, unm = saint_drop(view.metric[:, p:], thr, self.k_min, self.gamma)
            self.records[layer] = (r, unm)
            if r <= 0:
                return x
            b = x.shape[0]
            odd = torch.arange(1, x.shape[1] - p, 2, device=x.device).expand(b, -1)
            index = torch.cat([torch.arange(p, device=x.device).expand(b, -1), 2 * unm + p, odd + p], 1)
        self.gather(index)
        return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def saint_merger(*, ratio: float, layers: int, tokens: int, protected: int, mode: str,
                 sim_threshold: float | list[float], K: int, gamma: float, r: int,
                 block: int | None) -> SaintMerger:
    """The block hook the tower runs: `layers` blocks up to the read-out, `tokens` incl. `protected` (CLS)."""
    n = tokens - protected
    if mode == "iterative":
        at = block if block is not None else max(0, layers - 4)
        if not 0 <= at < layers:
            raise UsageError(f"parameter 'block' of 'saint' must be in 0..{layers - 1} (blocks up to the read-out), "
                             f"not {at}.")
        return SaintMerger(mode, protected, block=at, keep=max(1, round(ratio * n)), r=r)
    if isinstance(sim_threshold, list):
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in sim_threshold):
            raise UsageError(f"parameter 'sim_threshold' of 'saint' takes numbers, not {sim_threshold!r}.")
        thresholds: list[float | None] = [float(v) for v in sim_threshold]
    elif isinstance(sim_threshold, (int, float)) and not isinstance(sim_threshold, bool):
        thresholds = [float(sim_threshold)] * (layers // 2)
    else:
        raise UsageError(f"parameter 'sim_threshold' of 'saint' takes a number or a list, not {sim_threshold!r}.")
    return SaintMerger(mode, protected, thresholds=thresholds, k_min=K, gamma=gamma)


@implements("saint", in_encoder=saint_merger)
def saint(
    x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, mode: str,
    sim_threshold: float | list[float], K: int, gamma: float, r: int,
    block: int | None,
) -> Reduction:
    """Runs inside the encoder (`vtc compress`)."""
    raise UsageError("saint drops tokens inside the encoder: use it with vtc compress; on features that are "
                     "already encoded use a post-encoder method (e.g. divprune).")
