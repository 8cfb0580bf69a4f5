"""Targets: tokens in a video LLM's own space, made by that model's vision path (transformers).

A *target* is a video LLM whose visual tokens vtc writes. Its checkpoint (`--target-model`, a local directory or a
hub id) is read selectively: only the vision tower, the projector and the newline embedding are materialised from
the safetensors shards; the language model's tensors are never read. The vision path runs transformers' own
modules (`SiglipVisionModel`, `LlavaOnevisionMultiModalProjector`, `LlavaOnevisionModel.apply_pooling`), so the
tokens are the model's tokens.

| target          | checkpoint      | per frame                                           | newline          | frames |
|-----------------|-----------------|-----------------------------------------------------|------------------|--------|
| llava-onevision | llava_onevision | tower, projector, 2×2 bilinear resize (ceil): 14×14 | one, after video | 32     |
| llava-video     | llava_onevision | tower, projector, 2×2 average pool (floor): 13×13   | after every row  | 64     |

transformers implements LLaVA-OneVision's video path only; LLaVA-Video's (LLaVA-NeXT `get_2dPool` with
`mm_spatial_pool_mode="average"`, `mm_newline_position="grid"`) is re-stated here on the same modules.

`TargetEncoder` has the surface of `vtc.io.encode.Encoder` (geometry, grid, `encode_pixels`, `describe`, ...), its
`tower` is a `LlavaTower` adapter (`vtc.io.towers.Tower`). `check_target` validates a configuration from the
checkpoint's JSON files and safetensors headers alone (no transformers import, no weights).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vtc.errors import MissingDependencyError, ModelError, UsageError
from vtc.io.encode import EncoderConfig, FrameGrid, _hub_offline, _hub_reachable, _quiet_logs, pick_device, pick_dtype
from vtc.io.geometry import FrameGeometry
from vtc.io.target_qwen import (
    Qwen3Tower,
    QwenTower,
    frame_timestamps,
    mrope_positions,
    qwen_geometry,
    second_per_grid,
    temporal_positions,
)
from vtc.io.towers import Tower, object_block, shallow_block
from vtc.ops.sensitivity import projector_sensitivity, unit_directions


@dataclass(frozen=True)
class TargetSpec:
    """One supported target: which checkpoints it reads and how its per-frame tokens are laid out."""

    name: str
    summary: str
    model_types: tuple[str, ...]
    #: "bilinear" (resize to ceil(g/2), LLaVA-OneVision), "average" (2×2 average pool, floor, LLaVA-Video) or
    #: "merge" (Qwen's 2×2 patch merger)
    pool: str
    #: "one" (a single newline embedding after the whole video), "per_row" (after every grid row of every frame)
    #: or "none"
    newline: str
    frames: int
    example: str
    #: "llava" or "qwen": which checkpoint layout and vision path
    family: str = "llava"
    #: Qwen generation: 2 (Qwen2.5-VL: M-RoPE over the video grid) or 3 (Qwen3-VL: DeepStack planes, a frame size
    #: bounded over all frames, each frame its own position group after a timestamp)
    generation: int = 0

    @property
    def parts(self) -> tuple[str, ...]:
        """The checkpoint parts vtc reads; everything else (the language model, lm_head) is never touched."""
        return ("visual",) if self.family == "qwen" else ("vision_tower", "projector", "newline")


TARGETS: dict[str, TargetSpec] = {
    "llava-onevision": TargetSpec(
        "llava-onevision", "LLaVA-OneVision: SigLIP → projector → 2×2 bilinear pool (27×27 → 14×14), one newline "
        "after the video", ("llava_onevision",), "bilinear", "one", 32, "llava-hf/llava-onevision-qwen2-7b-ov-hf"),
    "llava-video": TargetSpec(
        "llava-video", "LLaVA-Video: SigLIP → projector → 2×2 average pool (27×27 → 13×13), a newline after every "
        "row", ("llava_onevision",), "average", "per_row", 64, "llava-hf/LLaVA-Video-7B-Qwen2-hf"),
    "qwen2.5-vl": TargetSpec(
        "qwen2.5-vl", "Qwen2.5-VL: its vision transformer and 2×2 patch merger on frame pairs at the processor's "
        "dynamic size; original M-RoPE positions", ("qwen2_5_vl",), "merge", "none", 32,
        "Qwen/Qwen2.5-VL-7B-Instruct", "qwen", 2),
    "qwen3-vl": TargetSpec(
        "qwen3-vl", "Qwen3-VL: its vision transformer, 2×2 patch merger and DeepStack mergers on frame pairs at the "
        "processor's dynamic size; each frame after its timestamp, original positions", ("qwen3_vl",), "merge",
        "none", 32, "Qwen/Qwen3-VL-8B-Instruct", "qwen", 3),
}


#: ZOO-Prune's sensitivity: the authors' script settings (64 directions, h = 0.01) with a fixed seed
SENSITIVITY_DIRECTIONS, SENSITIVITY_H, SENSITIVITY_SEED = 64, 0.01, 0

#: the signals every target's tower can make (the others need an open_clip tower: a CLS token, a text space)
TARGET_SIGNALS = frozenset({"attn", "pooled", "cls_attn", "cls_token", "keys", "received", "received_object",
                            "sensitivity", "shallow_attn", "readout_attn"})
#: signals only the LLaVA targets make (a projector after the vision features; the blocks' own attention)
LLAVA_ONLY_SIGNALS = frozenset({"sensitivity", "shallow_attn", "readout_attn"})


def target_spec(name: str) -> TargetSpec:
    if name not in TARGETS:
        raise UsageError(f"unknown --target '{name}'; supported: {', '.join(TARGETS)}.")
    return TARGETS[name]


def weight_role(key: str, family: str = "llava") -> tuple[str, str] | None:
    """A checkpoint tensor name → (part, name inside that part's module), or None for weights vtc never reads.

    Accepts the layouts transformers has saved over time: `model.vision_tower.…` (v5), `vision_tower.…` and
    `vision_tower.vision_model.…` (v4 hub checkpoints); Qwen: `model.visual.…` (v5) and `visual.…` (hub)."""
    k = key[len("model."):] if key.startswith("model.") else key
    if family == "qwen":
        return ("visual", k[len("visual."):]) if k.startswith("visual.") else None
    if k.startswith("vision_tower."):
        rest = k[len("vision_tower."):]
        return "vision_tower", rest[len("vision_model."):] if rest.startswith("vision_model.") else rest
    if k.startswith("multi_modal_projector."):
        return "projector", k[len("multi_modal_projector."):]
    if k == "image_newline":
        return "newline", ""
    return None


@dataclass
class Checkpoint:
    """A target checkpoint found on disk: its folder, config.json, and where each vision tensor lives."""

    path: Path
    config: dict[str, Any]
    #: checkpoint key → shard file, for the vision tower, projector and newline only
    vision_keys: dict[str, Path] = field(default_factory=dict)
    preprocess: dict[str, Any] = field(default_factory=dict)
    spec: TargetSpec | None = None


def resolve_checkpoint(ref: str) -> Path:
    """A local checkpoint directory, or a hub id fetched (config, index and the vision shards only) or taken from
    the local cache when the hub is unreachable.  → the directory."""
    p = Path(ref).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelError(f"--target-model {ref} is a file; give the checkpoint's directory (config.json and "
                             f"*.safetensors) or a hub id.")
        return p
    if ref.count("/") != 1 or ref.startswith((".", "/", "~")):
        raise ModelError(f"--target-model {ref}: no such directory (and not a hub id like ORG/NAME).")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub comes with open_clip
        raise MissingDependencyError("hub ids need huggingface_hub: pip install 'vtc[hf]'") from None
    online = _hub_reachable()
    if not online:
        _hub_offline()
    try:
        with _quiet_logs():
            return Path(snapshot_download(ref, allow_patterns=["*.json"], local_files_only=not online))
    except Exception as e:
        if not online:
            raise ModelError(f"cannot use {ref}: the model hub is unreachable (offline?) and it is not in the local "
                             f"cache. Run once with network access, or download it elsewhere and pass its "
                             f"directory to --target-model.") from None
        raise ModelError(f"cannot fetch {ref} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
                         f"; check the id, or pass a local checkpoint directory.") from None


def _fetch_shards(ref: str, folder: Path, files: set[str]) -> None:
    """Make sure the shard files holding the vision weights of hub checkpoint `ref` are in the cache."""
    missing = [f for f in sorted(files) if not (folder / f).exists()]
    if not missing:
        return
    from huggingface_hub import hf_hub_download

    if not _hub_reachable():
        raise ModelError(f"{ref}: the shard(s) {', '.join(missing)} with the vision weights are not in the local "
                         f"cache and the hub is unreachable. Run once with network access.")
    with _quiet_logs():
        for f in missing:
            hf_hub_download(ref, f)


def read_checkpoint(ref: str, spec: TargetSpec) -> Checkpoint:
    """Find and check a checkpoint for target `spec` from its JSON files and safetensors headers (no weights)."""
    folder = resolve_checkpoint(ref)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{folder} is not a transformers checkpoint (no config.json). Give the directory written "
                         f"by save_pretrained, or a hub id such as {spec.example}.")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{cfg_path} cannot be read as JSON ({e}).") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in spec.model_types:
        raise ModelError(f"{folder} is a '{model_type}' checkpoint; --target {spec.name} needs a "
                         f"{' or '.join(spec.model_types)} checkpoint (e.g. {spec.example}).")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelError(f"{index} is not a safetensors index ({e}).") from None
        keys = {k: folder / f for k, f in weight_map.items() if weight_role(k, spec.family) is not None}
        if folder != Path(ref).expanduser():  # a hub snapshot: fetch only the shards with vision weights
            _fetch_shards(ref, folder, {p.name for p in keys.values()})
    else:
        shards = sorted(folder.glob("*.safetensors"))
        if not shards:
            hint = " (.bin weights are not supported: re-save with safe_serialization)" \
                if any(folder.glob("*.bin")) else ""
            raise ModelError(f"{folder} has no *.safetensors weights{hint}.")
        from safetensors import safe_open

        keys = {}
        for shard in shards:
            try:
                with safe_open(str(shard), framework="pt") as f:
                    keys.update({k: shard for k in f.keys() if weight_role(k, spec.family) is not None})
            except Exception as e:
                raise ModelError(f"{shard} is not a readable safetensors file ({e}).") from None
    found = {weight_role(k, spec.family)[0] for k in keys}  # type: ignore[index]
    missing = [p for p in spec.parts if p not in found]
    if missing:
        need = "the vision transformer (visual.*)" if spec.family == "qwen" else \
            "the vision tower, the multi_modal_projector and image_newline"
        raise ModelError(f"{folder} has no {' / '.join(missing)} weights; a {spec.name} target needs {need}.")
    preprocess: dict[str, Any] = {}
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if (folder / name).is_file():
            try:
                preprocess = json.loads((folder / name).read_text())
            except (OSError, ValueError):
                raise ModelError(f"{folder / name} cannot be read as JSON.") from None
            break
    return Checkpoint(folder, config, keys, preprocess, spec)


#: LlavaOnevisionVideoProcessor's defaults (used when the checkpoint ships no processor config)
_PROCESSOR_MEAN = (0.48145466, 0.4578275, 0.40821073)
_PROCESSOR_STD = (0.26862954, 0.26130258, 0.27577711)


def checkpoint_geometry(ckpt: Checkpoint) -> FrameGeometry:
    """The picture the target's own video processor makes: a squash resize to the tower's input size (antialiased
    bicubic on uint8), rescale 1/255, normalise with the processor's mean and std."""
    if ckpt.spec is not None and ckpt.spec.family == "qwen":
        return qwen_geometry(ckpt.config, ckpt.preprocess, str(ckpt.path), ckpt.spec.generation)
    pp = ckpt.preprocess
    vision = ckpt.config.get("vision_config") or {}
    side = int(vision.get("image_size", 384))
    size = pp.get("size") or {}
    h, w = int(size.get("height", side)), int(size.get("width", side))
    if pp.get("do_resize") is False or pp.get("do_center_crop") or pp.get("do_rescale") is False \
            or pp.get("do_normalize") is False:
        raise ModelError(f"{ckpt.path}: its video processor settings (resize/crop/rescale/normalize) are not the "
                         f"LLaVA-OneVision ones vtc reproduces.")
    resample = pp.get("resample", 3)
    if resample not in (3, "bicubic", None):
        raise ModelError(f"{ckpt.path}: video processor resample {resample!r} is not bicubic.")
    mean = tuple(float(v) for v in pp.get("image_mean", _PROCESSOR_MEAN))
    std = tuple(float(v) for v in pp.get("image_std", _PROCESSOR_STD))
    return FrameGeometry((h, w), "squash", mean, std, 0.0, "tensor")  # type: ignore[arg-type]


def check_target(config: EncoderConfig) -> tuple[TargetSpec, Checkpoint]:
    """Validate a target configuration without loading weights or transformers."""
    if config.target is None:
        raise UsageError(f"--target-model needs --target ({' or '.join(TARGETS)}).")
    spec = target_spec(config.target)
    if not config.target_model:
        raise UsageError(f"--target {spec.name} needs --target-model DIR_OR_HUB_ID (e.g. {spec.example}).")
    if config.checkpoint:
        raise UsageError("--checkpoint is for open_clip towers; with --target, the weights come from --target-model.")
    pick_dtype(pick_device(config.device), config.dtype)
    ckpt = read_checkpoint(config.target_model, spec)
    checkpoint_geometry(ckpt)
    return spec, ckpt


def _pool_grid(x: Tensor, pool: str) -> Tensor:
    """[B, C, g, g] → [B, C, g', g']: the target's 2-D pooling (bilinear to ceil(g/2), or 2×2 average, floor)."""
    g = x.shape[-1]
    if pool == "bilinear":
        return F.interpolate(x, size=[math.ceil(g / 2), math.ceil(g / 2)], mode="bilinear")
    return F.avg_pool2d(x, 2)


def pool_map(values: Tensor, grid: int, pool: str) -> Tensor:
    """Per-patch values [B, g·g] or [B, g·g, d] → the same pooled to the target grid: [B, N'] or [B, N', d]."""
    squeeze = values.dim() == 2
    v = values[..., None] if squeeze else values
    b, _, d = v.shape
    out = _pool_grid(v.reshape(b, grid, grid, d).permute(0, 3, 1, 2).float(), pool)
    out = out.permute(0, 2, 3, 1).reshape(b, -1, d)
    return out[..., 0] if squeeze else out


class LlavaTower(Tower):
    """The vision path of a LLaVA-OneVision checkpoint as a tower adapter.

    `forward` gives `patches` [B, N', D_llm] — tower → feature layer → projector → pooling, N' = g'×g' — and the
    signals, pooled to the same grid (see `signal_sources`)."""

    kind = "llava"

    def __init__(self, holder: Any, spec: TargetSpec) -> None:
        vc = holder.config.vision_config
        self.g = int(vc.image_size) // int(vc.patch_size)
        gp = math.ceil(self.g / 2) if spec.pool == "bilinear" else self.g // 2
        super().__init__(holder, (gp, gp), int(vc.num_hidden_layers), int(holder.config.text_config.hidden_size))
        self.spec = spec
        self.has_head = getattr(holder.vision_tower, "head", None) is not None

    def _encoder_layers(self) -> Any:
        t = self.visual.vision_tower
        return (t.vision_model if hasattr(t, "vision_model") else t).encoder.layers

    def _selected(self) -> list[int]:
        """Indices into transformers' `hidden_states` tuple (0 = embeddings, i = output of block i-1) that the
        checkpoint's `vision_feature_layer` selects."""
        layer = self.visual.config.vision_feature_layer
        total = self.num_layers + 1
        picked = [(i % total) for i in ([layer] if isinstance(layer, int) else list(layer))]
        if 0 in picked:
            raise ModelError("the target's vision_feature_layer selects the patch embeddings; not supported.")
        return picked

    def features(self, pixels: Tensor, also: frozenset[int] = frozenset()) -> tuple[Tensor, Tensor,
                                                                                      dict[int, Tensor]]:
        """pixels [B, 3, H, W] → (selected vision features [B, g·g, Dv], pooled tokens [B, N', D_llm], inputs of
        blocks {0-based index: [B, g·g, Dv]}: the last selected block's and those in `also`), selected and
        projected as `LlavaOnevisionModel.get_video_features` does. Hooks keep just the hidden states that are used
        (not every block's)."""
        holder = self.visual
        cfg = holder.config
        picked = self._selected()
        layers = self._encoder_layers()
        kept: dict[int, Tensor] = {}
        inputs: dict[int, Tensor] = {}
        wanted_inputs = set(also) | {max(picked) - 1}

        def keep(i: int) -> Any:
            def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
                if i in picked:
                    kept[i] = output[0] if isinstance(output, tuple) else output
                if i - 1 in wanted_inputs:
                    inputs[i - 1] = args[0] if args else kwargs["hidden_states"]
            return hook

        hooked = set(picked) | {b + 1 for b in wanted_inputs}
        handles = [layers[i - 1].register_forward_hook(keep(i), with_kwargs=True) for i in hooked]
        try:
            holder.vision_tower(pixels, return_dict=True)
        finally:
            for h in handles:
                h.remove()
        sel = torch.cat([kept[i] for i in picked], dim=-1)
        if cfg.vision_feature_select_strategy == "default":
            sel = sel[:, 1:]
        proj = holder.multi_modal_projector(sel)
        if self.spec.pool == "bilinear":
            from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

            tokens = LlavaOnevisionModel.apply_pooling(holder, proj)  # the model's own pooling
        else:  # LLaVA-NeXT get_2dPool, mm_spatial_pool_mode="average", stride 2
            tokens = pool_map(proj, self.g, "average").to(proj.dtype)
        return sel, tokens, inputs

    def _attention(self, index: int, block_input: Tensor) -> tuple[Tensor, Tensor]:
        """'Attention received' [B, g·g] (mean over heads and queries) and head-mean keys [B, g·g, d] of block
        `index` (0-based), from its input (computed one frame at a time: [heads, L, L] is large)."""
        block = self._encoder_layers()[index]
        attn = block.self_attn
        received, keys = [], []
        for h in block_input:
            x = block.layer_norm1(h[None])
            n, heads = x.shape[1], attn.num_heads
            q = attn.q_proj(x).reshape(1, n, heads, -1).transpose(1, 2).float()
            k = attn.k_proj(x).reshape(1, n, heads, -1).transpose(1, 2).float()
            probs = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)  # [1, heads, L, L]
            received.append(probs.mean(1).mean(1)[0])
            keys.append(k.mean(1)[0])
        return torch.stack(received), torch.stack(keys)

    def _head(self, sel: Tensor) -> tuple[Tensor, Tensor]:
        """SigLIP's attention-pool head on the selected features (FastVID's 'vision abstract'): pooled [B, Dv] and
        head-mean probe→patch attention [B, g·g]."""
        tower = self.visual.vision_tower
        vm = tower.vision_model if hasattr(tower, "vision_model") else tower
        h = vm.post_layernorm(sel)
        head = tower.head
        probe = head.probe.repeat(h.shape[0], 1, 1)
        y, weights = head.attention(probe, h, h, need_weights=True, average_attn_weights=True)
        y = y + head.mlp(head.layernorm(y))
        return y[:, 0], weights[:, 0].float()

    def forward(self, pixels: Tensor, want: frozenset[str], layer_index: int) -> dict[str, Tensor]:
        obj = object_block(self.num_layers)
        shallow = shallow_block(self.num_layers)
        also = ({obj} if "received_object" in want else set()) | ({shallow} if "shallow_attn" in want else set())
        sel, tokens, inputs = self.features(pixels, frozenset(also))
        out: dict[str, Tensor] = {"patches": tokens}
        last = max(self._selected()) - 1
        if {"attn", "cls_attn", "keys", "received", "readout_attn"} & want:
            received, keys = self._attention(last, inputs[last])
            out["cls_attn"] = pool_map(received, self.g, self.spec.pool)
            out["attn"] = out["received"] = out["readout_attn"] = out["cls_attn"]
            k = pool_map(keys, self.g, self.spec.pool)
            out["keys"] = torch.cat([k.new_zeros(k.shape[0], 1, k.shape[-1]), k], 1)
        if "shallow_attn" in want:
            out["shallow_attn"] = pool_map(self._attention(shallow, inputs[shallow])[0], self.g, self.spec.pool)
        if self.has_head and {"attn", "pooled"} & want:
            pooled, probe_attn = self._head(sel)
            out["attn"] = pool_map(probe_attn, self.g, self.spec.pool)
            out["pooled"] = pooled
        elif "pooled" in want:
            out["pooled"] = sel.float().mean(1)
        if "cls_token" in want:
            out["cls_token"] = tokens.float().mean(1)
        if "received_object" in want:
            out["received_object"] = pool_map(self._attention(obj, inputs[obj])[0], self.g, self.spec.pool)
        if "sensitivity" in want:
            out["sensitivity"] = pool_map(self._sensitivity(sel), self.g, self.spec.pool)
        return {k: v for k, v in out.items() if k == "patches" or k in want}

    def _sensitivity(self, sel: Tensor) -> Tensor:
        """ZOO-Prune's zeroth-order sensitivity of the projector at every selected vision feature [B, g·g, Dv] →
        [B, g·g]: 64 unit directions from a generator seeded 0, h = 0.01, in float32 (a float32 copy of the
        projector: half-precision rounding would swamp the ±h·u differences)."""
        if getattr(self, "_proj32", None) is None:
            import copy

            self._proj32 = copy.deepcopy(self.visual.multi_modal_projector).float()
            self._dirs = unit_directions(SENSITIVITY_DIRECTIONS, sel.shape[-1], SENSITIVITY_SEED)
        x = sel.float()
        return torch.stack([projector_sensitivity(self._proj32, f, self._dirs.to(x.device), SENSITIVITY_H)
                            for f in x])

    def forward_subset(self, pixels: Tensor, keep: Tensor, layer_index: int) -> Tensor:
        raise UsageError("encoding only the changed patches (RLT's encode_changed_only) is not available with "
                         "--target: the target pools patches after its projector.")

    def signal_sources(self, layer: int) -> dict[str, str]:
        pool = "bilinear-resized to the token grid" if self.spec.pool == "bilinear" else "2×2 average-pooled"
        received = f"'attention received' (mean over heads and queries) of the last vision block used, {pool}"
        head = f"SigLIP attention-pool head on the selected features (FastVID's vision abstract), {pool}"
        return {
            "attn": f"{self.spec.name}: " + (f"{head}, probe→patch attention" if self.has_head else
                                             f"{received} (substitute: the checkpoint has no SigLIP head)"),
            "pooled": f"{self.spec.name}: " + ("SigLIP attention-pool head output" if self.has_head else
                                               "mean of the selected vision features (substitute: no SigLIP head)"),
            "cls_attn": f"{self.spec.name}: {received} (SigLIP has no CLS: substitute)",
            "cls_token": f"{self.spec.name}: mean of the frame's target tokens (SigLIP has no CLS: substitute)",
            "keys": f"{self.spec.name}: head-mean keys of the last vision block used, {pool}; row 0 zero (no CLS)",
            "received": f"{self.spec.name}: {received}",
            "received_object": f"{self.spec.name}: 'attention received' of vision block "
                               f"{object_block(self.num_layers) + 1} (1-based) of {self.num_layers}, {pool}",
            "shallow_attn": f"{self.spec.name}: 'attention received' of vision block "
                            f"{shallow_block(self.num_layers) + 1} (1-based) of {self.num_layers}, {pool} (VScan's "
                            f"Qwen rule: no CLS)",
            "readout_attn": f"{self.spec.name}: {received} (VScan's Qwen rule: no CLS)",
            "sensitivity": f"{self.spec.name}: projector sensitivity (ZOO-Prune), {SENSITIVITY_DIRECTIONS} unit "
                           f"directions seeded {SENSITIVITY_SEED}, h = {SENSITIVITY_H}, float32, {pool}",
        }


