"""What the Qwen-VL families share: the checkpoint's `visual` part, the processor's dynamic frame size, frame-pair
patches, the tower adapter, what the processor is told about the sampled frames, and the engines' input.

Qwen-VL models patch `temporal_patch_size` (2) consecutive frames together and merge 2×2 neighbouring patches, so
`F` sampled frames of `H × W` pixels (multiples of patch·merge, chosen per video by `smart_resize`) give a token grid
`[T' = ⌈F/2⌉, (H/(p·m))·(W/(p·m)), D_llm]`; an odd frame count repeats the last frame, as the model's processor
does. The vision transformer attends within each frame pair (or window), so frame pairs can be encoded in any batch.

The per-video quantities the processor derives from the frames it is given — `second_per_grid_ts` (Qwen2.5-VL),
the timestamps (Qwen3-VL) — come from `VideoMetadata`: the video's fps, its frame count and the index of each
sampled frame. vtc computes them by the same rule (`VideoTiming`) and records those three in the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vtc.errors import ModelError, UsageError
from vtc.io.geometry import OPENAI_MEAN, OPENAI_STD, FrameGeometry
from vtc.io.store import TokenFile
from vtc.io.towers import Tower
from vtc.targets.base import Checkpoint, TargetEncoder, TargetSpec, retention_mask

#: Qwen2VLVideoProcessor's default pixel bounds per frame (shortest_edge / longest_edge of its `size`)
DEFAULT_MIN_PIXELS = 128 * 28 * 28
DEFAULT_MAX_PIXELS = 768 * 28 * 28
#: Qwen3VLVideoProcessor's defaults: pixel bounds over all frames of a video, patch 16, mean and std 0.5
QWEN3_MIN_PIXELS = 128 * 32 * 32
QWEN3_MAX_PIXELS = 32 * 32 * 768
QWEN3_MEAN = QWEN3_STD = (0.5, 0.5, 0.5)
#: the video processors' `max_video_tokens` defaults (used with `cap_pixels_per_frame`)
QWEN2_MAX_VIDEO_TOKENS = 128000
QWEN3_MAX_VIDEO_TOKENS = 768


#: per Qwen generation: the video processor's defaults (min pixels, max pixels, patch, mean, std) and whether its
#: pixel bounds hold for all frames together (Qwen3-VL) rather than per frame
_PROCESSOR_DEFAULTS = {
    2: (DEFAULT_MIN_PIXELS, DEFAULT_MAX_PIXELS, 14, OPENAI_MEAN, OPENAI_STD, False),
    3: (QWEN3_MIN_PIXELS, QWEN3_MAX_PIXELS, 16, QWEN3_MEAN, QWEN3_STD, True),
}


def qwen_geometry(config: dict[str, Any], pp: dict[str, Any], where: str, generation: int = 2) -> FrameGeometry:
    """The frame geometry of a Qwen2.5-VL or Qwen3-VL checkpoint's video processor (`video_preprocessor_config.json`,
    else the image processor's `preprocessor_config.json`, as `AutoVideoProcessor` falls back), with the
    processor's precedence: `size` {shortest_edge, longest_edge}, overridden by `min_pixels` / `max_pixels`
    (Qwen2.5-VL only). Qwen3-VL's bounds hold for all the frames of a video together (`FrameGeometry.temporal`)."""
    min_px, max_px, patch_px, mean0, std0, whole_clip = _PROCESSOR_DEFAULTS[generation]
    vision = config.get("vision_config") or {}
    if pp.get("do_resize") is False or pp.get("do_rescale") is False or pp.get("do_normalize") is False:
        raise ModelError(f"{where}: its video processor settings (resize/rescale/normalize) are not the ones vtc "
                         f"reproduces.")
    size = pp.get("size") or {}
    pixels = (None, None) if whole_clip else (pp.get("min_pixels"), pp.get("max_pixels"))
    lo = int(pixels[0] or size.get("shortest_edge") or min_px)
    hi = int(pixels[1] or size.get("longest_edge") or max_px)
    patch = int(pp.get("patch_size") or vision.get("patch_size", patch_px))
    merge = int(pp.get("merge_size") or vision.get("spatial_merge_size", 2))
    if patch != int(vision.get("patch_size", patch_px)) or merge != int(vision.get("spatial_merge_size", 2)):
        raise ModelError(f"{where}: processor patch/merge size ({patch}/{merge}) differ from the vision config's.")
    temporal = int(pp.get("temporal_patch_size") or vision.get("temporal_patch_size", 2)) if whole_clip else 0
    mean = tuple(float(v) for v in pp.get("image_mean", mean0))
    std = tuple(float(v) for v in pp.get("image_std", std0))
    cap = 0
    if pp.get("cap_pixels_per_frame"):  # qwen-vl-utils' bound on a whole video's pixels, as the processor applies it
        factor = patch * merge
        if whole_clip:  # Qwen3VLVideoProcessor: at most max_video_tokens patches per frame
            cap = int(pp.get("max_video_tokens") or QWEN3_MAX_VIDEO_TOKENS) * factor * factor
        else:  # Qwen2VLVideoProcessor: 90 % of max_video_tokens for the whole video, shared by its frames
            tp = int(pp.get("temporal_patch_size") or vision.get("temporal_patch_size", 2))
            cap = int(int(pp.get("max_video_tokens") or QWEN2_MAX_VIDEO_TOKENS) * factor * factor * 0.9) * tp
    return FrameGeometry((0, 0), "smart", mean, std, 0.0, "tensor", patch * merge, lo, hi,  # type: ignore[arg-type]
                         temporal, cap)


