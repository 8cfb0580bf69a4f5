"""Feed a vtc token file to a transformers video LLM: one call builds what `model(...)` / `model.generate(...)` need.

    import vtc.hf
    inputs = vtc.hf.video_inputs("clip.safetensors", model, input_ids)      # input_ids hold one <video> token
    out = model.generate(**inputs, max_new_tokens=64)

The file must be in the model's space (`vtc compress --target llava-onevision --target-model SAME_CHECKPOINT`).
The prompt's single video placeholder is replaced by the kept tokens, in (frame, row, column) order of their
representatives, and the target's newline token(s) where the model puts them (`newline` in the file: one after
the video for LLaVA-OneVision; one after every row that keeps a token for LLaVA-Video).

Positions (LLaVA): `positions="contiguous"` numbers the sequence 0..L-1 (what FastVID, HoliTom and DyCoke's released
code effectively do for LLaVA-OneVision, and what `generate` continues from); `positions="original"` gives every
kept token the position it had in the uncompressed sequence (text after the video keeps its original position
too), for a single forward pass that studies position effects.

Positions (Qwen2.5-VL, M-RoPE): kept tokens always keep their original 3-D positions (t, h, w) from the file, as
vLLM's EVS and TensorRT-Edge-LLM do. Text after the video continues from the largest position of the full video
grid + 1 (`after_video="reference"`, Qwen's rule and vLLM's); `after_video="model"` asks the installed model's own
`get_rope_index` instead (transformers 5.x restarts text at start + max(h', w'), ignoring the temporal extent).
`position_ids` has 4 rows on transformers ≥ 5 (row 0: text positions 0..L-1 for the mask) and 3 before; `generate`
continues each row from its last value.

Positions (Qwen3-VL): every frame is its own (1, h, w) group after its timestamp text, so the placeholder expands to
the interleaved sequence (the tokenizer writes the timestamps) and every token keeps the position the model gives it
in the uncompressed sequence; the kept tokens and their DeepStack planes go in as `mm_encoder_outputs`.

Each target family's consumer lives in its module (`vtc.targets.*`, `TargetSpec.hf_inputs`); this is the one entry.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor

from vtc.errors import UsageError
from vtc.io.store import TokenFile, load
from vtc.targets import spec_of_file
from vtc.targets.base import video_token_id
from vtc.targets.llava_onevision import VisualSequence, visual_sequence

POSITIONS = ("contiguous", "original")
AFTER_VIDEO = ("reference", "model")

__all__ = ["AFTER_VIDEO", "POSITIONS", "VisualSequence", "video_inputs", "visual_sequence"]


def _check_model(tf: TokenFile, model: Any) -> None:
    space = tf.meta.get("space") or {}
    hidden = getattr(getattr(model.config, "text_config", model.config), "hidden_size", None)
    if hidden is not None and int(space.get("hidden_size", hidden)) != int(hidden):
        raise UsageError(f"{tf.path} was made for a model with hidden size {space.get('hidden_size')} "
                         f"({space.get('checkpoint')}); this model's is {hidden}.")


def video_inputs(tokens_file: str | os.PathLike[str] | TokenFile, model: Any, input_ids: Tensor | list[int], *,
                 positions: str = "contiguous", after_video: str = "reference",
                 rows: int | None = None, tokenizer: Any = None) -> dict[str, Any]:
    """`inputs_embeds` [1, L, D], `attention_mask` [1, L] and `position_ids` [1, L] for `model(**...)` or
    `model.generate(**...)`.

    input_ids: [L] or [1, L] token ids of the prompt with exactly one video placeholder
    (`model.config.video_token_id`), e.g. from the model's chat template with the processor's expansion turned
    off, or simply `tokenizer(text)` where text contains "<video>" once.

    Qwen3-VL files need `tokenizer` (the model's, e.g. `processor.tokenizer`) to write each frame's timestamp;
    they return `input_ids`, `mm_token_type_ids` and `mm_encoder_outputs` (the kept tokens and their DeepStack
    features) instead of `inputs_embeds`.
    """
    if positions not in POSITIONS:
        raise UsageError(f"positions must be one of {', '.join(POSITIONS)}, not '{positions}'.")
    if after_video not in AFTER_VIDEO:
        raise UsageError(f"after_video must be one of {', '.join(AFTER_VIDEO)}, not '{after_video}'.")
    tf = tokens_file if isinstance(tokens_file, TokenFile) else load(tokens_file)
    spec = spec_of_file(tf, "the installed")
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise UsageError("video_inputs builds one sequence; pass input_ids of shape [L] or [1, L].")
        ids = ids[0]
    vid = video_token_id(model)
    where = torch.nonzero(ids == vid).flatten()
    if where.numel() != 1:
        raise UsageError(f"the prompt must hold the video placeholder (token {vid}) exactly once, not "
                         f"{where.numel()} times; do not expand it (the file decides how many tokens go there).")
    _check_model(tf, model)
    return spec.hf_inputs(tf, model, ids, int(where[0]), positions=positions, after_video=after_video, rows=rows,
                          tokenizer=tokenizer)
