"""GTP-ViT inside the ViT: in every block, the least important patches are propagated into their graph neighbours
and removed, so later blocks run on fewer tokens without discarding what those patches carried.  Follows
Ackesnal/GTP-ViT @ 97a1178 (`models_v3.py`: `select`, `propagate`, `Attention`, the graph in `forward_features`).

Before block 0, a graph over the patches of each frame: spatial (8-neighbourhood on the grid), semantic (each patch's
`num_neighbours` most cosine-similar embedded patches) or both, symmetrically normalised D^-½ A D^-½.
In each block:
1. attention with the token-scale bias log(s_j); with `sparsity` < 1 the smallest (1 − sparsity) of each head's
   probabilities are zeroed before they mix the values;
2. rank the patches from that attention (e.g. MixedAttnMax: max-over-heads self-attention × max-over-heads
   attention received); the `num_prop` lowest are propagated;
3. GraphProp: x_kept += alpha · W[kept, prop] · x_prop, the scales likewise; the graph keeps its kept rows and
   columns (not renormalised); Mean: the propagated patches become one mean token; None: they are dropped;
4. output [CLS, kept patches in rank order].
Token sources are fractional (each kept token: itself + alpha × what it received).

`--ratio` sets the constant `num_prop` per block unless given. vtc builds the spatial graph on the tower's real
grid (the authors assume a square one), gives an isolated node weight 0 instead of dividing by zero, skips the
zeroing when (1 − sparsity)·L² < 1 (the authors' kthvalue raises), and gives the Mean token the summed scale of the
tokens it replaces (the authors' code leaves the scales unchanged there and fails at the next block).
Without CLS (SigLIP) the authors' class-token-free branch applies as is, including its semantic kNN that keeps
`num_neighbours + 1` neighbours.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.errors import UsageError
from vtc.methods.declare import implements
from vtc.reduction import Reduction
from vtc.signals import Signals
from vtc.stages.in_encoder import BlockMerger, BlockView

SELECTIONS = ("MixedAttnMax", "MixedAttnMean", "SumAttnMax", "CLSAttnMean", "CLSAttnMax", "IMGAttnMean",
              "IMGAttnMax", "DiagAttnMean", "DiagAttnMax", "CosSimMean", "CosSimMax")


def token_graph(x: Tensor, grid: tuple[int, int], graph_type: str, num_neighbours: int, protected: int) -> Tensor:
    """The normalised graph over the patches.  x: [B, L, D] embedded tokens (CLS first when protected) → [B, N, N]."""
    b, length, _ = x.shape
    n = length - protected
    h, w = grid
    eye = torch.eye(n, device=x.device)
    adj = torch.zeros(b, n, n, device=x.device)
    if graph_type in ("Spatial", "Mixed"):
        row, col = torch.arange(n, device=x.device) // w, torch.arange(n, device=x.device) % w
        spatial = ((row[:, None] - row[None]).abs() <= 1).float() * ((col[:, None] - col[None]).abs() <= 1).float()
        adj = (spatial - eye).expand(b, -1, -1)
    if graph_type in ("Semantic", "Mixed"):
        xn = x[:, protected:] / x[:, protected:].norm(dim=-1, keepdim=True)
        cos = xn @ xn.transpose(-1, -2)
        kth = max(1, min(n, length - 1 - num_neighbours))
        thr = torch.kthvalue(cos, kth, dim=-1, keepdim=True)[0]
        semantic = torch.where(cos >= thr, 1.0, 0.0) - eye[None]
        adj = semantic if graph_type == "Semantic" else torch.bitwise_or(semantic.int(), adj.int()).float()
    degree = adj.sum(-1)
    d = torch.where(degree > 0, degree ** (-1 / 2), 0.0)
    return d[..., :, None] * adj * d[..., None, :]


def token_rank(probs: Tensor, selection: str, protected: int) -> Tensor:
    """The authors' `select` scores.  probs: [B, H, L, L] (after bias and sparsity) → [B, N] over the patches."""
    p = protected
    diag = torch.diagonal(probs, dim1=-2, dim2=-1)[..., p:]
    received = probs[..., p:].sum(-2)
    if selection == "CLSAttnMean":
        return probs[:, :, 0, 1:].mean(1)
    if selection == "CLSAttnMax":
        return probs[:, :, 0, 1:].max(1)[0]
    if selection == "IMGAttnMean":
        return received.mean(1)
    if selection == "IMGAttnMax":
        return received.max(1)[0]
    if selection == "DiagAttnMean":
        return diag.mean(1)
    if selection == "DiagAttnMax":
        return diag.max(1)[0]
    if selection == "MixedAttnMean":
        return diag.mean(1) * received.mean(1)
    if selection == "MixedAttnMax":
        return diag.max(1)[0] * received.max(1)[0]
    if selection == "SumAttnMax":
        return diag.max(1)[0] + received.max(1)[0]
    rows = probs[:, :, p:, :].mean(1) if selection == "CosSimMean" else probs[:, :, p:, :].max(1)[0]
    rows = rows / rows.norm(dim=-1, keepdim=True)
    return -(rows @ rows.transpose(-1, -2)).sum(-1)


