"""Qwen2-VL (`qwen2_vl`): its vision transformer (full attention) and 2×2 patch merger on frame pairs at the
processor's dynamic size (`Qwen2VLVideoProcessor`, the one Qwen2.5-VL also uses); M-RoPE positions without time
scaling — the temporal coordinate of token frame t' is t' itself (`Qwen2VLModel.get_rope_index`: no
`second_per_grid_ts`). Files carry `mrope_positions` (t', row, col), the retention mask and what the processor is
told about the frames; the consumer and the engines' input are Qwen2.5-VL's without the time fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vtc.targets.qwen2_5_vl import Qwen2_5VLSpec


@dataclass(frozen=True)
class Qwen2VLSpec(Qwen2_5VLSpec):
    time_scaled: bool = False

    def modules(self, config: Any) -> dict[str, torch.nn.Module]:
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

        return {"visual": Qwen2VisionTransformerPretrainedModel._from_config(config.vision_config)}
