"""LLaVA-OneVision-style targets (transformers `llava_onevision` checkpoints): SigLIP tower → feature layer →
projector → 2-D pooling of each frame's grid → newline embedding(s).

| target           | per frame (384 px, 27×27 patches)         | newline                        | frames |
|------------------|-------------------------------------------|--------------------------------|--------|
| llava-onevision  | 2×2 bilinear resize (ceil): 14×14 = 196   | one, after the video           | 32     |
| llava-video      | as transformers runs it: 14×14 = 196      | one, after the video           | 64     |
| llava-video-next | LLaVA-NeXT's 2×2 average pool: 13×13      | after every row: 13×14 = 182   | 64     |

The layout (pool mode and stride, where newlines go) is a `LlavaLayout`. transformers runs every `llava_onevision`
checkpoint — `llava-hf/LLaVA-Video-7B-Qwen2-hf` included — with OneVision's video path (bilinear, ceil, one newline
per video: `LlavaOnevisionModel.get_video_features`), and vLLM does the same; that is `llava-video`'s default.
`llava-video-next` is the layout of the authors' LLaVA-NeXT code (`get_2dPool` average, stride 2;
`mm_newline_position="grid"`: `add_token_per_grid`), which a transformers checkpoint never runs. Either way a config
that carries LLaVA-NeXT's own keys (`mm_spatial_pool_mode` average/max/bilinear, `mm_spatial_pool_stride`,
`mm_newline_position` grid/frame/one_token/no_token) gets the layout they name.

`vision_feature_select_strategy` "default" drops the first token (a CLS); it is refused up front for a tower without
one (SigLIP), where the model itself would fail.

The tokens are the model's own: the tower, projector and (bilinear) pooling are transformers' modules
(`SiglipVisionModel`, `LlavaOnevisionMultiModalProjector`, `LlavaOnevisionModel.apply_pooling`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vtc.errors import FormatError, ModelError, UsageError
from vtc.io.geometry import FrameGeometry
from vtc.io.store import TokenFile
from vtc.io.towers import Tower, object_block, shallow_block
from vtc.ops.sensitivity import projector_sensitivity, unit_directions
from vtc.targets.base import Checkpoint, TargetEncoder, TargetSpec

#: LlavaOnevisionVideoProcessor's defaults (used when the checkpoint ships no processor config)
_PROCESSOR_MEAN = (0.48145466, 0.4578275, 0.40821073)
_PROCESSOR_STD = (0.26862954, 0.26130258, 0.27577711)
#: LLaVA-NeXT's names for where newlines go → vtc's layout names
NEWLINE_POSITIONS = {"one_token": "one", "grid": "per_row", "frame": "per_frame", "no_token": "none"}
POOL_MODES = ("bilinear", "average", "max")


@dataclass(frozen=True)
class LlavaLayout:
    """How a frame's projected patch grid [g, g] becomes its tokens and where newline embeddings go.

    pool: "bilinear" (resize to ⌈g/stride⌉), "average" or "max" (stride×stride pooling, ⌊g/stride⌋);
    newline: "one" (after the video), "per_row" (after every grid row of every frame), "per_frame" (after every
    frame) or "none"."""

    pool: str = "bilinear"
    stride: int = 2
    newline: str = "one"

    def side(self, g: int) -> int:
        return math.ceil(g / self.stride) if self.pool == "bilinear" else g // self.stride

    def describe(self) -> str:
        return f"{self.pool} pool, stride {self.stride} ({'ceil' if self.pool == 'bilinear' else 'floor'})"


def layout_from_config(config: dict[str, Any], default: LlavaLayout, where: str) -> LlavaLayout:
    """`default`, overridden by LLaVA-NeXT's `mm_spatial_pool_mode` / `mm_spatial_pool_stride` /
    `mm_newline_position` where the checkpoint's config carries them."""
    pool = config.get("mm_spatial_pool_mode", default.pool)
    stride = config.get("mm_spatial_pool_stride", default.stride)
    position = config.get("mm_newline_position")
    newline = NEWLINE_POSITIONS.get(position, "?") if position is not None else default.newline
    if pool not in POOL_MODES or isinstance(stride, bool) or not isinstance(stride, int) or stride < 1 \
            or newline == "?":
        raise ModelError(f"{where}: LLaVA-NeXT video layout mm_spatial_pool_mode={pool!r}, "
                         f"mm_spatial_pool_stride={stride!r}, mm_newline_position={position!r} is not one vtc "
                         f"reproduces (pool {'/'.join(POOL_MODES)}, stride ≥ 1, newline "
                         f"{'/'.join(NEWLINE_POSITIONS)}).")
    return LlavaLayout(pool, stride, newline)