def _tensor_bytes(t: Tensor) -> memoryview:
    return memoryview(t.contiguous().view(-1).view(torch.uint8).numpy())


class TargetEncoder(FrameGrid):
    """A target model's vision path, loaded from its checkpoint without the language model.

    Same surface as `vtc.io.encode.Encoder`: `geometry`, `grid`, `width` (the LLM hidden size), `encode_pixels`,
    `describe`, `signal_sources`; plus `temporal_patch` (frames per token frame), `grid_for` (the token grid of a
    picture size, which varies per video for Qwen) and `file_extras` (the space metadata and tensors of a file)."""

    def __init__(self, config: EncoderConfig) -> None:
        self.config = config
        self.spec, self.ckpt = check_target(config)
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(self.device, config.dtype)
        self.geometry = checkpoint_geometry(self.ckpt)
        self.name = f"{self.spec.name}:{config.target_model}"
        self.holder, self.vision_sha256 = self._load()
        self.tower: Tower = LlavaTower(self.holder, self.spec) if self.spec.family != "qwen" else \
            Qwen3Tower(self.holder) if self.spec.generation == 3 else QwenTower(self.holder)
        self.kind = self.tower.kind
        self.grid = self.tower.grid
        self.num_layers = self.tower.num_layers
        self.width = self.tower.width
        self.layer_index = -1
        self.temporal_patch = getattr(self.tower, "temporal", 1)
        #: planes carried after each token's features (Qwen3-VL's DeepStack): reduced along, stored apart
        self.carried = int(getattr(self.tower, "carried", 0))
        image_newline = getattr(self.holder, "image_newline", None)
        self.newline = None if image_newline is None else image_newline.detach().float().cpu()

    def _modules(self, config: Any) -> dict[str, torch.nn.Module]:
        """The vision modules of this family, built with unallocated storage (no_init_weights: torch.empty pages
        are not touched, so they cost no memory until the checkpoint's tensors replace them)."""
        try:
            from transformers import AutoModel
            try:
                from transformers.initialization import no_init_weights  # transformers 5
            except ImportError:  # transformers 4
                from transformers.modeling_utils import no_init_weights  # type: ignore[no-redef]
        except ImportError as e:
            raise MissingDependencyError(f"--target needs transformers ({e.name} is missing): "
                                         f"pip install 'vtc[hf]'") from None
        with no_init_weights():
            if self.spec.family == "qwen" and self.spec.generation == 3:
                from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

                return {"visual": Qwen3VLVisionModel._from_config(config.vision_config)}
            if self.spec.family == "qwen":
                from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
                    Qwen2_5_VisionTransformerPretrainedModel,
                )

                return {"visual": Qwen2_5_VisionTransformerPretrainedModel._from_config(config.vision_config)}
            from transformers.models.llava_onevision.modeling_llava_onevision import (
                LlavaOnevisionMultiModalProjector,
            )

            return {"vision_tower": AutoModel.from_config(config.vision_config),
                    "projector": LlavaOnevisionMultiModalProjector(config)}

    def _load(self) -> tuple[Any, str]:
        """Build the vision modules, then assign only their checkpoint tensors (read one by one from the shards);
        hash what was read."""
        try:
            import transformers
            from transformers import AutoConfig
        except ImportError as e:
            raise MissingDependencyError(f"--target needs transformers ({e.name} is missing): "
                                         f"pip install 'vtc[hf]'") from None
        from safetensors import safe_open

        with _quiet_logs():
            transformers.logging.set_verbosity_error()
            try:
                config = AutoConfig.from_pretrained(str(self.ckpt.path))
            except Exception as e:
                raise ModelError(f"{self.ckpt.path}: transformers cannot read its config "
                                 f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}).") from None
            modules = self._modules(config)
        family = self.spec.family
        state: dict[str, dict[str, Tensor]] = {p: {} for p in self.spec.parts}
        digest = hashlib.sha256(json.dumps(self.ckpt.config, sort_keys=True).encode())
        by_file: dict[Path, list[str]] = {}
        for key, shard in self.ckpt.vision_keys.items():
            by_file.setdefault(shard, []).append(key)
        for shard, keys in sorted(by_file.items()):
            try:
                with safe_open(str(shard), framework="pt") as f:
                    for key in sorted(keys):
                        t = f.get_tensor(key)
                        digest.update(key.encode())
                        digest.update(_tensor_bytes(t))
                        part, name = weight_role(key, family)  # type: ignore[misc]
                        state[part][name] = t.to(self.dtype)
            except Exception as e:
                raise ModelError(f"{shard}: cannot read its vision weights ({e}).") from None
        tower = modules.get("vision_tower")
        if tower is not None and getattr(tower, "head", None) is not None \
                and not any(k.startswith("head.") for k in state["vision_tower"]):
            tower.head = None  # the config has a head, the checkpoint does not: no head signals
        for part, module in modules.items():
            own = dict(module.state_dict())
            missing = sorted(set(own) - set(state[part]))
            if missing:
                raise ModelError(f"{self.ckpt.path}: the {part} weights do not match its config (missing "
                                 f"{', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}).")
            try:
                module.load_state_dict({k: v for k, v in state[part].items() if k in own}, strict=True,
                                       assign=True)
            except RuntimeError as e:
                raise ModelError(f"{self.ckpt.path}: the {part} weights do not fit its config "
                                 f"({str(e).splitlines()[-1][:200]}).") from None
        newline = None
        if "newline" in state:
            newline = state["newline"][""]
            if newline.shape != (config.text_config.hidden_size,):
                raise ModelError(f"{self.ckpt.path}: image_newline has shape {list(newline.shape)}, expected "
                                 f"[{config.text_config.hidden_size}].")

        class Holder(torch.nn.Module):
            """What the tower adapter (and `LlavaOnevisionModel.apply_pooling`) read: config and vision modules."""

            def __init__(self) -> None:
                super().__init__()
                self.config = config
                if family == "qwen":
                    self.visual = modules["visual"]
                else:
                    self.vision_tower = modules["vision_tower"]
                    self.multi_modal_projector = modules["projector"]
                    self.image_newline = torch.nn.Parameter(newline, requires_grad=False)

        holder = Holder().eval().to(self.device)
        return holder, digest.hexdigest()

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """The token grid of a picture of height × width pixels (fixed for LLaVA; per video for Qwen)."""
        return self.tower.grid_for(height, width) if isinstance(self.tower, QwenTower) else self.grid

    def file_extras(self, positions: Tensor, rep: Tensor, grid: tuple[int, int], num_frames: int,
                    frame_times: list[float], fps: float, picture: tuple[int, int]) -> tuple[dict[str, Any],
                                                                                              dict[str, Tensor]]:
        """The `space` and `newline` metadata and the extra tensors of one file.

        positions [K, 3] (frame, row, col of each kept token), rep [K] (flat source index or -1), grid (h, w),
        num_frames T (token frames), frame_times of the sampled frames, the video's fps, the picture (H, W)."""
        space = self.space()
        tensors: dict[str, Tensor] = {}
        if self.spec.family == "qwen" and self.spec.generation == 3:
            vc = self.holder.config.vision_config
            m = int(vc.spatial_merge_size)
            space.update(grid=list(grid), image_size=list(picture),
                         video_grid_thw=[num_frames, grid[0] * m, grid[1] * m], spatial_merge_size=m,
                         temporal_patch_size=self.temporal_patch, frames_sampled=len(frame_times),
                         frame_timestamps=[round(v, 6) for v in frame_timestamps(frame_times, self.temporal_patch)],
                         timestamp_format="<{:.1f} seconds>", deepstack_planes=self.carried,
                         vision_start_token_id=self.ckpt.config.get("vision_start_token_id"),
                         vision_end_token_id=self.ckpt.config.get("vision_end_token_id"))
            mask = torch.zeros(num_frames * grid[0] * grid[1], dtype=torch.bool)
            mask[rep[rep >= 0].long()] = True
            tensors["retention_mask"] = mask
        elif self.spec.family == "qwen":
            vc = self.holder.config.vision_config
            spg = second_per_grid(frame_times, self.temporal_patch, fps)
            tps = float(vc.tokens_per_second)
            t_pos = temporal_positions(num_frames, spg, tps)
            m = int(vc.spatial_merge_size)
            space.update(grid=list(grid), image_size=list(picture),
                         video_grid_thw=[num_frames, grid[0] * m, grid[1] * m], spatial_merge_size=m,
                         temporal_patch_size=self.temporal_patch, tokens_per_second=tps, second_per_grid_t=spg,
                         frames_sampled=len(frame_times),
                         vision_start_token_id=self.ckpt.config.get("vision_start_token_id"),
                         vision_end_token_id=self.ckpt.config.get("vision_end_token_id"),
                         max_position=int(max(int(t_pos[-1]), grid[0] - 1, grid[1] - 1)))
            tensors["mrope_positions"] = mrope_positions(positions, t_pos).contiguous()
            mask = torch.zeros(num_frames * grid[0] * grid[1], dtype=torch.bool)
            mask[rep[rep >= 0].long()] = True
            tensors["retention_mask"] = mask
        elif self.newline is not None:
            tensors["newline"] = self.newline
        return {"space": space, "newline": self.newline_layout()}, tensors

    # ------------------------------------------------------------------ the Encoder surface
    @torch.inference_mode()
    def encode_pixels(self, pixels: Tensor, want: set[str] | frozenset[str] = frozenset()) -> dict[str, Tensor]:
        """Normalised pixels [B, 3, h, w] → float32 CPU `patches` [B, N', D_llm] and the wanted signals."""
        out = self.tower.forward(pixels.to(self.device, self.dtype), frozenset(want), self.layer_index)
        return {k: v.float().cpu() for k, v in out.items()}

    def encode_patches(self, pixels: Tensor, keep: Tensor) -> Tensor:
        return self.tower.forward_subset(pixels, keep, self.layer_index)

    def encode_text(self, text: str) -> Tensor:
        raise UsageError("--query is not available with --target yet (the target has no text tower in the frame "
                         "embedding space); drop --query or use an open_clip --model.")

    def space(self) -> dict[str, Any]:
        """The `space` metadata of a token file."""
        return {"kind": "target", "target": self.spec.name, "checkpoint": str(self.config.target_model),
                "checkpoint_dir": str(self.ckpt.path.resolve()), "vision_sha256": self.vision_sha256,
                "model_type": self.ckpt.config.get("model_type"), "hidden_size": self.width,
                "vision_grid": [self.tower.g, self.tower.g] if isinstance(self.tower, LlavaTower) else [],
                "grid": list(self.grid), "pool": self.spec.pool,
                "video_token_id": self.ckpt.config.get("video_token_index", self.ckpt.config.get("video_token_id"))}

    def newline_layout(self) -> dict[str, Any]:
        if self.spec.newline == "none":
            return {"layout": "none"}
        where = "after the last token of the video" if self.spec.newline == "one" else \
            "after every grid row of every frame (a row whose tokens were all dropped loses its newline)"
        return {"layout": self.spec.newline, "where": where, "tensor": "newline"}

    def describe(self) -> dict[str, Any]:
        vc = self.holder.config.vision_config
        return {
            "model": self.name,
            "pretrained": "",
            "checkpoint": str(self.config.target_model),
            "checkpoint_sha256": self.vision_sha256,
            "tower": self.kind,
            "layer": getattr(self.holder.config, "vision_feature_layer", -1),
            "image_size": list(self.image_size),
            "resize_mode": self.geometry.resize_mode,
            "geometry": self.geometry.as_dict(),
            "grid": list(self.grid),
            "dim": self.width,
            "vision_dim": int(vc.hidden_size),
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    def signal_sources(self) -> dict[str, str]:
        return self.tower.signal_sources(-1)
