"""`Signals`: what the pipeline hands to the methods besides the features, and the one table that says where each
signal comes from.

Methods see tensors only. The run plan asks each provider for the signals the method declares; users who bring
their own encoder pass them to `vtc.compress_features`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from vtc.errors import UsageError

if TYPE_CHECKING:  # annotations only: the signal table is read by `vtc methods`, which does not import torch
    from torch import Tensor

Provider = Literal["encoder", "decode", "audio", "query", "extra_images"]


@dataclass(frozen=True)
class SignalDoc:
    """What a signal is (shape and meaning) and which part of the pipeline provides it."""

    meaning: str
    provider: Provider


#: signal → (meaning, provider): the one table for `vtc methods`, the run plan, error messages and the file.
SIGNALS: dict[str, SignalDoc] = {
    "attn": SignalDoc("[T, N] per-patch attention (CLIP: CLS→patch attention of the last block; SigLIP: "
                      "attention-pool probe→patch attention); rows sum to ~1", "encoder"),
    "pooled": SignalDoc("[T, D'] per-frame pooled embedding (CLIP: CLS embedding; SigLIP: attention-pool output)",
                        "encoder"),
    "cls_attn": SignalDoc("[T, N] head-mean CLS-query attention of the selected block, CLS column dropped "
                          "(SigLIP: the attention-pool probe attention as substitute)", "encoder"),
    "cls_token": SignalDoc("[T, D] CLS token of the selected block (SigLIP: the attention-pool output as "
                           "substitute)", "encoder"),
    "keys": SignalDoc("[T, N+1, d] head-mean attention keys of the selected block, row 0 = CLS", "encoder"),
    "received": SignalDoc("[T, N] attention each patch receives in the selected block: mean over heads, then over "
                          "all queries (CLS included), CLS column dropped, not renormalised", "encoder"),
    "received_object": SignalDoc("[T, N] the same at the 'object' block, 1-based ⌊3L/8 + ½⌋ of an L-block tower "
                                 "(block 9 of CLIP-L's 24, HiPrune's object layer)", "encoder"),
    "last_cls_attn": SignalDoc("[T, N] CLS query · keys of the last block as one head over the full width (scale "
                               "C^-½), softmax, CLS column dropped (SigLIP: the attention-pool probe's attention as "
                               "substitute)", "encoder"),
    "last_keys": SignalDoc("[T, N+1, C] keys of the last block over the full width (k_proj with bias), row 0 = CLS "
                           "(SigLIP: row 0 zero)", "encoder"),
    "patch_embed": SignalDoc("[T, N, E] every patch of the last block in the image–text space (CLIP: visual "
                             "projection of the patch tokens without the post-LayerNorm; SigLIP: the attention-pool "
                             "head applied to each patch alone, as substitute)", "encoder"),
    "sensitivity": SignalDoc("[T, N] zeroth-order sensitivity of the target's projector at each token: mean over 64 "
                             "seeded unit directions u of ‖P(x+hu) − P(x−hu)‖/2h, h = 0.01, pooled to the token grid "
                             "(ZOO-Prune; needs a nonlinear projector: --target llava-*)", "encoder"),
    "shallow_attn": SignalDoc("[T, N] attention at the shallow block, 1-based ⌊L/4⌋ of an L-block tower (6 of "
                              "CLIP-L's 24, VScan's): CLIP: head-mean CLS→patch row; SigLIP: attention received "
                              "(the authors' CLS-less rule)", "encoder"),
    "readout_attn": SignalDoc("[T, N] the same at the read-out (selected) block: CLIP: head-mean CLS→patch row "
                              "(= cls_attn); SigLIP: attention received (= received)", "encoder"),
    "frames": SignalDoc("[T, H, W, 3] uint8 frames as the encoder sees them (after resize and crop)", "decode"),
    "times": SignalDoc("[T] presentation time of every sampled frame, seconds", "decode"),
    "audio_saliency": SignalDoc("[A] audio saliency at 25 tokens/s", "audio"),
    "relevance": SignalDoc("[T] per-frame query relevance", "query"),
    "query_embed": SignalDoc("[E] the query's text embedding, L2-normalised (same space as `pooled`)", "query"),
    "thumbnail": SignalDoc("[N', D] patch tokens of an extra encoded picture (TS-LLaVA's thumbnail)",
                           "extra_images"),
}


def provided_by(provider: Provider) -> frozenset[str]:
    """The signals one provider makes."""
    return frozenset(k for k, v in SIGNALS.items() if v.provider == provider)


@dataclass
class Signals:
    """Optional per-frame signals.  Every field is a tensor or None (shapes in `SIGNALS`).

    attn [T, N], pooled [T, D'], cls_attn [T, N], cls_token [T, D], keys [T, N+1, d], received [T, N],
    received_object [T, N], last_cls_attn [T, N], last_keys [T, N+1, C], patch_embed [T, N, E], query_embed [E],
    sensitivity [T, N], shallow_attn [T, N], readout_attn [T, N],
    frames uint8 [T, H, W, 3],
    times [T], audio_saliency [A], relevance [T], thumbnail [N', D].
    `sources` names where each signal came from (recorded in the file).
    """

    attn: Tensor | None = None
    pooled: Tensor | None = None
    cls_attn: Tensor | None = None
    cls_token: Tensor | None = None
    keys: Tensor | None = None
    received: Tensor | None = None
    received_object: Tensor | None = None
    last_cls_attn: Tensor | None = None
    last_keys: Tensor | None = None
    patch_embed: Tensor | None = None
    query_embed: Tensor | None = None
    sensitivity: Tensor | None = None
    shallow_attn: Tensor | None = None
    readout_attn: Tensor | None = None
    frames: Tensor | None = None
    audio_saliency: Tensor | None = None
    relevance: Tensor | None = None
    thumbnail: Tensor | None = None
    times: Tensor | None = None
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "sources"]

    def require(self, name: str, method: str) -> Tensor:
        """The signal `name`, or a UsageError that says how to provide it."""
        value = getattr(self, name)
        if value is None:
            raise UsageError(
                f"method '{method}' needs the signal '{name}' ({SIGNALS[name].meaning}); "
                f"vtc compress provides it; with vtc.compress_features pass {name}=..., with vtc compress-features "
                f"store a tensor '{name}' in the features file"
            )
        return value

    def check(self, num_frames: int, num_patches: int) -> None:
        """Every present signal has the leading shape its doc states (T frames, N patches), else a UsageError."""
        t, n = num_frames, num_patches
        expect: dict[str, tuple[int | None, ...]] = {
            "attn": (t, n), "cls_attn": (t, n), "received": (t, n), "received_object": (t, n),
            "pooled": (t, None), "cls_token": (t, None), "keys": (t, n + 1, None),
            "frames": (t, None, None, 3), "times": (t,), "relevance": (t,), "audio_saliency": (None,),
            "thumbnail": (None, None), "last_cls_attn": (t, n), "last_keys": (t, n + 1, None),
            "patch_embed": (t, n, None), "query_embed": (None,), "sensitivity": (t, n),
            "shallow_attn": (t, n), "readout_attn": (t, n),
        }
        for name, dims in expect.items():
            value = getattr(self, name)
            if value is None:
                continue
            shape = tuple(value.shape)
            if len(shape) != len(dims) or any(d is not None and s != d for s, d in zip(shape, dims, strict=True)):
                want = ", ".join("·" if d is None else str(d) for d in dims)
                raise UsageError(f"signal '{name}' has shape {list(shape)}; expected [{want}] "
                                 f"({SIGNALS[name].meaning}).")

    #: the signals indexed by frame (leading dimension T); the others (audio, thumbnail) belong to the whole clip
    PER_FRAME = ("attn", "pooled", "cls_attn", "cls_token", "keys", "received", "received_object", "frames",
                 "times", "relevance", "last_cls_attn", "last_keys", "patch_embed", "sensitivity",
                 "shallow_attn", "readout_attn")

    def window(self, a: int, b: int) -> Signals:
        """These signals for frames [a, b): per-frame ones sliced, whole-clip ones (audio, thumbnail) as they are."""
        out = {n: (v[a:b] if n in self.PER_FRAME else v) for n, v in self.present().items()}
        return Signals(**out, sources=dict(self.sources))

    def present(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in self.names() if getattr(self, n) is not None}
