"""OmniZip (audio-guided): the soundtrack decides how many video tokens each 2-second window keeps.
Follows KD-TAO/OmniZip (`omnizip_core.omnizip`, `omnizip_audio_attn`, `omnizip_istm`).

The authors read audio saliency from the Qwen2.5-Omni audio encoder; vtc has none and computes a training-free
saliency from the decoded audio (`vtc.io.audio.saliency`: log-mel energy and spectral flux at 25 tokens/s).
Users with real audio-encoder scores pass them as `audio_saliency` to `vtc.compress_features`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vtc.methods.declare import implements
from vtc.ops import l2_normalize
from vtc.ops.topk import py_round
from vtc.reduction import Reduction
from vtc.signals import Signals

RHO_MIN, RHO_MAX = 0.35, 0.75


# ---------------------------------------------------------------------------------------------- audio side
def select_audio(saliency: Tensor, rho_audio: float, contextual_ratio: float, g: int) -> tuple[Tensor, Tensor]:
    """Global audio selection.  saliency: [A] → (dominant mask [A], anchor indices [C]).

    Dominant: the top round((1 − ρ_a)·A) by saliency over the whole clip. Anchors (only when G > 0): of the
    other tokens in index order, C = min(round(c·A), |R|) at stride max(1, |R| // C).
    """
    a = saliency.numel()
    n_dom = max(0, min(a, py_round((1 - rho_audio) * a)))
    dom = torch.zeros(a, dtype=torch.bool)
    dom[torch.topk(saliency.float(), n_dom).indices] = True
    rest = torch.nonzero(~dom).flatten()
    if g <= 0 or rest.numel() == 0:
        return dom, torch.zeros(0, dtype=torch.long)
    c = min(py_round(contextual_ratio * a), rest.numel())
    if c <= 0:
        return dom, torch.zeros(0, dtype=torch.long)
    step = max(1, rest.numel() // c)
    return dom, rest[::step][:c]


def merge_audio_anchors(audio: Tensor, dom: Tensor, anchors: Tensor, video: Tensor, g: int) -> Tensor:
    """The authors' anchor consolidation.  audio: [A, Da], video: [T, N, Dv] (Dv = Da) → audio with anchors merged.

    Each non-dominant, non-anchor token joins its most cosine-similar anchor; each anchor takes its top-min(G, n)
    members by cross-modal score (max cosine to any video token) and becomes (a + Σ w_j a_j) / (1 + Σ w_j), w =
    softmax of those scores.
    """
    out = audio.clone()
    if anchors.numel() == 0:
        return out
    is_anchor = torch.zeros(audio.shape[0], dtype=torch.bool)
    is_anchor[anchors] = True
    pool = torch.nonzero(~dom & ~is_anchor).flatten()
    if pool.numel() == 0:
        return out
    an = torch.nn.functional.normalize(audio.float(), dim=-1)
    assign = (an[pool] @ an[anchors].T).argmax(-1)
    vn = torch.nn.functional.normalize(video.reshape(-1, video.shape[-1]).float(), dim=-1)
    cross = (an[pool] @ vn.T).max(-1).values
    for j in range(anchors.numel()):
        members = torch.nonzero(assign == j).flatten()
        if members.numel() == 0:
            continue
        top = torch.topk(cross[members], min(g, members.numel())).indices
        chosen = pool[members[top]]
        w = torch.softmax(cross[members[top]], 0)
        out[anchors[j]] = (audio[anchors[j]] + (w[:, None] * audio[chosen]).sum(0)) / (1 + w.sum())
    return out


# ---------------------------------------------------------------------------------------------- budgets
def base_drop_ratios(retention: Tensor, lo: float = RHO_MIN, hi: float = RHO_MAX) -> Tensor:
    """ρ_v(i) = clip(hi + (lo − hi)·S_a(i), lo, hi); the authors' band is [0.35, 0.75].  retention: [W] float64."""
    return (hi + (lo - hi) * retention).clamp(lo, hi)


def renormalise_reference(ratios: Tensor, sizes: Tensor, rho_video: float, unguided: int = 0) -> Tensor:
    """The authors' renormaliser (not monotone): pin the first arg-min and arg-max windows, scale the others
    towards the target discard, clip, spread the remaining error evenly, clip again. Only with > 2 windows."""
    r = ratios.double().clone()
    n = sizes.double()
    target = rho_video * (n.sum() + unguided) - rho_video * unguided
    if r.numel() <= 2 or abs(float((r * n).sum()) - float(target)) <= 1e-3:
        return r
    lo, hi = int(torch.argmin(r)), int(torch.argmax(r))
    others = torch.ones_like(r, dtype=torch.bool)
    others[[lo, hi]] = False
    fixed = float((r[~others] * n[~others]).sum())
    denom = float((r[others] * n[others]).sum())
    if denom > 0:
        scale = (float(target) - fixed) / denom
        r[others] = (r[others] * scale).clamp(RHO_MIN, RHO_MAX)
    error = float(target) - fixed - float((r[others] * n[others]).sum())
    n_others = float(n[others].sum())
    if n_others > 0:
        r[others] = (r[others] + error / n_others).clamp(RHO_MIN, RHO_MAX)
    return r


def renormalise_monotone(ratios: Tensor, sizes: Tensor, rho_video: float, lo: float = RHO_MIN,
                         hi: float = RHO_MAX) -> Tensor:
    """Shift every window by one offset b (bisection) so that Σ clip(ρ_i + b)·n_i = ρ_v·Σ n_i: louder windows
    never keep fewer tokens than quieter ones, and the target is met unless clipping binds everywhere."""
    r, n = ratios.double(), sizes.double()
    target = rho_video * float(n.sum())
    a, b = -1.0, 1.0
    for _ in range(60):
        mid = (a + b) / 2
        if float(((r + mid).clamp(lo, hi) * n).sum()) < target:
            a = mid
        else:
            b = mid
    return (r + (a + b) / 2).clamp(lo, hi)


# ---------------------------------------------------------------------------------------------- ISTC
def istc_scores(xw: Tensor, knn: int = 5) -> Tensor:
    """Per-frame scores of a window [L, N, D]: even local frames DPC-kNN (1 − cos, self excluded), odd frames
    cosine to the same position of the previous (unpruned) frame — lower keeps."""
    length, n, _ = xw.shape
    xn = l2_normalize(xw.float())
    scores = torch.empty(length, n)
    for f in range(length):
        if f % 2 == 0:
            dist = 1 - xn[f] @ xn[f].T
            k = max(1, min(knn, n - 1))
            off = dist + torch.eye(n) * 1e9  # exclude self
            rho = torch.exp(-torch.topk(off, k, dim=-1, largest=False).values.mean(-1)) if n > 1 else torch.ones(n)
            denser = rho[None, :] > rho[:, None]
            delta = torch.where(denser, dist, torch.full_like(dist, float("inf"))).min(-1).values
            delta = torch.where(torch.isinf(delta), dist.max(-1).values, delta)
            scores[f] = rho * delta
        else:
            scores[f] = (xn[f] * xn[f - 1]).sum(-1)
    return scores


def istc_keep(xw: Tensor, drop: float) -> Tensor:
    """Kept mask [L, N] of a window with drop ratio r: k = ⌊N·(1 − r)⌋ per frame (top DPC score on even frames,
    least similar to the previous frame on odd frames)."""
    length, n, _ = xw.shape
    k = max(1, int(math.floor(n * (1 - drop))))  # vtc: at least one token per frame
    scores = istc_scores(xw)
    keep = torch.zeros(length, n, dtype=torch.bool)
    for f in range(length):
        idx = torch.topk(scores[f], min(k, n), largest=(f % 2 == 0)).indices
        keep[f, idx] = True
    return keep


# ---------------------------------------------------------------------------------------------- the method
def windows_of(times: Tensor, window_seconds: float) -> Tensor:
    """Window index of every frame: floor((t − t0) / window) made contiguous 0..W−1.  times: [T] → [T]."""
    w = torch.floor((times.double() - times.double()[0]) / window_seconds + 1e-9).long()
    return torch.unique_consecutive(w, return_inverse=True)[1]


@implements("omnizip")
def omnizip(
    x: Tensor,
    *,
    grid: tuple[int, int],
    ratio: float,
    signals: Signals,
    rho_audio: float,
    contextual_ratio: float,
    g: int,
    window_seconds: float,
    audio_tokens_per_sec: int,
    normaliser: str,
) -> Reduction:
    """OmniZip.  x: [T, N, D]; signals.audio_saliency [A] at `audio_tokens_per_sec`; signals.times [T] seconds.

    1. Audio: the top round((1 − ρ_a)·A) tokens by saliency are kept (plus anchors when G > 0); S_a(i) = share
       kept in window i.
    2. Window drop ratio ρ_v(i) = clip(0.75 − 0.40·S_a(i), 0.35, 0.75), renormalised towards ρ_v = 1 − ratio.
    3. ISTC in each window: k = ⌊N·(1 − ρ_v(i))⌋ per frame; even frames by DPC-kNN score, odd frames least
       similar to the previous frame. Tokens are dropped, not merged.
    Fallback: no audio saliency, or a flat one (silence throughout): every window gets ρ_v (uniform budget), and
    `info["guidance"]` says so. Deviations: DPC ties among equal densities break by index, not randomly; the
    monotone normaliser moves the authors' band [0.35, 0.75] with the target, to [ρ_v − 0.25, ρ_v + 0.15], so
    that ratios far from their 0.4 can be met (the reference normaliser keeps the fixed band).
    """
    t, n, _ = x.shape
    rho_video = 1.0 - ratio
    times = signals.times if signals.times is not None else torch.arange(t, dtype=torch.float64)
    win = windows_of(times, window_seconds)
    n_win = int(win.max()) + 1
    sizes = torch.bincount(win, minlength=n_win) * n
    sal = signals.audio_saliency
    info: dict[str, object] = {}
    if sal is None or sal.numel() == 0 or float(sal.max() - sal.min()) < 1e-8:
        drops = torch.full((n_win,), rho_video, dtype=torch.float64)
        info["guidance"] = "uniform (no audio track)" if sal is None or sal.numel() == 0 else "uniform (flat audio)"
    else:
        dom, anchors = select_audio(sal, rho_audio, contextual_ratio, g)
        kept = dom.clone()
        kept[anchors] = True
        per_win = max(1, int(round(window_seconds * audio_tokens_per_sec)))
        t0 = float(times[0])
        a_start = [int(round((t0 + i * window_seconds) * audio_tokens_per_sec)) for i in range(n_win)]
        retention = torch.zeros(n_win, dtype=torch.float64)
        for i in range(n_win):
            seg = kept[a_start[i] : a_start[i] + per_win]
            retention[i] = float(seg.float().mean()) if seg.numel() else 0.0  # float32, as the authors
        if normaliser == "reference":
            drops = renormalise_reference(base_drop_ratios(retention), sizes, rho_video)
        else:  # the authors' band [0.35, 0.75] is [ρ_v − 0.25, ρ_v + 0.15] at their ρ_v = 0.6: keep it around ρ_v
            lo, hi = max(0.0, rho_video - 0.25), min(0.99, rho_video + 0.15)
            drops = renormalise_monotone(base_drop_ratios(retention, lo, hi), sizes, rho_video, lo, hi)
        info.update(guidance="audio", audio_retention=[round(float(v), 6) for v in retention])
    keep = torch.zeros(t, n, dtype=torch.bool)
    for i in range(n_win):
        frames = torch.nonzero(win == i).flatten()
        keep[frames] = istc_keep(x[frames], float(drops[i]))
    red = Reduction.select(torch.nonzero(keep.reshape(-1)).flatten(), t * n)
    info["window_drop_ratios"] = [float(v) for v in drops]
    info["windows"] = n_win
    red.info.update(info)
    red.segments = torch.stack([torch.stack([torch.nonzero(win == i).min(), torch.nonzero(win == i).max()])
                                for i in range(n_win)]).long()
    return red
