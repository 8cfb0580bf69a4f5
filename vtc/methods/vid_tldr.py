"""vid-TLDR inside the ViT: merge tokens between blocks like ToMe, matched on the residual stream and weighted by
an attention-sharpness ("objective") score, so background tokens are dropped rather than averaged in.
Follows mlvlab/vid-TLDR @ a25051d (`multi_modality/utils/vid_TLDR.py`), per frame on vtc's image towers.

In block l, after the attention residual (the map without the size bias):
1. score each token by how peaked its attention row is (Σ a·log a, min–max normalised, centred; zero below the
   mean);
2. split by parity into A and B, score pairs by (cos + 1)/2 on x; the r_l best-matched A tokens merge into their
   B partner, each weighted by its score (zero-score tokens vanish);
3. sizes become fractional; later attention adds log(size) (proportional attention).

`--ratio` picks a constant fraction per block, 1 − ratio^(1/blocks) (at most ½), unless `r` is given.
The authors' UMT video ViT has no CLS token; on CLIP towers vtc never merges the CLS token.
"""

from __future__ import annotations

from torch import Tensor

from vtc.errors import UsageError
from vtc.methods.declare import implements
from vtc.reduction import Reduction
from vtc.signals import Signals
from vtc.stages.in_encoder import VidTLDRMerger


def vid_tldr_merger(*, ratio: float, layers: int, tokens: int, protected: int,
                    r: float | list[float] | None, prop_attn: bool) -> VidTLDRMerger:
    """The block merger the tower runs (see `vtc.stages.in_encoder.VidTLDRMerger`)."""
    if r is None:
        frac = min(0.5, 1.0 - ratio ** (1.0 / max(1, layers)))
        sched: list[float] = [frac] * layers
    elif isinstance(r, list):
        if any(not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 for v in r):
            raise UsageError(f"parameter 'r' of 'vid_tldr' takes non-negative numbers, not {r!r}.")
        if any(isinstance(v, float) and v >= 1 and not v.is_integer() for v in r):
            raise UsageError("parameter 'r' of 'vid_tldr': a value ≥ 1 must be a whole number of tokens.")
        sched = [float(v) if v < 1 else int(v) for v in r] + [0] * max(0, layers - len(r))
    else:
        if not isinstance(r, (int, float)) or isinstance(r, bool) or r < 0 or (r >= 1 and not float(r).is_integer()):
            raise UsageError(f"parameter 'r' of 'vid_tldr' takes a fraction < 1, a whole number or a list, not {r!r}.")
        sched = [float(r) if r < 1 else int(r)] * layers
    return VidTLDRMerger(sched, class_token=protected > 0, prop_attn=prop_attn)


@implements("vid_tldr", in_encoder=vid_tldr_merger)
def vid_tldr(
    x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, r: float | list[float] | None,
    prop_attn: bool,
) -> Reduction:
    """Runs inside the encoder (`vtc compress`)."""
    raise UsageError("vid_tldr merges tokens inside the encoder: use it with vtc compress; on features that are "
                     "already encoded use --method tome.")
