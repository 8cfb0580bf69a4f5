"""Frame geometry: how a decoded frame becomes the encoder's input picture, in one typed place.

The decoder asks it what size to convert frames to (`decode_size`), the encoder turns those frames into normalised
pixels (`preprocess`), `vtc show` draws what the encoder saw (`view`), and the Ray driver ships it to its decode
tasks. It is known without loading weights (`vtc.io.encode.geometry_for`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
#: open_clip's preprocessing defaults (`open_clip.transform.PreprocessCfg`), what a checkpoint without a tag gets
DEFAULT_PREPROCESS: dict[str, Any] = {"size": 224, "mode": "RGB", "mean": OPENAI_MEAN, "std": OPENAI_STD,
                                      "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}
RESIZE_MODES = ("shortest", "longest", "squash", "smart")
#: the longest decoded side, in units of the encoder's picture side, for the shortest-side resize
MAX_ASPECT = 8


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's frame size rule: both sides multiples of `factor` (patch × merge, 28), the pixel count within
    [min_pixels, max_pixels], the aspect ratio kept as closely as possible.  → (height, width)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.0f} is over 200")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def smart_resize_video(frames: int, height: int, width: int, temporal: int, factor: int, min_pixels: int,
                       max_pixels: int) -> tuple[int, int]:
    """Qwen3-VL's frame size rule: as `smart_resize`, but the pixel bounds hold for the whole clip — frames
    (rounded to a multiple of `temporal`) × height × width — so a longer clip gets smaller frames; sides shorter
    than `factor` are first scaled up.  → (height, width)."""
    frames = max(frames, temporal)
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.0f} is over 200")
    h = round(height / factor) * factor
    w = round(width / factor) * factor
    t = round(frames / temporal) * temporal
    if t * h * w > max_pixels:
        beta = math.sqrt(frames * height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif t * h * w < min_pixels:
        beta = math.sqrt(min_pixels / (frames * height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


@dataclass(frozen=True)
class FrameGeometry:
    """The encoder's input picture: `image_size` (h, w), `resize_mode`, normalisation `mean`/`std` and the pad value.

    - shortest: the short side is resized to fit, then a centre crop (CLIP, SigLIP);
    - longest: the long side is resized to fit, then centred padding with `fill` (0..255);
    - squash: resized to `image_size` ignoring the aspect ratio;
    - smart: Qwen2-VL's dynamic size (`smart_resize` with `factor`, `min_pixels`, `max_pixels`): each video keeps
      its aspect ratio, so the picture (and the token grid) depend on the video; `image_size` is unused. With
      `temporal` > 0 (Qwen3-VL) the pixel bounds hold for all the video's frames (`smart_resize_video`), so the
      size also depends on how many frames are sampled.

    `resize_on` says who resizes: "decode" (the decoder converts frames to `decode_size`, open_clip towers) or
    "tensor" (frames arrive at their native size and `preprocess` resizes them the way transformers' video
    processors do: antialiased bicubic on uint8, then a fused rescale-and-normalise, so a target model gets the
    very pixels its own processor would make).
    """

    image_size: tuple[int, int] = (224, 224)
    resize_mode: str = "shortest"
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    fill: float = 0.0
    resize_on: str = "decode"
    factor: int = 0
    min_pixels: int = 0
    max_pixels: int = 0
    temporal: int = 0
    #: the video processor's `cap_pixels_per_frame` (qwen-vl-utils' rule): without `temporal`, the per-frame bound
    #: becomes max(min(max_pixels, cap // frames), 1.05·min_pixels) (cap = total video pixels × temporal patch);
    #: with `temporal`, each frame's share is max(min(cap, max_pixels // frames), 1.05·min_pixels) (cap = pixels
    #: of max_video_tokens patches); 0: no cap
    cap: int = 0

    @classmethod
    def from_preprocess_cfg(cls, cfg: dict[str, Any], size: int | tuple[int, ...] | list[int]) -> FrameGeometry:
        """From open_clip's `preprocess_cfg` dict (mean, std, resize_mode, fill_color) and an image size."""
        hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[-1]))
        return cls(hw, str(cfg.get("resize_mode") or "shortest"), tuple(float(v) for v in cfg.get("mean", OPENAI_MEAN)),
                   tuple(float(v) for v in cfg.get("std", OPENAI_STD)), float(cfg.get("fill_color", 0) or 0))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrameGeometry:
        return cls(tuple(d["image_size"]), d["resize_mode"], tuple(d["mean"]), tuple(d["std"]), float(d["fill"]),
                   str(d.get("resize_on", "decode")), int(d.get("factor", 0)), int(d.get("min_pixels", 0)),
                   int(d.get("max_pixels", 0)), int(d.get("temporal", 0)), int(d.get("cap", 0)))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_size"] = list(self.image_size)
        return d

    def decode_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) to convert a decoded frame to, so that the crop (or pad) gives `image_size`."""
        th, tw = self.image_size
        if self.resize_on == "tensor":
            return width, height
        if self.resize_mode == "squash":
            return tw, th
        if self.resize_mode == "longest":
            s = min(tw / width, th / height)
            return max(1, round(width * s)), max(1, round(height * s))
        s = max(tw / width, th / height)  # shortest: the short side matches, then a center crop
        # bounded for extreme aspect ratios (an 8000×8 video would make 224 000-pixel-wide frames): beyond
        # MAX_ASPECT:1 the long side is squeezed, so the crop shows more of it than a true centre crop would
        return (max(tw, min(round(width * s), MAX_ASPECT * tw)), max(th, min(round(height * s), MAX_ASPECT * th)))

    def output_size(self, height: int, width: int, frames: int = 0) -> tuple[int, int]:
        """(h, w) of the picture made from a decoded frame of `height` × `width` (the `decode_size` output) of a
        video of `frames` sampled frames (which matters with `temporal`)."""
        if self.resize_mode == "smart" and self.temporal:
            hi = self.max_pixels
            if self.cap and frames > 0:
                hi = max(min(self.cap, self.max_pixels // frames), int(self.min_pixels * 1.05)) * frames
            return smart_resize_video(frames, height, width, self.temporal, self.factor, self.min_pixels, hi)
        if self.resize_mode == "smart":
            hi = self.max_pixels
            if self.cap and frames > 0:
                hi = max(min(hi, self.cap // frames), int(self.min_pixels * 1.05))
            return smart_resize(height, width, self.factor, self.min_pixels, hi)
        return self.image_size

    def preprocess(self, frames: np.ndarray | Tensor, video_frames: int = 0) -> Tensor:
        """uint8 [B, H, W, 3] at `decode_size` (of a video of `video_frames` sampled frames) → normalised pixels
        float32 [B, 3, h, w] (centre crop or pad)."""
        if self.resize_on == "tensor":
            return self._preprocess_like_transformers(torch.as_tensor(frames).permute(0, 3, 1, 2), video_frames)
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

    def _preprocess_like_transformers(self, x: Tensor, video_frames: int = 0) -> Tensor:
        """uint8 [B, 3, H, W] → float32 [B, 3, h, w], step for step as transformers' torchvision backend does it
        (`resize` with antialias on uint8, then `rescale_and_normalize` with mean and std folded by 1/255)."""
        import torchvision.transforms.v2.functional as tvF

        if self.resize_mode not in ("squash", "smart", "shortest"):
            raise ValueError("resize_on='tensor' supports the squash, smart and shortest resizes only")
        if self.resize_mode == "shortest":  # the short side to the crop's side (int(s·long/short)), centre crop
            h, w = int(x.shape[-2]), int(x.shape[-1])
            th, tw = self.image_size
            short, long = (w, h) if w <= h else (h, w)
            size = (int(th * long / short), th) if w <= h else (th, int(th * long / short))
            if (h, w) != size:
                x = tvF.resize(x.contiguous(), list(size), interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
            top, left = int((size[0] - th) / 2.0), int((size[1] - tw) / 2.0)
            x = x[..., top: top + th, left: left + tw]
            size = (th, tw)
        else:
            size = self.output_size(int(x.shape[-2]), int(x.shape[-1]), video_frames)
        if tuple(x.shape[-2:]) != size:
            x = tvF.resize(x.contiguous(), list(size), interpolation=tvF.InterpolationMode.BICUBIC, antialias=True)
        rescale = 1 / 255
        mean = torch.tensor(self.mean) * (1.0 / rescale)
        std = torch.tensor(self.std) * (1.0 / rescale)
        return tvF.normalize(x.to(torch.float32), mean.tolist(), std.tolist(), inplace=True)

    def preprocess_many(self, frames: list[np.ndarray], video_frames: list[int] | None = None) -> Tensor:
        """Frames of possibly different sizes (several videos, of `video_frames` sampled frames each) → normalised
        pixels [B, 3, h, w], in order (every frame must make a picture of the same size: see `output_size`)."""
        counts = video_frames or [0] * len(frames)
        out, i = [], 0
        while i < len(frames):
            j = i
            while j < len(frames) and frames[j].shape == frames[i].shape and counts[j] == counts[i]:
                j += 1
            out.append(self.preprocess(np.stack(frames[i:j]), counts[i]))
            i = j
        return torch.cat(out)

    def view(self, pixels: Tensor) -> Tensor:
        """Normalised pixels [B, 3, h, w] → uint8 [B, h, w, 3]: the picture the encoder sees (padding included)."""
        mean, std = torch.tensor(self.mean)[:, None, None], torch.tensor(self.std)[:, None, None]
        pix = pixels.float().cpu() * std + mean
        return (pix * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
