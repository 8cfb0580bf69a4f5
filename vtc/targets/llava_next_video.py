"""LLaVA-NeXT-Video (`llava_next_video`, e.g. llava-hf/LLaVA-NeXT-Video-7B-hf): CLIP tower → feature layer (CLS
dropped: select strategy "default") → the model's own spatial pooler (`vision_resampler`: 2×2 average, 24×24 →
12×12 at 336 px) → projector; no newline in the video path (`LlavaNextVideoModel.get_video_features`). The video
processor resizes the short side to the crop's side and centre-crops (`LlavaNextVideoVideoProcessor`). This
12×12-per-frame layout is the staple of the token-pruning papers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vtc.errors import ModelError
from vtc.io.geometry import OPENAI_MEAN, OPENAI_STD, FrameGeometry
from vtc.io.towers import Tower
from vtc.targets.base import Checkpoint, TargetEncoder
from vtc.targets.llava_onevision import LlavaLayout, LlavaOnevisionSpec, LlavaTower


class NextVideoTower(LlavaTower):
    """`LlavaTower` with LLaVA-NeXT-Video's order: pool the selected vision features with the model's own
    `vision_resampler`, then project."""

    def features(self, pixels: Tensor, also: frozenset[int] = frozenset()) -> tuple[Tensor, Tensor,
                                                                                      dict[int, Tensor]]:
        holder = self.visual
        picked = self._selected()
        kept, inputs = self._run_tower(pixels, picked, also)
        sel = torch.cat([kept[i] for i in picked], dim=-1)[:, self.prefix:]
        tokens = holder.multi_modal_projector(holder.vision_resampler(sel))  # the model's own pooler, then projector
        return sel, tokens, inputs


def next_video_geometry(ckpt: Checkpoint) -> FrameGeometry:
    """Short side to the crop's side (antialiased bicubic on uint8), centre crop, rescale, normalise."""
    pp = ckpt.preprocess
    vision = ckpt.config.get("vision_config") or {}
    side = int(vision.get("image_size", 336))
    crop = pp.get("crop_size") or {"height": 224, "width": 224}
    size = pp.get("size") or {"shortest_edge": 224}
    ch, cw = int(crop.get("height", side)), int(crop.get("width", side))
    if pp.get("do_resize") is False or pp.get("do_center_crop") is False or pp.get("do_rescale") is False \
            or pp.get("do_normalize") is False or ch != cw or int(size.get("shortest_edge", ch)) != ch \
            or pp.get("resample", 3) not in (3, "bicubic", None):
        raise ModelError(f"{ckpt.path}: its video processor (size {size}, crop {crop}) is not the shortest-edge "
                         f"resize to a square centre crop of that side, bicubic, that vtc reproduces.")
    mean = tuple(float(v) for v in pp.get("image_mean", OPENAI_MEAN))
    std = tuple(float(v) for v in pp.get("image_std", OPENAI_STD))
    return FrameGeometry((ch, cw), "shortest", mean, std, 0.0, "tensor")  # type: ignore[arg-type]


@dataclass(frozen=True)
class LlavaNextVideoSpec(LlavaOnevisionSpec):
    parts: tuple[str, ...] = ("vision_tower", "projector", "resampler")
    optional_parts: tuple[str, ...] = ("resampler",)  # weights only in the "conv" mode, which vtc refuses

    def weight_role(self, key: str) -> tuple[str, str] | None:
        k = key[len("model."):] if key.startswith("model.") else key
        if k.startswith("vision_resampler."):
            return "resampler", k[len("vision_resampler."):]
        role = super().weight_role(key)
        return None if role is None or role[0] == "newline" else role  # the newline is for images only

    def needs(self) -> str:
        return "the vision tower and the multi_modal_projector"

    def geometry(self, ckpt: Checkpoint) -> FrameGeometry:
        return next_video_geometry(ckpt)

    def layout_of(self, config: dict[str, Any], where: str = "the checkpoint") -> LlavaLayout:
        mode, stride = config.get("spatial_pool_mode", "average"), config.get("spatial_pool_stride", 2)
        if mode not in ("average", "max") or isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ModelError(f"{where}: spatial_pool_mode {mode!r} / stride {stride!r} is not one vtc reproduces "
                             f"(average or max, stride ≥ 1).")
        return LlavaLayout(mode, stride, "none")

    def check(self, ckpt: Checkpoint) -> None:
        self.layout_of(ckpt.config, str(ckpt.path))
        strategy = ckpt.config.get("vision_feature_select_strategy", "default")
        vision = ckpt.config.get("vision_config") or {}
        if strategy == "default" and str(vision.get("model_type", "clip_vision_model")).startswith("siglip"):
            raise ModelError(f"{ckpt.path}: vision_feature_select_strategy 'default' drops a CLS token, but its "
                             f"SigLIP tower has none; set it to 'full'.")

    def modules(self, config: Any) -> dict[str, torch.nn.Module]:
        from transformers import AutoModel
        from transformers.models.llava_next_video.modeling_llava_next_video import (
            LlavaNextVideoMultiModalProjector,
            LlavaNextVideoPooler,
        )

        return {"vision_tower": AutoModel.from_config(config.vision_config),
                "projector": LlavaNextVideoMultiModalProjector(config), "resampler": LlavaNextVideoPooler(config)}

    def attach(self, holder: torch.nn.Module, modules: dict[str, torch.nn.Module],
               state: dict[str, dict[str, Tensor]]) -> None:
        holder.vision_tower = modules["vision_tower"]
        holder.multi_modal_projector = modules["projector"]
        holder.vision_resampler = modules["resampler"]

    def tower(self, holder: Any) -> Tower:
        return NextVideoTower(holder, self.name, self.layout_of(holder.config.to_dict()))

    def file_extras(self, enc: TargetEncoder, positions: Tensor, rep: Tensor, grid: tuple[int, int],
                    num_frames: int, frame_times: list[float], info: Any, picture: tuple[int, int]
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Tensor]]:
        layout: LlavaLayout = enc.tower.layout  # type: ignore[attr-defined]
        return {"pool_stride": layout.stride}, {"layout": "none"}, {}
