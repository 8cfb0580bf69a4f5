"""Reducing tokens between an encoder's blocks: the block loop and the rules methods hand to it.

`run_blocks` runs a stack of transformer blocks (each given as `BlockOps`, pure callables, so that open_clip, timm,
Hugging Face or an authors' own ViT are all the same loop) with a `BlockMerger` inside them. Per block:

1. q, k, v per head; the logits get the merger's `key_bias` (log(size) with proportional attention);
2. when the merger asks for the probabilities (`wants_probs`, `wants_attn`) or edits them (`edits_attention`), the
   attention is computed explicitly and `edit_attention` may change the probabilities before `@ v` (GTP-ViT's
   sparsity); otherwise the fused kernel runs;
3. after the attention residual: `merger.step(layer, x, view)`, which may merge or drop tokens (ToMe, vid-TLDR,
   SAINT, PPT, GTP-ViT, FlowCut); `view` (`BlockView`) holds the block's per-head q, k, v, its probabilities and the
   head-mean keys (`metric`);
4. after the MLP: `merger.after_block(layer, x, view)` (STA, which scores the block output across frames).

A merger whose token counts differ between frames (`per_frame`) runs one frame at a time. The merger keeps, per
token, its `size` and its `source` (which initial tokens it stands for: 0/1 rows for merging and pruning, fractional
for propagation), and any state of its own (scores, graphs) gathered with the tokens, so provenance stays exact.

ToMe's pieces (bipartite soft matching, size-weighted merge, source tracing, the r schedule) live here as pure
tensor functions; `vtc.methods.tome_vit` declares the method.

Shapes: B images (frames), H heads, L current tokens (CLS first when protected), N0 initial tokens, D channels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vtc.errors import UsageError
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


@dataclass
class BlockView:
    """What one block's attention hands its merger.  q, k, v: [B, H, L, hd] per head (after the model's q/k norms;
    q not scaled); probs: [B, H, L, L] the probabilities that mixed v (key bias and `edit_attention` applied), when
    the merger `wants_probs` or edits them; attn: [B, L, L] head-mean probabilities without the key bias, when it
    `wants_attn`; scale: the logit scale."""

    layer: int
    q: Tensor
    k: Tensor
    v: Tensor
    scale: float
    probs: Tensor | None = None
    attn: Tensor | None = None

    @property
    def metric(self) -> Tensor:
        """Head-mean keys [B, L, hd] (ToMe's matching metric)."""
        return self.k.mean(1)

    def row_probs(self, row: int = 0, bias: Tensor | None = None) -> Tensor:
        """One query's per-head probabilities [B, H, L] (e.g. CLS's), with an optional key bias [B, L]: what a
        hook needs from the attention without the whole map, so the block keeps the fused kernel."""
        logits = (self.q[:, :, row : row + 1] * self.scale) @ self.k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias[:, None, None, :].to(logits.dtype)
        return logits.softmax(-1)[:, :, 0]


class BlockMerger:
    """What the block loop calls inside the blocks (see the module docstring).  The default hooks do nothing."""

    #: add log(size) to attention logits once sizes exist
    prop_attn: bool = True
    #: whether `step` needs the head-mean probabilities without the key bias (`view.attn`)
    wants_attn: bool = False
    #: whether a hook needs the per-head probabilities that mixed v (`view.probs`)
    wants_probs: bool = False
    #: whether `edit_attention` changes the probabilities before `@ v`
    edits_attention: bool = False
    #: whether token counts may differ between frames: the loop then runs each frame on its own
    per_frame: bool = False

    def __init__(self) -> None:
        self.size: Tensor | None = None
        self.source: Tensor | None = None
        self.grid: tuple[int, int] | None = None

    def begin(self, batch: int) -> None:
        """A call of the block loop on `batch` frames begins (before `start`, which a per-frame merger gets once per
        frame): reset what is kept per call."""

    def start(self, x: Tensor, grid: tuple[int, int] | None = None) -> None:
        """Reset for a new batch of images x [B, L, D] (patch grid `grid` when known): no sizes yet, source =
        identity over the initial tokens."""
        self.size = None
        self.grid = grid
        self.source = torch.eye(x.shape[1], device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1)

    def key_bias(self) -> Tensor | None:
        """[B, L] added to the attention logits of every key, or None: log(size) with proportional attention."""
        if self.prop_attn and self.size is not None:
            return self.size.log()[..., 0]
        return None

    def edit_attention(self, layer: int, probs: Tensor) -> Tensor:
        """Post-process the probabilities [B, H, L, L] before they mix the values (when `edits_attention`)."""
        return probs

    def step(self, layer: int, x: Tensor, view: BlockView) -> Tensor:
        """After block `layer`'s attention residual: x [B, L, D] → the (possibly reduced) x."""
        return x

    def after_block(self, layer: int, x: Tensor, view: BlockView) -> Tensor:
        """After block `layer`'s MLP residual: x [B, L, D] → the (possibly reduced) x."""
        return x

    def describe(self) -> dict[str, object]:
        """What the file records about the merging (e.g. the schedule)."""
        return {}

    def gather(self, index: Tensor) -> None:
        """Keep rows `index` [B, K] (positions in the current tokens) of `source` and `size` (pruning)."""
        assert self.source is not None
        self.source = self.source.gather(1, index[..., None].expand(-1, -1, self.source.shape[-1]))
        if self.size is not None:
            self.size = self.size.gather(1, index[..., None])


@dataclass(frozen=True)
class BlockOps:
    """One pre-norm transformer block as the loop needs it.  qkv: x [B, L, D] (the residual stream) → q, k, v
    [B, H, L, hd] (first norm and q/k norms applied, q unscaled); attn_out: the heads' output [B, L, H·hd] → the
    residual update; mlp: x → the residual update (second norm, MLP, LayerScale)."""

    qkv: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]]
    scale: float
    attn_out: Callable[[Tensor], Tensor]
    mlp: Callable[[Tensor], Tensor]


