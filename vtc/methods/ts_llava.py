"""TS-LLaVA (arXiv 2411.11066): thumbnail-and-sampling.  Follows tingyu215/TS-LLaVA @ 03cdeae.

vtc owns the encoder, so the thumbnail is built from the sampled frames and encoded for real (the spec's
`extra_images` hook); its tokens arrive as the `thumbnail` signal and become off-grid rows.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.methods.declare import implements
from vtc.ops.topk import py_round
from vtc.reduction import Reduction
from vtc.signals import Signals
from vtc.stages.thumbnail import compose_thumbnail, grid_shape, linspace_indices

VARIANTS = {"V1": 4, "V2": 6, "V3": 8, "Y1": 4, "Y2": 6, "Y3": 8}


def thumbnail_plan(num_frames: int, variant: str) -> tuple[Tensor, int, int]:
    """(picked frames, rows, cols).  Deviation: the authors raise when T < n_th; vtc uses min(n_th, T) frames."""
    n_th = min(VARIANTS[variant], num_frames)
    rows, cols = grid_shape(n_th)
    return linspace_indices(num_frames - 1, n_th), rows, cols


def thumbnail_images(frames: Tensor, variant: str, **_: object) -> dict[str, Tensor]:
    """The composite image to encode.  frames: [T, 3, H, W] normalised pixels → {'thumbnail': [1, 3, H, W]}."""
    picks, rows, cols = thumbnail_plan(frames.shape[0], variant)
    return {"thumbnail": compose_thumbnail(frames, picks, rows, cols)[None]}


@implements("ts_llava", extra_images=thumbnail_images)
def ts_llava(
    x: Tensor,
    *,
    grid: tuple[int, int],
    ratio: float,
    signals: Signals,
    variant: str,
    num_sampled: int | None,
) -> Reduction:
    """TS-LLaVA.  x: [T, N, D]; signals.thumbnail [N', D] tokens of the encoded thumbnail (optional).

    Sampled rows: round(linspace(0, T·N − 1, S)) with float32 linspace (half to even), in order. With a
    thumbnail, its N' tokens follow (V*) or precede (Y*) them; each records the frame its cell shows.
    """
    t, n, d = x.shape
    thumb = signals.thumbnail
    n_thumb = 0 if thumb is None else thumb.shape[0]
    if num_sampled is None:
        num_sampled = py_round(ratio * t * n) - n_thumb
    s = max(1, min(int(num_sampled), t * n))
    idx = linspace_indices(t * n - 1, s)
    sampled = Reduction.select(idx, t * n)
    picks, rows, cols = thumbnail_plan(t, variant)
    sampled.info.update(thumbnail_frames=picks.tolist(), thumbnail_grid=[rows, cols], sampled=s)
    if thumb is None:
        sampled.info["thumbnail"] = "absent (no encoder): sampled tokens only"
        return sampled
    # thumbnail rows: extra sources t·N + i, each from the frame its cell shows
    h = w = int(round(n_thumb**0.5)) if int(round(n_thumb**0.5)) ** 2 == n_thumb else (n_thumb, 1)[0]
    cell_r = (torch.arange(n_thumb) // max(w, 1)) * rows // max(h, 1)
    cell_c = (torch.arange(n_thumb) % max(w, 1)) * cols // max(w, 1)
    frame_of = picks[(cell_r * cols + cell_c).clamp(max=picks.numel() - 1)]
    th = Reduction.build(torch.arange(n_thumb), torch.arange(n_thumb) + t * n, torch.ones(n_thumb),
                         torch.full((n_thumb,), -1), t * n)
    parts = [sampled, th] if variant.startswith("V") else [th, sampled]
    red = Reduction.concat(parts, t * n)
    red.info.update(sampled.info, thumbnail=f"{n_thumb} tokens of the re-encoded thumbnail",
                    order="sampled tokens, then thumbnail" if variant.startswith("V") else "thumbnail, then sampled")
    return red.with_extra(thumb.float(), frame_of)
