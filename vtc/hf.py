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
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vtc.errors import FormatError, UsageError
from vtc.io.store import TokenFile, load

POSITIONS = ("contiguous", "original")
AFTER_VIDEO = ("reference", "model")


@dataclass(frozen=True)
class VisualSequence:
    """The visual part of an LLM input: `embeds` [V, D] in order, `offsets` [V] int64 (each entry's position
    within the uncompressed video block), `full_length` (that block's length before compression) and
    `is_newline` [V] bool."""

    embeds: Tensor
    offsets: Tensor
    full_length: int
    is_newline: Tensor


def visual_sequence(tokens_file: TokenFile) -> VisualSequence:
    """Kept tokens in (frame, row, column) order with the target's newline tokens inserted."""
    m = tokens_file.meta
    space = m.get("space") if isinstance(m.get("space"), dict) else {"kind": "encoder"}
    if space.get("kind") != "target":
        raise UsageError(f"{tokens_file.path} holds encoder-space tokens (no LLM's input space); make it with "
                         f"vtc compress --target llava-onevision --target-model CHECKPOINT.")
    layout = (m.get("newline") or {}).get("layout", "none")
    if layout not in ("one", "per_row", "none"):
        raise FormatError(f"{tokens_file.path}: unknown newline layout '{layout}'.")
    if layout != "none" and "newline" not in tokens_file.tensors:
        raise FormatError(f"{tokens_file.path}: newline layout '{layout}' but no 'newline' tensor.")
    t = tokens_file.num_frames
    h, w = tokens_file.grid
    n = h * w
    order = tokens_file.raster_order()
    pos = tokens_file.positions.long()[order]
    tokens = tokens_file.tokens[order]
    frame, row, col = pos[:, 0], pos[:, 1], pos[:, 2]
    cell = torch.where(row >= 0, row * w + col, torch.full_like(row, -1))
    if layout == "per_row":  # each frame is h rows of (w tokens + newline)
        stride = w + 1
        offsets = frame.clamp(min=0) * h * stride + torch.where(row >= 0, row * stride + col, torch.zeros_like(row))
        full = t * h * stride
        newline = tokens_file.tensors["newline"].to(tokens.dtype)
        pieces, offs, flags = [], [], []
        row_key = torch.where(row >= 0, frame * h + row, torch.full_like(row, -1))
        ends = torch.ones_like(row_key, dtype=torch.bool)
        ends[:-1] = row_key[1:] != row_key[:-1]
        ends &= row_key >= 0
        for i in range(tokens.shape[0]):  # cheap: K entries
            pieces.append(tokens[i])
            offs.append(int(offsets[i]))
            flags.append(False)
            if ends[i]:
                pieces.append(newline)
                offs.append(int(frame[i]) * h * stride + int(row[i]) * stride + w)
                flags.append(True)
        embeds = torch.stack(pieces) if pieces else tokens
        return VisualSequence(embeds, torch.tensor(offs, dtype=torch.long), full, torch.tensor(flags))
    offsets = frame.clamp(min=0) * n + cell.clamp(min=0)
    if layout == "one":
        newline = tokens_file.tensors["newline"].to(tokens.dtype)
        return VisualSequence(torch.cat([tokens, newline[None]]), torch.cat([offsets, torch.tensor([t * n])]),
                              t * n + 1, torch.cat([torch.zeros(len(offsets), dtype=torch.bool), torch.ones(1,
                                                                                                             dtype=torch.bool)]))
    return VisualSequence(tokens, offsets, t * n, torch.zeros(len(offsets), dtype=torch.bool))


def _video_token_id(model: Any) -> int:
    cfg = model.config
    for name in ("video_token_id", "video_token_index"):
        value = getattr(cfg, name, None)
        if value is not None:
            return int(value)
    raise UsageError(f"{type(model).__name__} has no video placeholder token (config.video_token_id).")


