"""`Features` and `Signals`: what an encoder hands to the methods.

Methods see tensors only. The encoder fills the signals a pipeline asks for; users who bring their own
encoder pass them to `vtc.compress_features`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from torch import Tensor

from vtc.errors import UsageError

#: What each signal is, for `vtc methods`, error messages and the file's metadata.
SIGNAL_DOCS: dict[str, str] = {
    "attn": "[T, N] per-patch attention (CLIP: CLS→patch attention of the last block; SigLIP: attention-pool "
    "probe→patch attention); rows sum to ~1",
    "pooled": "[T, D'] per-frame pooled embedding (CLIP: CLS embedding; SigLIP: attention-pool output)",
    "cls_attn": "[T, N] head-mean CLS-query attention of the selected block, CLS column dropped (SigLIP: "
    "the attention-pool probe attention as substitute)",
    "cls_token": "[T, D] CLS token of the selected block (SigLIP: the attention-pool output as substitute)",
    "keys": "[T, N+1, d] head-mean attention keys of the selected block, row 0 = CLS",
    "frames": "[T, H, W, 3] uint8 frames as the encoder sees them (after resize and crop)",
    "audio_saliency": "[A] audio saliency at 25 tokens/s",
    "relevance": "[T] per-frame query relevance",
    "times": "[T] presentation time of every sampled frame, seconds",
    "thumbnail": "[N', D] patch tokens of an extra encoded picture (TS-LLaVA's thumbnail)",
}


@dataclass
class Signals:
    """Optional per-frame signals.  Every field is a tensor or None.

    attn [T, N], pooled [T, D'], cls_attn [T, N], cls_token [T, D], keys [T, N+1, d], frames uint8 [T, H, W, 3],
    audio_saliency [A], relevance [T], thumbnail [N', D].
    `sources` names where each signal came from (recorded in the file).
    """

    attn: Tensor | None = None
    pooled: Tensor | None = None
    cls_attn: Tensor | None = None
    cls_token: Tensor | None = None
    keys: Tensor | None = None
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
                f"method '{method}' needs the signal '{name}' ({SIGNAL_DOCS.get(name, '')}); "
                f"vtc's encoder provides it — with compress_features, pass {name}=..."
            )
        return value

    def present(self) -> dict[str, Any]:
        return {n: getattr(self, n) for n in self.names() if getattr(self, n) is not None}
