"""Frame geometry: how a decoded frame becomes the encoder's input picture, in one typed place.

The decoder asks it what size to convert frames to (`decode_size`), the encoder turns those frames into normalised
pixels (`preprocess`), `vtc show` draws what the encoder saw (`view`), and the Ray driver ships it to its decode
tasks. It is known without loading weights (`vtc.io.encode.geometry_for`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("shortest", "longest", "squash")


@dataclass(frozen=True)
class FrameGeometry:
    """The encoder's input picture: `image_size` (h, w), `resize_mode`, normalisation `mean`/`std` and the pad value.

    - shortest: the short side is resized to fit, then a centre crop (CLIP, SigLIP);
    - longest: the long side is resized to fit, then centred padding with `fill` (0..255);
    - squash: resized to `image_size` ignoring the aspect ratio.
    """

    image_size: tuple[int, int] = (224, 224)
    resize_mode: str = "shortest"
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    fill: float = 0.0

    @classmethod
    def from_preprocess_cfg(cls, cfg: dict[str, Any], size: int | tuple[int, ...] | list[int]) -> FrameGeometry:
        """From open_clip's `preprocess_cfg` dict (mean, std, resize_mode, fill_color) and an image size."""
        hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[-1]))
        return cls(hw, str(cfg.get("resize_mode") or "shortest"), tuple(float(v) for v in cfg.get("mean", OPENAI_MEAN)),
                   tuple(float(v) for v in cfg.get("std", OPENAI_STD)), float(cfg.get("fill_color", 0) or 0))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrameGeometry:
        return cls(tuple(d["image_size"]), d["resize_mode"], tuple(d["mean"]), tuple(d["std"]), float(d["fill"]))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) to convert a decoded frame to, so that the crop (or pad) gives `image_size`."""
        th, tw = self.image_size
        if self.resize_mode == "squash":
            return tw, th
        if self.resize_mode == "longest":
            s = min(tw / width, th / height)
            return max(1, round(width * s)), max(1, round(height * s))
        s = max(tw / width, th / height)  # shortest: the short side matches, then a center crop
        return max(tw, round(width * s)), max(th, round(height * s))

    def preprocess(self, frames: np.ndarray | Tensor) -> Tensor:
        """uint8 [B, H, W, 3] at `decode_size` → normalised pixels float32 [B, 3, h, w] (centre crop or pad)."""
        x = torch.as_tensor(frames).permute(0, 3, 1, 2).float() / 255.0
        th, tw = self.image_size
        _, _, h, w = x.shape
        if self.resize_mode == "longest" and (h < th or w < tw):
            pad_h, pad_w = th - h, tw - w
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=self.fill / 255.0)
        elif h != th or w != tw:
            if h < th or w < tw:
                x = F.interpolate(x, size=(max(h, th), max(w, tw)), mode="bicubic", align_corners=False)
                _, _, h, w = x.shape
            top, left = (h - th) // 2, (w - tw) // 2
            x = x[:, :, top : top + th, left : left + tw]
        mean, std = torch.tensor(self.mean)[:, None, None], torch.tensor(self.std)[:, None, None]
        return (x - mean) / std

    def preprocess_many(self, frames: list[np.ndarray]) -> Tensor:
        """Frames of possibly different sizes (several videos) → normalised pixels [B, 3, h, w], in order."""
        out, i = [], 0
        while i < len(frames):
            j = i
            while j < len(frames) and frames[j].shape == frames[i].shape:
                j += 1
            out.append(self.preprocess(np.stack(frames[i:j])))
            i = j
        return torch.cat(out)

    def view(self, pixels: Tensor) -> Tensor:
        """Normalised pixels [B, 3, h, w] → uint8 [B, h, w, 3]: the picture the encoder sees (padding included)."""
        mean, std = torch.tensor(self.mean)[:, None, None], torch.tensor(self.std)[:, None, None]
        pix = pixels.float().cpu() * std + mean
        return (pix * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
