"""GRT's pixel gate: which patches moved since the previous frame, and patch embeddings that reuse the previous
frame's where they did not (Hai-chao-Zhang/DenseVideoUnderstand, `GatedVisionEmbeddings`).

Pixels are in SigLIP units ((x/255 − 0.5)/0.5, in [−1, 1]); patches are `F.unfold` vectors (channel-major C·p·p,
the patch convolution's own order), so the embedding of a patch is `weight.view(D, −1) @ patch + bias`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def siglip_pixels(frames: Tensor) -> Tensor:
    """uint8 [T, H, W, 3] → float32 [T, 3, H, W] in [−1, 1]: (x/255 − 0.5)/0.5."""
    return (frames.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5


def patches(pixels: Tensor, patch: int) -> Tensor:
    """[T, C, H, W] → [T, N, C·p·p] (the top-left ⌊H/p⌋·p × ⌊W/p⌋·p region, raster order of patches)."""
    return F.unfold(pixels.float(), kernel_size=patch, stride=patch).transpose(1, 2).contiguous()


def ssim_dissimilarity(cur: Tensor, prev: Tensor) -> Tensor:
    """1 − SSIM of each patch pair over its C·p·p values (one global SSIM per patch; dynamic range max of both
    ranges, at least 1; c1 = (0.01 L)², c2 = (0.03 L)²), clamped to [0, 2].  cur, prev: [..., P] → [...]."""
    x, y = cur.float(), prev.float()
    mx, my = x.mean(-1), y.mean(-1)
    xc, yc = x - mx[..., None], y - my[..., None]
    vx, vy, cxy = (xc * xc).mean(-1), (yc * yc).mean(-1), (xc * yc).mean(-1)
    rng = torch.maximum(x.amax(-1) - x.amin(-1), y.amax(-1) - y.amin(-1)).clamp_min(1.0)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    ssim = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx.square() + my.square() + c1) * (vx + vy + c2)).clamp_min(1e-12)
    return (1.0 - ssim).clamp(0.0, 2.0)


def patch_gate(pix: Tensor, threshold: float, metric: str = "l2", scale: str = "sum") -> tuple[Tensor, Tensor]:
    """Moving patches of every frame against the previous one.  pix: [T, N, P] patch vectors.

    diff = ‖Δpatch‖₂ (`scale=rms`: divided by √P, a per-value RMS) or the SSIM dissimilarity (`metric=ssim`);
    keep = diff > threshold (a negative threshold keeps all); score = diff / the frame's largest diff.
    Frame 0: every patch kept, score 1.  → (keep [T, N] bool, score [T, N] float32)."""
    t, n, p = pix.shape
    keep = torch.ones(t, n, dtype=torch.bool)
    score = torch.ones(t, n)
    if t > 1:
        if metric == "ssim":
            diff = ssim_dissimilarity(pix[1:], pix[:-1])
        else:
            diff = (pix[1:] - pix[:-1]).norm(dim=-1)
            if scale == "rms":
                diff = diff / p**0.5
        keep[1:] = diff > threshold
        score[1:] = diff.float() / diff.float().amax(-1, keepdim=True).clamp_min(1e-12)
        if threshold < 0:
            keep[1:], score[1:] = True, 1.0
    return keep, score


def gated_embeddings(pix: Tensor, weight: Tensor, bias: Tensor | None, keep: Tensor,
                     previous: Tensor | None = None) -> Tensor:
    """Patch embeddings where each frame copies the previous frame's and recomputes only its kept patches.
    pix: [T, N, P]; weight: [D, C, p, p] (or [D, P]); keep: [T, N]; `previous` [N, D]: the embeddings of the frame
    before pix[0] (then pix[0] is gated too; None: frame 0 is computed in full).  → [T, N, D] (no positions)."""
    w = weight.reshape(weight.shape[0], -1).to(pix.dtype)
    b = None if bias is None else bias.to(pix.dtype)
    out = []
    prev = previous
    for f in range(pix.shape[0]):
        if prev is None:
            cur = F.linear(pix[f], w, b)
        else:
            cur = prev.clone()
            if bool(keep[f].any()):
                cur[keep[f]] = F.linear(pix[f][keep[f]], w, b)
        out.append(cur)
        prev = cur
    return torch.stack(out) if out else pix.new_zeros(0, pix.shape[1], w.shape[0])


@dataclass(frozen=True)
class EmbeddingGate:
    """GRT's request to the pipeline: inside the tower, a patch that did not move since the previous frame (the pixel
    gate on the frames the encoder sees, in cells of its grid) keeps the previous frame's patch embedding; the ViT
    still runs on every token."""

    threshold: float
    metric: str = "l2"
    scale: str = "rms"
    description: str = "grt (patch embeddings reused where the pixel gate says static)"

    def moved(self, view: Tensor, previous: Tensor | None, grid: tuple[int, int]) -> Tensor:
        """Moved-patch mask [h·w] of one frame's view uint8 [H, W, 3] against the previous one (first: all)."""
        n = grid[0] * grid[1]
        if previous is None:
            return torch.ones(n, dtype=torch.bool)
        cell = max(1, min(view.shape[0] // grid[0], view.shape[1] // grid[1]))
        both = siglip_pixels(torch.stack([previous, view]))[:, :, : grid[0] * cell, : grid[1] * cell]
        return patch_gate(patches(both, cell), self.threshold, self.metric, self.scale)[0][1]
