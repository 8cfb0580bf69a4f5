"""FastVID's merge map in group form (format 2): each context row is its pick plus one group (a weight and the list
of the other members), in memory, in the file, through windows and live chunks, with the same meaning as the entry
list it replaces: the dense map of the blend a·pick + (1 − a)·mean(group) written out here from its definition."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import vtc
from vtc.errors import FormatError
from vtc.io.chunks import join
from vtc.io.store import load
from vtc.methods import get_method
from vtc.ops import dpc_knn, topk_indices
from vtc.signals import Signals
from vtc.stages import segment


def features(t: int, n: int, d: int, seed: int) -> tuple[torch.Tensor, Signals]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, n, d, generator=g) + 0.4 * torch.randn(t, n, d, generator=g).cumsum(0)
    return x, Signals(attn=torch.rand(t, n, generator=g), pooled=x.mean(1))


def fastvid_dense(x: torch.Tensor, sig: Signals, ratio: float, beta: float = 0.6, stride: int = 4) -> torch.Tensor:
    """FastVID's map [K, T·N] from the paper's DTM rule, row by row (rows in the order of their representatives)."""
    t, n, d = x.shape
    budget = max(1, int(n * ratio))
    n_ctx = int(budget * 0.4)
    n_sal = budget - n_ctx
    rows: dict[int, torch.Tensor] = {}
    salient = topk_indices(sig.attn.float(), n_sal)
    for f in range(t):
        for p in salient[f].tolist():
            r = torch.zeros(t * n, dtype=torch.float64)
            r[f * n + p] = 1.0
            rows[f * n + p] = r
    cand = [sorted(set(range(n)) - set(salient[f].tolist())) for f in range(t)]
    nc = n - n_sal
    for s, e in segment("dyseg", x, sig, native="dyseg", min_segments=8, tau=0.9).tolist():
        length = e - s + 1
        m = min(math.floor(n_ctx * length / math.ceil(length / stride)), nc)
        pool_src = [f * n + c for f in range(s, e + 1) for c in cand[f]]
        pool = torch.nn.functional.normalize(x.reshape(-1, d)[pool_src].float(), dim=-1)
        for f in range(s, e + 1):
            if (e - f) % stride:
                continue
            xc = x[f, cand[f]].float()
            score = dpc_knn(xc[None], 4).score[0]
            pick = topk_indices(score, m, sort_index=False).tolist()
            picks = torch.nn.functional.normalize(xc[pick], dim=-1)
            assign = (pool @ picks.T).argmax(-1)
            for j, p in enumerate(pick):
                members = [pool_src[i] for i in torch.nonzero(assign == j).flatten().tolist()]
                a = max(1 / (len(members) + 1), beta) if members else 1.0
                r = torch.zeros(t * n, dtype=torch.float64)
                for src in members:
                    r[src] += (1 - a) / len(members)
                r[f * n + cand[f][p]] += a
                rows[f * n + cand[f][p]] = r
    return torch.stack([rows[k] for k in sorted(rows)])


def test_fastvid_groups_are_the_blend_of_the_paper() -> None:
    x, sig = features(24, 36, 16, 0)
    spec = get_method("fastvid")  # the declared defaults: β 0.6, anchor stride 4, k 4, as in fastvid_dense
    red = spec.run(x, grid=(6, 6), ratio=0.3, signals=sig, params=spec.resolve({}))
    assert red.groups is not None and red.groups.num_groups > 0
    assert torch.allclose(red.dense(), fastvid_dense(x, sig, 0.3), atol=1e-7, rtol=0)
    # one index per group member instead of a weighted entry: the entries are the picks and the salient tokens
    assert red.dst.numel() == red.num_outputs and red.num_entries == int(red.sizes().sum())


def test_fastvid_file_is_version_2_and_reads_back(tmp_path) -> None:
    """The file holds the groups (merge_group_*), reads back as the same map and the same tokens, and its map
    is smaller than its tokens; a file without groups is still written (and read) as version 1."""
    t, h, w, d = 48, 14, 14, 768  # a ViT-B width: one int32 per group member is below a float16 token row
    x, sig = features(t, h * w, d, 1)
    res = vtc.compress_features(x, method="fastvid", ratio=0.1, grid=(h, w), attn=sig.attn, pooled=sig.pooled)
    path = res.save(tmp_path / "f.safetensors")
    f = load(path)
    assert f.meta["format_version"] == "2"
    assert {"merge_group_dst", "merge_group_w", "merge_group_size", "merge_group_src"} <= set(f.tensors)
    assert torch.equal(f.reduction().dense(), res.reduction.dense())
    dst, src, wt = f.merge_entries()
    assert int(f["sizes"].sum()) == src.numel() == res.reduction.num_entries
    map_bytes = sum(f[k].numel() * f[k].element_size() for k in f.tensors if k.startswith("merge_"))
    assert map_bytes <= f.tokens.numel() * f.tokens.element_size()
    assert torch.allclose(f.reduction().apply(x).float(), f.tokens.float(), atol=2e-3, rtol=2e-3)  # float16 file
    plain = vtc.compress_features(x, method="pool", ratio=0.25, grid=(h, w)).save(tmp_path / "p.safetensors")
    assert load(plain).meta["format_version"] == "1" and "merge_group_src" not in load(plain).tensors


@pytest.mark.parametrize("damage", ["missing", "sum", "range", "version"])
def test_damaged_groups_are_refused(tmp_path, damage: str) -> None:
    x, sig = features(16, 16, 8, 2)
    res = vtc.compress_features(x, method="fastvid", ratio=0.3, grid=(4, 4), attn=sig.attn, pooled=sig.pooled)
    path = res.save(tmp_path / "f.safetensors")
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    if damage == "missing":
        del tensors["merge_group_size"]
    elif damage == "sum":
        tensors["merge_group_size"][0] += 1
    elif damage == "range":
        tensors["merge_group_src"][0] = 10**6
    else:
        meta["format_version"] = "1"
    save_file(tensors, str(tmp_path / "bad.safetensors"), meta)
    with pytest.raises(FormatError, match="merge_group"):
        load(tmp_path / "bad.safetensors")


def test_live_chunks_join_groups(tmp_path) -> None:
    """Chunks of a live run joined as one video: each chunk's groups move to its rows and sources."""
    files, maps = [], []
    for i in range(2):
        x, sig = features(12, 16, 8, 3 + i)
        res = vtc.compress_features(x, method="fastvid", ratio=0.3, grid=(4, 4), attn=sig.attn, pooled=sig.pooled)
        files.append(load(res.save(tmp_path / f"c{i}.safetensors")))
        maps.append(res.reduction.dense())
    joined = join(files).reduction().dense()
    assert torch.equal(joined, torch.block_diag(*maps))