def patchify(pixels: Tensor, patch: int, merge: int, temporal: int) -> tuple[Tensor, list[int]]:
    """Normalised pixels [F, 3, H, W] of one video run → the model's flat patches [T'·h·w, 3·temporal·p·p] and
    grid (T', h, w) in patch units, laid out as the model's video processor does it (an odd F repeats the last
    frame; patches ordered by 2×2 merge block)."""
    if pad := -pixels.shape[0] % temporal:
        pixels = torch.cat([pixels, pixels[-1:].expand(pad, -1, -1, -1)])
    f, c, h, w = pixels.shape
    gt, gh, gw = f // temporal, h // patch, w // patch
    x = pixels.reshape(1, gt, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return x.reshape(gt * gh * gw, c * temporal * patch * patch), [gt, gh, gw]


class QwenTower(Tower):
    """A Qwen-VL vision transformer + patch merger as a tower adapter: frames [F, 3, H, W] (F even, or the last
    frame repeats) → `patches` [F/2, (H/(p·m))·(W/(p·m)), D_llm] and substitute signals (see `signal_sources`)."""

    kind = "qwen"
    #: what the tokens are read from (recorded as the file's `layer`)
    layer_label = "merger"
    pool = "merge"

    def __init__(self, holder: Any, name: str) -> None:
        vc = holder.config.vision_config
        self.name = name
        self.patch = int(vc.patch_size)
        self.merge = int(vc.spatial_merge_size)
        self.temporal = int(vc.temporal_patch_size)
        out = getattr(vc, "out_hidden_size", None) or holder.config.text_config.hidden_size  # Qwen2-VL: hidden_size
        super().__init__(holder, (0, 0), int(vc.depth), int(out))

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """The merged token grid of a picture of height × width pixels."""
        step = self.patch * self.merge
        return height // step, width // step

    #: extra planes carried after each token's features (Qwen3-VL's DeepStack features); 0 here
    carried = 0

    def run_visual(self, pixels: Tensor) -> tuple[Any, int, int, int]:
        """The model's vision transformer on frames [F, 3, H, W] → (its output, T', h, w in patches)."""
        flat, (gt, gh, gw) = patchify(pixels, self.patch, self.merge, self.temporal)
        visual = self.visual.visual
        thw = torch.tensor([[gt, gh, gw]], device=flat.device)
        return visual(flat.to(visual.dtype), grid_thw=thw), gt, gh, gw

    def forward(self, pixels: Tensor, want: frozenset[str], layer_index: int) -> dict[str, Tensor]:
        out, gt, gh, gw = self.run_visual(pixels)
        merged = getattr(out, "pooler_output", out)  # transformers 5: an output object; 4.x: the tensor
        tokens = merged.reshape(gt, (gh // self.merge) * (gw // self.merge), -1)
        return {"patches": tokens, **self.signals(tokens, want)}

    def signals(self, tokens: Tensor, want: frozenset[str]) -> dict[str, Tensor]:
        """The substitute signals of merged tokens [T', N, D] (see `signal_sources`), those in `want`."""
        res: dict[str, Tensor] = {}
        gt = tokens.shape[0]
        if want:
            t = tokens.float()
            probe = t.mean(1)  # [T', D]
            probs = torch.softmax((t @ probe[:, :, None])[..., 0] / math.sqrt(t.shape[-1]), dim=-1)
            res.update(attn=probs, cls_attn=probs, received=probs, received_object=probs, pooled=probe, cls_token=probe,
                       keys=torch.cat([t.new_zeros(gt, 1, t.shape[-1]), t], 1))
        return {k: v for k, v in res.items() if k in want}

    def forward_subset(self, pixels: Tensor, keep: Tensor, layer_index: int) -> Tensor:
        raise UsageError(f"encoding only the changed patches is not available with --target {self.name}.")

    def signal_sources(self, layer: int) -> dict[str, str]:
        name = self.name
        probe = (f"{name}: softmax over the frame's tokens of (token · mean token)/√D, in the LLM space "
                 "(substitute: Qwen's vision tower has no CLS token and no pooling head)")
        return {
            "attn": probe, "cls_attn": probe, "received": probe, "received_object": probe,
            "pooled": f"{name}: mean of the frame pair's tokens (substitute: no pooling head)",
            "cls_token": f"{name}: mean of the frame pair's tokens (substitute: no CLS token)",
            "keys": f"{name}: the merged tokens themselves, row 0 zero (substitute: no CLS, keys not exposed)",
        }


@dataclass(frozen=True)
class VideoTiming:
    """Which frames of the video were sampled, as the model's processor is told (`VideoMetadata`): the video's
    frame rate, its frame count and the index of each sampled frame (from its presentation time: index =
    round((time − first frame's time) · fps))."""

    fps: float
    total_frames: int
    indices: list[int]

    @classmethod
    def of(cls, frame_times: list[float], info: Any) -> VideoTiming:
        """From the sampled frames' times [F] and the video's header (`VideoInfo`: fps, frame count — when the
        container stores none, the stream's packets are counted, as a decoder-side loader counts frames — and
        the first frame's time)."""
        fps = float(info.fps or 0.0)
        total = int(info.num_frames or 0) or count_frames(info.path, int(info.stream))
        idx = [max(0, round((t - info.start_time) * fps)) if fps > 0 else i for i, t in enumerate(frame_times)]
        return cls(fps, max(total, (max(idx) + 1) if idx else 0), idx)

    @property
    def sampled_fps(self) -> float:
        """transformers' `VideoMetadata.sampled_fps` (qwen-vl-utils, vLLM): sampled frames / total frames × fps
        (24 when the video's fps is unknown, as transformers defaults)."""
        if self.fps <= 0 or self.total_frames <= 0:
            return self.fps or 24.0
        return len(self.indices) / self.total_frames * self.fps


def count_frames(path: str, stream: int = 0) -> int:
    """The number of frames of video stream `stream` of `path`, from its demuxed packets (no decoding), up to the
    first unreadable packet; 0 when the file cannot be opened."""
    import av

    n = 0
    try:
        with av.open(str(path)) as c:
            for pkt in c.demux(c.streams.video[stream]):
                n += 1 if pkt.size and pkt.pts is not None else 0
    except (av.error.FFmpegError, OSError, IndexError):
        pass
    return n


def second_per_grid(timing: VideoTiming, temporal: int) -> float:
    """Seconds covered by one temporal grid step, as Qwen2.5-VL's processor sets `second_per_grid_ts`:
    temporal_patch_size / sampled_fps."""
    return temporal / timing.sampled_fps


def frame_timestamps(timing: VideoTiming, temporal: int) -> list[float]:
    """Qwen3-VL's timestamp of each token frame, as its processor computes it (`_calculate_timestamps`): frame
    index / fps of every sampled frame (an odd count repeats the last), then the mean of the first and last of
    each group of `temporal`. Unrounded: the text is `format(value, ".1f")` of exactly these floats."""
    idx = list(timing.indices)
    if idx and len(idx) % temporal:
        idx += [idx[-1]] * (temporal - len(idx) % temporal)
    fps = timing.fps if timing.fps > 0 else 24.0
    times = [i / fps for i in idx]
    return [(times[i] + times[i + temporal - 1]) / 2 for i in range(0, len(times), temporal)]


def temporal_positions(num: int, second_per_grid_t: float, tokens_per_second: float) -> Tensor:
    """[T'] int64: the t coordinate the model gives each temporal grid step (before the start offset), computed as
    the model does (float32 interval = tokens_per_second · second_per_grid_t, then ⌊arange · interval⌋)."""
    interval = tokens_per_second * torch.tensor(second_per_grid_t, dtype=torch.float32)
    return (torch.arange(num) * interval).long()


def mrope_positions(positions: Tensor, t_pos: Tensor) -> Tensor:
    """Per kept token (frame, row, col) [K, 3] (row/col -1 = no representative cell: 0 is used) → the model's
    (t, h, w) rotary position within the video block, int32 [K, 3]."""
    frame = positions[:, 0].long().clamp(min=0)
    hw = positions[:, 1:].long().clamp(min=0)
    return torch.cat([t_pos[frame][:, None], hw], 1).int()


def text_ids(tokenizer: Any, text: str, target: str) -> list[int]:
    """Token ids of `text` without special tokens, from a transformers tokenizer (or any `encode` / callable)."""
    if tokenizer is None:
        raise UsageError(f"a {target} file needs the model's tokenizer to write each frame's timestamp: "
                         f"video_inputs(file, model, input_ids, tokenizer=processor.tokenizer).")
    if hasattr(tokenizer, "encode"):
        try:
            return list(tokenizer.encode(text, add_special_tokens=False))
        except TypeError:
            return list(tokenizer.encode(text))
    return list(tokenizer(text))


@dataclass(frozen=True)
class QwenSpec(TargetSpec):
    """A Qwen-VL family: the checkpoint's `visual` part (vision transformer, patch merger and any DeepStack
    mergers), the processor's dynamic frame size, frame pairs."""

    parts: tuple[str, ...] = ("visual",)
    family: str = "qwen"
    #: which processor defaults apply: 2 (Qwen2-VL, Qwen2.5-VL: per-frame pixel bounds) or 3 (Qwen3-VL and later:
    #: bounds over all the frames of a video)
    generation: int = 2

    def weight_role(self, key: str) -> tuple[str, str] | None:
        """`model.visual.…` (transformers 5) and `visual.…` (hub checkpoints)."""
        k = key[len("model."):] if key.startswith("model.") else key
        return ("visual", k[len("visual."):]) if k.startswith("visual.") else None

    def needs(self) -> str:
        return "the vision transformer (visual.*)"

    def geometry(self, ckpt: Checkpoint) -> FrameGeometry:
        return qwen_geometry(ckpt.config, ckpt.preprocess, str(ckpt.path), self.generation)

    def attach(self, holder: torch.nn.Module, modules: dict[str, torch.nn.Module],
               state: dict[str, dict[str, Tensor]]) -> None:
        holder.visual = modules["visual"]

    def tower(self, holder: Any) -> Tower:
        return QwenTower(holder, self.name)

    def common_extras(self, enc: TargetEncoder, rep: Tensor, grid: tuple[int, int], num_frames: int,
                      frame_times: list[float], info: Any, picture: tuple[int, int]
                      ) -> tuple[dict[str, Any], dict[str, Tensor], VideoTiming]:
        """The space fields, tensors and timing every Qwen file has: the grid as the processor's
        `video_grid_thw`, what the processor is told about the frames (fps, frame count, indices), the sampled
        frames' times [F] (`sampled_frame_times`, float64) and the retention mask over the full grid."""
        m = int(enc.holder.config.vision_config.spatial_merge_size)
        timing = VideoTiming.of(frame_times, info)
        space = dict(grid=list(grid), image_size=list(picture),
                     video_grid_thw=[num_frames, grid[0] * m, grid[1] * m], spatial_merge_size=m,
                     temporal_patch_size=enc.temporal_patch, frames_sampled=len(frame_times),
                     video_fps=timing.fps, video_frames=timing.total_frames, frame_indices=timing.indices,
                     sampled_fps=timing.sampled_fps,
                     vision_start_token_id=enc.ckpt.config.get("vision_start_token_id"),
                     vision_end_token_id=enc.ckpt.config.get("vision_end_token_id"))
        tensors = {"sampled_frame_times": torch.tensor(frame_times, dtype=torch.float64),
                   "retention_mask": retention_mask(rep, num_frames * grid[0] * grid[1])}
        return space, tensors, timing

    def engine_common(self, tf: TokenFile) -> dict[str, Any]:
        """The engines' input every Qwen file gives: the kept tokens in the model's order (frame, row, col), the
        grid, the retention mask, whether the file is complete."""
        space = tf.meta["space"]
        order = tf.raster_order()
        k = int(tf.tokens.shape[0])
        return {"embeds": tf.tokens[order].contiguous(), "order": order,
                "grid_thw": torch.tensor([space["video_grid_thw"]], dtype=torch.int64),
                "retention_mask": tf["retention_mask"].bool(), "num": k,
                "complete": k == int(tf["retention_mask"].numel()), "source": str(tf.path)}
