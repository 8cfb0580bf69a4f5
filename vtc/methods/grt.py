"""GRT (Gated Residual Tokenization): a pixel gate finds each frame's moving patches; key frames (more than 80 % of
patches moved) are tested for a semantic match with the previous key frame; every frame then keeps its k
highest-scoring tokens (motion, or feature norm for unmatched key frames).  Follows Hai-chao-Zhang/
DenseVideoUnderstand @ 251ba39 (`lmms_eval/models/llava_ov_dense_video.py`: `GatedVisionEmbeddings`,
`_frame_type_key_mask`, `_scene_token_merge`, `_apply_scene_merge_packing`).

1. gate (signal `frames`, pixels in SigLIP units, patches of the token grid's cell size): diff of each patch to
   the previous frame (L2, or SSIM dissimilarity); moved = diff > threshold; motion score = diff / frame max;
2. key frames: frame 0 and every frame with more than scene_cut·N moved patches;
3. semantic test of consecutive key frames (a, b) on frame-mean tokens f: p = softmax(H f_a), q = softmax(H f_b),
   a divergence below `jsd_threshold` marks b as merged away (the next pair starts from b all the same);
4. unless `require_match` and nothing matched: k = min(max(min_tokens, ⌈ratio·N⌉), N) tokens per frame, the top k
   by score, where key frames not merged away score ‖x‖/max + 1 (above any motion score), others their motion
   score; raster order. Ties (static frames score 0 everywhere) go to the lower index.

H, the LLM's vocabulary head in the authors' code, is not read by vtc (a --target brings the vision path only):
vtc uses the frame-mean token's own channels as the logits (H = identity) — a named substitute; the threshold
then has a different scale. The gate's other half, `reuse_embeddings` (the authors' gated tokenizer: inside the
tower a static patch keeps the previous frame's patch embedding, the ViT still runs on every token), saves only the
patch projection and changes the features; it is off by default and on in `reference` (open_clip towers; the rule
is `vtc.stages.gate.gated_embeddings`, checked against the authors' outputs).

Deviations kept by `reference`: the authors' divergence is ½(KL(m‖p) + KL(m‖q)) — `F.kl_div`'s arguments reversed
(`divergence=reversed`; vtc's default is the Jensen–Shannon divergence ½(KL(p‖m) + KL(q‖m))); their L2 threshold
0.3 applies to the whole C·p·p vector (588 values for SigLIP: about 1.6 grey levels RMS, so nearly every patch of
a real video "moves"; `gate_scale=sum`, threshold 0.3); vtc's default divides by √(C·p·p) (`rms`, threshold 0.05:
about 6 grey levels RMS).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vtc.methods.declare import implements
from vtc.reduction import Reduction
from vtc.signals import Signals
from vtc.stages.gate import EmbeddingGate, patch_gate, patches, siglip_pixels


def key_frames(keep: Tensor, scene_cut: float) -> Tensor:
    """Frame 0 and every frame with more than scene_cut·N moved patches.  keep: [T, N] → [T] bool."""
    key = keep.sum(1) > scene_cut * keep.shape[1]
    key[0] = True
    return key


def divergence(p: Tensor, q: Tensor, kind: str) -> float:
    """½(KL(p‖m) + KL(q‖m)) (`jsd`) or the authors' ½(KL(m‖p) + KL(m‖q)) (`reversed`), m = (p + q)/2."""
    m = 0.5 * (p + q)
    if kind == "reversed":
        return float(0.5 * ((m * (m.log() - p.log())).sum() + (m * (m.log() - q.log())).sum()))
    return float(0.5 * ((p * (p.log() - m.log())).sum() + (q * (q.log() - m.log())).sum()))


