"""open_clip's CLIP vision transformer, rebuilt from its JSON model config without importing open_clip.

Importing open_clip costs ~3 s (it imports torchvision, timm and transformers); a run that only needs the image
tower of a ViT checkpoint does not need any of that. `vision_transformer(cfg)` builds the same modules under the
same names as `open_clip.transformer.VisionTransformer` (so the same state dict loads, and `vtc.io.towers.ClipTower`
drives both alike), with the same operations in the same order: the tokens are bit-identical to open_clip's
(tested against open_clip's own forward). Configurations that use anything else (timm trunks, attentional pooling,
the custom attention blocks) return None and go through open_clip.

Model configs are read from open_clip's installed `model_configs/` folder (located without importing the package)
or from a JSON file the user names.
"""

from __future__ import annotations

import importlib.util
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: vision_cfg keys this module builds (with the values it accepts where not every value is): anything else → None
_PLAIN = {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size", "ls_init_value", "patch_dropout",
          "no_ln_pre", "pos_embed_type", "pool_type", "final_ln_after_pool", "output_tokens", "norm_kwargs"}
_OFF = {"attentional_pool", "qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn",
        "scale_fc", "act_kwargs", "timm_model_name"}  # supported only when unset / false
_BLOCK_TYPES = (None, "default")


def configs_dir() -> Path | None:
    """open_clip's `model_configs/` folder, found without importing open_clip (None when it is not installed)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    return folder if folder.is_dir() else None


def _is_model_config(cfg: Any) -> bool:
    """What open_clip itself accepts as a model config (its registry skips other JSON files)."""
    return isinstance(cfg, dict) and all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg"))


def read_config(path: Path) -> dict[str, Any] | None:
    """A model config from a JSON file, or None when it is not one."""
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return cfg if _is_model_config(cfg) else None


def builtin_config(name: str) -> dict[str, Any] | None:
    """open_clip's bundled config of model `name` (as `open_clip.get_model_config`), or None."""
    folder = configs_dir()
    if folder is None or "/" in name or name.startswith("."):
        return None
    return read_config(folder / f"{name}.json")


def builtin_names() -> list[str]:
    """The model names open_clip ships configs for (as `open_clip.list_models()`, unordered)."""
    folder = configs_dir()
    return [] if folder is None else [p.stem for p in folder.glob("*.json") if read_config(p) is not None]


class LayerNorm(nn.LayerNorm):
    """open_clip's LayerNorm: computed in the input's dtype, cast back to it."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    """x · σ(1.702 x), the activation of OpenAI's CLIP weights."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    """Per-channel scale `gamma` [W]."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class ResidualAttentionBlock(nn.Module):
    """x + ls_1(attn(ln_1(x))), then + ls_2(mlp(ln_2(x))); tokens batch first [B, L, W]."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, ls_init_value: float | None, act: type[nn.Module],
                 eps: float) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=eps)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ln_2 = LayerNorm(width, eps=eps)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", act()),
                                              ("c_proj", nn.Linear(hidden, width))]))
        self.ls_2 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.ls_1(self.attn(h, h, h, need_weights=False, attn_mask=None)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    """`resblocks`: the blocks, in order; `width`, `batch_first` as open_clip's."""

    batch_first = True

    def __init__(self, width: int, layers: int, **block: Any) -> None:
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, **block) for _ in range(layers)])


