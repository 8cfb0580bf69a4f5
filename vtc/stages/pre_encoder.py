"""Pixel-level change detection before the encoder (RLT), shared by the `rlt` method and frame skipping.

All functions take uint8 frames [T, H, W, 3] and work in ImageNet-normalised units, as RLT's authors do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise(frames: Tensor) -> Tensor:
    """uint8 [T, H, W, 3] → float32 [T, 3, H, W], ÷255 then ImageNet mean/std."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


def patch_change(a: Tensor, b: Tensor, patch: int) -> Tensor:
    """Mean |a − b| over each patch and the channels.  a, b: [..., 3, H, W] normalised → [..., H/p, W/p]."""
    d = (a - b).abs()
    lead = d.shape[:-3]
    pooled = F.avg_pool2d(d.reshape(-1, *d.shape[-3:]), patch)  # [B, 3, h, w]
    return pooled.mean(1).reshape(*lead, *pooled.shape[-2:])


def rlt_keep(frames: Tensor, *, tau: float = 0.1, tubelet: int = 2, patch: int = 16,
             compare: str = "previous") -> tuple[Tensor, Tensor]:
    """RLT's static-patch test.  frames: uint8 [T, H, W, 3] → (keep [T/tubelet, h, w] bool, score [T/tubelet, h, w]).

    Tubelet k ≥ 1 at a patch is kept when mean |x[k·s + s − 1] − x[(k − 1)·s]| > τ (its last frame against the
    first frame of the previous tubelet, the authors' rule); tubelet 0 is always kept (score 255).
    `compare="last_kept"` compares against the last *kept* tubelet at that patch instead, which catches slow drift
    that never exceeds τ between neighbours (a vtc option, not the authors').
    """
    x = normalise(frames)
    t = x.shape[0] // tubelet
    first = x[0 : t * tubelet : tubelet]  # first frame of every tubelet
    last = x[tubelet - 1 : t * tubelet : tubelet]  # last frame of every tubelet
    h, w = x.shape[-2] // patch, x.shape[-1] // patch
    score = torch.full((t, h, w), 255.0)
    if compare == "previous":
        if t > 1:
            score[1:] = patch_change(last[1:], first[:-1], patch)
        return score > tau, score
    keep = torch.zeros(t, h, w, dtype=torch.bool)
    keep[0] = True
    pf, pl = _patchify(first, patch), _patchify(last, patch)  # [t, h, w, 3·p·p]
    ref_idx = torch.zeros(h, w, dtype=torch.long)  # tubelet whose first frame is each patch's reference
    hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for k in range(1, t):
        s = (pl[k] - pf[ref_idx, hh, ww]).abs().mean(-1)
        score[k] = s
        keep[k] = s > tau
        ref_idx = torch.where(keep[k], torch.full_like(ref_idx, k), ref_idx)
    return keep, score


def _patchify(x: Tensor, patch: int) -> Tensor:
    """[t, 3, H, W] → [t, h, w, 3·p·p]."""
    t, c, hh, ww = x.shape
    h, w = hh // patch, ww // patch
    x = x[:, :, : h * patch, : w * patch].reshape(t, c, h, patch, w, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(t, h, w, c * patch * patch)


def run_lengths(keep: Tensor) -> Tensor:
    """Length (in tubelets) of the run each kept token starts: until the next kept token at its patch, or the end.

    keep: [t, h, w] bool → [t, h, w] int64 (0 where not kept).
    """
    t = keep.shape[0]
    nxt = torch.full(keep.shape[1:], t, dtype=torch.long)
    out = torch.zeros(keep.shape, dtype=torch.long)
    for k in range(t - 1, -1, -1):
        out[k] = torch.where(keep[k], nxt - k, torch.zeros_like(nxt))
        nxt = torch.where(keep[k], torch.full_like(nxt, k), nxt)
    return out


@dataclass(frozen=True)
class PreEncoderRule:
    """A method's request to the pipeline, applied before the encoder (RLT's frame skipping).

    Frames whose every patch changed by at most `tau` (mean |Δ|, ImageNet units) since the previous frame are not
    encoded: they reuse the previous frame's outputs. With `changed_only`, a frame with some changed patches sends
    only those through the encoder (out of distribution for CLIP/SigLIP: experimental).
    """

    tau: float
    changed_only: bool = False
    description: str = "rlt (mean |Δ| per patch vs the previous frame, ImageNet units)"

    def changed(self, view: Tensor, previous: Tensor | None, grid: tuple[int, int]) -> Tensor | None:
        """Changed-patch mask [h·w] of one frame's view uint8 [H, W, 3] against the previous one (None: first)."""
        if previous is None:
            return None
        patch = view.shape[0] // grid[0]
        return patch_change(normalise(view[None]), normalise(previous[None]), patch)[0].reshape(-1) > self.tau
