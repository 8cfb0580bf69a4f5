"""VisionZip (CVPR'25): dominant tokens by CLS attention + contextual tokens merged around strided anchors.
Follows dvlab-research/VisionZip @ 3151f6d.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.errors import UsageError
from vtc.methods.declare import implements
from vtc.ops import cosine_matrix, topk_indices
from vtc.ops.topk import py_round
from vtc.reduction import Reduction
from vtc.signals import Signals


def split_budget(tokens_per_frame: int) -> tuple[int, int]:
    """(dominant incl. CLS, contextual) in the README's 54:10 proportion."""
    contextual = max(1, py_round(tokens_per_frame * 10 / 64)) if tokens_per_frame > 1 else 0
    return tokens_per_frame - contextual, contextual


@implements("visionzip")
def visionzip(
    x: Tensor,
    *,
    grid: tuple[int, int],
    ratio: float,
    signals: Signals,
    dominant: int | None,
    contextual: int | None,
    contextual_merge: str,
    cls_row: bool,
) -> Reduction:
    """VisionZip, per frame.  x: [T, N, D]; cls_attn [T, N]; keys [T, N+1, d] (row 0 = CLS); cls_token [T, D].

    1. Dominant: the (dominant − 1) patches with the largest CLS attention, in raster order, after the CLS row.
    2. The other L patches (raster order): anchors at positions 0, s, 2s, … (s = max(1, L // contextual));
       every other one joins the anchor with the most cosine-similar key (first on ties).
    3. Contextual token = anchor + mean(assigned) ("add", the authors' code: such tokens have about twice the
       norm of a normal token) or mean(anchor, assigned) ("mean").
    Output per frame: [CLS, dominant, contextual]. SigLIP has no CLS: its attention-pool probe attention and
    pooled output stand in (the metadata says so). Deviation: contextual = 0 or L < contextual crash in the
    authors' code; vtc keeps min(contextual, L) anchors.
    """
    t, n, d = x.shape
    if dominant is None or contextual is None:
        k = max(1, py_round(ratio * n))
        dom_auto, ctx_auto = split_budget(k)
        dominant = dom_auto if dominant is None else dominant
        contextual = ctx_auto if contextual is None else contextual
    attn = signals.require("cls_attn", "visionzip").float()
    keys = signals.require("keys", "visionzip").float()[:, 1:]
    cls = signals.cls_token if cls_row else None
    if cls is not None and cls.shape[-1] != d:
        raise UsageError(f"visionzip: the CLS/pooled signal has {cls.shape[-1]} channels, the tokens {d}; "
                         f"pass -p cls_row=false.")
    n_dom = max(0, min(dominant - 1, n))
    dom = topk_indices(attn, n_dom)  # [T, n_dom] ascending
    groups: list[tuple[Tensor, Tensor, int]] = []
    for f in range(t):
        off = f * n
        if cls is not None:
            groups.append((torch.tensor([t * n + f]), torch.ones(1), -1))
        for p in dom[f].tolist():
            groups.append((torch.tensor([off + p]), torch.ones(1), off + p))
        rest_mask = torch.ones(n, dtype=torch.bool)
        rest_mask[dom[f]] = False
        rest = torch.nonzero(rest_mask).flatten()
        length = rest.numel()
        n_ctx = min(contextual, length)
        if n_ctx <= 0:
            continue
        step = max(1, length // n_ctx)
        anchors = torch.arange(0, step * n_ctx, step)[:n_ctx]
        others = torch.ones(length, dtype=torch.bool)
        others[anchors] = False
        other_idx = torch.nonzero(others).flatten()
        assign = cosine_matrix(keys[f, rest[other_idx]], keys[f, rest[anchors]]).argmax(-1)
        for j in range(n_ctx):
            members = rest[other_idx[assign == j]]
            m = members.numel()
            if contextual_merge == "add":
                w = torch.cat([torch.ones(1), torch.full((m,), 1.0 / m)]) if m else torch.ones(1)
            else:
                w = torch.full((m + 1,), 1.0 / (m + 1))
            groups.append((torch.cat([rest[anchors[j]][None], members]) + off, w, off + int(rest[anchors[j]])))
    red = Reduction.from_groups(groups, t * n)
    if cls is not None:
        red.with_extra(cls.float(), torch.arange(t))
    red.info.update(dominant=dominant, contextual=contextual, order="frame, then CLS, dominant, contextual")
    return red