class VisionTransformer(nn.Module):
    """CLIP's ViT: patches by `conv1`, a class token, positions, ln_pre, the blocks, ln_post and `proj` for the
    pooled embedding. pixels [B, 3, H, W] → tokens [B, 1 + N, W] (`_embeds`, then the blocks)."""

    def __init__(self, image_size: tuple[int, int], patch_size: tuple[int, int], width: int, layers: int, heads: int,
                 mlp_ratio: float, output_dim: int, ls_init_value: float | None, no_ln_pre: bool, pool_type: str,
                 final_ln_after_pool: bool, act: type[nn.Module], eps: float) -> None:
        super().__init__()
        self.image_size, self.patch_size = image_size, patch_size
        self.grid_size = (image_size[0] // patch_size[0], image_size[1] // patch_size[1])
        self.output_dim, self.pool_type, self.final_ln_after_pool = output_dim, pool_type, final_ln_after_pool
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)  # type: ignore[arg-type]
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(self.grid_size[0] * self.grid_size[1] + 1, width))
        self.ln_pre = nn.Identity() if no_ln_pre else LayerNorm(width, eps=eps)
        self.transformer = Transformer(width, layers, heads=heads, mlp_ratio=mlp_ratio, ls_init_value=ls_init_value,
                                       act=act, eps=eps)
        self.ln_post = LayerNorm(width, eps=eps)
        self.proj = nn.Parameter(torch.empty(width, output_dim))
        self.preprocess_cfg: dict[str, Any] = {}

    def _embeds(self, pixels: Tensor) -> Tensor:
        """pixels [B, 3, H, W] → [B, 1 + N, W]: class token first, positions added, ln_pre."""
        x = self.conv1(pixels)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = self.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        return self.ln_pre(x + self.positional_embedding.to(x.dtype))

    def _global_pool(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.pool_type == "avg":
            return x[:, 1:].mean(dim=1), x[:, 1:]
        if self.pool_type == "tok":
            return x[:, 0], x[:, 1:]
        return x, x

    def _pool(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens after the blocks [B, 1 + N, W] → (pooled [B, W], tokens), ln_post before or after pooling."""
        if self.final_ln_after_pool:
            pooled, tokens = self._global_pool(x)
            return self.ln_post(pooled), tokens
        return self._global_pool(self.ln_post(x))


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


def vision_transformer(cfg: dict[str, Any]) -> VisionTransformer | None:
    """The image tower of model config `cfg` (open_clip's JSON: `embed_dim`, `vision_cfg`, `quick_gelu`), with
    uninitialised weights (build it on the meta device and assign a checkpoint), or None when the config uses
    something this module does not build."""
    vc = cfg.get("vision_cfg")
    if not isinstance(vc, dict) or not isinstance(cfg.get("embed_dim"), int) or isinstance(vc.get("layers"), list):
        return None
    if set(vc) - _PLAIN - _OFF - {"block_type"} or any(vc.get(k) for k in _OFF):
        return None
    if vc.get("block_type") not in _BLOCK_TYPES or vc.get("pos_embed_type", "learnable") not in ("learnable",
                                                                                                  "sin_cos_2d"):
        return None
    norm = vc.get("norm_kwargs") or {}
    if set(norm) - {"eps"} or vc.get("pool_type", "tok") not in ("tok", "avg", "none"):
        return None
    try:
        width = int(vc.get("width", 768))
        heads = width // int(vc.get("head_width", 64))
        return VisionTransformer(
            image_size=_pair(vc.get("image_size", 224)), patch_size=_pair(vc.get("patch_size", 16)), width=width,
            layers=int(vc.get("layers", 12)), heads=heads, mlp_ratio=float(vc.get("mlp_ratio", 4.0)),
            output_dim=int(cfg["embed_dim"]), ls_init_value=vc.get("ls_init_value"),
            no_ln_pre=bool(vc.get("no_ln_pre", False)), pool_type=str(vc.get("pool_type", "tok")),
            final_ln_after_pool=bool(vc.get("final_ln_after_pool", False)),
            act=QuickGELU if cfg.get("quick_gelu") else nn.GELU, eps=float(norm.get("eps", 1e-5)))
    except (TypeError, ValueError, ZeroDivisionError, AssertionError, RuntimeError):
        return None


class VisionOnly(nn.Module):
    """A model with only its image tower (`visual`); what `Encoder` needs when there is no --query."""

    vision_only = True

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual
