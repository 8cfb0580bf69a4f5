"""Tower adapters: one interface over the vision towers vtc reads tokens from.

- `ClipTower`: open_clip's own `VisionTransformer` (with a CLS token);
- `SiglipTower`: a timm ViT with an attention-pool "MAP" head and no CLS token, as open_clip builds SigLIP.

Each adapter runs its tower up to the chosen block and returns the patch tokens plus the signals a method asks
for (`vtc.signals.SIGNALS`, provider "encoder"), says where each signal comes from, and can encode a subset of
patches (RLT's opt-in `encode_changed_only`). `Encoder` (vtc.io.encode) owns device, dtype and preprocessing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from vtc.errors import ModelError
from vtc.io import clip_vit
from vtc.stages.in_encoder import BlockMerger, BlockOps, run_blocks


def object_block(num_layers: int) -> int:
    """0-based index of the 'object' block: 1-based ⌊3L/8 + ½⌋ (9 of 24, as HiPrune uses CLIP-L; 5 of 12)."""
    return max(1, int(0.375 * num_layers + 0.5)) - 1


def shallow_block(num_layers: int) -> int:
    """0-based index of the 'shallow' block: 1-based ⌊L/4⌋ (6 of 24: VScan's LLaVA layer 5; 8 of 32: the first
    full-attention block of Qwen2.5-VL's tower, their Qwen layer 7)."""
    return max(1, num_layers // 4) - 1


def received(probs: Tensor) -> Tensor:
    """Attention received: probs [B, heads, L, L] → mean over heads, then over all queries → [B, L]."""
    return probs.mean(1).mean(1)


def _finish_merged(x: Tensor, merger: BlockMerger, prefix: int) -> dict[str, Tensor]:
    """Tokens after the merging blocks → `patches` [B, K, D] without prefix (CLS) tokens, `source` [B, K, N]
    over the patch grid (0/1 for ToMe, fractional for vid-TLDR) and `size` [B, K]."""
    assert merger.source is not None
    size = merger.size if merger.size is not None else torch.ones_like(x[..., :1])
    return {"patches": x[:, prefix:], "source": merger.source[:, prefix:, prefix:], "size": size[:, prefix:, 0]}


class Tower(ABC):
    """A vision tower read at block `layer_index`.  Subclasses implement `forward` and `forward_subset`."""

    kind = ""
    #: tokens before the patches (CLS) that merging protects
    prefix_tokens = 0

    def __init__(self, visual: Any, grid: tuple[int, int], num_layers: int, width: int) -> None:
        self.visual = visual
        self.grid = grid
        self.num_layers = num_layers
        self.width = width

    @abstractmethod
    def forward(self, pixels: Tensor, want: frozenset[str], layer_index: int) -> dict[str, Tensor]:
        """pixels [B, 3, h, w] → `patches` [B, N, D] of block `layer_index` and the wanted signals."""

    @abstractmethod
    def forward_subset(self, pixels: Tensor, keep: Tensor, layer_index: int) -> Tensor:
        """Patch tokens [n_keep, D] of only the `keep` [N] patches of one frame [1, 3, h, w]."""

    @abstractmethod
    def signal_sources(self, layer: int) -> dict[str, str]:
        """Where each signal comes from, in words (recorded in the file's metadata)."""

    def forward_merging(self, pixels: Tensor, merger: BlockMerger, layer_index: int) -> dict[str, Tensor]:
        """Run blocks 0..layer_index with `merger` merging tokens between them.  → `patches` [B, K, D], `source`
        [B, K, N], `size` [B, K] (see `vtc.stages.in_encoder`)."""
        raise ModelError(f"{type(self).__name__} cannot merge tokens inside the encoder.")

    def patch_embedding(self) -> Any:
        """The module whose output [B, D, h, w] is the patch embedding (before positions)."""
        raise ModelError(f"{type(self).__name__} cannot gate its patch embeddings.")

    def forward_gated(self, pixels: Tensor, want: frozenset[str], layer_index: int, keep: Tensor,
                      previous: list[Tensor | None]) -> tuple[dict[str, Tensor], Tensor]:
        """`forward` with GRT's gated patch embeddings: frame b's embedding is frame b−1's (or `previous[b]` [N, D]
        when given: the last frame of the same video in an earlier batch) except at its `keep` [B, N] patches, which
        are computed.  → (outputs, the gated embeddings [B, N, D], for the next batch)."""
        held: dict[str, Tensor] = {}

        def hook(module: Any, args: Any, out: Tensor) -> Tensor:
            b, d, h, w = out.shape
            cur = out.flatten(2).transpose(1, 2)  # [B, N, D]
            rows = []
            for i in range(b):
                prev = previous[i] if previous[i] is not None else (rows[-1] if rows else None)
                m = keep[i].to(out.device)[:, None]
                rows.append(cur[i] if prev is None else torch.where(m, cur[i], prev.to(out.device, out.dtype)))
            gated = torch.stack(rows)
            held["embeddings"] = gated
            return gated.transpose(1, 2).reshape(b, d, h, w)

        handle = self.patch_embedding().register_forward_hook(hook)
        try:
            out = self.forward(pixels, want, layer_index)
        finally:
            handle.remove()
        return out, held["embeddings"]


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


#: signals read at the tower's last block whatever block the features come from
LAST_BLOCK_SIGNALS = frozenset({"last_cls_attn", "last_keys", "patch_embed"})


def _full_width_cls(attn: torch.nn.MultiheadAttention, h: Tensor) -> dict[str, Tensor]:
    """Recoverable Compression's read-out of a block: keys over the full width (k_proj with bias) [B, L, W] and the
    CLS query's one-head attention softmax(q_cls · kᵀ · W^-½) without the CLS column [B, L-1].  h: [B, L, W], after
    the block's ln_1."""
    width = h.shape[-1]
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(h[:, :1], w[:width], None if bias is None else bias[:width]).float()
    k = F.linear(h, w[width : 2 * width], None if bias is None else bias[width : 2 * width]).float()
    logits = (k @ q.transpose(-1, -2))[..., 0] * width**-0.5
    return {"last_keys": k, "last_cls_attn": logits.softmax(-1)[:, 1:]}


def clip_block_ops(blk: Any) -> BlockOps:
    """An open_clip `ResidualAttentionBlock` (batch first) as the block loop's pieces."""
    mha = blk.attn

    def qkv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = blk.ln_1(x)
        b, n, w = h.shape
        out = F.linear(h, mha.in_proj_weight, mha.in_proj_bias).reshape(b, n, 3, mha.num_heads, w // mha.num_heads)
        q, k, v = out.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    return BlockOps(qkv, (mha.embed_dim // mha.num_heads) ** -0.5, lambda o: blk.ls_1(mha.out_proj(o)),
                    lambda x: blk.ls_2(blk.mlp(blk.ln_2(x))))


class ClipTower(Tower):
    """open_clip `VisionTransformer`: CLS at row 0, `transformer.resblocks`, `_pool` + `proj` for the embedding."""

    kind = "clip"
    prefix_tokens = 1

    def __init__(self, visual: Any) -> None:
        super().__init__(visual, tuple(int(g) for g in visual.grid_size), len(visual.transformer.resblocks),
                         int(visual.transformer.width))

    def _block(self, blk: Any, x: Tensor) -> Tensor:
        return blk(x) if self.visual.transformer.batch_first else blk(x.transpose(0, 1)).transpose(0, 1)

    def patch_embedding(self) -> Any:
        return self.visual.conv1

    def forward(self, pixels: Tensor, want: frozenset[str], layer_index: int) -> dict[str, Tensor]:
        v = self.visual
        x = v._embeds(pixels)  # [B, 1+N, W]
        last = self.num_layers - 1
        obj = object_block(self.num_layers)
        shallow = shallow_block(self.num_layers)
        stop = max(last if {"attn", "pooled"} & want or LAST_BLOCK_SIGNALS & want else layer_index,
                   obj if "received_object" in want else 0, shallow if "shallow_attn" in want else 0)
        out: dict[str, Tensor] = {}
        for i, blk in enumerate(v.transformer.resblocks[: stop + 1]):
            sel = i == layer_index and bool({"cls_attn", "keys", "received", "readout_attn"} & want)
            at_obj = i == obj and "received_object" in want
            at_shallow = i == shallow and "shallow_attn" in want
            if sel or at_obj or at_shallow or (i == last and "attn" in want):
                probs, keys = _mha_probs_and_keys(blk.attn, blk.ln_1(x))
                if at_shallow:
                    out["shallow_attn"] = probs.mean(1)[:, 0, 1:]
                if sel and "readout_attn" in want:
                    out["readout_attn"] = probs.mean(1)[:, 0, 1:]
                if at_obj:
                    out["received_object"] = received(probs)[:, 1:]
                if sel and "received" in want:
                    out["received"] = received(probs)[:, 1:]
                cls_row = probs.mean(1)[:, 0, 1:]  # head-mean CLS query → patches, [B, N]
                if sel:
                    out["cls_attn"] = cls_row
                    out["keys"] = keys
                if i == last and "attn" in want:
                    out["attn"] = cls_row / cls_row.sum(-1, keepdim=True)
            if i == last and {"last_cls_attn", "last_keys"} & want:
                out.update(_full_width_cls(blk.attn, blk.ln_1(x)))
            x = self._block(blk, x)
            if i == layer_index:
                out["patches"] = x[:, 1:]
                if "cls_token" in want:
                    out["cls_token"] = x[:, 0]
        if "pooled" in want:
            pooled, _ = v._pool(x)
            out["pooled"] = pooled @ v.proj if v.proj is not None else pooled
        if "patch_embed" in want:  # the last block's patches through the projection, without ln_post
            out["patch_embed"] = x[:, 1:] @ v.proj if v.proj is not None else x[:, 1:]
        return {k: val for k, val in out.items() if k == "patches" or k in want}

    def forward_merging(self, pixels: Tensor, merger: BlockMerger, layer_index: int) -> dict[str, Tensor]:
        x = self.visual._embeds(pixels)  # [B, 1+N, W], CLS first
        ops = [clip_block_ops(blk) for blk in self.visual.transformer.resblocks[: layer_index + 1]]
        return _finish_merged(run_blocks(ops, x, merger, self.grid), merger, 1)

    def forward_subset(self, pixels: Tensor, keep: Tensor, layer_index: int) -> Tensor:
        idx = torch.nonzero(keep.to(pixels.device)).flatten()
        x = self.visual._embeds(pixels)[:, torch.cat([idx.new_zeros(1), idx + 1])]
        for blk in self.visual.transformer.resblocks[: layer_index + 1]:
            x = self._block(blk, x)
        return x[0, 1:]

    def signal_sources(self, layer: int) -> dict[str, str]:
        return {
            "attn": "clip: head-mean CLS→patch attention of the last block (renormalised over patches)",
            "pooled": "clip: image embedding (ln_post(CLS) @ proj)",
            "cls_attn": f"clip: head-mean CLS→patch attention of block {layer}",
            "cls_token": f"clip: CLS token after block {layer}",
            "keys": f"clip: head-mean keys of block {layer}",
            "received": f"clip: attention received in block {layer} (mean over heads and all queries, CLS column "
                        f"dropped)",
            "received_object": f"clip: attention received in block {object_block(self.num_layers) + 1} (1-based) of "
                               f"{self.num_layers}",
            "shallow_attn": f"clip: head-mean CLS→patch attention of block {shallow_block(self.num_layers) + 1} "
                            f"(1-based) of {self.num_layers}",
            "readout_attn": f"clip: head-mean CLS→patch attention of block {layer}",
            "last_cls_attn": "clip: CLS query · keys of the last block, one head over the full width, softmax",
            "last_keys": "clip: keys of the last block over the full width (with bias), row 0 = CLS",
            "patch_embed": "clip: last block's patch tokens through the visual projection (no ln_post)",
        }


class SiglipTower(Tower):
    """timm ViT trunk with an attention-pool (MAP) head: no CLS; the head's probe stands in for it."""

    kind = "siglip"

    def __init__(self, visual: Any) -> None:
        tr = visual.trunk
        if getattr(tr, "num_prefix_tokens", 0):
            raise ModelError("timm towers with prefix tokens are not supported yet.")
        super().__init__(visual, tuple(int(g) for g in tr.patch_embed.grid_size), len(tr.blocks), int(tr.embed_dim))

    def patch_embedding(self) -> Any:
        return self.visual.trunk.patch_embed.proj

    def _embed(self, pixels: Tensor) -> Tensor:
        tr = self.visual.trunk
        return tr.norm_pre(tr.patch_drop(tr._pos_embed(tr.patch_embed(pixels))))

    def forward(self, pixels: Tensor, want: frozenset[str], layer_index: int) -> dict[str, Tensor]:
        tr = self.visual.trunk
        x = self._embed(pixels)
        out: dict[str, Tensor] = {}
        obj = object_block(self.num_layers)
        last = self.num_layers - 1
        shallow = shallow_block(self.num_layers)
        stop = max(layer_index, obj if "received_object" in want else 0, last if LAST_BLOCK_SIGNALS & want else 0,
                   shallow if "shallow_attn" in want else 0)
        for i, blk in enumerate(tr.blocks[: stop + 1]):
            if i == last and "last_keys" in want:  # all heads' keys side by side, after the k norm; no CLS row
                h = blk.norm1(x)
                b, n, c = h.shape
                k = blk.attn.k_norm(blk.attn.qkv(h).reshape(b, n, 3, blk.attn.num_heads, -1)[:, :, 1].transpose(1, 2))
                k = k.transpose(1, 2).reshape(b, n, c).float()
                out["last_keys"] = torch.cat([k.new_zeros(b, 1, c), k], 1)
            sel = i == layer_index and bool({"keys", "received", "readout_attn"} & want)
            at_obj = i == obj and "received_object" in want
            at_shallow = i == shallow and "shallow_attn" in want
            if sel or at_obj or at_shallow:
                h = blk.norm1(x)
                b, n, c = h.shape
                qkv = blk.attn.qkv(h).reshape(b, n, 3, blk.attn.num_heads, c // blk.attn.num_heads)
                q = blk.attn.q_norm(qkv[:, :, 0].transpose(1, 2)).float()
                k = blk.attn.k_norm(qkv[:, :, 1].transpose(1, 2)).float()
                if sel and "keys" in want:
                    keys = k.mean(1)  # [B, N, d]
                    out["keys"] = torch.cat([keys.new_zeros(b, 1, keys.shape[-1]), keys], 1)  # row 0: no CLS
                if {"received", "received_object", "shallow_attn", "readout_attn"} & want:
                    r = received(torch.softmax((q * blk.attn.scale) @ k.transpose(-1, -2), dim=-1))
                    if at_obj:
                        out["received_object"] = r
                    if sel and "received" in want:
                        out["received"] = r
                    if sel and "readout_attn" in want:
                        out["readout_attn"] = r
                    if at_shallow:
                        out["shallow_attn"] = r
            x = blk(x)
            if i == layer_index:
                out["patches"] = x
        if {"attn", "pooled", "cls_attn", "cls_token"} & want:
            pooled, probe_attn = self._attn_pool(tr.norm(out["patches"]))
            pooled = self.visual.head(pooled)
            out.update(attn=probe_attn, cls_attn=probe_attn, pooled=pooled, cls_token=pooled)
        if {"last_cls_attn", "patch_embed"} & want:  # x: the last block's output
            final = tr.norm(x)
            out["last_cls_attn"] = self._attn_pool(final)[1]
            out["patch_embed"] = self._patch_pool(final)
        return {k: v for k, v in out.items() if k == "patches" or k in want}

    def _patch_pool(self, x: Tensor) -> Tensor:
        """The attention-pool head applied to each patch alone (all of the probe's attention on it): value →
        proj → + MLP → head.  x [B, N, C] (after the trunk norm) → [B, N, E]."""
        ap = self.visual.trunk.attn_pool
        b, n, c = x.shape
        if ap.pos_embed is not None:
            x = x + ap.pos_embed.unsqueeze(0).to(x.dtype)
        v = ap.kv(x).reshape(b, n, 2, c)[:, :, 1]  # heads side by side, as the pooled output lays them out
        y = ap.proj(v)
        if ap.mlp is not None:
            y = y + ap.mlp(ap.norm(y))
        return self.visual.head(y)

    def _attn_pool(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """timm AttentionPoolLatent, re-stated to also return the head-mean probe→patch attention [B, N]."""
        ap = self.visual.trunk.attn_pool
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

    def forward_merging(self, pixels: Tensor, merger: BlockMerger, layer_index: int) -> dict[str, Tensor]:
        x = timm_blocks_merging(self.visual.trunk.blocks[: layer_index + 1], self._embed(pixels), merger, self.grid)
        return _finish_merged(x, merger, 0)

    def forward_subset(self, pixels: Tensor, keep: Tensor, layer_index: int) -> Tensor:
        idx = torch.nonzero(keep.to(pixels.device)).flatten()
        x = self._embed(pixels)[:, idx]
        for blk in self.visual.trunk.blocks[: layer_index + 1]:
            x = blk(x)
        return x[0]

    def signal_sources(self, layer: int) -> dict[str, str]:
        src = f"siglip: attention-pool (MAP) head applied to block {layer} after the trunk norm"
        return {
            "attn": f"{src}, head-mean probe→patch attention",
            "pooled": f"{src}, pooled output",
            "cls_attn": f"{src}, probe→patch attention (SigLIP has no CLS: substitute)",
            "cls_token": f"{src}, pooled output (SigLIP has no CLS: substitute)",
            "keys": f"siglip: head-mean keys of block {layer}, row 0 zero (no CLS)",
            "received": f"siglip: attention received in block {layer} (mean over heads and all queries; no CLS)",
            "received_object": f"siglip: attention received in block {object_block(self.num_layers) + 1} (1-based) "
                               f"of {self.num_layers}",
            "shallow_attn": f"siglip: attention received in block {shallow_block(self.num_layers) + 1} (1-based) of "
                            f"{self.num_layers} (no CLS: VScan's Qwen rule)",
            "readout_attn": f"siglip: attention received in block {layer} (no CLS: VScan's Qwen rule)",
            "last_cls_attn": "siglip: attention-pool probe→patch attention on the last block (no CLS: substitute)",
            "last_keys": "siglip: keys of the last block, all heads side by side after the k norm; row 0 zero",
            "patch_embed": "siglip: the attention-pool head applied to each last-block patch alone (no projection "
                           "of patches: substitute)",
        }


def timm_block_ops(blk: Any) -> BlockOps:
    """A timm ViT `Block` as the block loop's pieces, keeping the model's own q/k norms, attention norm and
    LayerScale (ToMe's authors' patch drops them)."""
    at = blk.attn

    def qkv(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = blk.norm1(x)
        b, n, c = h.shape
        q, k, v = at.qkv(h).reshape(b, n, 3, at.num_heads, c // at.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        return at.q_norm(q), at.k_norm(k), v

    return BlockOps(qkv, at.scale, lambda o: blk.drop_path1(blk.ls1(at.proj_drop(at.proj(at.norm(o))))),
                    lambda x: blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x)))))


def timm_blocks_merging(blocks: Any, x: Tensor, merger: BlockMerger, grid: tuple[int, int] | None = None) -> Tensor:
    """Run timm ViT `blocks` on tokens x [B, L, D] with `merger` inside them (`vtc.stages.in_encoder.run_blocks`).
    → x [B, K, D]."""
    return run_blocks([timm_block_ops(blk) for blk in blocks], x, merger, grid)


def make_tower(visual: Any, name: str) -> Tower:
    """The adapter for an open_clip model's `visual` module (or vtc's own build of a CLIP ViT), or a ModelError
    naming what is supported."""
    if isinstance(visual, clip_vit.VisionTransformer):
        return ClipTower(visual)
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    try:
        if isinstance(visual, VisionTransformer):
            return ClipTower(visual)
        if isinstance(visual, TimmModel) and getattr(visual.trunk, "attn_pool", None) is not None:
            return SiglipTower(visual)
    except ModelError as e:
        raise ModelError(f"{name}: {e}") from None
    raise ModelError(
        f"{name}: vision tower {type(visual).__name__} is not supported; vtc handles open_clip ViTs "
        f"(CLIP, with CLS) and timm ViTs with an attention-pool head (SigLIP)."
    )