def pool_grid(x: Tensor, layout: LlavaLayout) -> Tensor:
    """[B, C, g, g] → [B, C, g', g']: the layout's 2-D pooling."""
    g = x.shape[-1]
    if layout.pool == "bilinear":
        side = layout.side(g)
        return F.interpolate(x, size=[side, side], mode="bilinear")
    if layout.pool == "max":
        return F.max_pool2d(x, layout.stride)
    return F.avg_pool2d(x, layout.stride)


def pool_map(values: Tensor, grid: int, layout: LlavaLayout) -> Tensor:
    """Per-patch values [B, g·g] or [B, g·g, d] → the same pooled to the target grid: [B, N'] or [B, N', d]."""
    squeeze = values.dim() == 2
    v = values[..., None] if squeeze else values
    b, _, d = v.shape
    out = pool_grid(v.reshape(b, grid, grid, d).permute(0, 3, 1, 2).float(), layout)
    out = out.permute(0, 2, 3, 1).reshape(b, -1, d)
    return out[..., 0] if squeeze else out


def llava_geometry(ckpt: Checkpoint) -> FrameGeometry:
    """The picture a LLaVA-OneVision video processor makes: a squash resize to the tower's input size
    (antialiased bicubic on uint8), rescale 1/255, normalise with the processor's mean and std."""
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


#: ZOO-Prune's sensitivity: the authors' script settings (64 directions, h = 0.01) with a fixed seed
SENSITIVITY_DIRECTIONS, SENSITIVITY_H, SENSITIVITY_SEED = 64, 0.01, 0


