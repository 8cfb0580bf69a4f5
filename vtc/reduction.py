"""`Reduction`: the one object every method returns.

Almost every token-reduction method outputs tokens that are *weighted combinations of source tokens*:
pruning keeps rows with weight 1, merging averages or blends. A `Reduction` stores that map as a sparse
K × (T·N) matrix W plus one representative source per output row. W is the sum of two parts: entries in COO
form (one (dst, src, weight) each) and `Groups`, uniform-weight blocks in compressed-row form (a row, one weight,
a list of member sources) for methods whose rows average many sources — FastVID's anchors each average a whole
segment's candidates, which as entries would be one (dst, src, weight) triple per candidate × anchor. Everything
else follows from it in one place: the output tokens (W · x), `sizes`, the `source` assignment, positions, the
file's `merge_*` tensors and the golden comparison.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Groups:
    """Uniform-weight blocks of a merge map in compressed-row form: group g adds weight[g] · Σ x[s] over its
    members s (the next size[g] values of `src`, groups one after another) to output row dst[g].

    Attributes:
        dst: [G] int64 output row of each group.
        weight: [G] float32 weight every member of the group gets.
        size: [G] int64 members of each group.
        src: [M] int64 flat source index of every member, group after group (M = Σ size).
    """

    dst: Tensor
    weight: Tensor
    size: Tensor
    src: Tensor

    @staticmethod
    def empty() -> Groups:
        z = torch.zeros(0, dtype=torch.long)
        return Groups(z, torch.zeros(0), z, z)

    @staticmethod
    def cat(parts: Sequence[Groups], row_offsets: Sequence[int] | None = None) -> Groups:
        """Groups of several maps one after another; part i's rows move by row_offsets[i] (default 0)."""
        parts = list(parts)
        if not parts:
            return Groups.empty()
        offs = list(row_offsets) if row_offsets is not None else [0] * len(parts)
        return Groups(torch.cat([p.dst + o for p, o in zip(parts, offs, strict=True)]),
                      torch.cat([p.weight for p in parts]), torch.cat([p.size for p in parts]),
                      torch.cat([p.src for p in parts]))

    @property
    def num_groups(self) -> int:
        return int(self.dst.numel())

    @property
    def num_members(self) -> int:
        return int(self.src.numel())

    def offsets(self) -> Tensor:
        """[G + 1] int64: group g's members are src[offsets[g] : offsets[g + 1]]."""
        return torch.cat([torch.zeros(1, dtype=torch.long), self.size.long().cumsum(0)])

    def member_group(self) -> Tensor:
        """[M] int64 group of every member."""
        return torch.repeat_interleave(torch.arange(self.num_groups), self.size.long())

    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """The groups as COO entries: (dst [M], src [M], weight [M])."""
        g = self.member_group()
        return self.dst[g], self.src, self.weight[g]

    def take(self, order: Tensor) -> Groups:
        """Groups in a new order: new group i is old group `order[i]` (members move with their group)."""
        order = order.long()
        offsets = self.offsets()
        size = self.size.long()[order]
        start = torch.repeat_interleave(offsets[order], size)
        within = torch.arange(int(size.sum())) - torch.repeat_interleave(size.cumsum(0) - size, size)
        return Groups(self.dst[order], self.weight[order], size, self.src[start + within])