def attend(layer: int, q: Tensor, k: Tensor, v: Tensor, scale: float, merger: BlockMerger
           ) -> tuple[Tensor, BlockView]:
    """Attention with the merger's key bias and hooks.  → (output [B, H, L, hd], the view the hooks read)."""
    bias = merger.key_bias()
    if bias is not None:
        bias = bias[:, None, None, :].to(q.dtype)
    if not (merger.wants_attn or merger.wants_probs or merger.edits_attention):  # the fused kernel
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale), BlockView(layer, q, k, v, scale)
    logits = (q * scale) @ k.transpose(-2, -1)
    plain = logits.softmax(-1).mean(1) if merger.wants_attn else None
    if bias is not None:
        logits = logits + bias
    probs = logits.softmax(-1)
    if merger.edits_attention:
        probs = merger.edit_attention(layer, probs)
    return probs @ v, BlockView(layer, q, k, v, scale, probs if merger.wants_probs or merger.edits_attention
                                else None, plain)


def run_blocks(blocks: Sequence[BlockOps], x: Tensor, merger: BlockMerger, grid: tuple[int, int] | None = None
               ) -> Tensor:
    """Run `blocks` on tokens x [B, L, D] with `merger` inside them (see the module docstring).  → x [B, K, D];
    the merger holds `source` [B, K, N0] and `size`.  A `per_frame` merger runs each frame alone and must end with
    the same count in every frame."""
    merger.begin(x.shape[0])
    if merger.per_frame and x.shape[0] > 1:
        outs, sources, sizes = [], [], []
        for f in range(x.shape[0]):
            outs.append(_run_blocks(blocks, x[f : f + 1], merger, grid))
            sources.append(merger.source)
            sizes.append(merger.size if merger.size is not None else torch.ones_like(outs[-1][..., :1]))
        if len({o.shape[1] for o in outs}) != 1:
            raise UsageError(f"{type(merger).__name__}: frames ended with different token counts")
        merger.source, merger.size = torch.cat(sources), torch.cat(sizes)
        return torch.cat(outs)
    return _run_blocks(blocks, x, merger, grid)


def _run_blocks(blocks: Sequence[BlockOps], x: Tensor, merger: BlockMerger, grid: tuple[int, int] | None) -> Tensor:
    merger.start(x, grid)
    for i, blk in enumerate(blocks):
        q, k, v = blk.qkv(x)
        b, h, n, hd = q.shape
        out, view = attend(i, q, k, v, blk.scale, merger)
        x = x + blk.attn_out(out.transpose(1, 2).reshape(b, n, h * hd))
        x = merger.step(i, x, view)
        x = x + blk.mlp(x)
        x = merger.after_block(i, x, view)
    return x


class ToMeMerger(BlockMerger):
    """ToMe: r_l tokens merged in block l by bipartite soft matching on the keys, size-weighted means."""

    def __init__(self, schedule: list[int], class_token: bool, prop_attn: bool = True) -> None:
        super().__init__()
        self.schedule = schedule
        self.class_token = class_token
        self.prop_attn = prop_attn
        self.decisions: list[Matching | None] = []

    def start(self, x: Tensor, grid: tuple[int, int] | None = None) -> None:
        super().start(x, grid)
        self.decisions = []

    def describe(self) -> dict[str, object]:
        return {"schedule": list(self.schedule), "prop_attn": self.prop_attn, "class_token": self.class_token}

    def step(self, layer: int, x: Tensor, view: BlockView) -> Tensor:
        r = self.schedule[layer] if layer < len(self.schedule) else 0
        m = bipartite_soft_matching(view.metric, r, self.class_token) if r > 0 else None
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

    def start(self, x: Tensor, grid: tuple[int, int] | None = None) -> None:
        super().start(x, grid)
        self.decisions, self.scores = [], []

    def merges(self, layer: int, n: int) -> int:
        r = self.schedule[layer] if layer < len(self.schedule) else 0
        count = int(n * r) if r < 1 else int(r)
        return max(min(count, (n - int(self.class_token)) // 2), 0)

    def describe(self) -> dict[str, object]:
        return {"schedule": list(self.schedule), "prop_attn": self.prop_attn, "class_token": self.class_token}

    def step(self, layer: int, x: Tensor, view: BlockView) -> Tensor:
        r = self.merges(layer, x.shape[1])
        attn = view.attn
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