class LlavaTower(Tower):
    """The vision path of a LLaVA checkpoint as a tower adapter.

    `forward` gives `patches` [B, N', D_llm] — tower → feature layer → projector → pooling, N' = g'×g' — and the
    signals, pooled to the same grid (see `signal_sources`)."""

    kind = "llava"

    def __init__(self, holder: Any, name: str, layout: LlavaLayout) -> None:
        vc = holder.config.vision_config
        self.g = int(vc.image_size) // int(vc.patch_size)
        gp = layout.side(self.g)
        super().__init__(holder, (gp, gp), int(vc.num_hidden_layers), int(holder.config.text_config.hidden_size))
        self.name, self.layout = name, layout
        self.has_head = getattr(holder.vision_tower, "head", None) is not None
        self.vision_grid = (self.g, self.g)
        self.pool = layout.pool
        self.layer_label = holder.config.vision_feature_layer
        #: tokens before the patches that the select strategy drops (a CLIP tower's CLS with "default")
        self.prefix = 1 if holder.config.vision_feature_select_strategy == "default" else 0

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

    def _run_tower(self, pixels: Tensor, picked: list[int], also: frozenset[int]
                   ) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        """Run the vision tower once with hooks that keep only what is used: the outputs of the selected blocks
        `picked` (1-based) and the inputs of the last selected block and of the blocks in `also` (0-based).
        → ({block: [B, L, Dv]}, {block: [B, L, Dv]})."""
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
            self.visual.vision_tower(pixels, return_dict=True)
        finally:
            for h in handles:
                h.remove()
        return kept, inputs

    def features(self, pixels: Tensor, also: frozenset[int] = frozenset()) -> tuple[Tensor, Tensor,
                                                                                      dict[int, Tensor]]:
        """pixels [B, 3, H, W] → (selected vision features [B, g·g, Dv], pooled tokens [B, N', D_llm], inputs of
        blocks {0-based index: [B, g·g, Dv]}: the last selected block's and those in `also`), selected and
        projected as `LlavaOnevisionModel.get_video_features` does. Hooks keep just the hidden states that are used
        (not every block's)."""
        holder = self.visual
        cfg = holder.config
        picked = self._selected()
        kept, inputs = self._run_tower(pixels, picked, also)
        sel = torch.cat([kept[i] for i in picked], dim=-1)
        if cfg.vision_feature_select_strategy == "default":
            sel = sel[:, 1:]
        proj = holder.multi_modal_projector(sel)
        if self.layout == LlavaLayout("bilinear", 2):
            from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionModel

            tokens = LlavaOnevisionModel.apply_pooling(holder, proj)  # the model's own pooling
        else:  # LLaVA-NeXT get_2dPool with the checkpoint's mode and stride
            tokens = pool_map(proj, self.g, self.layout).to(proj.dtype)
        return sel, tokens, inputs

    def _attention(self, index: int, block_input: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """'Attention received' [B, L] (mean over heads and queries), head-mean keys [B, L, d] and the first token's
        head-mean attention row [B, L] (the CLS's, for a tower that has one) of block `index` (0-based), from its
        input (computed one frame at a time: [heads, L, L] is large). L = prefix + g·g."""
        block = self._encoder_layers()[index]
        attn = block.self_attn
        received, keys, first = [], [], []
        for h in block_input:
            x = block.layer_norm1(h[None])
            n, heads = x.shape[1], attn.num_heads
            q = attn.q_proj(x).reshape(1, n, heads, -1).transpose(1, 2).float()
            k = attn.k_proj(x).reshape(1, n, heads, -1).transpose(1, 2).float()
            probs = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1)  # [1, heads, L, L]
            received.append(probs.mean(1).mean(1)[0])
            keys.append(k.mean(1)[0])
            first.append(probs.mean(1)[0, 0])
        return torch.stack(received), torch.stack(keys), torch.stack(first)

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
            received, keys, first = self._attention(last, inputs[last])
            out["received"] = out["readout_attn"] = pool_map(received[:, self.prefix:], self.g, self.layout)
            # a CLIP tower's CLS → patch attention where there is a CLS; 'attention received' otherwise
            out["cls_attn"] = pool_map(first[:, self.prefix:], self.g, self.layout) if self.prefix else out["received"]
            out["attn"] = out["cls_attn"]
            k = pool_map(keys[:, self.prefix:], self.g, self.layout)
            cls_key = keys[:, :1] if self.prefix else k.new_zeros(k.shape[0], 1, k.shape[-1])
            out["keys"] = torch.cat([cls_key.to(k.dtype), k], 1)
        if self.has_head and {"attn", "pooled"} & want:
            pooled, probe_attn = self._head(sel)
            out["attn"] = pool_map(probe_attn, self.g, self.layout)
            out["pooled"] = pooled
        elif "pooled" in want:
            out["pooled"] = sel.float().mean(1)
        if "cls_token" in want:
            out["cls_token"] = tokens.float().mean(1)
        if "received_object" in want:
            out["received_object"] = pool_map(self._attention(obj, inputs[obj])[0][:, self.prefix:], self.g,
                                              self.layout)
        if "shallow_attn" in want:
            out["shallow_attn"] = pool_map(self._attention(shallow, inputs[shallow])[0][:, self.prefix:], self.g,
                                           self.layout)
        if "sensitivity" in want:
            out["sensitivity"] = pool_map(self._sensitivity(sel), self.g, self.layout)
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
        pool = f"{self.layout.describe()} to the token grid"
        received = f"'attention received' (mean over heads and queries) of the last vision block used, {pool}"
        head = f"SigLIP attention-pool head on the selected features (FastVID's vision abstract), {pool}"
        cls = f"CLS → patch attention (mean over heads) of the last vision block used, {pool}"
        cls_attn = cls if self.prefix else f"{received} (SigLIP has no CLS: substitute)"
        return {
            "attn": f"{self.name}: " + (f"{head}, probe→patch attention" if self.has_head else
                                        cls if self.prefix else
                                        f"{received} (substitute: the checkpoint has no SigLIP head)"),
            "pooled": f"{self.name}: " + ("SigLIP attention-pool head output" if self.has_head else
                                          "mean of the selected vision features (substitute: no SigLIP head)"),
            "cls_attn": f"{self.name}: {cls_attn}",
            "cls_token": f"{self.name}: mean of the frame's target tokens (substitute: the CLS token is not in the "
                         f"LLM's space)",
            "keys": f"{self.name}: head-mean keys of the last vision block used, {pool}; row 0 "
                    + ("the CLS's" if self.prefix else "zero (no CLS)"),
            "received": f"{self.name}: {received}",
            "received_object": f"{self.name}: 'attention received' of vision block "
                               f"{object_block(self.num_layers) + 1} (1-based) of {self.num_layers}, {pool}",
            "shallow_attn": f"{self.name}: 'attention received' of vision block "
                            f"{shallow_block(self.num_layers) + 1} (1-based) of {self.num_layers}, {pool} (VScan's "
                            f"Qwen rule: no CLS)",
            "readout_attn": f"{self.name}: {received} (VScan's Qwen rule: no CLS)",
            "sensitivity": f"{self.name}: projector sensitivity (ZOO-Prune), {SENSITIVITY_DIRECTIONS} unit "
                           f"directions seeded {SENSITIVITY_SEED}, h = {SENSITIVITY_H}, float32, {pool}",
        }


