"""Shared tensor primitives: similarity, density peaks, per-group top-k, assignment merges, union–find.

Everything here is a pure function of tensors; methods and stages are built from these pieces.
"""

from vtc.ops.density import dpc_knn
from vtc.ops.diversity import max_min_diversity
from vtc.ops.merge import assign_nearest, blend_group_means, blend_groups, mean_groups
from vtc.ops.similarity import adjacent_cosine, cosine_matrix, l2_normalize, pairwise_distance
from vtc.ops.topk import topk_indices

__all__ = [
    "adjacent_cosine",
    "assign_nearest",
    "blend_group_means",
    "blend_groups",
    "cosine_matrix",
    "dpc_knn",
    "l2_normalize",
    "max_min_diversity",
    "mean_groups",
    "pairwise_distance",
    "topk_indices",
]
