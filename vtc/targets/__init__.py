"""Targets: tokens in a video LLM's own space, made by that model's own vision path (transformers).

One module per model family (`llava_onevision`, `qwen2_5_vl`, `qwen3_vl`, …) holds everything about it: which
checkpoints it reads, its frame geometry, tower, token layout and positions, the extras a file carries, how
`vtc.hf` feeds a file to the transformers model and how `vtc export` hands it to a serving engine. This registry
is the one place the rest of vtc (`vtc compress --target`, `vtc.hf`, `vtc export`, `vtc show`, `vtc targets`)
looks a target up.
"""

from __future__ import annotations

from typing import Any

from vtc.errors import ModelError, UsageError
from vtc.io.encode import EncoderConfig, pick_device, pick_dtype
from vtc.io.geometry import FrameGeometry
from vtc.io.store import TokenFile
from vtc.targets.base import Checkpoint, TargetEncoder, TargetSpec, read_checkpoint, read_config
from vtc.targets.llava_next_video import LlavaNextVideoSpec
from vtc.targets.llava_onevision import LlavaLayout, LlavaOnevisionSpec
from vtc.targets.qwen2_5_vl import Qwen2_5VLSpec
from vtc.targets.qwen2_vl import Qwen2VLSpec
from vtc.targets.qwen3_5 import Qwen3_5Spec
from vtc.targets.qwen3_vl import Qwen3VLSpec

