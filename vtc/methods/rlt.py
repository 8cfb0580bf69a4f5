"""RLT (Run-Length Tokenization), as a token selector: keep a patch only when its pixels changed since the previous
frame; every kept token records the run of static patches it stands for.  Follows rccchoudhury/rlt's static-patch
test (`vtc.stages.pre_encoder.rlt_keep`), with tubelets of one frame since vtc encodes single frames.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vtc.errors import UsageError
from vtc.methods.declare import implements
from vtc.reduction import Reduction
from vtc.signals import Signals
from vtc.stages.pre_encoder import PreEncoderRule, rlt_keep, run_lengths


def pre_encoder_rule(*, tau: float, compare: str, skip_static_frames: bool, encode_changed_only: bool
                     ) -> PreEncoderRule | None:
    """The pipeline skips static frames with RLT's own previous-frame test (so only with compare="previous")."""
    if not skip_static_frames or compare != "previous":
        return None
    return PreEncoderRule(tau, encode_changed_only)


@implements("rlt", pre_encoder=pre_encoder_rule)
def rlt(
    x: Tensor, *, grid: tuple[int, int], ratio: float | None, signals: Signals, tau: float,
    compare: str, skip_static_frames: bool, encode_changed_only: bool,
) -> Reduction:
    """RLT.  x: [T, N, D]; signals.frames: uint8 [T, H, W, 3], the encoder's view of each frame.

    The patch size is H / h. Frame 0 is always kept. A kept token's row also lists (with weight 0) the static
    tokens of its run, so `sizes` is the run length and `source` maps every static token to the token that stands
    for it. The count follows the content: --ratio is not used (the achieved ratio is recorded).
    """
    t, n, _ = x.shape
    h, w = grid
    frames = signals.require("frames", "rlt")
    if frames.shape[1] % h or frames.shape[2] % w or frames.shape[1] // h != frames.shape[2] // w:
        raise UsageError(f"rlt: frames {tuple(frames.shape[1:3])} do not tile the {h}×{w} patch grid.")
    keep, _ = rlt_keep(frames, tau=tau, tubelet=1, patch=frames.shape[1] // h, compare=compare)
    lengths = run_lengths(keep).reshape(t, n)
    kept = torch.nonzero(keep.reshape(-1)).flatten()  # (t, h, w) order
    # every token belongs to the run of the last kept token at its patch
    owner = torch.zeros(t, n, dtype=torch.long)
    last = torch.zeros(n, dtype=torch.long)
    for f in range(t):
        last = torch.where(keep[f].reshape(-1), torch.arange(n) + f * n, last)
        owner[f] = last
    row_of = torch.full((t * n,), -1, dtype=torch.long)
    row_of[kept] = torch.arange(kept.numel())
    src = torch.arange(t * n)
    dst = row_of[owner.reshape(-1)]
    weight = (src == owner.reshape(-1)).double()  # the kept token itself carries the value
    red = Reduction.build(dst, src, weight, kept, t * n)
    red.info.update(run_lengths=lengths.reshape(-1)[kept].tolist() if kept.numel() <= 65536 else "omitted",
                    budget_floor=n,  # frame 0 is kept whole; the rest follows the content
                    count_rule=f"rlt keeps the patches whose pixels changed (tau={tau:g}); --ratio does not set "
                    f"its count",
                    signal="pixels (uint8 encoder view), ImageNet-normalised")
    return red
