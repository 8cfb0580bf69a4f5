"""Qwen2.5-VL (`qwen2_5_vl`): its vision transformer and 2×2 patch merger on frame pairs, original M-RoPE positions.

Positions: the model gives the video token at (t', row, col) the rotary position
`(⌊t'·second_per_grid_t·tokens_per_second⌋, row, col) + start`, where start is the position after the text before
the video and `second_per_grid_t` = temporal_patch_size / sampled_fps, sampled_fps = sampled frames / total frames ×
fps — the processor's rule (`Qwen2_5_VLProcessor`, transformers' `VideoMetadata.sampled_fps`, qwen-vl-utils, vLLM).
A vtc file stores that triple (without `start`) for every kept token (`mrope_positions`), with `video_grid_thw`,
`second_per_grid_t` and the retention mask over the full grid, so a consumer or a serving engine gives kept
tokens their original positions.

transformers consumer: kept tokens keep their original 3-D positions. Text after the video continues from the
largest position of the full video grid + 1 (`after_video="reference"`, Qwen's rule and vLLM's);
`after_video="model"` asks the installed model's own `get_rope_index` (transformers 5 restarts text at
start + max(h', w'), ignoring the temporal extent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vtc.errors import FormatError
from vtc.io.store import TokenFile
from vtc.targets.base import TargetEncoder, video_token_id, with_rows
from vtc.targets.qwen import QwenSpec, mrope_positions, second_per_grid, temporal_positions


@dataclass(frozen=True)
class Qwen2_5VLSpec(QwenSpec):
    """Qwen2.5-VL: time-scaled M-RoPE (`tokens_per_second`, `second_per_grid_ts`)."""

    #: whether the temporal position advances by tokens_per_second · second_per_grid_t per grid step (Qwen2.5-VL)
    #: or by 1 (Qwen2-VL)
    time_scaled: bool = True

    def modules(self, config: Any) -> dict[str, torch.nn.Module]:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        return {"visual": Qwen2_5_VisionTransformerPretrainedModel._from_config(config.vision_config)}

    def file_extras(self, enc: TargetEncoder, positions: Tensor, rep: Tensor, grid: tuple[int, int],
                    num_frames: int, frame_times: list[float], info: Any, picture: tuple[int, int]
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Tensor]]:
        space, tensors, timing = self.common_extras(enc, rep, grid, num_frames, frame_times, info, picture)
        if self.time_scaled:
            spg = second_per_grid(timing, enc.temporal_patch)
            tps = float(enc.holder.config.vision_config.tokens_per_second)
            t_pos = temporal_positions(num_frames, spg, tps)
            space.update(tokens_per_second=tps, second_per_grid_t=spg)
        else:
            t_pos = torch.arange(num_frames)
        space["max_position"] = int(max(int(t_pos[-1]), grid[0] - 1, grid[1] - 1))
        tensors["mrope_positions"] = mrope_positions(positions, t_pos).contiguous()
        return space, {"layout": "none"}, tensors

    def model_text_restart(self, model: Any, ids: Tensor, at: int, space: dict[str, Any], vid: int) -> int:
        """The position the installed model's own `get_rope_index` gives the first token after the (full) video."""
        t, gh, gw = space["video_grid_thw"]
        m = int(space["spatial_merge_size"])
        n = t * (gh // m) * (gw // m)
        full = torch.cat([ids[:at], torch.full((n,), vid), ids[at + 1:]])[None]
        kwargs: dict[str, Any] = {"video_grid_thw": torch.tensor([[t, gh, gw]])}
        if self.time_scaled:
            kwargs["second_per_grid_ts"] = torch.tensor([space["second_per_grid_t"]])
        inner = getattr(model, "model", model)
        try:
            pos, _ = inner.get_rope_index(full, mm_token_type_ids=(full == vid).int() * 2, **kwargs)
        except TypeError:  # transformers 4.x: no mm_token_type_ids
            pos, _ = inner.get_rope_index(full, **kwargs)
        return int(pos[0, 0, at + n]) if ids.numel() > at + 1 else int(pos[0, 0, -1]) + 1

    def hf_inputs(self, tf: TokenFile, model: Any, ids: Tensor, at: int, *, positions: str, after_video: str,
                  rows: int | None, tokenizer: Any) -> dict[str, Any]:
        """The kept tokens at the placeholder, with their original M-RoPE positions."""
        if "mrope_positions" not in tf.tensors:
            raise FormatError(f"{tf.path}: a {self.name} file without 'mrope_positions'.")
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
            restart = self.model_text_restart(model, ids, at, space, video_token_id(model))
        before = torch.arange(at).expand(3, -1)
        after = (torch.arange(ids.numel() - at - 1) + restart).expand(3, -1)
        pos3 = torch.cat([before, vision_pos, after], 1)  # [3, L]
        n = embeds.shape[0]
        return {"inputs_embeds": embeds[None], "attention_mask": torch.ones(1, n, dtype=torch.long, device=text.device),
                "position_ids": with_rows(pos3, rows).to(text.device)}

    def engine_video(self, tf: TokenFile) -> dict[str, Any]:
        q = self.engine_common(tf)
        space = tf.meta["space"]
        q["time"] = {"second_per_grid_ts": torch.tensor([space["second_per_grid_t"]], dtype=torch.float32)} \
            if self.time_scaled else {}
        q["mrope_positions"] = tf["mrope_positions"][q["order"]].long()
        return q
