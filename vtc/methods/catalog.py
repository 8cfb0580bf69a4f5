"""Every method's declaration: name, summary, paper, parameters (defaults, types, help, the authors' names, allowed
values), paper ratio, variants, signals, scope.  Pure Python (no torch): `vtc methods`, `vtc methods NAME` and the
checks of a method name and its parameters read this table alone.

The implementations (`@implements("name")` in the method files) are bound to these declarations by
`vtc.methods.registry`, which checks that each declaration has exactly one implementation and the reverse.
A parameter's default is written here and nowhere else.
"""

from __future__ import annotations

import difflib
from typing import Any

from vtc.errors import UsageError
from vtc.methods.declare import Declaration, Param

#: name → declaration, in the order declared (grouped by method file)
DECLARATIONS: dict[str, Declaration] = {}


def declare(name: str, *, summary: str, params: list[Param] | None = None, **rest: Any) -> None:
    """Add one method's declaration (see `Declaration` for the fields)."""
    if name in DECLARATIONS:
        raise TypeError(f"method '{name}' is declared twice")
    decl = Declaration(name, summary, tuple(params or ()), **rest)
    if decl.scope not in ("frame", "clip"):
        raise TypeError(f"method '{name}': scope must be 'frame' or 'clip', not {decl.scope!r}")
    if len({p.name for p in decl.params}) != len(decl.params):
        raise TypeError(f"method '{name}' declares a parameter twice")
    for v in decl.variants:
        decl.resolve({}, v)  # a variant's settings are checked like the user's
    DECLARATIONS[name] = decl


def normalise(name: str) -> str:
    """The registry key of a method name as typed ('Tome-ViT' → 'tome_vit')."""
    return name.strip().lower().replace("-", "_")