class GTPMerger(BlockMerger):
    """GTP-ViT as a block hook (see the module docstring).  `num_prop[l]`: patches propagated in block l."""

    wants_probs = True

    def __init__(self, num_prop: list[int], protected: int, *, selection: str = "MixedAttnMax",
                 propagation: str = "GraphProp", graph_type: str = "Mixed", num_neighbours: int = 8,
                 sparsity: float = 1.0, alpha: float = 0.4, token_scale: bool = True, floor: int | None = None
                 ) -> None:
        super().__init__()
        self.num_prop, self.protected = list(num_prop), protected
        self.selection, self.propagation, self.num_neighbours = selection, propagation, num_neighbours
        if propagation == "GraphProp" and graph_type not in ("Spatial", "Semantic", "Mixed"):
            graph_type = "Spatial"  # as the authors' constructor
        self.graph_type = graph_type if propagation == "GraphProp" else "None"
        self.sparsity, self.alpha, self.token_scale, self.floor = sparsity, alpha, token_scale, floor
        self.prop_attn = token_scale
        self.edits_attention = sparsity < 1
        self.graph: Tensor | None = None
        self.first_graph: Tensor | None = None
        self.records: dict[int, tuple[Tensor, Tensor]] = {}

    def start(self, x: Tensor, grid: tuple[int, int] | None = None) -> None:
        super().start(x, grid)
        self.records = {}
        n = x.shape[1] - self.protected
        if grid is None:
            side = int(n**0.5)
            if side * side != n:
                raise UsageError(f"gtp_vit: {n} patches and no grid given (a square one is assumed without it)")
            grid = (side, side)
        self.graph = None
        if self.graph_type != "None":
            self.graph = token_graph(x.float(), grid, self.graph_type, self.num_neighbours, self.protected)
        self.first_graph = self.graph
        if self.token_scale:
            self.size = torch.ones_like(x[..., :1])

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"num_prop": self.num_prop, "selection": self.selection,
                                  "propagation": self.propagation, "graph": self.graph_type, "alpha": self.alpha,
                                  "sparsity": self.sparsity, "token_scale": self.token_scale}
        if self.floor is not None:
            out["budget_floor"] = self.floor
        return out

    def edit_attention(self, layer: int, probs: Tensor) -> Tensor:
        b, h, length, _ = probs.shape
        k = int(length * length * (1 - self.sparsity))
        if k < 1:
            return probs
        thr = torch.kthvalue(probs.reshape(b, h, -1), k, dim=-1, keepdim=True)[0].unsqueeze(-1)
        return probs.masked_fill(probs < thr, 0.0)

    def step(self, layer: int, x: Tensor, view: BlockView) -> Tensor:
        p = self.protected
        n = x.shape[1] - p
        num = min(self.num_prop[layer] if layer < len(self.num_prop) else 0, n - 1)
        if num <= 0:
            return x
        assert view.probs is not None and self.source is not None
        order = torch.argsort(token_rank(view.probs, self.selection, p), dim=1, descending=True)
        kept, prop = order[:, :-num] + p, order[:, -num:] + p
        self.records[layer] = (kept, prop)

        def rows(t: Tensor, idx: Tensor) -> Tensor:
            return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1]))

        x_kept, x_prop = rows(x, kept), rows(x, prop)
        s_kept, s_prop = rows(self.source, kept), rows(self.source, prop)
        size = self.size
        z_kept = rows(size, kept) if size is not None else None
        if self.propagation == "GraphProp":
            assert self.graph is not None
            kl, pl = kept - p, prop - p
            g = self.graph.gather(1, kl[..., None].expand(-1, -1, n))
            w_prop = g.gather(2, pl[:, None, :].expand(-1, g.shape[1], -1))
            self.graph = g.gather(2, kl[:, None, :].expand(-1, g.shape[1], -1))
            x_kept = x_kept + self.alpha * (w_prop.to(x.dtype) @ x_prop)
            s_kept = s_kept + self.alpha * (w_prop.to(s_prop.dtype) @ s_prop)
            if size is not None and z_kept is not None:
                z_prop = rows(size, prop)[..., 0]
                z_kept = (z_kept[..., 0] + self.alpha * (w_prop.to(size.dtype) @ z_prop[..., None])[..., 0])[..., None]
        elif self.propagation == "Mean":
            x_kept = torch.cat([x_kept, x_prop.mean(1, keepdim=True)], 1)
            s_kept = torch.cat([s_kept, s_prop.mean(1, keepdim=True)], 1)
            if size is not None and z_kept is not None:
                z_kept = torch.cat([z_kept, rows(size, prop).sum(1, keepdim=True)], 1)
        self.source = torch.cat([self.source[:, :p], s_kept], 1)
        if size is not None and z_kept is not None:
            self.size = torch.cat([size[:, :p], z_kept], 1)
        return torch.cat([x[:, :p], x_kept], 1)


