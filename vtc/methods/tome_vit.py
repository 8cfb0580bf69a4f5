"""ToMe inside the ViT: merge r tokens in every block by bipartite soft matching on the attention keys, so later
blocks run on fewer tokens.  Follows facebookresearch/ToMe @ af95e4b (`tome/merge.py`, `tome/patch/timm.py`).

In block l, after the attention residual:
1. split the tokens by position parity into A (even) and B (odd); score A×B by cosine of the head-mean keys;
2. the r_l A tokens with the best partner merge into it (size-weighted mean); CLS is never merged;
3. later attention adds log(size) to each key's logits (proportional attention).

`--ratio` (fraction of patch tokens represented at the read-out block) picks the schedule: the smallest r whose
schedule — constant, or the authors' (r, inflect) form, decreasing from 2r to 0 (`inflect=-1`, front-loaded, so
most merging happens early and the encoder saves most) — reaches the ratio. An explicit `r` (int or list) wins.
The pieces (matching, merge, schedule) are `vtc.stages.in_encoder`; the tower adapters run the blocks.
"""

from __future__ import annotations

from torch import Tensor

from vtc.errors import UsageError
from vtc.methods.declare import implements
from vtc.reduction import Reduction
from vtc.signals import Signals
from vtc.stages.in_encoder import ToMeMerger, parse_r, tokens_after


def tome_schedule(*, ratio: float, layers: int, tokens: int, protected: int, r: int | list[int] | None,
                  inflect: float) -> list[int]:
    """The per-block r: `r` as given (int or list), else the smallest r of the (r, inflect) form that leaves at
    most max(1, ratio·patches) patch tokens after `layers` blocks."""
    if r is not None:
        ok = isinstance(r, int) and not isinstance(r, bool) and r >= 0 or isinstance(r, list) and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in r)
        if not ok:
            raise UsageError(f"parameter 'r' of 'tome_vit' takes a whole number ≥ 0 or a list of them, not {r!r}.")
        return parse_r(layers, r)
    goal = max(1, int(ratio * (tokens - protected)))
    for cand in range(0, tokens + 1):
        sched = parse_r(layers, (cand, inflect)) if inflect else parse_r(layers, cand)
        if tokens_after(sched, tokens, protected, layers) - protected <= goal:
            return sched
    return parse_r(layers, tokens)


def tome_vit_merger(*, ratio: float, layers: int, tokens: int, protected: int, r: int | list[int] | None,
                    inflect: float, prop_attn: bool) -> ToMeMerger:
    """The block merger the tower runs (see `vtc.stages.in_encoder.ToMeMerger`)."""
    sched = tome_schedule(ratio=ratio, layers=layers, tokens=tokens, protected=protected, r=r, inflect=inflect)
    return ToMeMerger(sched, class_token=protected > 0, prop_attn=prop_attn)


@implements("tome_vit", in_encoder=tome_vit_merger)
def tome_vit(
    x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, r: int | list[int] | None,
    inflect: float, prop_attn: bool,
) -> Reduction:
    """Runs inside the encoder (`vtc compress`); on precomputed features use `tome` instead."""
    raise UsageError("tome_vit merges tokens inside the encoder: use it with vtc compress; on features that are "
                     "already encoded use --method tome.")