def semantic_merge(frame_feats: Tensor, key: Tensor, threshold: float, kind: str,
                   head: Tensor | None = None) -> tuple[Tensor, list[float]]:
    """Consecutive key frames (a, b): b is merged away when the divergence of softmax(H f_a), softmax(H f_b) is
    below `threshold`.  frame_feats: [T, D]; head: [V, D] or None (identity).  → (removed [T] bool, divergences)."""
    idx = torch.nonzero(key).flatten().tolist()
    removed = torch.zeros(key.shape[0], dtype=torch.bool)
    dists: list[float] = []
    for a, b in zip(idx[:-1], idx[1:], strict=True):
        la, lb = (frame_feats[a], frame_feats[b]) if head is None else (head @ frame_feats[a], head @ frame_feats[b])
        d = divergence(la.float().softmax(-1), lb.float().softmax(-1), kind)
        dists.append(d)
        if d < threshold:
            removed[b] = True
    return removed, dists


def pack_scores(x: Tensor, motion: Tensor, key: Tensor, removed: Tensor) -> Tensor:
    """Per-token scores [T, N]: motion / frame max; key frames not merged away: ‖x‖ / frame max + 1."""
    scores = motion.float() / motion.float().amax(1, keepdim=True).clamp_min(1e-12)
    norm = x.float().norm(dim=-1)
    norm = norm / norm.amax(1, keepdim=True).clamp_min(1e-12)
    rows = key & ~removed
    scores[rows] = norm[rows] + 1.0
    return scores


@implements("grt", pre_encoder=lambda **p: EmbeddingGate(p["gate_threshold"], p["gate_metric"], p["gate_scale"])
    if p["reuse_embeddings"] else None)
def grt(
    x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, gate_threshold: float,
    gate_metric: str, gate_scale: str, scene_cut: float, jsd_threshold: float,
    divergence: str, require_match: bool, min_tokens: int, reuse_embeddings: bool,
) -> Reduction:
    """GRT.  x: [T, N, D]; signals.frames uint8 [T, H, W, 3] (as the encoder saw them).  k tokens per frame."""
    return grt_select(x, signals.require("frames", "grt"), grid, ratio, gate_threshold=gate_threshold,
                      gate_metric=gate_metric, gate_scale=gate_scale, scene_cut=scene_cut, jsd_threshold=jsd_threshold,
                      divergence=divergence, require_match=require_match, min_tokens=min_tokens)


def grt_select(x: Tensor, frames: Tensor, grid: tuple[int, int], ratio: float, *, gate_threshold: float,
               gate_metric: str, gate_scale: str, scene_cut: float, jsd_threshold: float, divergence: str,
               require_match: bool, min_tokens: int, head: Tensor | None = None) -> Reduction:
    """The method on features x [T, N, D] and frames uint8 [T, H, W, 3]; `head` [V, D]: the semantic test's
    vocabulary head (None: identity, vtc's substitute)."""
    t, n, _ = x.shape
    cell = max(1, min(frames.shape[1] // grid[0], frames.shape[2] // grid[1]))
    pix = patches(siglip_pixels(frames)[:, :, : grid[0] * cell, : grid[1] * cell], cell)
    keep, motion = patch_gate(pix, gate_threshold, gate_metric, gate_scale)
    key = key_frames(keep, scene_cut)
    removed, dists = semantic_merge(x.float().mean(1), key, jsd_threshold, divergence, head)
    k = min(max(min_tokens, math.ceil(n * ratio), 1), n)
    info = {"key_frames": torch.nonzero(key).flatten().tolist(), "merged_frames": torch.nonzero(removed).flatten()
            .tolist(), "divergence": [round(d, 6) for d in dists], "moved_share": round(float(keep.float().mean()), 6),
            "semantic_head": "identity (the frame-mean token's channels; the authors use the LLM's lm_head)"
            if head is None else "given"}
    if (require_match and not bool(removed.any())) or k >= n:
        red = Reduction.select(torch.arange(t * n), t * n)
        red.info.update(info, packed=False, budget_floor=t * n)
        return red
    scores = pack_scores(x, motion, key, removed)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k].sort(1).values
    red = Reduction.select((order + (torch.arange(t) * n)[:, None]).reshape(-1), t * n)
    red.info.update(info, packed=True, per_frame=k)
    if k > math.ceil(n * ratio):
        red.info["budget_floor"] = t * k
    return red
