"""Qwen3.5 (`qwen3_5`, `qwen3_5_moe`): a Qwen3-VL-style vision transformer and patch merger without DeepStack
(`Qwen3_5VisionModel`), the same video processor (`Qwen3VLVideoProcessor`: pixel bounds over all frames) and the
same prompt: each token frame after its timestamp text, in its own (1, h, w) position group. Only the language
model differs (gated delta-net and attention layers; MoE for `qwen3_5_moe`), which vtc never reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vtc.targets.qwen3_vl import Qwen3VLSpec


@dataclass(frozen=True)
class Qwen3_5Spec(Qwen3VLSpec):
    def modules(self, config: Any) -> dict[str, torch.nn.Module]:
        if config.model_type == "qwen3_5_moe":
            from transformers.models.qwen3_5_moe.modeling_qwen3_5_moe import Qwen3_5MoeVisionModel

            return {"visual": Qwen3_5MoeVisionModel._from_config(config.vision_config)}
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5VisionModel

        return {"visual": Qwen3_5VisionModel._from_config(config.vision_config)}