def gtp_vit_merger(*, ratio: float, layers: int, tokens: int, protected: int, num_prop: int | list[int] | None,
                   selection: str, propagation: str, graph_type: str,
                   num_neighbours: int, sparsity: float, alpha: float, token_scale: bool
                   ) -> GTPMerger:
    """The block hook the tower runs: `layers` blocks up to the read-out, `tokens` incl. `protected` (CLS)."""
    if selection.startswith("CLS") and not protected:
        raise UsageError(f"gtp_vit's selection {selection} needs a CLS token; this tower has none (use "
                         f"MixedAttnMax).")
    n = tokens - protected
    floor = None
    if num_prop is None:
        goal = max(1, round(ratio * n))
        net = 1 if propagation == "Mean" else 0  # Mean adds one token back
        per = -(-(n - goal) // layers) + net if n > goal else 0
        left = n
        for _ in range(layers):  # as `step` clamps: at least one patch stays
            num = min(per, left - 1)
            left -= num - net if num > 0 else 0
        sched = [per] * layers
        floor = left if left > goal else None
    elif isinstance(num_prop, int) and not isinstance(num_prop, bool) and num_prop >= 0:
        sched = [num_prop] * layers
    elif isinstance(num_prop, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                            for v in num_prop):
        sched = list(num_prop) + [0] * max(0, layers - len(num_prop))
    else:
        raise UsageError(f"parameter 'num_prop' of 'gtp_vit' takes a whole number ≥ 0 or a list, not {num_prop!r}.")
    return GTPMerger(sched, protected, selection=selection, propagation=propagation, graph_type=graph_type,
                     num_neighbours=num_neighbours, sparsity=sparsity, alpha=alpha, token_scale=token_scale,
                     floor=floor)


@implements("gtp_vit", in_encoder=gtp_vit_merger)
def gtp_vit(
    x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, num_prop: int | list[int] | None,
    selection: str, propagation: str, graph_type: str,
    num_neighbours: int, sparsity: float, alpha: float, token_scale: bool,
) -> Reduction:
    """Runs inside the encoder (`vtc compress`)."""
    raise UsageError("gtp_vit propagates tokens inside the encoder: use it with vtc compress; on features that "
                     "are already encoded use --method tome.")