# ---------------------------------------------------------------------- the transformers consumer
@dataclass(frozen=True)
class VisualSequence:
    """The visual part of an LLM input: `embeds` [V, D] in order, `offsets` [V] int64 (each entry's position
    within the uncompressed video block), `full_length` (that block's length before compression) and
    `is_newline` [V] bool."""

    embeds: Tensor
    offsets: Tensor
    full_length: int
    is_newline: Tensor


LAYOUTS = ("one", "per_row", "per_frame", "none")
NEWLINE_WHERE = {
    "one": "after the last token of the video",
    "per_row": "after every grid row of every frame (a row whose tokens were all dropped loses its newline)",
    "per_frame": "after every frame (a frame whose tokens were all dropped loses its newline)",
}


def visual_sequence(tokens_file: TokenFile) -> VisualSequence:
    """Kept tokens in (frame, row, column) order with the target's newline tokens inserted."""
    m = tokens_file.meta
    layout = (m.get("newline") or {}).get("layout", "none")
    if layout not in LAYOUTS:
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
    if layout in ("per_row", "per_frame"):  # each frame is h rows of (w tokens + newline), or n tokens + newline
        by_row = layout == "per_row"
        stride = w + 1 if by_row else n + 1  # one row (per_row) or one frame (per_frame) with its newline
        inner = torch.where(row >= 0, row * (stride if by_row else w) + col, torch.zeros_like(row))
        per_frame = h * stride if by_row else stride
        offsets = frame.clamp(min=0) * per_frame + inner
        full = t * per_frame
        newline = tokens_file.tensors["newline"].to(tokens.dtype)
        pieces, offs, flags = [], [], []
        key = torch.where(row >= 0, frame * h + row, torch.full_like(row, -1)) if by_row else frame
        ends = torch.ones_like(key, dtype=torch.bool)
        ends[:-1] = key[1:] != key[:-1]
        ends &= key >= 0
        for i in range(tokens.shape[0]):  # cheap: K entries
            pieces.append(tokens[i])
            offs.append(int(offsets[i]))
            flags.append(False)
            if ends[i]:
                pieces.append(newline)
                offs.append(int(frame[i]) * per_frame + (int(row[i]) * stride + w if by_row else n))
                flags.append(True)
        embeds = torch.stack(pieces) if pieces else tokens
        return VisualSequence(embeds, torch.tensor(offs, dtype=torch.long), full, torch.tensor(flags))
    offsets = frame.clamp(min=0) * n + cell.clamp(min=0)
    if layout == "one":
        newline = tokens_file.tensors["newline"].to(tokens.dtype)
        flags = torch.cat([torch.zeros(len(offsets), dtype=torch.bool), torch.ones(1, dtype=torch.bool)])
        return VisualSequence(torch.cat([tokens, newline[None]]), torch.cat([offsets, torch.tensor([t * n])]),
                              t * n + 1, flags)
    return VisualSequence(tokens, offsets, t * n, torch.zeros(len(offsets), dtype=torch.bool))


def check_newline(tf: TokenFile, model: Any) -> None:
    """Refuse a file made from another checkpoint (its newline embedding differs from the model's)."""
    space = tf.meta.get("space") or {}
    mine = getattr(getattr(model, "model", model), "image_newline", None)
    if mine is not None and "newline" in tf.tensors and mine.device.type != "meta":
        ref = tf.tensors["newline"].float()
        if not torch.allclose(mine.detach().float().cpu(), ref, rtol=1e-2, atol=1e-2 * float(ref.abs().max())):
            raise UsageError(f"{tf.path} was made from another checkpoint ({space.get('checkpoint')}): its newline "
                             f"embedding differs from this model's. Re-run vtc compress with --target-model set to "
                             f"this model's checkpoint.")


