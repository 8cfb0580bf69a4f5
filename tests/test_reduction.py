import torch

from vtc.reduction import Reduction


def test_select_and_apply() -> None:
    x = torch.randn(2, 3, 4)
    red = Reduction.select(torch.tensor([4, 0, 2]), 6)
    assert torch.equal(red.apply(x), x.reshape(6, 4)[[4, 0, 2]])
    assert red.sizes().tolist() == [1, 1, 1]
    assert red.source().tolist() == [1, -1, 2, -1, 0, -1]


def test_build_coalesces_duplicates_and_merges() -> None:
    x = torch.randn(1, 4, 3)
    red = Reduction.build(torch.tensor([0, 0, 0, 1]), torch.tensor([1, 1, 2, 3]),
                          torch.tensor([0.25, 0.25, 0.5, 1.0]), torch.tensor([1, 3]), 4)
    assert red.dst.tolist() == [0, 0, 1] and red.src.tolist() == [1, 2, 3]
    assert torch.allclose(red.apply(x)[0], 0.5 * x[0, 1] + 0.5 * x[0, 2])
    assert red.sizes().tolist() == [2, 1]


def test_source_takes_largest_weight_then_first_row() -> None:
    red = Reduction.build(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 0, 1, 1]),
                          torch.tensor([0.2, 0.8, 0.5, 0.5]), torch.tensor([0, 1, 1]), 3)
    assert red.source().tolist() == [1, 1, -1]


def test_permute_keeps_the_map() -> None:
    x = torch.randn(1, 5, 2)
    red = Reduction.from_groups([(torch.tensor([0, 1]), torch.tensor([0.5, 0.5]), 0),
                                 (torch.tensor([4]), torch.tensor([1.0]), 4)], 5)
    p = red.permute(torch.tensor([1, 0]))
    assert torch.allclose(p.apply(x), red.apply(x)[[1, 0]])
    assert p.rep.tolist() == [4, 0]


def _grouped() -> tuple[Reduction, torch.Tensor]:
    """A map with entries and `Groups`, and the same map written out by hand as a dense [K, S] matrix."""
    from vtc.reduction import Groups

    # row 0: 0.6·x0 + 0.2·(x1 + x2); row 1: x5; row 2: 0.5·x3 + 0.25·(x4 + x1) (x1 in two rows: 0.25 wins row 2)
    groups = Groups(torch.tensor([2, 0]), torch.tensor([0.25, 0.2]), torch.tensor([2, 2]), torch.tensor([4, 1, 1, 2]))
    red = Reduction.build(torch.tensor([0, 1, 2]), torch.tensor([0, 5, 3]), torch.tensor([0.6, 1.0, 0.5]),
                          torch.tensor([0, 5, 3]), 7, groups=groups)
    dense = torch.zeros(3, 7, dtype=torch.float64)
    for r, s, w in [(0, 0, 0.6), (0, 1, 0.2), (0, 2, 0.2), (1, 5, 1.0), (2, 3, 0.5), (2, 4, 0.25), (2, 1, 0.25)]:
        dense[r, s] = torch.tensor(w, dtype=torch.float32).double()
    return red, dense


def test_groups_mean_the_same_map_as_entries() -> None:
    """Groups (one weight, a list of members) give exactly the entries they stand for: tokens, sizes, the source
    assignment (largest weight, first row on ties) and the entry list, also after a row permutation."""
    red, dense = _grouped()
    x = torch.randn(7, 5, dtype=torch.float64)
    assert torch.equal(red.dense(), dense) and red.num_entries == 7
    assert torch.allclose(red.apply(x), dense @ x, atol=1e-12)  # float64: one sparse product for the groups
    half = x.half()  # float16 rows, accumulated in float32 a block at a time
    assert torch.allclose(red.apply(half).double(), dense @ half.double(), atol=2e-3)
    assert red.sizes().tolist() == [3, 1, 3]
    assert red.source().tolist() == [0, 2, 0, 2, 2, 1, -1]
    dst, src, w = red.entries()
    assert list(zip(dst.tolist(), src.tolist(), strict=True)) == [(0, 0), (0, 1), (0, 2), (1, 5), (2, 1), (2, 3),
                                                                  (2, 4)]
    flat = Reduction.build(dst, src, w, red.rep, 7)  # the same map without groups
    assert flat.source().tolist() == red.source().tolist() and flat.sizes().tolist() == red.sizes().tolist()
    p = red.permute(torch.tensor([2, 0, 1]))
    assert torch.equal(p.dense(), dense[[2, 0, 1]]) and p.groups is not None and p.groups.dst.tolist() == [0, 1]
    both = Reduction.concat([red, p], 7)
    assert torch.equal(both.dense(), torch.cat([dense, dense[[2, 0, 1]]]))