def _check_model(tf: TokenFile, model: Any) -> None:
    space = tf.meta.get("space") or {}
    hidden = getattr(getattr(model.config, "text_config", model.config), "hidden_size", None)
    if hidden is not None and int(space.get("hidden_size", hidden)) != int(hidden):
        raise UsageError(f"{tf.path} was made for a model with hidden size {space.get('hidden_size')} "
                         f"({space.get('checkpoint')}); this model's is {hidden}.")
    mine = getattr(getattr(model, "model", model), "image_newline", None)
    if mine is not None and "newline" in tf.tensors and mine.device.type != "meta":
        ref = tf.tensors["newline"].float()
        if not torch.allclose(mine.detach().float().cpu(), ref, rtol=1e-2, atol=1e-2 * float(ref.abs().max())):
            raise UsageError(f"{tf.path} was made from another checkpoint ({space.get('checkpoint')}): its newline "
                             f"embedding differs from this model's. Re-run vtc compress with --target-model set to "
                             f"this model's checkpoint.")


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
    features) instead of `inputs_embeds` — see `_qwen3_inputs`.
    """
    if positions not in POSITIONS:
        raise UsageError(f"positions must be one of {', '.join(POSITIONS)}, not '{positions}'.")
    if after_video not in AFTER_VIDEO:
        raise UsageError(f"after_video must be one of {', '.join(AFTER_VIDEO)}, not '{after_video}'.")
    tf = tokens_file if isinstance(tokens_file, TokenFile) else load(tokens_file)
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.dim() == 2:
        if ids.shape[0] != 1:
            raise UsageError("video_inputs builds one sequence; pass input_ids of shape [L] or [1, L].")
        ids = ids[0]
    vid = _video_token_id(model)
    where = torch.nonzero(ids == vid).flatten()
    if where.numel() != 1:
        raise UsageError(f"the prompt must hold the video placeholder (token {vid}) exactly once, not "
                         f"{where.numel()} times; do not expand it (the file decides how many tokens go there).")
    _check_model(tf, model)
    at = int(where[0])
    target = (tf.meta.get("space") or {}).get("target")
    if target == "qwen2.5-vl":
        return _qwen_inputs(tf, model, ids, at, after_video, rows)
    if target == "qwen3-vl":
        return _qwen3_inputs(tf, model, ids, at, tokenizer, rows)
    seq = visual_sequence(tf)
    embed = model.get_input_embeddings()
    text = embed(ids.to(embed.weight.device))
    visual = seq.embeds.to(device=text.device, dtype=text.dtype)
    embeds = torch.cat([text[:at], visual, text[at + 1:]])
    if positions == "contiguous":
        pos = torch.arange(embeds.shape[0])
    else:
        after = torch.arange(ids.numel() - at - 1) + at + seq.full_length
        pos = torch.cat([torch.arange(at), seq.offsets + at, after])
    return {"inputs_embeds": embeds[None], "attention_mask": torch.ones(1, embeds.shape[0], dtype=torch.long,
                                                                         device=text.device),
            "position_ids": pos[None].to(text.device)}


def _default_rows() -> int:
    import transformers

    return 4 if int(transformers.__version__.split(".")[0]) >= 5 else 3


def _model_text_restart(model: Any, ids: Tensor, at: int, space: dict[str, Any], vid: int) -> int:
    """The position the installed model's own `get_rope_index` gives the first token after the (full) video."""
    t, gh, gw = space["video_grid_thw"]
    m = int(space["spatial_merge_size"])
    n = t * (gh // m) * (gw // m)
    full = torch.cat([ids[:at], torch.full((n,), vid), ids[at + 1:]])[None]
    kwargs: dict[str, Any] = {"video_grid_thw": torch.tensor([[t, gh, gw]]),
                              "second_per_grid_ts": torch.tensor([space["second_per_grid_t"]])}
    inner = getattr(model, "model", model)
    try:
        pos, _ = inner.get_rope_index(full, mm_token_type_ids=(full == vid).int() * 2, **kwargs)
    except TypeError:  # transformers 4.x: no mm_token_type_ids
        pos, _ = inner.get_rope_index(full, **kwargs)
    return int(pos[0, 0, at + n]) if ids.numel() > at + 1 else int(pos[0, 0, -1]) + 1


def _qwen_inputs(tf: TokenFile, model: Any, ids: Tensor, at: int, after_video: str,
                 rows: int | None) -> dict[str, Tensor]:
    """Qwen2.5-VL: the kept tokens at the placeholder, with their original M-RoPE positions."""
    if "mrope_positions" not in tf.tensors:
        raise FormatError(f"{tf.path}: a qwen2.5-vl file without 'mrope_positions'.")
    space = tf.meta["space"]
    order = tf.raster_order()
    embed = model.get_input_embeddings()
    text = embed(ids.to(embed.weight.device))
    visual = tf.tokens[order].to(device=text.device, dtype=text.dtype)
    embeds = torch.cat([text[:at], visual, text[at + 1:]])
    vision_pos = tf["mrope_positions"][order].long().T + at  # [3, K]
    if after_video == "reference":
        restart = at + int(space["max_position"]) + 1
    else:
        restart = _model_text_restart(model, ids, at, space, _video_token_id(model))
    before = torch.arange(at).expand(3, -1)
    after = (torch.arange(ids.numel() - at - 1) + restart).expand(3, -1)
    pos3 = torch.cat([before, vision_pos, after], 1)  # [3, L]
    rows = rows or _default_rows()
    if rows not in (3, 4):
        raise UsageError(f"rows must be 3 or 4, not {rows}.")
    if rows == 4:  # row 0: the text positions transformers uses for the mask
        pos3 = torch.cat([torch.arange(pos3.shape[1])[None], pos3])
    n = embeds.shape[0]
    return {"inputs_embeds": embeds[None], "attention_mask": torch.ones(1, n, dtype=torch.long, device=text.device),
            "position_ids": pos3[:, None, :].to(text.device)}


def _text_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without special tokens, from a transformers tokenizer (or any `encode` / callable)."""
    if tokenizer is None:
        raise UsageError("a qwen3-vl file needs the model's tokenizer to write each frame's timestamp: "
                         "video_inputs(file, model, input_ids, tokenizer=processor.tokenizer).")
    if hasattr(tokenizer, "encode"):
        try:
            return list(tokenizer.encode(text, add_special_tokens=False))
        except TypeError:
            return list(tokenizer.encode(text))
    return list(tokenizer(text))


def _qwen3_inputs(tf: TokenFile, model: Any, ids: Tensor, at: int, tokenizer: Any,
                  rows: int | None) -> dict[str, Any]:
    """Qwen3-VL: the placeholder becomes, for every token frame, its timestamp text, <vision_start>, one video
    token per kept token of that frame (in raster order) and <vision_end> — the processor's expansion, minus the
    dropped tokens (a frame that keeps none keeps its timestamp and its start/end pair). Positions are the ones
    the model's `get_rope_index` gives those tokens in the uncompressed sequence: each frame is a (1, h, w) group
    starting at the running text position, which then advances by max(h, w), kept tokens or not.

    → input_ids [1, L], attention_mask [1, L], mm_token_type_ids [1, L], position_ids [rows, 1, L] and
    `mm_encoder_outputs` {"video": the kept tokens [K, D] and the DeepStack planes [K, D] each}."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

    space = tf.meta["space"]
    num_planes = int(space.get("deepstack_planes", 0))
    if num_planes and "deepstack" not in tf.tensors:
        raise FormatError(f"{tf.path}: a qwen3-vl file with {num_planes} DeepStack planes but no 'deepstack'.")
    h, w = tf.grid
    stamps = [float(v) for v in space["frame_timestamps"]]
    fmt = str(space.get("timestamp_format", "<{:.1f} seconds>"))
    start_id, end_id = int(space["vision_start_token_id"]), int(space["vision_end_token_id"])
    vid = _video_token_id(model)
    order = tf.raster_order()
    pos = tf.positions.long()[order]
    frame_of = pos[:, 0]
    seq: list[int] = ids[:at].tolist()
    p3: list[Tensor] = [torch.arange(at).expand(3, -1)]
    cur = at
    for f, stamp in enumerate(stamps):
        head = _text_ids(tokenizer, fmt.format(stamp)) + [start_id]
        seq += head
        p3.append((torch.arange(len(head)) + cur).expand(3, -1))
        cur += len(head)
        mine = pos[frame_of == f]
        seq += [vid] * int(mine.shape[0])
        p3.append(torch.stack([torch.full((mine.shape[0],), cur), mine[:, 1] + cur, mine[:, 2] + cur]))
        cur += max(h, w)
        seq.append(end_id)
        p3.append(torch.full((3, 1), cur))
        cur += 1
    rest = ids[at + 1:].tolist()
    seq += rest
    p3.append((torch.arange(len(rest)) + cur).expand(3, -1))
    pos3 = torch.cat(p3, 1)
    rows = rows or _default_rows()
    if rows not in (3, 4):
        raise UsageError(f"rows must be 3 or 4, not {rows}.")
    if rows == 4:
        pos3 = torch.cat([torch.arange(pos3.shape[1])[None], pos3])
    embed = model.get_input_embeddings()
    device, dtype = embed.weight.device, embed.weight.dtype
    input_ids = torch.tensor([seq], device=device)
    kept = tf.tokens[order].to(device=device, dtype=dtype)
    planes = tf.tensors["deepstack"][order].to(device=device, dtype=dtype) if num_planes else \
        kept.new_zeros(kept.shape[0], 0, kept.shape[1])  # [K, L, D]; L = 0 without DeepStack
    video = BaseModelOutputWithDeepstackFeatures(
        pooler_output=(kept,), deepstack_features=[(planes[:, i],) for i in range(planes.shape[1])])
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": (input_ids == vid).int() * 2, "position_ids": pos3[:, None, :].to(device),
            "mm_encoder_outputs": {"video": video}}