def get_declaration(name: str) -> Declaration:
    """The declaration of method `name`, or a UsageError listing the closest valid names."""
    key = normalise(name)
    if key not in DECLARATIONS:
        close = difflib.get_close_matches(key, list(DECLARATIONS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UsageError(
            f"unknown method '{name}'.{hint} Run 'vtc methods' to list them ({', '.join(sorted(DECLARATIONS))})."
        )
    return DECLARATIONS[key]


def parse_declared(text: str) -> tuple[Declaration, str | None]:
    """'dycoke' or 'dycoke:reference' → (declaration, variant or None); unknown names are UsageErrors."""
    base, _, variant = text.partition(":")
    decl = get_declaration(base)
    if variant:
        decl.variant(variant)
    return decl, variant or None


def all_declarations() -> list[Declaration]:
    """Every declaration, sorted by name."""
    return [DECLARATIONS[k] for k in sorted(DECLARATIONS)]


# aim.py
declare(
    "aim",
    summary="AIM: 2×2 pooling, then bipartite matching with plain means (r = n0/2, n0/4) per frame",
    paper="Zhong et al., AIM: Adaptive Inference of Multi-Modal LLMs via Token Merging and Pruning, ICCV 2025",
    params=[
        Param("pool", "bilinear",
              "2-D pooling before merging: bilinear (LLaVA-OneVision), average or max 2×2, none (merge the "
              "unpooled grid), identity (the authors' 'identity' mode: no pooling and no merging)",
              author_name="mm_spatial_pool_mode", choices=("bilinear", "average", "max", "none", "identity")),
        Param("schedule", "llava_onevision",
              "llava_onevision: rounds n0//2, n0//4; qwen2_vl: a third round to (h//2)·(w//2)",
              author_name="variant", choices=("llava_onevision", "qwen2_vl")),
        Param("skip_empty_rounds", True,
              "skip a round whose r is 0 (< 4 tokens); false = the authors' crash",
              choices=(True, False)),
    ],
    variants={"reference": {"skip_empty_rounds": False}},
)

# baselines.py
declare(
    "none",
    summary="keep every token (no compression)",
    scope="frame",
)
declare(
    "uniform",
    summary="a uniform spatio-temporal lattice of tokens meeting the ratio (strides in time, rows, columns)",
    paper_ratio=0.25,
)
declare(
    "pool",
    summary="per-frame spatial pooling (LLaVA-OneVision: 2×2 bilinear; LLaVA-Video: average)",
    params=[
        Param("stride", None, "pooling factor per side (default: from --ratio)", lo=1, kind=int),
        Param("mode", "bilinear",
              "bilinear (LLaVA-OneVision, ceil size) or average (LLaVA-Video, floor size)",
              choices=("bilinear", "average")),
    ],
    paper_ratio=0.25,
    scope="frame",
)
declare(
    "random",
    summary="a seeded random selection of tokens meeting the ratio (the control every method should beat)",
    params=[
        Param("seed", 0, "seed of the random draw (the same seed and shape give the same tokens)", lo=0),
    ],
    paper_ratio=0.25,
)

# budgeted.py
declare(
    "budgeted",
    summary="share the budget among frames (uniform, by --query relevance, or by audio saliency), then select "
            "tokens per frame (attention, diversity or uniform)",
    params=[
        Param("budget", "uniform", "how frames share the budget", choices=("uniform", "query", "audio")),
        Param("selector", "attn", "per-frame selector", choices=("attn", "diversity", "uniform")),
        Param("temperature", 0.05, "query budget: softmax temperature over frame relevance (lower: sharper)", lo=1e-06),
    ],
    optional_signals=("attn", "relevance", "audio_saliency", "times"),
    paper_ratio=0.1,
)

# divprune.py
declare(
    "divprune",
    summary="DivPrune: keep the most diverse tokens (greedy max–min cosine distance), jointly or per frame",
    paper="Alvar et al., DivPrune: Diversity-based Visual Token Pruning for LMMs, CVPR 2025",
    params=[
        Param("mode", "joint",
              "joint: one selection over the clip (authors); per_frame: per frame",
              author_name="mode", choices=("joint", "per_frame")),
    ],
    paper_ratio=0.098,
)

# dycoke.py
declare(
    "dycoke",
    summary="DyCoke (TTM): keep every 4th frame whole; in the others keep the positions least similar to a "
            "reference frame",
    paper="Tao et al., DyCoke: Dynamic Compression of Tokens for Fast Video LLMs, CVPR 2025",
    params=[
        Param("prune_share", None,
              "k: share of tokens dropped in pruned frames (default: derived from --ratio; 0.7 when no ratio is "
              "given)",
              author_name="merging_ratio", lo=0.0, hi=1.0, kind=float),
        Param("reference_loops", False,
              "reproduce the authors' loop bounds: odd T drops its last frame, the final group of four is skipped; "
              "kept tokens in similarity order"),
    ],
    variants={"reference": {"reference_loops": True}},
)

# evs.py
declare(
    "evs",
    summary="EVS: keep the tokens that changed most versus the same cell of the previous frame (first frame kept)",
    paper="Bagrov et al., Efficient Video Sampling: Pruning Temporally Redundant Tokens for Faster VLM Inference, "
          "2025",
    params=[
        Param("q", None,
              "pruning rate in [0, 1): keep max(N, ⌊T·N·(1 − q)⌋) tokens (default: 1 − --ratio; 0.7 when no ratio "
              "is given)",
              author_name="q", lo=0.0, hi=1.0, kind=float),
    ],
    paper_ratio=0.3,
)

# fastervlm.py
declare(
    "fastervlm",
    summary="FasterVLM: keep each frame's tokens with the highest CLS attention",
    paper="Zhang et al., [CLS] Attention is All You Need for Training-Free Visual Token Pruning, 2024",
    params=[
        Param("k_per_frame", None,
              "tokens kept per frame (default: round(ratio·N))",
              author_name="k_per_frame", lo=1, kind=int),
    ],
    signals=("cls_attn",),
    paper_ratio=0.25,
    scope="frame",
)

# fastvid.py
declare(
    "fastvid",
    summary="FastVID: DySeg segments, attention-salient tokens kept, density anchors merge the rest (DTM)",
    paper="Shen et al., FastVID: Dynamic Density Pruning for Fast Video LLMs, NeurIPS 2025",
    params=[
        Param("min_segments", 8,
              "DySeg c: at least c segments (the c−1 lowest-similarity cuts)",
              author_name="DySeg_c", lo=1),
        Param("tau", 0.9,
              "DySeg τ: also cut wherever adjacent pooled-embedding cosine < τ",
              author_name="DySeg_tau", lo=-1.0, hi=1.0),
        Param("context_share", 0.4,
              "STPrune d: share of each frame's budget spent on merged context tokens",
              author_name="STPrune_d", lo=0.0, hi=1.0),
        Param("anchor_stride", 4,
              "DTM p: every p-th frame (from the segment's end) is an anchor frame",
              author_name="DTM_p", lo=1),
        Param("beta", 0.6,
              "DTM β: weight of the anchor token in its blend with the group mean",
              author_name="DTM_beta", lo=0.0, hi=1.0),
        Param("knn", 4, "k of the DPC-kNN density", lo=1),
        Param("segmenter", "dyseg", "temporal segmenter", choices=("dyseg", "holitom", "prunevid", "fixed", "single")),
    ],
    signals=("attn", "pooled"),
    paper_ratio=0.1,
)

# flowcut.py
declare(
    "flowcut",
    summary="FlowCut inside the ViT: prune patches by their accumulated share of the information flow (CLS "
            "attention and value similarity × value norm), entropy-adaptive counts per frame; SigLIP (no CLS): the "
            "authors' mean-query rule",
    paper="Tong et al., FlowCut: Rethinking Redundancy via Information Flow for Efficient Vision-Language Models, "
          "NeurIPS 2025",
    params=[
        Param("count", "frame",
              "frame: each frame's own adaptive count; batch: the largest count of the frames encoded together "
              "(the authors')",
              choices=("frame", "batch")),
        Param("attention", "fused",
              "fused: the fused kernel, CLS row computed on the side (fast); explicit: the whole softmax map, as "
              "the authors' eager attention",
              choices=("fused", "explicit")),
    ],
    paper_ratio=0.2222222222222222,
    variants={"reference": {"count": "batch", "attention": "explicit"}},
    inside_encoder=True,
)

# framefusion.py
declare(
    "framefusion",
    summary="FrameFusion: merge tokens into the same position of the previous frame above a similarity threshold",
    paper="Fu et al., FrameFusion: Combining Similarity and Importance for Video Token Reduction, ICCV 2025",
    params=[
        Param("similarity_threshold", None,
              "S_th: merge where cos to the previous frame ≥ S_th (default: searched to meet --ratio; 0.6 when no "
              "ratio is given)",
              author_name="similarity_lower_bound", lo=-1.0, hi=1.0, kind=float),
        Param("cost", 0.3,
              "FLOPs budget; at most 1 − cost of the tokens merge in the threshold mode",
              author_name="cost", lo=0.0, hi=1.0),
    ],
)

# free_video_llm.py
declare(
    "free_video_llm",
    summary="Free Video-LLM: text-guided slow frames with a text-guided ROI crop, middle frames, and a fast path "
            "of every frame pooled small (needs --query)",
    paper="Han et al., Free Video-LLM: Prompt-guided Visual Perception for Efficient Training-free Video LLMs, 2024",
    params=[
        Param("slow_frames", 3, "frames of the slow path (most query-relevant)", author_name="num_slowpath", lo=0),
        Param("slow_pool", "1d_max",
              "slow-path pooling: 1-D (horizontal pairs) or 2-D (2×2), max or average",
              author_name="slow_agg", choices=("1d_max", "1d_avg", "2d_max", "2d_avg")),
        Param("roi", 0.8,
              "ROI share: top int(n'·roi) text-similar positions size and place the box; 1 = no crop",
              author_name="roi_ratio", lo=0.01, hi=1.0),
        Param("middle_frames", 5, "frames of the middle path", author_name="middle_frames", lo=0),
        Param("middle_pool", "1d_max",
              "middle-path pooling",
              author_name="middle_agg", choices=("1d_max", "1d_avg", "2d_max", "2d_avg")),
        Param("middle_select", "top_change",
              "middle frames: top_change (the helper the authors' comment names) or uniform (what their code does)",
              choices=("top_change", "uniform")),
        Param("fast_frames", 50,
              "frames of the fast path (most relevant; all when ≥ T)",
              author_name="fast_frames", lo=0),
        Param("fast_size", 4,
              "fast path: adaptive average pool to fast_size × fast_size",
              author_name="fast_output_size", lo=1),
        Param("layout", "real",
              "pooled layout for pooling and the ROI box: real (rows and columns of the grid) or authors (raster "
              "pairs viewed as √N/2 × √N)",
              choices=("real", "authors")),
    ],
    signals=("relevance", "query_embed"),
    optional_signals=("patch_embed",),
    variants={"reference": {"middle_select": "uniform", "layout": "authors"}},
)

# gprune.py
declare(
    "gprune",
    summary="G-Prune: per frame, importance propagated over a cosine-similarity graph; keep the top tokens",
    paper="Jiang et al., What Kind of Visual Tokens Do We Need? Training-free Visual Token Pruning for Multi-modal "
          "Large Language Models from the Perspective of Graph, AAAI 2025",
    params=[
        Param("similarity", 0.5,
              "cosine threshold for a graph edge (edges below it are removed)",
              author_name="similarity", lo=-1.0, hi=1.0),
        Param("temperature", 0.03, "softmax temperature on the edge weights", author_name="temperature", lo=1e-06),
        Param("iterate_num", 5, "propagation steps (power of the transition matrix)", author_name="iterate_num", lo=1),
    ],
    paper_ratio=0.5,
    scope="frame",
)

# grt.py
declare(
    "grt",
    summary="GRT: pixel-motion gate, key-frame semantic test, then the k most moving tokens per frame (key frames "
            "by feature norm)",
    paper="Zhang et al., Dense Video Understanding with Gated Residual Tokenization, 2025",
    params=[
        Param("gate_threshold", 0.05,
              "a patch moved when its difference to the previous frame exceeds this",
              author_name="gate_diff_threshold"),
        Param("gate_metric", "l2",
              "l2 (pixel difference) or ssim (1 − SSIM per patch)",
              author_name="gate_metric", choices=("l2", "ssim")),
        Param("gate_scale", "rms",
              "l2 over the whole patch vector (sum: the authors') or per value (rms)",
              choices=("rms", "sum")),
        Param("scene_cut", 0.8,
              "a frame with more than this share of moved patches is a key frame",
              author_name="scene_cut_factor", lo=0.0, hi=1.0),
        Param("jsd_threshold", 0.4,
              "key frames whose divergence is below this match (the later one is merged away)",
              author_name="merge_jsd_threshold", lo=0.0),
        Param("divergence", "jsd", "jsd, or reversed (the authors' KL(m‖p) arguments)", choices=("jsd", "reversed")),
        Param("require_match", False,
              "pack only when some key frames matched",
              author_name="scene_merge_require_semantic_match", choices=(True, False)),
        Param("min_tokens", 16,
              "at least this many tokens per frame",
              author_name="scene_merge_min_tokens_per_frame", lo=1),
        Param("reuse_embeddings", False,
              "inside the tower, static patches keep the previous frame's patch embedding (the authors' gated "
              "tokenizer; open_clip towers only)",
              author_name="use_gated_tok", choices=(True, False)),
    ],
    signals=("frames",),
    paper_ratio=0.5,
    variants={"reference": {"gate_scale": "sum", "gate_threshold": 0.3, "divergence": "reversed",
                            "reuse_embeddings": True}},
)

# gtp_vit.py
declare(
    "gtp_vit",
    summary="GTP-ViT inside the ViT: propagate the least important patches into their graph neighbours (spatial + "
            "semantic graph) and remove them, block by block; SigLIP (no CLS): the authors' class-token-free "
            "branch",
    paper="Xu et al., GTP-ViT: Efficient Vision Transformers via Graph-based Token Propagation, WACV 2024",
    params=[
        Param("num_prop", None,
              "patches propagated per block: an int or a per-block list (default: from --ratio)",
              author_name="num_prop"),
        Param("selection", "MixedAttnMax",
              "how patches are ranked from the attention",
              author_name="selection",
              choices=("MixedAttnMax", "MixedAttnMean", "SumAttnMax", "CLSAttnMean", "CLSAttnMax", "IMGAttnMean",
                       "IMGAttnMax", "DiagAttnMean", "DiagAttnMax", "CosSimMean", "CosSimMax")),
        Param("propagation", "GraphProp",
              "GraphProp: into graph neighbours; Mean: one mean token; None: drop",
              author_name="propagation", choices=("GraphProp", "Mean", "None")),
        Param("graph_type", "Mixed",
              "graph for GraphProp",
              author_name="graph_type", choices=("Mixed", "Spatial", "Semantic")),
        Param("num_neighbours", 8, "semantic graph: neighbours per patch", author_name="num_neighbours", lo=1),
        Param("sparsity", 1.0,
              "share of each head's attention kept (the rest zeroed before it mixes values)",
              author_name="sparsity", lo=0.0, hi=1.0),
        Param("alpha", 0.4, "weight of the propagated features", author_name="alpha", lo=0.0),
        Param("token_scale", True,
              "track token scales and add log(scale) to the attention logits",
              author_name="token_scale"),
    ],
    paper_ratio=0.5,
    inside_encoder=True,
)

# hiprune.py
declare(
    "hiprune",
    summary="HiPrune: per frame, anchors by middle-layer attention plus their neighbours, then the tokens the last "
            "layer attends to most",
    paper="Liu et al., HiPrune: Training-Free Visual Token Pruning via Hierarchical Attention in Vision Encoders, "
          "2025",
    params=[
        Param("alpha", 0.1,
              "anchor share: round(budget·alpha/5) anchors per frame",
              author_name="HIPRUNE_ALPHA", lo=0.0, hi=5.0),
        Param("k_per_frame", None,
              "tokens kept per frame (default: int(ratio·N))",
              author_name="visual_token_num_per_frame", lo=1, kind=int),
    ],
    signals=("received_object", "received"),
    paper_ratio=0.334,
    scope="frame",
)

# holitom.py
declare(
    "holitom",
    summary="HoliTom: DP windows maximising static savings; static tokens merged over time and clustered, dynamic "
            "tokens kept by attention",
    paper="Shao et al., HoliTom: Holistic Token Merging for Fast Video LLMs, NeurIPS 2025",
    params=[
        Param("tau", 0.8,
              "cosine above which a position is static between adjacent frames",
              author_name="tau", lo=-1.0, hi=1.0),
        Param("beta", 0.6,
              "weight of a cluster center in its blend with the mean of its members",
              author_name="beta", lo=0.0, hi=1.0),
        Param("knn", 7, "cap K of the DPC-kNN size (k = min(K, #centers))", author_name="K", lo=1),
        Param("contextual_share", 0.0,
              "D: share of each frame's dynamic budget merged into contextual tokens (the authors' D > 0 path "
              "crashes; vtc merges around strided anchors)",
              author_name="D", lo=0.0, hi=1.0),
        Param("max_window_size", 1024, "longest DP window in frames", author_name="max_window_size", lo=1),
        Param("no_beta", False, "plain mean of center and members instead of the β blend", author_name="no_beta"),
        Param("segmenter", "holitom",
              "temporal segmenter",
              choices=("dyseg", "holitom", "prunevid", "fixed", "single")),
    ],
    signals=("attn",),
    paper_ratio=0.1,
)

# llava_scissor.py
declare(
    "llava_scissor",
    summary="LLaVA-Scissor: connected components of similar tokens, per frame then across frames; every token "
            "merged into its nearest component",
    paper="Sun et al., LLaVA-Scissor: Token Compression with Semantic Connected Components for Video LLMs, 2025",
    params=[
        Param("tau", None,
              "cosine above which two tokens are connected (default: searched to meet --ratio; 0.9, the README's, "
              "when no ratio is given)",
              author_name="tau", lo=-1.0, hi=1.0, kind=float),
        Param("epsilon", 0.05,
              "sampling tolerance of the approximate components (reference mode)",
              author_name="epsilon", lo=0.0, hi=1.0),
        Param("union_find", "exact",
              "exact: true components; reference: the authors' read-out, which can lose a node (bug), with their "
              "node sampling",
              choices=("exact", "reference")),
        Param("seed", 0,
              "seed of the reference mode's node sampling (the authors use numpy's global RNG)",
              author_name="numpy_global_seed"),
    ],
    variants={"reference": {"union_find": "reference"}},
)

# omnizip.py
declare(
    "omnizip",
    summary="OmniZip: audio saliency sets each 2 s window's video budget; interleaved spatial (density) and "
            "temporal pruning inside windows",
    paper="Tao et al., OmniZip: Audio-Guided Dynamic Token Compression for Fast Omnimodal LLMs, 2025",
    params=[
        Param("rho_audio", 0.3,
              "share of audio tokens dropped by the global saliency selection",
              author_name="rho_audio", lo=0.0, hi=1.0),
        Param("contextual_ratio", 0.05,
              "share of audio tokens kept as anchors among the rest",
              author_name="contextual_ratio", lo=0.0, hi=1.0),
        Param("g", 3, "members merged into each audio anchor (0: no anchors)", author_name="g", lo=0),
        Param("window_seconds", 2.0, "window length in seconds (Qwen2.5-Omni's interleaving chunk)", lo=0.001),
        Param("audio_tokens_per_sec", 25, "rate of the audio saliency", author_name="audio_tokens_per_sec", lo=1),
        Param("normaliser", "monotone",
              "monotone: one offset for all windows, louder never keeps less; reference: the authors' "
              "pin-min/max-and-scale (not monotone)",
              choices=("monotone", "reference")),
    ],
    optional_signals=("audio_saliency", "times"),
    paper_ratio=0.4,
    variants={"reference": {"normaliser": "reference"}},
)

# ppt.py
declare(
    "ppt",
    summary="PPT inside the ViT: per image and block, prune (by CLS attention × value norm) or pool (ToMe merging) "
            "r tokens, chosen by the spread of the attention; SigLIP (no CLS): attention received instead of CLS "
            "attention (vtc's substitute)",
    paper="Wu et al., PPT: Token Pruning and Pooling for Efficient Vision Transformers, 2023",
    params=[
        Param("r", None,
              "tokens removed per pp block: an int or a per-pp-block list (default: from --ratio)",
              author_name="r_tokens"),
        Param("pp_loc", None,
              "the blocks that prune or pool (default: 1/4, 1/2, 3/4 of the blocks)",
              author_name="pp_loc_list", kind=list),
        Param("threshold", 7e-05,
              "images whose significance variance is below it pool, the others prune",
              author_name="threshold", lo=0.0),
        Param("prop_attn", True,
              "proportional attention: add log(size) to the attention logits",
              author_name="prop_attn"),
    ],
    paper_ratio=0.5,
    inside_encoder=True,
)

# prunevid.py
declare(
    "prunevid",
    summary="PruneVid (stage 1): clustered windows; static tokens averaged over time; density-peak spatial "
            "clusters averaged",
    paper="Huang et al., PruneVid: Visual Token Pruning for Efficient Video LLMs, ACL 2025 Findings",
    params=[
        Param("tau", 0.8,
              "mean pairwise cosine above which a position is static in its window",
              author_name="tau", lo=-1.0, hi=1.0),
        Param("segment_ratio", 0.25,
              "temporal clusters = int(T·segment_ratio)",
              author_name="temporal_segment_ratio", lo=0.0, hi=1.0),
        Param("cluster_ratio", None,
              "spatial clusters per group = int(size·cluster_ratio) (default: fitted to --ratio; 0.5 when no ratio "
              "is given)",
              author_name="cluster_ratio", lo=0.0, hi=1.0, kind=float),
        Param("knn", 7, "k of the temporal DPC-kNN", author_name="k", lo=1),
        Param("spatial_knn", 7, "k of the spatial DPC-kNN", author_name="spatial_k", lo=1),
        Param("min_cluster_size", 15,
              "groups smaller than this are kept unmerged",
              author_name="min_tokens_to_cluster", lo=1),
        Param("segmenter", "prunevid",
              "temporal segmenter",
              choices=("dyseg", "holitom", "prunevid", "fixed", "single")),
    ],
)

# recoverable.py
declare(
    "recoverable",
    summary="Recoverable Compression: LOF-sized CLS-attention and text picks, the rest recovered into "
            "attention-weighted cluster tokens",
    paper="Chen et al., Recoverable Compression: A Multimodal Vision Token Recovery Mechanism Guided by Text "
          "Information, AAAI 2025",
    params=[
        Param("centres", "rest",
              "centre count: int(|rest|·ρ) (rest) or int(C·ρ) with C the feature width (width: the authors' slip)",
              choices=("rest", "width")),
        Param("key_index", "own",
              "keys of the rest tokens: their own (own) or read at their rest-list positions (list: the authors' "
              "slip)",
              choices=("own", "list")),
        Param("knn", 32, "candidates merged into each centre", author_name="knn_k", lo=1),
        Param("text_weight", 50.0,
              "weight of the text score in the centre–candidate score",
              author_name="text_score_scale", lo=0),
        Param("lof_pick", 20, "LOF neighbours sizing the vision picks", author_name="lof_k_vision", lo=1),
        Param("lof_text", 20, "LOF neighbours sizing the text picks", author_name="lof_k_text", lo=1),
        Param("lof_rest", 10, "LOF neighbours sizing the centres", author_name="lof_k_rest", lo=1),
        Param("keep_one", True,
              "a frame where nothing stands out keeps its most-attended token (false: it is emptied, as in the "
              "authors' code)",
              choices=(True, False)),
    ],
    signals=("last_cls_attn", "last_keys"),
    optional_signals=("patch_embed", "query_embed"),
    variants={"reference": {"centres": "width", "key_index": "list", "keep_one": False}},
)

# rlt.py
declare(
    "rlt",
    summary="RLT: keep patches whose pixels changed (mean |Δ| > τ in ImageNet units); kept tokens stand for their "
            "static runs",
    paper="Choudhury et al., Don't Look Twice: Faster Video Transformers with Run-Length Tokenization, NeurIPS 2024",
    params=[
        Param("tau", 0.1,
              "mean absolute change per patch (ImageNet-normalised units) above which a patch is kept",
              author_name="threshold", lo=0.0),
        Param("compare", "previous",
              "previous: against the previous frame (authors); last_kept: against the last kept patch, which "
              "catches slow drift",
              choices=("previous", "last_kept")),
        Param("skip_static_frames", True,
              "pipeline: do not encode frames with no changed patch (they reuse the previous frame's features, "
              "which no kept token uses)"),
        Param("encode_changed_only", False,
              "pipeline: feed only the changed patches of a frame through the encoder (out of distribution for "
              "CLIP/SigLIP: experimental)"),
    ],
    signals=("frames",),
)

# saint.py
declare(
    "saint",
    summary="SAINT inside the ViT: drop tokens made redundant by key similarity (LLaVA: iterative graph drop in "
            "one block; ViT: threshold-driven drop in the first blocks); SigLIP (no CLS): no protected token, as "
            "the authors' class_token=False path",
    paper="Jeddi et al., Similarity-Aware Token Pruning: Your VLM but Faster, 2025",
    params=[
        Param("mode", "iterative",
              "iterative: the authors' LLaVA rule in one block, --ratio sets the kept patches; drop: the ViT rule "
              "in the first half of the blocks, thresholds set the count",
              choices=("iterative", "drop")),
        Param("sim_threshold", 0.75,
              "drop mode: cosine threshold, or a per-block list",
              author_name="sim_threshold", kind=object),
        Param("K", 5, "drop mode: valid partners an A token needs to count toward r", author_name="K", lo=1),
        Param("gamma", 10.0, "drop mode: sharpness of the score", author_name="gamma", lo=0.0),
        Param("r", 16, "iterative mode: first divisor of the drop count (n // r)", author_name="r", lo=1),
        Param("block", None,
              "iterative mode: the block that drops (default: three before the read-out)",
              author_name="block", lo=0, kind=int),
    ],
    paper_ratio=0.65,
    inside_encoder=True,
)

# sta.py
declare(
    "sta",
    summary="STA inside the ViT: after three blocks, drop r tokens per frame, scored by the semantic mass the "
            "previous frame sends them (accumulated along the frames) and their activation; one frame per unit "
            "(the authors group 2-4 tubelet slices in later stages)",
    paper="Ding et al., Prune Spatio-temporal Tokens by Semantic-aware Temporal Accumulation, ICCV 2023",
    params=[
        Param("r", None,
              "tokens dropped per frame at each of the three stages (default: from --ratio)",
              author_name="r", lo=0, kind=int),
    ],
    paper_ratio=0.5,
    inside_encoder=True,
)

# sttm.py
declare(
    "sttm",
    summary="STTM: per-frame quadtree merging of similar regions, then merging of nested regions across frames",
    paper="Hyun et al., Multi-Granular Spatio-Temporal Token Merging for Training-Free Acceleration of Video LLMs, "
          "ICCV 2025",
    params=[
        Param("threshold", None,
              "spatial: a cell stops splitting when it is this cosine-similar to each child (default: searched to "
              "reach --ratio when one is given, else 0.8)",
              author_name="threshold", lo=-1.0, hi=1.0, kind=float),
        Param("temporal_thresh", 0.6,
              "cross-frame: nested nodes this similar are merged (≤ 0: no temporal merging)",
              author_name="temporal_thresh", lo=-1.0, hi=1.0),
        Param("root_level", 1,
              "coarsest pyramid level to start from (index into the size list; -1 = no spatial merging)",
              author_name="root_level"),
        Param("weighted_avg", False,
              "area-weighted means (sum pooling) instead of means of means",
              author_name="weighted_avg"),
        Param("slow_ver", False,
              "the authors' slow temporal path (similarity-sorted pairs, adjacent dedupe)",
              author_name="slow_ver"),
        Param("head_dim", None,
              "compare per attention head of this many channels, averaged",
              author_name="head_dim", lo=1, kind=int),
        Param("border_slots", "own",
              "odd borders: compare a parent with its real children (own) or also with the child level's first "
              "cell in the missing slots (reference)",
              choices=("own", "reference")),
        Param("union", "exact",
              "cross-frame groups: connected components (exact) or the authors' union–find (reference)",
              choices=("exact", "reference")),
    ],
    variants={"reference": {"border_slots": "reference", "union": "reference"}},
)

# tome.py
declare(
    "tome",
    summary="ToMe: bipartite soft matching with size-weighted merging, in rounds, per frame or over the clip",
    paper="Bolya et al., Token Merging: Your ViT But Faster, ICLR 2023",
    params=[
        Param("mode", "per_frame",
              "per_frame or joint (one set over the clip)",
              author_name="mode", choices=("per_frame", "joint")),
    ],
    paper_ratio=0.25,
)

# tome_vit.py
declare(
    "tome_vit",
    summary="ToMe inside the ViT: merge tokens between the encoder's blocks (bipartite matching on keys, "
            "proportional attention) so later blocks run on fewer tokens",
    paper="Bolya et al., Token Merging: Your ViT but Faster, ICLR 2023",
    params=[
        Param("r", None,
              "tokens merged per block: an int, or a per-block list (default: found from --ratio)",
              author_name="r"),
        Param("inflect", -1.0,
              "schedule shape when r comes from --ratio: 0 = constant r, -1 = the authors' (r, -1) form, 2r in the "
              "first block down to 0 in the last (front-loaded: faster)",
              author_name="inflect", lo=-1.0, hi=1.0),
        Param("prop_attn", True,
              "proportional attention: add log(size) to the attention logits",
              author_name="prop_attn"),
    ],
    paper_ratio=0.5,
    inside_encoder=True,
    scope="frame",
)

# ts_llava.py
declare(
    "ts_llava",
    summary="TS-LLaVA: tokens sampled uniformly over the clip plus a re-encoded thumbnail of a few frames tiled",
    paper="Qu et al., TS-LLaVA: Constructing Visual Tokens through Thumbnail-and-Sampling, 2024",
    params=[
        Param("variant", "V2",
              "V1/V2/V3: 4/6/8 thumbnail frames, sampled tokens first; Y1/Y2/Y3: thumbnail first",
              author_name="method", choices=("V1", "V2", "V3", "Y1", "Y2", "Y3")),
        Param("num_sampled", None,
              "sampled tokens S (default: the ratio's budget minus the thumbnail's tokens)",
              author_name="num_sampled_tokens", lo=1, kind=int),
    ],
    optional_signals=("thumbnail",),
    paper_ratio=0.1,
)

# vid_tldr.py
declare(
    "vid_tldr",
    summary="vid-TLDR inside the ViT: merge tokens between blocks, weighted by attention sharpness (background "
            "tokens vanish)",
    paper="Choi et al., vid-TLDR: Training Free Token Merging for Light-weight Video Transformer, CVPR 2024",
    params=[
        Param("r", None,
              "per block: tokens merged (an int) or a fraction (< 1) of the current tokens; a number or a "
              "per-block list (default: from --ratio)",
              author_name="vidTLDR_r"),
        Param("prop_attn", True,
              "proportional attention: add log(size) to the attention logits",
              author_name="prop_attn"),
    ],
    paper_ratio=0.5,
    inside_encoder=True,
    scope="frame",
)

# visionzip.py
declare(
    "visionzip",
    summary="VisionZip: per frame, CLS + the most-attended tokens, plus contextual tokens merged around anchors",
    paper="Yang et al., VisionZip: Longer is Better but Not Necessary in Vision Language Models, CVPR 2025",
    params=[
        Param("dominant", None,
              "dominant tokens per frame, counting the CLS row (default: from --ratio, 54:10)",
              author_name="dominant", lo=1, kind=int),
        Param("contextual", None,
              "contextual (merged) tokens per frame (default: from --ratio)",
              author_name="contextual", lo=0, kind=int),
        Param("contextual_merge", "add",
              "add: anchor + mean(assigned), the authors' code and published numbers; mean: the mean of anchor and "
              "assigned (corrected, norm-preserving)",
              choices=("add", "mean")),
        Param("cls_row", True, "output each frame's CLS token first (SigLIP: the attention-pool output)"),
    ],
    signals=("cls_attn", "keys", "cls_token"),
    paper_ratio=0.1,
    scope="frame",
)

# vscan.py
declare(
    "vscan",
    summary="VScan (stage 1): shallow-attention picks spread over windows + read-out-attention picks; the rest "
            "merged into the most similar kept token",
    paper="Zhang et al., VScan: Rethinking Visual Token Reduction for Efficient Large Vision-Language Models, 2025",
    params=[
        Param("k_per_frame", None,
              "tokens kept per frame (default: int(ratio·N))",
              author_name="visual_token_num", lo=1, kind=int),
        Param("local_rule", "greedy",
              "greedy (any grid, exact count: the authors' Qwen rule) or windows (the authors' LLaVA rule: "
              "⌊local/16⌋ per window, 24×24 only)",
              choices=("greedy", "windows")),
        Param("window_size", 6, "window side in tokens", author_name="window_size", lo=1),
        Param("merge", True,
              "merge dropped tokens into their most similar kept token (false: plain pruning)",
              choices=(True, False)),
    ],
    signals=("shallow_attn", "readout_attn"),
    paper_ratio=0.167,
    variants={"reference": {"local_rule": "windows", "window_size": 6},
              "qwen": {"local_rule": "greedy", "window_size": 4}},
)

# zoo_prune.py
declare(
    "zoo_prune",
    summary="ZOO-Prune: projector sensitivity (zeroth-order) × cosine diversity, greedy per frame (needs --target)",
    paper="Kim et al., ZOO-Prune: Training-Free Token Pruning via Zeroth-Order Gradient Estimation in "
          "Vision-Language Models, 2025",
    params=[
        Param("k_per_frame", None,
              "tokens kept per frame (default: int(ratio·N))",
              author_name="k_frame", lo=0, kind=int),
        Param("guard", True,
              "all weights 1 when every sensitivity is equal (LLaVA-1.5 path; false: the NeXT path)",
              choices=(True, False)),
        Param("at_least_one", True,
              "keep at least one token per frame (false: int(ratio·N) = 0 keeps none, as the authors)",
              choices=(True, False)),
    ],
    signals=("sensitivity",),
    paper_ratio=0.1112,
    variants={"reference": {"at_least_one": False}},
)
