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
    #: vid-TLDR: each source row is scaled by its objective score before the reduce ([B, r, 1]), or None
    src_scale: Tensor | None = None

    def merge(self, x: Tensor, mode: str = "mean") -> Tensor:
        """x [B, L, C] → [B, L − r, C] (mode: sum, mean or amax of each B token and its sources)."""
        a, b = x[..., ::2, :], x[..., 1::2, :]
        n, t1, c = a.shape
        unm = a.gather(-2, self.unm[..., None].expand(n, self.unm.shape[1], c))
        src = a.gather(-2, self.src[..., None].expand(n, self.src.shape[1], c))
        if self.src_scale is not None:
            src = src * self.src_scale
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


def objective_score(attn: Tensor) -> Tensor:
    """vid-TLDR's foreground score.  attn: [B, L, L] head-mean attention probabilities (no size bias) → [B, L, 1]:
    each query row's Σ a·log a (minus its entropy), min–max normalised, centred, divided by its maximum, and zero
    below the mean (low-entropy, peaky queries score high)."""
    s = (attn * attn.log()).sum(-1)
    s = s - s.min(-1, keepdim=True).values
    s = s / s.max(-1, keepdim=True).values
    below = s < s.mean(-1, keepdim=True)
    s = s - s.mean(-1, keepdim=True)
    s = s / s.max(-1, keepdim=True).values
    return s.masked_fill(below, 0.0)[..., None]


def vidtldr_matching(x: Tensor, score: Tensor, r: int, class_token: bool = False) -> Matching:
    """vid-TLDR's matching on the residual stream x [B, L, D] itself: A (even) × B (odd) scored (cos + 1)/2; the r
    best-matched A tokens merge, each scaled by its objective score (score [B, L, 1]); unmerged A tokens stay in
    index order.  A protected CLS (vtc's CLIP towers; UMT has none) is never merged."""
    xn = x / x.norm(dim=-1, keepdim=True)
    a, b = xn[..., ::2, :], xn[..., 1::2, :]
    scores = (a @ b.transpose(-1, -2) + 1) / 2
    if class_token:
        scores[..., 0, :] = -float("inf")
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx = edge_idx[..., r:, :].sort(dim=1).values
    src_idx = edge_idx[..., :r, :]
    dst_idx = node_idx[..., None].gather(-2, src_idx)
    src_scale = score[..., ::2, :].gather(-2, src_idx)
    return Matching(unm_idx[..., 0], src_idx[..., 0], dst_idx[..., 0], False, src_scale)


class VidTLDRMerger(BlockMerger):
    """vid-TLDR: ToMe-style merging on x weighted by an attention-sharpness score; zero-score sources vanish.

    `schedule[l]`: tokens merged in block l, an int, or a fraction (< 1) of the current count, truncated; each
    clamped to (L − protected) // 2."""

    wants_attn = True

    def __init__(self, schedule: list[float], class_token: bool, prop_attn: bool = True) -> None:
        super().__init__()
        self.schedule = schedule
        self.class_token = class_token
        self.prop_attn = prop_attn
        self.decisions: list[Matching | None] = []
        self.scores: list[Tensor | None] = []

    def start(self, x: Tensor) -> None:
        super().start(x)
        self.decisions, self.scores = [], []

    def merges(self, layer: int, n: int) -> int:
        r = self.schedule[layer] if layer < len(self.schedule) else 0
        count = int(n * r) if r < 1 else int(r)
        return max(min(count, (n - int(self.class_token)) // 2), 0)

    def describe(self) -> dict[str, object]:
        return {"schedule": list(self.schedule), "prop_attn": self.prop_attn, "class_token": self.class_token}

    def step(self, layer: int, x: Tensor, metric: Tensor, attn: Tensor | None) -> Tensor:
        r = self.merges(layer, x.shape[1])
        if r == 0 or attn is None:
            self.decisions.append(None)
            self.scores.append(None)
            return x
        score = objective_score(attn.float())
        m = vidtldr_matching(x, score, r, self.class_token)
        self.decisions.append(m)
        self.scores.append(score)
        size = self.size if self.size is not None else torch.ones_like(x[..., :1])
        smax = size.max(dim=1, keepdim=True).values
        dtype = x.dtype
        x = (m.merge(x.float() * size / smax, "sum") / (m.merge(size, "sum") / smax)).to(dtype)
        self.size = m.merge(size, "sum")
        assert self.source is not None
        self.source = m.merge(self.source, "amax")
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