@dataclass
class Reduction:
    """A sparse linear map from T·N source tokens to K output tokens.

    Attributes:
        dst: [E] int64, output row of each entry.
        src: [E] int64, flat source index t·N + n of each entry.
        weight: [E] float32, weight of each entry: tokens[dst] += weight · x_flat[src].
        rep: [K] int64, representative flat source index of each output row (whose position the row
            keeps); -1 for rows that are not tied to one source position.
        num_sources: T·N.
        segments: [S, 2] int64 inclusive frame ranges of temporal segments/windows, or None.
        info: method-specific facts worth recording (effective knobs, signal names, ...).
        extra: [X, D] tokens that are not on the patch grid (VisionZip's CLS tokens, TS-LLaVA's thumbnail tokens);
            a src index num_sources + i refers to extra[i]. `extra_frames` [X] gives each one's frame (-1: none).
        groups: uniform-weight blocks added to the entries (`Groups`), or None.
    Entries are coalesced: no (dst, src) pair appears twice, in the entries and the groups together.
    """

    dst: Tensor
    src: Tensor
    weight: Tensor
    rep: Tensor
    num_sources: int
    segments: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    extra: Tensor | None = None
    extra_frames: Tensor | None = None
    groups: Groups | None = None

    # ------------------------------------------------------------------ constructors
    @staticmethod
    def build(
        dst: Tensor,
        src: Tensor,
        weight: Tensor,
        rep: Tensor,
        num_sources: int,
        segments: Tensor | None = None,
        info: dict[str, Any] | None = None,
        groups: Groups | None = None,
    ) -> Reduction:
        """Coalesce (sum duplicate (dst, src) entries) and sort entries by (dst, src).  `groups` (kept as given)
        must share no (dst, src) pair with the entries or with each other."""
        rep = rep.reshape(-1).long().cpu()
        dst, src = dst.reshape(-1).long().cpu(), src.reshape(-1).long().cpu()
        weight = weight.reshape(-1).to(torch.float64).cpu()
        n = max(num_sources, int(src.max()) + 1 if src.numel() else 0, 1)
        key = dst * n + src
        uniq, inv = torch.unique(key, return_inverse=True)
        w = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inv, weight)
        return Reduction(
            dst=uniq // n,
            src=uniq % n,
            weight=w.float(),
            rep=rep,
            num_sources=num_sources,
            segments=None if segments is None else segments.long().cpu(),
            info=dict(info or {}),
            groups=groups if groups is not None and groups.num_groups else None,
        )

    @staticmethod
    def select(index: Tensor, num_sources: int, **kw: Any) -> Reduction:
        """Pure pruning: output row i is source `index[i]` unchanged.  index: [K] flat indices."""
        index = index.reshape(-1).long()
        k = torch.arange(index.numel())
        return Reduction.build(k, index, torch.ones(index.numel()), index, num_sources, **kw)

    @staticmethod
    def from_groups(
        groups: Sequence[tuple[Tensor, Tensor, int]], num_sources: int, **kw: Any
    ) -> Reduction:
        """One output row per (src [E_i], weight [E_i], rep) triple, in the given order."""
        if not groups:
            empty = torch.zeros(0, dtype=torch.long)
            return Reduction.build(empty, empty, torch.zeros(0), empty, num_sources, **kw)
        dst = torch.cat([torch.full((g[0].numel(),), i, dtype=torch.long) for i, g in enumerate(groups)])
        src = torch.cat([g[0].reshape(-1).long() for g in groups])
        w = torch.cat([g[1].reshape(-1).to(torch.float64) for g in groups])
        rep = torch.tensor([int(g[2]) for g in groups], dtype=torch.long)
        return Reduction.build(dst, src, w, rep, num_sources, **kw)

    @staticmethod
    def concat(parts: Sequence[Reduction], num_sources: int, **kw: Any) -> Reduction:
        """Stack the rows of several reductions (over the same sources) in order."""
        dsts, srcs, ws, reps, groups, offs, off = [], [], [], [], [], [], 0
        for p in parts:
            dsts.append(p.dst + off)
            srcs.append(p.src)
            ws.append(p.weight.double())
            reps.append(p.rep)
            if p.groups is not None:
                groups.append(p.groups)
                offs.append(off)
            off += p.num_outputs
        if not parts:
            return Reduction.select(torch.zeros(0, dtype=torch.long), num_sources, **kw)
        joined = Groups.cat(groups, offs) if groups else None
        return Reduction.build(torch.cat(dsts), torch.cat(srcs), torch.cat(ws), torch.cat(reps), num_sources,
                               groups=joined, **kw)

    # ------------------------------------------------------------------ derived facts
    @property
    def num_outputs(self) -> int:
        """K."""
        return int(self.rep.numel())

    @property
    def num_entries(self) -> int:
        """Nonzero weights of the map: entries plus group members."""
        return int(self.dst.numel()) + (self.groups.num_members if self.groups is not None else 0)

    def entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """The whole map as coalesced COO entries sorted by (dst, src): (dst [E'], src [E'], weight [E'] float32),
        the groups spelled out one entry per member."""
        if self.groups is None:
            return self.dst, self.src, self.weight
        g_dst, g_src, g_w = self.groups.entries()
        dst, src = torch.cat([self.dst, g_dst]), torch.cat([self.src, g_src])
        w = torch.cat([self.weight.float(), g_w.float()])
        order = torch.argsort(src, stable=True)
        order = order[torch.argsort(dst[order], stable=True)]
        return dst[order], src[order], w[order]

    def with_extra(self, extra: Tensor, extra_frames: Tensor | None = None) -> Reduction:
        """Attach the off-grid tokens [X, D] that src indices ≥ num_sources refer to."""
        self.extra = extra
        self.extra_frames = extra_frames
        return self

    def permute(self, order: Tensor) -> Reduction:
        """Reorder output rows: new row i is old row `order[i]`."""
        order = order.long().cpu()
        inv = torch.empty_like(order)
        inv[order] = torch.arange(order.numel())
        groups = None
        if self.groups is not None:
            moved = Groups(inv[self.groups.dst], self.groups.weight, self.groups.size, self.groups.src)
            groups = moved.take(torch.argsort(moved.dst, stable=True))
        red = Reduction.build(
            inv[self.dst], self.src, self.weight, self.rep[order], self.num_sources, self.segments, self.info,
            groups=groups,
        )
        return red.with_extra(self.extra, self.extra_frames) if self.extra is not None else red

    def apply(self, x: Tensor) -> Tensor:
        """Output tokens.  x: [T, N, D] or [T·N, D] → [K, D] (in x's dtype, accumulated in float32+)."""
        flat = x.reshape(self.num_sources, -1)
        if self.extra is not None:
            flat = torch.cat([flat, self.extra.to(flat.device, flat.dtype).reshape(-1, flat.shape[1])])
        acc_dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
        w = self.weight.to(device=flat.device, dtype=acc_dtype)
        src, dst = self.src.to(flat.device), self.dst.to(flat.device)
        out = torch.zeros(self.num_outputs, flat.shape[1], dtype=acc_dtype, device=flat.device)
        for s in range(0, src.numel(), 1 << 16):  # entries in chunks: the gathered rows never all exist at once
            part = slice(s, s + (1 << 16))
            out.index_add_(0, dst[part], flat[src[part]].to(acc_dtype) * w[part, None])
        if self.groups is not None and flat.dtype == acc_dtype:
            # the groups are compressed rows: one sparse (CSR) product, no gathered copy of the member rows
            gr = self.groups
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore")
                csr = torch.sparse_csr_tensor(
                    gr.offsets().to(flat.device), gr.src.to(flat.device),
                    gr.weight.to(device=flat.device, dtype=acc_dtype)[gr.member_group().to(flat.device)],
                    size=(gr.num_groups, flat.shape[0]), check_invariants=False)
                out.index_add_(0, gr.dst.to(flat.device), csr @ flat)
        elif self.groups is not None:  # each group: its weight times the sum of its members, a block at a time
            gr = self.groups
            g_of = gr.member_group().to(flat.device)
            g_src, g_dst = gr.src.to(flat.device), gr.dst.to(flat.device)
            g_w = gr.weight.to(device=flat.device, dtype=acc_dtype)
            for s in range(0, g_src.numel(), 1 << 16):
                part = slice(s, s + (1 << 16))
                g = g_of[part]
                out.index_add_(0, g_dst[g], flat[g_src[part]].to(acc_dtype) * g_w[g, None])
        return out.to(flat.dtype)

    def sizes(self) -> Tensor:
        """[K] int32: how many source tokens each output row stands for."""
        size = torch.bincount(self.dst, minlength=self.num_outputs)
        if self.groups is not None:
            size = size.index_add(0, self.groups.dst, self.groups.size.long())
        return size.int()

    def source(self) -> Tensor:
        """[T·N] int32: for each source, the output row receiving its largest weight (first on ties); -1 = dropped."""
        out = torch.full((self.num_sources,), -1, dtype=torch.long)
        if self.groups is not None:
            return self._source_with_groups()
        if self.dst.numel() == 0:
            return out.int()
        # sort entries by (src, -weight, dst) and take the first per source (grid sources only)
        order = torch.argsort(self.dst, stable=True)
        order = order[self.src[order] < self.num_sources]
        order = order[torch.argsort(-self.weight[order], stable=True)]
        order = order[torch.argsort(self.src[order], stable=True)]
        s = self.src[order]
        first = torch.ones_like(s, dtype=torch.bool)
        first[1:] = s[1:] != s[:-1]
        out[s[first]] = self.dst[order][first]
        return out.int()

    def _source_with_groups(self) -> Tensor:
        """`source` when the map has groups: the largest weight per source over entries and groups (a group's
        members read a block at a time), then the first row among those that reach it."""
        assert self.groups is not None
        gr, n = self.groups, self.num_sources
        g_of = gr.member_group()
        best = torch.full((n,), -float("inf"))

        def blocks() -> Any:
            on = self.src < n
            yield self.dst[on], self.src[on], self.weight.float()[on]
            for s in range(0, gr.num_members, 1 << 20):
                g = g_of[s : s + (1 << 20)]
                src = gr.src[s : s + (1 << 20)]
                on = src < n
                yield gr.dst[g][on], src[on], gr.weight.float()[g][on]

        for _, src, w in blocks():
            best.scatter_reduce_(0, src, w, "amax")
        first = torch.full((n,), self.num_outputs, dtype=torch.long)
        for dst, src, w in blocks():
            hit = w == best[src]
            first.scatter_reduce_(0, src[hit], dst[hit], "amin")
        return torch.where(first < self.num_outputs, first, -1).int()

    def row_frames(self, tokens_per_frame: int) -> Tensor:
        """[K] int64 frame of each output row: its representative's; for a row without one, the earliest frame
        among its sources (grid or off-grid, via `extra_frames`); -1 when none has a frame."""
        n = tokens_per_frame
        rep = self.rep.long()
        frame = torch.where(rep >= 0, rep // n, torch.full_like(rep, -1))
        if not bool((rep < 0).any()):
            return frame
        dst, src, _ = self.entries()
        src_frame = torch.where(src < self.num_sources, src // n, torch.full_like(src, -1))
        if self.extra_frames is not None:
            off = (src - self.num_sources).clamp(0, max(self.extra_frames.numel() - 1, 0))
            src_frame = torch.where(src >= self.num_sources, self.extra_frames.long()[off], src_frame)
        big = torch.iinfo(torch.long).max
        first = torch.full((self.num_outputs,), big, dtype=torch.long)
        first.scatter_reduce_(0, dst, torch.where(src_frame >= 0, src_frame, big), reduce="amin")
        return torch.where(rep >= 0, frame, torch.where(first == big, -1, first))

    def dense(self) -> Tensor:
        """[K, T·N] float64 dense matrix (for tests and small inputs)."""
        width = self.num_sources + (0 if self.extra is None else self.extra.shape[0])
        m = torch.zeros(self.num_outputs, width, dtype=torch.float64)
        dst, src, w = self.entries()
        m[dst, src] = w.double()
        return m

    def ratio(self) -> float:
        """Achieved ratio K / (T·N)."""
        return self.num_outputs / max(self.num_sources, 1)
