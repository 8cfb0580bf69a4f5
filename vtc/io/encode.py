"""Encode (open_clip): load a CLIP or SigLIP vision tower and turn frames into patch tokens and signals.

Two tower families are supported:
- CLIP towers (open_clip's own `VisionTransformer`, with a CLS token);
- SigLIP towers (a timm ViT with an attention-pool "MAP" head and no CLS token), as open_clip builds them.

`Encoder.encode` returns, per frame, the patch tokens of the chosen block (`layer`, LLaVA uses −2) and the
signals that methods ask for: a pooled embedding and a per-patch attention map (CLIP: the CLS embedding and
the CLS→patch attention of the last block; SigLIP: the attention-pool head's output and its probe→patch
attention, the head applied to the chosen block's output as LLaVA/FastVID do), plus the CLS-query attention
and head-mean keys of the chosen block.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vtc.errors import MissingDependencyError, ModelError, UsageError
from vtc.signals import provided_by

DEFAULT_MODEL = "ViT-B-16"
DEFAULT_PRETRAINED = "openai"

#: signals the encoder can produce
ENCODER_SIGNALS = provided_by("encoder")


@dataclass(frozen=True)
class EncoderConfig:
    """Which encoder to build and how to run it (the CLI's --model/--pretrained/--checkpoint/--layer/...)."""

    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    checkpoint: str | None = None
    layer: int = -2
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 16


def pick_device(device: str = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch sees no CUDA GPU. Use --device cpu or auto.")
    if device not in ("cpu",) and not device.startswith("cuda") and device != "mps":
        raise UsageError(f"--device must be auto, cpu or cuda[:i], not '{device}'.")
    return torch.device(device)


def pick_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """'auto' → fp32 on CPU; bf16 on GPUs that support it, else fp16."""
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in table:
        raise UsageError(f"--dtype must be auto, fp32, fp16 or bf16, not '{dtype}'.")
    return table[dtype]


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _resolve_model_name(name: str) -> str:
    """An open_clip name, an `hf-hub:` id, or a path to an open_clip JSON config (registered on the fly)."""
    import open_clip

    if name.startswith("hf-hub:"):
        return name
    p = Path(name)
    if p.suffix == ".json":
        if not p.exists():
            raise ModelError(f"model config {p} not found.")
        open_clip.add_model_config(p)
        return p.stem
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelError(
            f"unknown model '{name}'.{hint} Use an open_clip name (python -c 'import open_clip; "
            f"print(open_clip.list_models())'), an hf-hub:ORG/REPO id, or a JSON config file."
        )
    return name


def load_open_clip(config: EncoderConfig) -> tuple[Any, str]:
    """Create the open_clip model (weights from --checkpoint, a pretrained tag, or an hf-hub id)."""
    import open_clip

    name = _resolve_model_name(config.model)
    if config.checkpoint is not None:
        ckpt = Path(config.checkpoint)
        if not ckpt.exists():
            raise ModelError(f"checkpoint {ckpt} not found.")
        pretrained: str | None = str(ckpt)
    elif name.startswith("hf-hub:"):
        pretrained = None
    else:
        pretrained = config.pretrained
        if pretrained and pretrained not in open_clip.list_pretrained_tags_by_model(name):
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ModelError(
                f"model '{name}' has no pretrained tag '{pretrained}'. Its tags: {', '.join(tags) or '(none)'}; "
                f"or pass --checkpoint PATH to a local weights file."
            )
    needs_hub = config.checkpoint is None and (name.startswith("hf-hub:") or bool(pretrained))
    offline = needs_hub and not _hub_reachable()
    if offline:
        _hub_offline()  # use the local cache only: fail in a second instead of minutes of retries
    try:
        with _quiet_logs():
            model = open_clip.create_model(name, pretrained=pretrained, load_weights=True)
    except Exception as e:
        if config.checkpoint is None:
            raise _fetch_error(e, name, pretrained, offline) from None
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ModelError(
            f"checkpoint {config.checkpoint} does not fit model '{name}' or cannot be read ({first}). "
            f"Pass the --model the weights were trained with."
        ) from None
    return model, name


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Can the model hub's name be resolved and its port reached?"""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    try:
        with socket.create_connection((os.environ.get("VTC_HUB_HOST", host), 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_offline() -> None:
    try:
        import huggingface_hub.constants as hc

        hc.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover
        pass


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """open_clip and huggingface_hub log through the root logger; vtc reports errors itself."""
    names = ["", "root", "huggingface_hub", "huggingface_hub.utils._http"]
    old = [logging.getLogger(n).level for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for n, lvl in zip(names, old, strict=False):
            logging.getLogger(n).setLevel(lvl)


def _fetch_error(e: Exception, name: str, pretrained: str | None, offline: bool = False) -> ModelError:
    if offline:
        return ModelError(
            f"cannot fetch weights for {name}{'/' + pretrained if pretrained else ''}: the model hub is unreachable "
            f"(offline?) and they "
            f"are not in the local cache. Run once with network access (weights are cached under "
            f"~/.cache/huggingface), or pass --checkpoint PATH to a local weights file for this architecture."
        )
    if isinstance(e, (RuntimeError, KeyError, ValueError)) and "download" not in str(e).lower():
        return ModelError(f"cannot create model '{name}': {str(e).splitlines()[0][:300] if str(e) else e!r}")
    return ModelError(
        f"cannot fetch weights for {name}/{pretrained or ''} ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200] if str(e) else 'no network?'}). Run once with network access "
        f"(weights are cached under ~/.cache/huggingface), or pass --checkpoint PATH to a local weights file "
        f"for this architecture."
    )


def input_size(width: int, height: int, image_size: tuple[int, int], resize_mode: str = "shortest") -> tuple[int, int]:
    """(width, height) to decode a frame to so that the encoder's crop (or pad) gives `image_size` (h, w)."""
    th, tw = image_size
    if resize_mode == "squash":
        return tw, th
    if resize_mode == "longest":
        s = min(tw / width, th / height)
        return max(1, round(width * s)), max(1, round(height * s))
    s = max(tw / width, th / height)  # shortest: the short side matches, then a center crop
    return max(tw, round(width * s)), max(th, round(height * s))


def _mha_probs_and_keys(attn: torch.nn.MultiheadAttention, h: Tensor) -> tuple[Tensor, Tensor]:
    """Attention probabilities [B, heads, L, L] and head-mean keys [B, L, head_dim] of an nn.MultiheadAttention.

    h: [B, L, W] (batch first), already normalised by the block's ln_1.
    """
    b, length, width = h.shape
    heads = attn.num_heads
    hd = width // heads
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(h, w[:width], None if bias is None else bias[:width])
    k = F.linear(h, w[width : 2 * width], None if bias is None else bias[width : 2 * width])
    q = q.reshape(b, length, heads, hd).transpose(1, 2)
    k = k.reshape(b, length, heads, hd).transpose(1, 2)
    probs = torch.softmax((q.float() @ k.float().transpose(-1, -2)) / hd**0.5, dim=-1)
    return probs, k.float().mean(1)


class Encoder:
    """An open_clip vision tower wrapped for vtc: preprocessing on tensors, patch tokens and signals."""

    def __init__(self, config: EncoderConfig | None = None, model: Any | None = None, name: str = "") -> None:
        self.config = config or EncoderConfig()
        if model is None:
            model, name = load_open_clip(self.config)
        self.model = model
        self.name = name or self.config.model
        self.device = pick_device(self.config.device)
        self.dtype = pick_dtype(self.device, self.config.dtype)
        self.model.eval().to(device=self.device, dtype=self.dtype)
        visual = self.model.visual
        from open_clip.timm_model import TimmModel
        from open_clip.transformer import VisionTransformer

        if isinstance(visual, VisionTransformer):
            self.kind = "clip"
            self.grid = tuple(int(g) for g in visual.grid_size)
            self.num_layers = len(visual.transformer.resblocks)
            self.width = int(visual.transformer.width)
        elif isinstance(visual, TimmModel) and getattr(visual.trunk, "attn_pool", None) is not None:
            self.kind = "siglip"
            self.grid = tuple(int(g) for g in visual.trunk.patch_embed.grid_size)
            self.num_layers = len(visual.trunk.blocks)
            self.width = int(visual.trunk.embed_dim)
            if getattr(visual.trunk, "num_prefix_tokens", 0):
                raise ModelError(f"{self.name}: timm towers with prefix tokens are not supported yet.")
        else:
            raise ModelError(
                f"{self.name}: vision tower {type(visual).__name__} is not supported; vtc handles open_clip ViTs "
                f"(CLIP, with CLS) and timm ViTs with an attention-pool head (SigLIP)."
            )
        layer = self.config.layer
        self.layer_index = layer if layer >= 0 else self.num_layers + layer
        if not 0 <= self.layer_index < self.num_layers:
            raise UsageError(
                f"--layer {layer} is outside this model's {self.num_layers} blocks "
                f"(use -{self.num_layers}..-1 or 0..{self.num_layers - 1})."
            )
        pp = dict(getattr(visual, "preprocess_cfg", {}) or {})
        size = pp.get("size", visual.image_size)
        self.image_size = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        self.resize_mode = pp.get("resize_mode", "shortest")
        self.mean = torch.tensor(pp.get("mean", (0.48145466, 0.4578275, 0.40821073)), dtype=torch.float32)
        self.std = torch.tensor(pp.get("std", (0.26862954, 0.26130258, 0.27577711)), dtype=torch.float32)
        self.fill = float(pp.get("fill_color", 0) or 0)
        self.checkpoint_sha256 = file_sha256(self.config.checkpoint) if self.config.checkpoint else ""

    # ------------------------------------------------------------------ geometry
    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) frames should be decoded to, before the crop/pad done on tensors."""
        return input_size(width, height, self.image_size, self.resize_mode)

    def view(self, pixels: Tensor) -> Tensor:
        """Normalised pixels [B, 3, h, w] (from `preprocess`) → uint8 [B, h, w, 3]: what the encoder sees."""
        pix = pixels.float().cpu() * self.std[:, None, None] + self.mean[:, None, None]
        return (pix * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()

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

    def preprocess(self, frames: np.ndarray | Tensor) -> Tensor:
        """uint8 [B, H, W, 3] at `input_size` → normalised pixels [B, 3, h, w] (center crop or pad)."""
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
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    # ------------------------------------------------------------------ forward
    @torch.inference_mode()
    def encode(self, frames: np.ndarray | Tensor, want: set[str] | frozenset[str] = frozenset()) -> dict[str, Tensor]:
        """Encode a batch of frames.

        frames: uint8 [B, H, W, 3] at `input_size`. Returns float32 CPU tensors: `patches` [B, N, D] and,
        for each name in `want`: attn [B, N], pooled [B, D'], cls_attn [B, N], cls_token [B, D], keys [B, N+1, d].
        """
        return self.encode_pixels(self.preprocess(frames), want)

    @torch.inference_mode()
    def encode_pixels(self, pixels: Tensor, want: set[str] | frozenset[str] = frozenset()) -> dict[str, Tensor]:
        """Like `encode`, from normalised pixels [B, 3, h, w] (the output of `preprocess`)."""
        unknown = set(want) - set(ENCODER_SIGNALS)
        if unknown:
            raise UsageError(f"the encoder cannot provide {', '.join(sorted(unknown))}.")
        pixels = pixels.to(self.device, self.dtype)
        out = self._forward_clip(pixels, want) if self.kind == "clip" else self._forward_siglip(pixels, want)
        return {k: v.float().cpu() for k, v in out.items()}

    def _forward_clip(self, pixels: Tensor, want: set[str] | frozenset[str]) -> dict[str, Tensor]:
        v = self.model.visual
        x = v._embeds(pixels)  # [B, 1+N, W]
        blocks = v.transformer.resblocks
        batch_first = v.transformer.batch_first
        need_last = bool({"attn", "pooled"} & set(want))
        stop = self.num_layers - 1 if need_last else self.layer_index
        out: dict[str, Tensor] = {}
        for i, blk in enumerate(blocks[: stop + 1]):
            sel = i == self.layer_index and bool({"cls_attn", "keys"} & set(want))
            if sel or (i == self.num_layers - 1 and "attn" in want):
                probs, keys = _mha_probs_and_keys(blk.attn, blk.ln_1(x))
                cls_row = probs.mean(1)[:, 0, 1:]  # head-mean CLS query → patches, [B, N]
                if sel:
                    out["cls_attn"] = cls_row
                    out["keys"] = keys
                if i == self.num_layers - 1 and "attn" in want:
                    out["attn"] = cls_row / cls_row.sum(-1, keepdim=True)
            x = blk(x) if batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
            if i == self.layer_index:
                out["patches"] = x[:, 1:]
                if "cls_token" in want:
                    out["cls_token"] = x[:, 0]
        if "pooled" in want:
            pooled, _ = v._pool(x)
            out["pooled"] = pooled @ v.proj if v.proj is not None else pooled
        return out

    def _forward_siglip(self, pixels: Tensor, want: set[str] | frozenset[str]) -> dict[str, Tensor]:
        tr = self.model.visual.trunk
        x = tr.patch_embed(pixels)
        x = tr._pos_embed(x)
        x = tr.patch_drop(x)
        x = tr.norm_pre(x)
        out: dict[str, Tensor] = {}
        for i, blk in enumerate(tr.blocks[: self.layer_index + 1]):
            if i == self.layer_index and "keys" in want:
                h = blk.norm1(x)
                b, n, c = h.shape
                qkv = blk.attn.qkv(h).reshape(b, n, 3, blk.attn.num_heads, c // blk.attn.num_heads)
                k = blk.attn.k_norm(qkv[:, :, 1].transpose(1, 2))
                keys = k.float().mean(1)  # [B, N, d]
                out["keys"] = torch.cat([keys.new_zeros(b, 1, keys.shape[-1]), keys], 1)  # row 0: no CLS
            x = blk(x)
        out["patches"] = x
        if {"attn", "pooled", "cls_attn", "cls_token"} & set(want):
            pooled, probe_attn = self._attn_pool(tr.norm(x))
            pooled = self.model.visual.head(pooled)
            out["attn"] = probe_attn
            out["cls_attn"] = probe_attn
            out["pooled"] = pooled
            out["cls_token"] = pooled
        return {k: v for k, v in out.items() if k == "patches" or k in want}

    def _attn_pool(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """timm AttentionPoolLatent, re-stated to also return the head-mean probe→patch attention [B, N]."""
        ap = self.model.visual.trunk.attn_pool
        b, n, c = x.shape
        if ap.pos_embed is not None:
            x = x + ap.pos_embed.unsqueeze(0).to(x.dtype)
        q = ap.q(ap.latent.expand(b, -1, -1)).reshape(b, ap.latent_len, ap.num_heads, ap.head_dim).transpose(1, 2)
        kv = ap.kv(x).reshape(b, n, 2, ap.num_heads, ap.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        q, k = ap.q_norm(q), ap.k_norm(k)
        probs = torch.softmax((q.float() * ap.scale) @ k.float().transpose(-1, -2), dim=-1)  # [B, H, Lq, N]
        y = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(b, ap.latent_len, c)
        y = ap.proj_drop(ap.proj(y))
        if ap.mlp is not None:
            y = y + ap.mlp(ap.norm(y))
        y = y[:, 0] if ap.pool == "token" else y.mean(1)
        return y, probs.mean(1)[:, 0]

    @torch.inference_mode()
    def encode_patches(self, pixels: Tensor, keep: Tensor) -> Tensor:
        """Patch tokens of only the `keep` [N] patches of one frame [1, 3, h, w]: the other patches are left out
        of the sequence (each kept one keeps its position embedding). Out of distribution for CLIP/SigLIP, which
        never saw partial token sets; used by RLT's opt-in `encode_changed_only`.  → [n_keep, D]."""
        pixels = pixels.to(self.device, self.dtype)
        idx = torch.nonzero(keep.to(self.device)).flatten()
        if self.kind == "clip":
            v = self.model.visual
            x = v._embeds(pixels)[:, torch.cat([idx.new_zeros(1), idx + 1])]
            for blk in v.transformer.resblocks[: self.layer_index + 1]:
                x = blk(x) if v.transformer.batch_first else blk(x.transpose(0, 1)).transpose(0, 1)
            return x[0, 1:].float().cpu()
        tr = self.model.visual.trunk
        x = tr.norm_pre(tr.patch_drop(tr._pos_embed(tr.patch_embed(pixels))))[:, idx]
        for blk in tr.blocks[: self.layer_index + 1]:
            x = blk(x)
        return x[0].float().cpu()

    @torch.inference_mode()
    def encode_text(self, text: str) -> Tensor:
        """The text tower's embedding of `text`, L2-normalised: [D'] float32 CPU (same space as `pooled`)."""
        import open_clip

        try:
            tokenizer = open_clip.get_tokenizer(self.name)
            tokens = tokenizer([text]).to(self.device)
        except ModuleNotFoundError as e:
            raise MissingDependencyError(
                f"the tokenizer of {self.name} needs the '{e.name}' package for --query: pip install {e.name}"
            ) from None
        except Exception as e:
            raise ModelError(f"cannot load the tokenizer of {self.name} for --query ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:150] if str(e) else ''}); it may need network access "
                             f"once.") from None
        emb = self.model.encode_text(tokens).float()[0]
        return torch.nn.functional.normalize(emb, dim=-1).cpu()

    def describe(self) -> dict[str, Any]:
        """Metadata recorded in token files."""
        return {
            "model": self.name,
            "pretrained": "" if self.config.checkpoint else (self.config.pretrained or ""),
            "checkpoint": str(self.config.checkpoint or ""),
            "checkpoint_sha256": self.checkpoint_sha256,
            "tower": self.kind,
            "layer": self.config.layer,
            "image_size": list(self.image_size),
            "resize_mode": self.resize_mode,
            "grid": list(self.grid),
            "dim": self.width,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    def signal_sources(self) -> dict[str, str]:
        """Where each signal comes from, in words (recorded in the file's metadata)."""
        if self.kind == "clip":
            return {
                "attn": "clip: head-mean CLS→patch attention of the last block (renormalised over patches)",
                "pooled": "clip: image embedding (ln_post(CLS) @ proj)",
                "cls_attn": f"clip: head-mean CLS→patch attention of block {self.config.layer}",
                "cls_token": f"clip: CLS token after block {self.config.layer}",
                "keys": f"clip: head-mean keys of block {self.config.layer}",
            }
        src = f"siglip: attention-pool (MAP) head applied to block {self.config.layer} after the trunk norm"
        return {
            "attn": f"{src}, head-mean probe→patch attention",
            "pooled": f"{src}, pooled output",
            "cls_attn": f"{src}, probe→patch attention (SigLIP has no CLS: substitute)",
            "cls_token": f"{src}, pooled output (SigLIP has no CLS: substitute)",
            "keys": f"siglip: head-mean keys of block {self.config.layer}, row 0 zero (no CLS)",
        }
