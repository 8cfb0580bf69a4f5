"""`vtc export`: a target-space token file in the shapes a serving engine documents for precomputed video tokens.

- vLLM (`LLM(..., enable_mm_embeds=True)`; Qwen2.5-VL's `Qwen2_5_VLVideoEmbeddingInputs`):
  `multi_modal_data={"video": {"video_embeds": [K, D], "video_grid_thw": [1, 3], "second_per_grid_ts": [1]}}` with
  the prompt placeholder `<|vision_start|><|video_pad|><|vision_end|>`. Stock vLLM sizes the placeholder and the
  embedding split from `video_grid_thw` (t·h·w/4 tokens), so an uncompressed file (`complete`) goes in as it is.
  A compressed file's item also carries `video_retention_mask` [t·h·w/4] bool over the full grid; stock vLLM
  cannot take it (its EVS path, `video_pruning_rate`, prunes inside the engine and takes no external mask), vtc's
  vLLM plugin (`vtc.serving`, `pip install 'vtc[vllm]'`) does: K pads, the kept tokens at their original M-RoPE
  positions, text after the full grid (`needs_plugin` in the export says which).
- SGLang (`format: "precomputed_embedding"`): `{"format", "feature": [K, D], "video_grid_thw", "second_per_grid_ts"}`
  with input_ids pre-expanded to `num_placeholder_tokens` video pads; uncompressed files only (SGLang advances
  positions by the full grid; a compressed file is refused with a message pointing at vLLM and vtc's plugin).

Qwen3-VL files (`--target qwen3-vl`): the embeddings carry the DeepStack planes concatenated along the hidden axis,
[K, D·(1 + L)] ("the embeds should contain both the base embedding and deepstack features", as both engines split
them back), with the per-frame `timestamps` (seconds, one per temporal grid step) instead of `second_per_grid_ts`.
SGLang's precomputed *video* path for Qwen3-VL is an open pull request (sgl-project/sglang#34632), so that export
follows its image contract.

Qwen2-VL files carry no `second_per_grid_ts` (its positions are not time-scaled); Qwen3.5 files are Qwen3-VL's
without planes. Each family's engine input is built in its module (`TargetSpec.engine_video`).

Both are `torch.save` dicts of tensors (vtc writes them atomically). Only Qwen files can be exported: neither engine
takes precomputed LLaVA video tokens (use `vtc.hf` with transformers for those).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vtc.errors import UsageError
from vtc.io.storage import location
from vtc.io.store import TokenFile, atomic_write, check_output, load
from vtc.targets import spec_of_file

ENGINES = ("vllm", "sglang")
PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"


def _engine_input(tf: TokenFile) -> dict[str, Any]:
    """The family's engine input (`TargetSpec.engine_video`): embeds, grid_thw, time, retention mask, positions."""
    space = tf.meta.get("space") if isinstance(tf.meta.get("space"), dict) else {}
    if space.get("kind") != "target":
        raise UsageError(f"{tf.path} holds encoder-space tokens; serving engines need a target's tokens "
                         f"(vtc compress --target qwen2.5-vl --target-model CHECKPOINT).")
    return spec_of_file(tf).engine_video(tf)


def _contract(q: dict[str, Any]) -> dict[str, Any]:
    """What both engines' exports carry besides the embeddings: the prompt, the kept count, the source."""
    return {"prompt_placeholder": PLACEHOLDER, "num_placeholder_tokens": q["num"], "complete": q["complete"],
            "source": q["source"]}


def for_vllm(tf: TokenFile) -> dict[str, Any]:
    """vLLM's offline embedding input for Qwen2.5-VL / Qwen3-VL (see the module docstring): a compressed file's
    item carries `video_retention_mask` over the full grid, which vtc's vLLM plugin reads; a complete file's item is
    exactly the stock engine's."""
    q = _engine_input(tf)
    video = {"video_embeds": q["embeds"], "video_grid_thw": q["grid_thw"], **q["time"]}
    if not q["complete"]:
        video["video_retention_mask"] = q["retention_mask"].reshape(-1)
    return {"engine": "vllm", "multi_modal_data": {"video": video}, "needs_plugin": not q["complete"],
            **_contract(q)}


def for_sglang(tf: TokenFile) -> dict[str, Any]:
    """SGLang's precomputed-embedding item for Qwen2.5-VL / Qwen3-VL (input_ids pre-expanded to
    `num_placeholder_tokens`).  Uncompressed files only: SGLang sizes the placeholder and advances M-RoPE positions
    by the full grid, so a compressed file is refused (UsageError) rather than written for an engine that would
    misplace or reject it."""
    q = _engine_input(tf)
    if not q["complete"]:
        full = int(q["retention_mask"].numel())
        raise UsageError(f"{tf.path} keeps {q['num']} of {full} tokens; SGLang sizes the video and its positions by "
                         f"the full grid, so it cannot serve a compressed file. Serve it with vLLM and vtc's plugin "
                         f"(vtc export --to vllm; pip install 'vtc[vllm]'), or export an uncompressed file "
                         f"(--method none) to SGLang.")
    return {"engine": "sglang",
            "video_data": [{"format": "precomputed_embedding", "feature": q["embeds"],
                            "video_grid_thw": q["grid_thw"], **q["time"]}],
            **_contract(q)}


def export(path: str | os.PathLike[str], to: str, output: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write `path`'s tokens for engine `to` (vllm or sglang) to `output` (a torch.save file), atomically.  An
    existing file at `output` is never replaced unless `overwrite` (the output checks of `vtc compress`)."""
    if to not in ENGINES:
        raise UsageError(f"--to must be one of {', '.join(ENGINES)}, not '{to}'.")
    out = location(output)
    check_output(location(path), out, replaceable=lambda p: False, overwrite=overwrite,
                 kind="a file vtc may replace")
    data = (for_vllm if to == "vllm" else for_sglang)(load(path))
    return atomic_write(out, lambda tmp: torch.save(data, tmp))
