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