TARGETS: dict[str, TargetSpec] = {spec.name: spec for spec in (
    LlavaOnevisionSpec(
        "llava-onevision", "LLaVA-OneVision: SigLIP → projector → 2×2 bilinear pool (27×27 → 14×14), one newline "
        "after the video", ("llava_onevision",), 32, "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
    LlavaOnevisionSpec(
        "llava-video", "LLaVA-Video as its transformers checkpoint runs (llava-hf/LLaVA-Video-7B-Qwen2-hf, vLLM "
        "alike): OneVision's layout — 2×2 bilinear pool (ceil, 27×27 → 14×14), one newline after the video — unless "
        "the config names LLaVA-NeXT's mm_spatial_pool_mode / mm_spatial_pool_stride / mm_newline_position",
        ("llava_onevision",), 64, "llava-hf/LLaVA-Video-7B-Qwen2-hf"),
    LlavaOnevisionSpec(
        "llava-video-next", "LLaVA-Video as the authors' LLaVA-NeXT code runs it: 2×2 average pool (floor, 27×27 → "
        "13×13), a newline after every row; the config's mm_spatial_pool_mode / mm_spatial_pool_stride / "
        "mm_newline_position where it has them", ("llava_onevision",), 64, "llava-hf/LLaVA-Video-7B-Qwen2-hf",
        layout=LlavaLayout("average", 2, "per_row")),
    LlavaNextVideoSpec(
        "llava-next-video", "LLaVA-NeXT-Video: CLIP → feature layer (CLS dropped) → its spatial pooler (2×2 average, "
        "24×24 → 12×12) → projector; no newline; shortest-edge resize and centre crop", ("llava_next_video",), 32,
        "llava-hf/LLaVA-NeXT-Video-7B-hf", layout=LlavaLayout("average", 2, "none")),
    Qwen2VLSpec(
        "qwen2-vl", "Qwen2-VL: its vision transformer and 2×2 patch merger on frame pairs at the processor's dynamic "
        "size; original M-RoPE positions (no time scaling)", ("qwen2_vl",), 32, "Qwen/Qwen2-VL-7B-Instruct"),
    Qwen2_5VLSpec(
        "qwen2.5-vl", "Qwen2.5-VL: its vision transformer and 2×2 patch merger on frame pairs at the processor's "
        "dynamic size; original M-RoPE positions (time-scaled by second_per_grid_ts)", ("qwen2_5_vl",), 32,
        "Qwen/Qwen2.5-VL-7B-Instruct"),
    Qwen3VLSpec(
        "qwen3-vl", "Qwen3-VL (dense and MoE: same vision tower): its vision transformer, 2×2 patch merger and "
        "DeepStack mergers on frame pairs at the processor's dynamic size; each frame after its timestamp, original "
        "positions", ("qwen3_vl", "qwen3_vl_moe"), 32, "Qwen/Qwen3-VL-8B-Instruct"),
    Qwen3_5Spec(
        "qwen3.5", "Qwen3.5 (dense and MoE): a Qwen3-VL-style vision transformer and patch merger (no DeepStack) on "
        "frame pairs; each frame after its timestamp, original positions", ("qwen3_5", "qwen3_5_moe"), 32,
        "Qwen/Qwen3.5-27B"),
)}


#: the signals every target's tower can make (the others need an open_clip tower: a CLS token, a text space)
TARGET_SIGNALS = frozenset({"attn", "pooled", "cls_attn", "cls_token", "keys", "received", "received_object",
                            "sensitivity", "shallow_attn", "readout_attn"})
#: signals only the LLaVA targets make (a projector after the vision features; the blocks' own attention)
LLAVA_ONLY_SIGNALS = frozenset({"sensitivity", "shallow_attn", "readout_attn"})


def target_spec(name: str) -> TargetSpec:
    if name not in TARGETS:
        raise UsageError(f"unknown --target '{name}'; supported: {', '.join(TARGETS)} (vtc targets lists them).")
    return TARGETS[name]


def families() -> str:
    """'name (model types), …' of every target."""
    return "; ".join(f"{s.name} ({', '.join(s.model_types)})" for s in TARGETS.values())


def check_target(config: EncoderConfig) -> tuple[TargetSpec, Checkpoint]:
    """Validate a target configuration without loading weights or transformers (before any decoding)."""
    if config.target is None:
        raise UsageError(f"--target-model needs --target ({' or '.join(TARGETS)}).")
    spec = target_spec(config.target)
    if not config.target_model:
        raise UsageError(f"--target {spec.name} needs --target-model DIR_OR_HUB_ID (e.g. {spec.example}).")
    if config.checkpoint:
        raise UsageError("--checkpoint is for open_clip towers; with --target, the weights come from --target-model.")
    pick_dtype(pick_device(config.device), config.dtype)
    folder, cfg = read_config(config.target_model, spec.example)
    model_type = cfg.get("model_type")
    if model_type not in spec.model_types:
        fits = [s.name for s in TARGETS.values() if model_type in s.model_types]
        hint = f"use --target {' or '.join(fits)}" if fits else f"vtc supports: {families()}"
        raise ModelError(f"{folder} is a '{model_type}' checkpoint; --target {spec.name} needs a "
                         f"{' or '.join(spec.model_types)} checkpoint (e.g. {spec.example}); {hint}.")
    ckpt = read_checkpoint(config.target_model, spec)
    spec.geometry(ckpt)
    spec.check(ckpt)
    return spec, ckpt


def checkpoint_geometry(ckpt: Checkpoint) -> FrameGeometry:
    """The picture the target's own video processor makes (from the checkpoint's files alone)."""
    assert ckpt.spec is not None
    return ckpt.spec.geometry(ckpt)


def open_target(config: EncoderConfig) -> TargetEncoder:
    """Check, then load a target's vision path."""
    spec, ckpt = check_target(config)
    return TargetEncoder(config, spec, ckpt)


def spec_of_file(tf: TokenFile, what: str = "this") -> TargetSpec:
    """The target family a token file was made for (UsageError for encoder-space or unknown targets)."""
    space = tf.meta.get("space") if isinstance(tf.meta.get("space"), dict) else {"kind": "encoder"}
    if space.get("kind") != "target":
        raise UsageError(f"{tf.path} holds encoder-space tokens (no LLM's input space); make it with "
                         f"vtc compress --target {' / '.join(TARGETS)} --target-model CHECKPOINT.")
    name = space.get("target")
    if name not in TARGETS:
        raise UsageError(f"{tf.path} is in '{name}' space, which {what} vtc does not know; known: "
                         f"{', '.join(TARGETS)}.")
    return TARGETS[name]


def describe_targets() -> list[dict[str, Any]]:
    """One row per target: name, model types, default frames, example checkpoint, summary, engines."""
    rows = []
    for s in TARGETS.values():
        engines = type(s).engine_video is not TargetSpec.engine_video
        rows.append({"name": s.name, "model_types": list(s.model_types), "frames": s.frames, "example": s.example,
                     "summary": s.summary, "engines": ["vllm", "sglang"] if engines else []})
    return rows


__all__ = ["TARGETS", "Checkpoint", "TargetEncoder", "TargetSpec", "check_target", "checkpoint_geometry",
           "describe_targets", "families", "open_target", "read_checkpoint", "spec_of_file", "target_spec"]