def llava_inputs(tf: TokenFile, model: Any, ids: Tensor, at: int, positions: str) -> dict[str, Any]:
    """The kept tokens and newlines at the placeholder; positions contiguous (0..L-1) or original (each entry at its
    place in the uncompressed sequence, the text after the video too)."""
    check_newline(tf, model)
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


# ---------------------------------------------------------------------- the family
@dataclass(frozen=True)
class LlavaOnevisionSpec(TargetSpec):
    """A `llava_onevision` checkpoint with a layout (default, overridden by the checkpoint's LLaVA-NeXT keys)."""

    layout: LlavaLayout = LlavaLayout()
    parts: tuple[str, ...] = ("vision_tower", "projector", "newline")

    def weight_role(self, key: str) -> tuple[str, str] | None:
        """Accepts the layouts transformers has saved over time: `model.vision_tower.…` (v5), `vision_tower.…` and
        `vision_tower.vision_model.…` (v4 hub checkpoints)."""
        k = key[len("model."):] if key.startswith("model.") else key
        if k.startswith("vision_tower."):
            rest = k[len("vision_tower."):]
            return "vision_tower", rest[len("vision_model."):] if rest.startswith("vision_model.") else rest
        if k.startswith("multi_modal_projector."):
            return "projector", k[len("multi_modal_projector."):]
        if k == "image_newline":
            return "newline", ""
        return None

    def needs(self) -> str:
        return "the vision tower, the multi_modal_projector and image_newline"

    def geometry(self, ckpt: Checkpoint) -> FrameGeometry:
        return llava_geometry(ckpt)

    def layout_of(self, config: dict[str, Any], where: str = "the checkpoint") -> LlavaLayout:
        return layout_from_config(config, self.layout, where)

    def check(self, ckpt: Checkpoint) -> None:
        self.layout_of(ckpt.config, str(ckpt.path))
        strategy = ckpt.config.get("vision_feature_select_strategy", "full")
        vision = ckpt.config.get("vision_config") or {}
        if strategy not in ("default", "full"):
            raise ModelError(f"{ckpt.path}: vision_feature_select_strategy {strategy!r} is neither 'default' nor "
                             f"'full'.")
        if strategy == "default" and str(vision.get("model_type", "siglip_vision_model")).startswith("siglip"):
            raise ModelError(f"{ckpt.path}: vision_feature_select_strategy 'default' drops a CLS token, but its "
                             f"SigLIP tower has none (the model itself fails on it); set it to 'full'.")

    def modules(self, config: Any) -> dict[str, torch.nn.Module]:
        from transformers import AutoModel
        from transformers.models.llava_onevision.modeling_llava_onevision import LlavaOnevisionMultiModalProjector

        return {"vision_tower": AutoModel.from_config(config.vision_config),
                "projector": LlavaOnevisionMultiModalProjector(config)}

    def attach(self, holder: torch.nn.Module, modules: dict[str, torch.nn.Module],
               state: dict[str, dict[str, Tensor]]) -> None:
        newline = state["newline"][""]
        hidden = holder.config.text_config.hidden_size
        if newline.shape != (hidden,):
            raise ModelError(f"image_newline has shape {list(newline.shape)}, expected [{hidden}].")
        holder.vision_tower = modules["vision_tower"]
        holder.multi_modal_projector = modules["projector"]
        holder.image_newline = torch.nn.Parameter(newline, requires_grad=False)

    def tower(self, holder: Any) -> Tower:
        return LlavaTower(holder, self.name, self.layout_of(holder.config.to_dict()))

    def file_extras(self, enc: TargetEncoder, positions: Tensor, rep: Tensor, grid: tuple[int, int],
                    num_frames: int, frame_times: list[float], info: Any, picture: tuple[int, int]
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Tensor]]:
        layout: LlavaLayout = enc.tower.layout  # type: ignore[attr-defined]
        newline: dict[str, Any] = {"layout": layout.newline}
        if layout.newline != "none":
            newline.update(where=NEWLINE_WHERE[layout.newline], tensor="newline")
        return ({"pool_stride": layout.stride}, newline,
                {"newline": enc.newline} if enc.newline is not None else {})

    def hf_inputs(self, tf: TokenFile, model: Any, ids: Tensor, at: int, *, positions: str, after_video: str,
                  rows: int | None, tokenizer: Any) -> dict[str, Any]:
        return llava_inputs(tf, model, ids, at, positions)

