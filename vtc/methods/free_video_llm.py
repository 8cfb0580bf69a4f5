"""Free Video-LLM: slow (text-guided frames, pooled, text-guided ROI crop), middle (more frames, pooled, cropped)
and fast (every frame, adaptive average pool) paths, concatenated.  Follows contrastive/FreeVideoLLM @ 1d62394
(`free_video_llm/llava/model/llava_arch.py`: `prepare_visual_aggregation`, `temporal_aggregation`, `roi_crop`,
`roi_box`, `text_guided_frames`, `top_change_frames`).

1. slow: the S frames most similar to the query (`relevance`), ascending; each pooled (`slow_pool`, default the
   1-D max pool of horizontal pairs); with roi < 1 each frame keeps a box of its pooled grid: the top
   int(n'·roi) positions by cosine of the query and the equally pooled `patch_embed`, their mean position (int),
   a box of round(h'·√roi) × round(w'·√roi) around it, shifted inside the grid;
2. middle: M frames (`middle_select`), pooled and cropped the same way;
3. fast: the F most relevant frames (all when F ≥ T), adaptive-average-pooled to fast_size × fast_size.
The count follows the knobs (3·231 + 5·231 + 50·16 = 2648 of 28 800 on 50 CLIP-L frames): --ratio is not used.

The authors' code, kept by `reference`: the middle frames are uniform (`middle_select=uniform`; the top-change
helper the comment announces is never called — vtc's default calls it, with the count clamped to T); the 1-D pool
pairs consecutive raster tokens and the ROI box is taken on a (√N/2) × √N view of them, which pairs real rows
side by side (`layout=authors`; vtc's default pools pairs within a row and takes the box on the real h × ⌈w/2⌉
grid, so odd and non-square grids such as SigLIP's 27×27 work); 2-D pools are floored on a square grid (vtc's
default keeps the odd border in smaller windows). `patch_embed` is CLIP's last-layer patches through the visual
projection without the post-LayerNorm, as the authors'; on SigLIP it is a named substitute (see `vtc methods`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vtc.errors import UsageError
from vtc.methods.declare import implements
from vtc.ops.similarity import l2_normalize
from vtc.reduction import Reduction
from vtc.signals import Signals

POOLS = ("1d_max", "1d_avg", "2d_max", "2d_avg")


def _windows(n: int, size: int, stride: int, ceil: bool) -> list[list[int]]:
    count = -(-(n - size) // stride) + 1 if ceil else (n - size) // stride + 1
    count = max(count, 1 if ceil else 0)
    return [list(range(i * stride, min(i * stride + size, n))) for i in range(count)]


def pool_sources(grid: tuple[int, int], pool: str, layout: str) -> tuple[Tensor, tuple[int, int]]:
    """Frame-local sources of every pooled token: (src [n', S] raster indices, −1 padded; pooled grid (h', w')).

    `authors`: 1-D pools pair raster tokens (2j, 2j+1) and are viewed as (√N//2) × √N; 2-D pools are 2×2, floored,
    on a √N × √N grid. `real`: pairs within a row (an odd last column alone), 2-D windows keep the odd border."""
    h, w = grid
    n = h * w
    if layout == "authors":
        side = math.isqrt(n)
        if side * side != n:
            raise UsageError(f"free_video_llm (reference layout) assumes a square grid, not {h}×{w}; use the default.")
        if pool.startswith("1d"):
            src = torch.arange(2 * (n // 2)).reshape(-1, 2)
            return src, (side // 2, side)
        rows = cols = _windows(side, 2, 2, False)
        hw, w = (len(rows), len(cols)), side
    else:
        rows = _windows(h, 1, 1, True) if pool.startswith("1d") else _windows(h, 2, 2, True)
        cols = _windows(w, 2, 2, True)
        hw = (len(rows), len(cols))
    cells = [[r * w + c for r in rs for c in cs] for rs in rows for cs in cols]
    return _pad(cells), hw


def adaptive_sources(grid: tuple[int, int], size: int) -> Tensor:
    """Sources [o_h·o_w, S] of `AdaptiveAvgPool2d(size)`: windows [⌊i·n/o⌋, ⌈(i+1)·n/o⌉) per axis, −1 padded;
    o = min(size, side) (a grid smaller than the pool is not upsampled)."""
    h, w = grid

    def axis(n: int) -> list[list[int]]:
        o = min(size, n)
        return [list(range(i * n // o, -(-(i + 1) * n // o))) for i in range(o)]

    return _pad([[r * w + c for r in rs for c in cs] for rs in axis(h) for cs in axis(w)])


def _pad(cells: list[list[int]]) -> Tensor:
    width = max((len(c) for c in cells), default=1)
    return torch.tensor([c + [-1] * (width - len(c)) for c in cells], dtype=torch.long).reshape(len(cells), width)


def pooled(v: Tensor, src: Tensor, op_max: bool) -> Tensor:
    """Pool v [F, N, E] over the sources src [n', S] → [F, n', E] (max or mean of each row's sources)."""
    valid = src >= 0
    g = v[:, src.clamp_min(0)]  # [F, n', S, E]
    if op_max:
        return g.masked_fill(~valid[None, :, :, None], -torch.inf).amax(2)
    return (g * valid[None, :, :, None]).sum(2) / valid.sum(1)[None, :, None]


def roi_box(points: Tensor, h: int, w: int, ratio: float) -> Tensor:
    """The authors' box around the mean of `points` [F, k] (raster indices of an h×w grid) → [F, 4] (left, right,
    top, bottom): centre = int of the float means; size round(h·√r) × round(w·√r) (Python rounding); shifted inside
    the grid, left/right first, then top/bottom."""
    x = (points % w).float().mean(-1).to(torch.int32)
    y = torch.div(points, w, rounding_mode="floor").float().mean(-1).to(torch.int32)
    h_new, w_new = round(h * math.sqrt(ratio)), round(w * math.sqrt(ratio))
    out = []
    for xm, ym in zip(x.tolist(), y.tolist(), strict=True):
        left, right = xm - w_new // 2, xm + w_new - w_new // 2
        top, bottom = ym - h_new // 2, ym + h_new - h_new // 2
        if left < 0:
            left, right = 0, w_new
        if right > w:
            left, right = w - w_new, w
        if top < 0:
            top, bottom = 0, h_new
        if bottom > h:
            top, bottom = h - h_new, h
        out.append([left, right, top, bottom])
    return torch.tensor(out, dtype=torch.long).reshape(-1, 4)


def text_guided_frames(relevance: Tensor, count: int) -> Tensor:
    """The `count` frames most relevant to the query, ascending (all when count ≥ T).  relevance: [T]."""
    order = torch.sort(relevance.float()).indices
    return order[-count:].sort().values if count > 0 else order[:0]


def uniform_frames(t: int, count: int) -> Tensor:
    """int32(float32 linspace(0, T, M+1))[:-1]: the authors' middle frames (repeats when M > T)."""
    return torch.linspace(0, t, count + 1).to(torch.int32)[:-1].long()


def top_change_frames(x: Tensor, count: int) -> Tensor:
    """The authors' unused helper: frame 0, then after the count−1 lowest cosines of consecutive frame means
    (ascending).  x: [T, N, D]; count clamped to T (the authors' `topk` raises above it)."""
    t = x.shape[0]
    count = min(count, t)
    if count <= 1 or t < 2:
        return torch.zeros(min(count, 1), dtype=torch.long)
    g = l2_normalize(x.float().mean(1))
    cos = (g[:-1] * g[1:]).sum(-1)
    idx = torch.topk(cos, count - 1, largest=False, sorted=False).indices
    return torch.cat([torch.zeros(1, dtype=torch.long), (idx + 1).sort().values])


def crop(score: Tensor, hw: tuple[int, int], roi: float) -> tuple[Tensor, Tensor]:
    """Per frame, the pooled positions inside the text-guided box.  score: [F, n'] cosine of the query and the
    pooled patch embeddings → (kept positions, one LongTensor per frame in raster order, boxes [F, 4])."""
    h, w = hw
    k = max(1, int(h * w * roi))  # the authors' int() can give 0 on tiny grids (a box around no point)
    top = torch.topk(score, k, dim=1, largest=True, sorted=False).indices.sort(1).values
    boxes = roi_box(top, h, w, roi)
    pos = torch.arange(h * w).reshape(h, w)
    return [pos[top_:bottom, left:right].reshape(-1) for left, right, top_, bottom in boxes.tolist()], boxes


def free_video_rows(x: Tensor, grid: tuple[int, int], relevance: Tensor, patch_embed: Tensor | None,
                    query: Tensor | None, *, slow_frames: int, slow_pool: str, roi: float, middle_frames: int,
                    middle_pool: str, middle_select: str, fast_frames: int, fast_size: int, layout: str
                    ) -> tuple[Tensor, Tensor, Tensor, dict]:
    """The three paths' rows: (src [K, S] flat t·N+n sources, −1 padded; op_max [K] bool; frame [K]; facts:
    the frame lists, boxes and patch–text cosines of each path)."""
    t, n, _ = x.shape
    facts: dict = {}
    rows: list[tuple[Tensor, bool, Tensor]] = []  # (src [r, S], max?, frame [r])
    for name, frames, pool in (("slow", text_guided_frames(relevance, slow_frames) if slow_frames > 0 else None,
                                slow_pool),
                               ("middle", None if middle_frames < 1 else
                                (uniform_frames(t, middle_frames) if middle_select == "uniform"
                                 else top_change_frames(x, middle_frames)), middle_pool)):
        if frames is None:
            continue
        facts[f"{name}_frames"] = frames
        src, hw = pool_sources(grid, pool, layout)
        per = [src for _ in frames.tolist()]
        if roi < 1:
            if patch_embed is None or query is None:
                raise UsageError("free_video_llm's ROI crop needs the signals patch_embed and query_embed "
                                 "(vtc's pipeline makes them with --query).")
            if len(src) != hw[0] * hw[1]:
                raise UsageError(f"free_video_llm (reference layout): the {len(src)} pooled tokens of a "
                                 f"{pool} pool do not fill the authors' {hw[0]}×{hw[1]} ROI view; use the default.")
            pe = pooled(patch_embed[frames].float(), src, pool.endswith("max"))
            cos = l2_normalize(pe) @ l2_normalize(query.float().reshape(-1))
            keep, boxes = crop(cos, hw, roi)
            per = [src[k] for k in keep]
            facts[f"roi_{name}"], facts[f"patch_text_cos_{name}"] = boxes, cos
        for f, s in zip(frames.tolist(), per, strict=True):
            rows.append((torch.where(s >= 0, s + f * n, -1), pool.endswith("max"), torch.full((len(s),), f)))
    if fast_frames >= 1:
        frames = text_guided_frames(relevance, fast_frames) if fast_frames < t else torch.arange(t)
        facts["fast_frames"] = frames
        src = adaptive_sources(grid, fast_size)
        for f in frames.tolist():
            rows.append((torch.where(src >= 0, src + f * n, -1), False, torch.full((len(src),), f)))
    width = max((r[0].shape[1] for r in rows), default=1)
    src = torch.cat([torch.nn.functional.pad(r[0], (0, width - r[0].shape[1]), value=-1) for r in rows]) \
        if rows else torch.zeros(0, width, dtype=torch.long)
    op = torch.cat([torch.full((len(r[0]),), r[1]) for r in rows]) if rows else torch.zeros(0, dtype=torch.bool)
    frame = torch.cat([r[2] for r in rows]) if rows else torch.zeros(0, dtype=torch.long)
    return src, op, frame, facts


@implements("free_video_llm")
def free_video_llm(
    x: Tensor, *, grid: tuple[int, int], ratio: float | None, signals: Signals, slow_frames: int,
    slow_pool: str, roi: float, middle_frames: int, middle_pool: str,
    middle_select: str, fast_frames: int, fast_size: int, layout: str,
) -> Reduction:
    """Free Video-LLM.  x: [T, N, D]; signals: relevance [T], query_embed [E], patch_embed [T, N, E] (ROI).
    Rows: slow, middle, fast (frame by frame, raster order inside); max-pooled rows are off-grid tokens."""
    t, n, d = x.shape
    rel = signals.require("relevance", "free_video_llm")
    src, op, frame, facts = free_video_rows(
        x, grid, rel, signals.patch_embed, signals.query_embed, slow_frames=slow_frames, slow_pool=slow_pool, roi=roi,
        middle_frames=middle_frames, middle_pool=middle_pool, middle_select=middle_select, fast_frames=fast_frames,
        fast_size=fast_size, layout=layout)
    return rows_reduction(x, src, op, frame, facts)


def rows_reduction(x: Tensor, src: Tensor, op: Tensor, frame: Tensor, facts: dict) -> Reduction:
    """Rows of sources → a Reduction: mean rows as weights 1/count; max rows as off-grid tokens (the element-wise
    max of their sources) with their sources at weight 0, so provenance still says what each one covers."""
    t, n, d = x.shape
    k = src.shape[0]
    valid = src >= 0
    count = valid.sum(1)
    dst = torch.arange(k)[:, None].expand_as(src)[valid]
    s = src[valid]
    w = (1.0 / count.double())[:, None].expand_as(src)[valid] * (~op[:, None].expand_as(src)[valid]).double()
    rep = src[:, 0]
    maxed = torch.nonzero(op).flatten()
    if maxed.numel():
        flat = x.reshape(t * n, d)
        ms = src[maxed]  # [M, S]
        extra = flat[ms.clamp_min(0)].masked_fill((ms < 0)[..., None], -torch.inf).amax(1)
        dst = torch.cat([dst, maxed])
        s = torch.cat([s, t * n + torch.arange(maxed.numel())])
        w = torch.cat([w, torch.ones(maxed.numel(), dtype=torch.float64)])
    red = Reduction.build(dst, s, w, rep, t * n)
    if maxed.numel():
        red.with_extra(extra, frame[maxed])
    red.info.update({k2: v.tolist() for k2, v in facts.items() if k2.endswith("frames") or k2.startswith("roi_")})
    red.info["budget_floor"] = k
    return red
