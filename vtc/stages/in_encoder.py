"""Merging tokens between an encoder's blocks: the rule a method hands to the tower adapters.

A tower adapter (vtc.io.towers) runs its blocks itself when a `BlockMerger` is given: after each block's attention
residual it calls `merger.step(layer, x, metric, attn)`, which may merge tokens, and it adds `log(size)` to the
attention logits of the next blocks when `merger.prop_attn` (proportional attention). The merger keeps, per token,
its `size` and its `source` (which initial tokens it stands for), so provenance stays exact.

ToMe's pieces (bipartite soft matching, size-weighted merge, source tracing, the r schedule) live here as pure
tensor functions; `vtc.methods.tome_vit` declares the method.

Shapes: B images (frames), L current tokens (CLS first when protected), N0 initial tokens, D channels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from vtc.reduction import Reduction


def parse_r(num_layers: int, r: int | list[int] | tuple[int, float]) -> list[int]:
    """ToMe's schedule: an int (every layer), a list (padded with zeros), or (r, inflect): layer i gets
    int(min + (max − min)·i/(L − 1)) with min = int(r·(1 − inflect)), max = 2r − min.  One layer: [r] (the
    authors' code divides by zero there)."""
    if isinstance(r, list):
        return list(r) + [0] * max(0, num_layers - len(r))
    inflect = 0.0
    if isinstance(r, tuple):
        r, inflect = r
    lo = int(r * (1.0 - inflect))
    hi = 2 * r - lo
    if num_layers == 1:
        return [int(r)]
    step = (hi - lo) / (num_layers - 1)
    return [int(lo + step * i) for i in range(num_layers)]


@dataclass
class Matching:
    """One bipartite soft matching: set A = even positions, B = odd; `src` A tokens (indices into A) merge into
    `dst` B tokens; `unm` A tokens stay.  Output order: unm rows, then every B row (distill: unm[0], B[0], ...)."""

    unm: Tensor  # [B, U]
    src: Tensor  # [B, r]
    dst: Tensor  # [B, r]
    distill_token: bool = False

    def merge(self, x: Tensor, mode: str = "mean") -> Tensor:
        """x [B, L, C] → [B, L − r, C] (mode: sum, mean or amax of each B token and its sources)."""
        a, b = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = a.shape
        unm = a.gather(-2, self.unm[..., None].expand(n, self.unm.shape[1], c))
        src = a.gather(-2, self.src[..., None].expand(n, self.src.shape[1], c))
        b = b.scatter_reduce(-2, self.dst[..., None].expand(n, self.dst.shape[1], c), src, reduce=mode)
        if self.distill_token:
            return torch.cat([unm[:, :1], b[:, :1], unm[:, 1:], b[:, 1:]], dim=1)
        return torch.cat([unm, b], dim=1)


def bipartite_soft_matching(metric: Tensor, r: int, class_token: bool = False, distill_token: bool = False
                            ) -> Matching | None:
    """ToMe's matching.  metric: [B, L, d] (head-mean keys).  r is clamped to (L − protected) // 2; None when it
    is 0 (nothing merges)."""
    protected = int(class_token) + int(distill_token)
    r = min(r, (metric.shape[1] - protected) // 2)
    if r <= 0:
        return None
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[..., ::2, :], metric[..., 1::2, :]
    scores = a @ b.transpose(-1, -2)
    if class_token:
        scores[..., 0, :] = -float("inf")
    if distill_token:
        scores[..., :, 0] = -float("inf")
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx = edge_idx[..., r:, :]
    src_idx = edge_idx[..., :r, :]
    dst_idx = node_idx[..., None].gather(-2, src_idx)
    if class_token:  # keep CLS first; without one, unmerged tokens stay in score order (as the authors')
        unm_idx = unm_idx.sort(dim=1).values
    return Matching(unm_idx[..., 0], src_idx[..., 0], dst_idx[..., 0], distill_token)


def merge_wavg(m: Matching, x: Tensor, size: Tensor | None) -> tuple[Tensor, Tensor]:
    """Size-weighted mean: x [B, L, D], size [B, L, 1] (ones when None) → merged x and size."""
    if size is None:
        size = torch.ones_like(x[..., :1])
    x = m.merge(x * size, "sum")
    size = m.merge(size, "sum")
    return x / size, size


class BlockMerger(ABC):
    """What a tower adapter calls inside its blocks (see the module docstring)."""

    #: add log(size) to attention logits once sizes exist
    prop_attn: bool = True

    def __init__(self) -> None:
        self.size: Tensor | None = None
        self.source: Tensor | None = None

    def start(self, x: Tensor) -> None:
        """Reset for a new batch of images x [B, L, D]: no sizes yet, source = identity over the initial tokens."""
        self.size = None
        self.source = torch.eye(x.shape[1], device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1)

    @abstractmethod
    def step(self, layer: int, x: Tensor, metric: Tensor, attn: Tensor | None) -> Tensor:
        """After block `layer`'s attention residual: x [B, L, D], metric [B, L, d] (head-mean keys), attn
        [B, L, L] (head-mean probabilities without the size bias, when `wants_attn`) → the (possibly merged) x."""

    #: whether `step` needs the attention map
    wants_attn: bool = False

    def describe(self) -> dict[str, object]:
        """What the file records about the merging (e.g. the schedule)."""
        return {}


class ToMeMerger(BlockMerger):
    """ToMe: r_l tokens merged in block l by bipartite soft matching on the keys, size-weighted means."""

    def __init__(self, schedule: list[int], class_token: bool, prop_attn: bool = True) -> None:
        super().__init__()
        self.schedule = schedule
        self.class_token = class_token
        self.prop_attn = prop_attn
        self.decisions: list[Matching | None] = []

    def start(self, x: Tensor) -> None:
        super().start(x)
        self.decisions = []

    def describe(self) -> dict[str, object]:
        return {"schedule": list(self.schedule), "prop_attn": self.prop_attn, "class_token": self.class_token}

    def step(self, layer: int, x: Tensor, metric: Tensor, attn: Tensor | None) -> Tensor:
        r = self.schedule[layer] if layer < len(self.schedule) else 0
        m = bipartite_soft_matching(metric, r, self.class_token) if r > 0 else None
        self.decisions.append(m)
        if r <= 0:
            return x
        if m is None:  # the schedule asked for merges but the clamp left none: sizes reset to ones (authors')
            self.size = torch.ones_like(x[..., :1])
            return x
        assert self.source is not None
        self.source = m.merge(self.source, "amax")
        x, self.size = merge_wavg(m, x, self.size)
        return x


def tokens_after(schedule: list[int], num_tokens: int, protected: int, layers: int) -> int:
    """How many tokens a schedule leaves after `layers` blocks (each r clamped to (L − protected) // 2)."""
    n = num_tokens
    for r in schedule[:layers]:
        n -= max(0, min(r, (n - protected) // 2))
    return n


def reduction_from_sources(source: Tensor) -> Reduction:
    """The provenance of tokens merged inside the encoder.  source: [T, K, N] (row k of frame t: how much each patch
    contributed; 0/1 for ToMe) → a Reduction whose row t·K + k covers those patches of frame t with weights
    normalised to sum to 1, represented by its first patch.  The tokens themselves come from the encoder: the map
    records provenance (sizes, positions, `vtc show`), not a linear map of unmerged features, which never exist."""
    t, k, n = source.shape
    frame, row, col = torch.nonzero(source > 0, as_tuple=True)
    weight = source[frame, row, col].double()
    dst = frame * k + row
    total = torch.zeros(t * k, dtype=torch.float64).index_add_(0, dst, weight)
    src = frame * n + col
    first = torch.full((t * k,), t * n, dtype=torch.long).scatter_reduce(0, dst, src, reduce="amin")
    first = torch.where(first == t * n, torch.full_like(first, -1), first)
    return Reduction.build(dst, src, weight / total[dst], first, t * n)
