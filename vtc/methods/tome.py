"""ToMe (ICLR'23) bipartite soft matching, applied post hoc in rounds to encoder outputs.
Follows facebookresearch/ToMe @ af95e4b (`bipartite_soft_matching`, `merge_wavg`, `merge_source`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.methods.declare import implements
from vtc.ops import l2_normalize
from vtc.ops.topk import py_round
from vtc.reduction import Reduction
from vtc.signals import Signals


def tome_rounds(x: Tensor, target: int) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """Merge a batch of token sets down to `target` tokens each.  x: [B, n, D].

    Round: r = min(n − target, n // 2); A = even slots, B = odd slots; each A token's best B partner by cosine
    (of the current merged features); the r best-scoring A tokens merge into their partners with size-weighted
    means; output order [unmerged A (descending score), B (original order)].
    Returns (slot [B, n0] final slot of every original token, rep [B, target] original index of each slot's
    surviving token, size [B, target], the r of every round).
    """
    b, n0, d = x.shape
    cur = x.float()
    size = torch.ones(b, n0)
    slot = torch.arange(n0).expand(b, n0).clone()  # current slot of every original token
    rep = torch.arange(n0).expand(b, n0).clone()  # original index of the token in each current slot
    rounds: list[int] = []
    n = n0
    bidx = torch.arange(b)[:, None]
    while n > target:
        r = min(n - target, n // 2)
        if r <= 0:
            break
        rounds.append(r)
        metric = l2_normalize(cur)
        a, bb = metric[:, ::2], metric[:, 1::2]
        na, nb = a.shape[1], bb.shape[1]
        scores = a @ bb.transpose(-1, -2)
        node_max, node_idx = scores.max(-1)
        edge = node_max.argsort(dim=-1, descending=True)
        unm, src = edge[:, r:], edge[:, :r]
        dst = torch.gather(node_idx, 1, src)
        xa, xb = cur[:, ::2] * size[:, ::2, None], cur[:, 1::2] * size[:, 1::2, None]
        sa, sb = size[:, ::2], size[:, 1::2]
        xb = xb.scatter_reduce(1, dst[..., None].expand(b, r, d), torch.gather(xa, 1, src[..., None].expand(b, r, d)),
                               reduce="sum")
        sb = sb.scatter_reduce(1, dst, torch.gather(sa, 1, src), reduce="sum")
        new_x = torch.cat([torch.gather(xa, 1, unm[..., None].expand(b, na - r, d)), xb], 1)
        size = torch.cat([torch.gather(sa, 1, unm), sb], 1)
        cur = new_x / size[..., None]
        # slot bookkeeping: old A slot 2i, B slot 2j+1 → new slots
        new_of_old = torch.empty(b, n, dtype=torch.long)
        a_new = torch.empty(b, na, dtype=torch.long)
        a_new[bidx, unm] = torch.arange(na - r).expand(b, na - r)
        a_new[bidx, src] = (na - r) + dst
        new_of_old[:, ::2] = a_new
        new_of_old[:, 1::2] = (na - r) + torch.arange(nb).expand(b, nb)
        slot = torch.gather(new_of_old, 1, slot)
        rep = torch.cat([torch.gather(rep[:, ::2], 1, unm), rep[:, 1::2]], 1)
        n = cur.shape[1]
    return slot, rep, size, rounds


@implements("tome")
def tome(
    x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, mode: str
) -> Reduction:
    """ToMe, post hoc.  x: [T, N, D]; K = round(ratio·N) per frame (or round(ratio·T·N) joint).

    Every output token is the plain mean of the original tokens merged into it (size-weighted means of means);
    its representative is the surviving slot's original token. Output order is ToMe's (not raster).
    """
    t, n, d = x.shape
    r = ratio
    sets = x.reshape(1, t * n, d) if mode == "joint" else x
    length = sets.shape[1]
    target = max(1, py_round(r * length))
    slot, rep, size, rounds = tome_rounds(sets, target)
    nb, k = rep.shape
    off = (torch.arange(nb) * length)[:, None]
    dst = (slot + (torch.arange(nb) * k)[:, None]).reshape(-1)
    w = (1.0 / torch.gather(size, 1, slot)).reshape(-1)
    src = (torch.arange(length).expand(nb, length) + off).reshape(-1)
    red = Reduction.build(dst, src, w, (rep + off).reshape(-1), t * n)
    red.info.update(rounds=rounds, order="ToMe: unmerged A tokens by score, then B tokens, per round")
    return red
