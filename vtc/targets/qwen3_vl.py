"""Qwen3-VL (`qwen3_vl`; `qwen3_vl_moe`, whose vision tower is the same): its vision transformer, 2×2 patch merger
and DeepStack mergers on frame pairs at the processor's dynamic size (pixel bounds over all frames of a video);
each token frame after its timestamp text, original positions.

Timestamps: the processor's rule (`Qwen3VLProcessor._calculate_timestamps`): frame index / fps of every sampled
frame (an odd count repeats the last), the mean of each pair, written as `"<{:.1f} seconds>"` of that exact float.
A checkpoint without DeepStack (`deepstack_visual_indexes=[]`) has no planes; the file then has no `deepstack`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vtc.errors import FormatError
from vtc.io.store import TokenFile
from vtc.io.towers import Tower
from vtc.targets.base import TargetEncoder, video_token_id, with_rows
from vtc.targets.qwen import QwenSpec, QwenTower, frame_timestamps, text_ids

TIMESTAMP_FORMAT = "<{:.1f} seconds>"


class Qwen3Tower(QwenTower):
    """Qwen3-VL's vision transformer, patch merger and DeepStack mergers: frames [F, 3, H, W] → `patches`
    [F/2, (H/32)·(W/32), (1 + L)·D_llm]: each token's LLM embedding followed by its L DeepStack features (the
    mergers of intermediate blocks, added to the first L decoder layers' hidden states). Methods decide on the
    first D_llm channels only (`carried` = L planes ride along and are reduced with the same map), and the file
    stores them as `deepstack` [K, L, D_llm]."""

    kind = "qwen3"

    def __init__(self, holder: Any, name: str) -> None:
        super().__init__(holder, name)
        self.carried = len(getattr(holder.config.vision_config, "deepstack_visual_indexes", None) or [])

    def forward(self, pixels: Tensor, want: frozenset[str], layer_index: int) -> dict[str, Tensor]:
        out, gt, gh, gw = self.run_visual(pixels)
        n = (gh // self.merge) * (gw // self.merge)
        planes = [out.pooler_output, *(getattr(out, "deepstack_features", None) or [])]
        tokens = torch.cat([p.reshape(gt, n, -1) for p in planes], -1)
        return {"patches": tokens, **self.signals(tokens[..., : self.width], want)}

@dataclass(frozen=True)
class Qwen3VLSpec(QwenSpec):
    generation: int = 3

    def modules(self, config: Any) -> dict[str, torch.nn.Module]:
        if config.model_type == "qwen3_vl_moe":
            from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeVisionModel

            return {"visual": Qwen3VLMoeVisionModel._from_config(config.vision_config)}
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

        return {"visual": Qwen3VLVisionModel._from_config(config.vision_config)}

    def tower(self, holder: Any) -> Tower:
        return Qwen3Tower(holder, self.name)

    def file_extras(self, enc: TargetEncoder, positions: Tensor, rep: Tensor, grid: tuple[int, int],
                    num_frames: int, frame_times: list[float], info: Any, picture: tuple[int, int]
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Tensor]]:
        space, tensors, timing = self.common_extras(enc, rep, grid, num_frames, frame_times, info, picture)
        space.update(frame_timestamps=frame_timestamps(timing, enc.temporal_patch),
                     timestamp_format=TIMESTAMP_FORMAT, deepstack_planes=enc.carried)
        return space, {"layout": "none"}, tensors

    def hf_inputs(self, tf: TokenFile, model: Any, ids: Tensor, at: int, *, positions: str, after_video: str,
                  rows: int | None, tokenizer: Any) -> dict[str, Any]:
        """The placeholder becomes, for every token frame, its timestamp text, <vision_start>, one video token per
        kept token of that frame (in raster order) and <vision_end> — the processor's expansion, minus the dropped
        tokens (a frame that keeps none keeps its timestamp and its start/end pair). Positions are the ones the
        model's `get_rope_index` gives those tokens in the uncompressed sequence: each frame is a (1, h, w) group
        starting at the running text position, which then advances by max(h, w), kept tokens or not.

        → input_ids [1, L], attention_mask [1, L], mm_token_type_ids [1, L], position_ids [rows, 1, L] and
        `mm_encoder_outputs` {"video": the kept tokens [K, D] and the DeepStack planes [K, D] each}."""
        from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

        space = tf.meta["space"]
        num_planes = int(space.get("deepstack_planes", 0))
        if num_planes and "deepstack" not in tf.tensors:
            raise FormatError(f"{tf.path}: a {self.name} file with {num_planes} DeepStack planes but no "
                              f"'deepstack'.")
        h, w = tf.grid
        stamps = [float(v) for v in space["frame_timestamps"]]
        fmt = space.get("timestamp_format", TIMESTAMP_FORMAT)
        if fmt != TIMESTAMP_FORMAT:
            raise FormatError(f"{tf.path}: timestamp_format {str(fmt)[:40]!r} is not the processor's "
                              f"{TIMESTAMP_FORMAT!r}.")
        start_id, end_id = int(space["vision_start_token_id"]), int(space["vision_end_token_id"])
        vid = video_token_id(model)
        order = tf.raster_order()
        pos = tf.positions.long()[order]
        frame_of = pos[:, 0]
        seq: list[int] = ids[:at].tolist()
        p3: list[Tensor] = [torch.arange(at).expand(3, -1)]
        cur = at
        for f, stamp in enumerate(stamps):
            head = text_ids(tokenizer, fmt.format(stamp), self.name) + [start_id]
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
        embed = model.get_input_embeddings()
        device, dtype = embed.weight.device, embed.weight.dtype
        input_ids = torch.tensor([seq], device=device)
        kept = tf.tokens[order].to(device=device, dtype=dtype)
        planes = tf.tensors["deepstack"][order].to(device=device, dtype=dtype) if num_planes else \
            kept.new_zeros(kept.shape[0], 0, kept.shape[1])  # [K, L, D]; L = 0 without DeepStack
        video = BaseModelOutputWithDeepstackFeatures(
            pooler_output=(kept,), deepstack_features=[(planes[:, i],) for i in range(planes.shape[1])])
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                "mm_token_type_ids": (input_ids == vid).int() * 2, "position_ids": with_rows(pos3, rows).to(device),
                "mm_encoder_outputs": {"video": video}}

    def engine_video(self, tf: TokenFile) -> dict[str, Any]:
        """The embeddings carry the DeepStack planes concatenated along the hidden axis, [K, D·(1 + L)] (both
        engines split them back), with the per-frame `timestamps` instead of `second_per_grid_ts`; positions are
        (frame, row, col): each frame its own (1, h, w) group."""
        q = self.engine_common(tf)
        space, k, order = tf.meta["space"], q["num"], q["order"]
        if int(space.get("deepstack_planes", 0)):
            q["embeds"] = torch.cat([q["embeds"], tf["deepstack"][order].reshape(k, -1)], 1).contiguous()
        q["time"] = {"timestamps": [list(space["frame_timestamps"])]}
        q["mrope_positions"] = tf.positions[order].long()
        return q
