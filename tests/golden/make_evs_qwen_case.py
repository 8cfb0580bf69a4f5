"""Make `tests/golden/evs/case_qwen_0.safetensors`: EVS on Qwen2.5-VL-space tokens, kept set by vLLM's rule.

The tokens are real Qwen2.5-VL tokens (tiny random-weight model, `vtc.testing.tiny_qwen2_5_vl`, seed 0) of a
synthetic clip (`vtc.testing.synth_clip`, 16 frames → 8 frame pairs at 112×140 → 4×5 merged cells). The keep mask
is vLLM's `compute_retention_mask` restated from its documentation (vllm/multimodal/evs.py, PR #22980): the
dissimilarity 1 − cos to the same cell of the previous frame pair, 255 for the first, a stable descending sort,
max(h·w, ⌊T·h·w·(1 − q)⌋) kept. Same layout as the shared golden evs cases (`video_feats`, `keep`, `retained`,
`derived_dissimilarity`).

    python tests/golden/make_evs_qwen_case.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

import vtc
from vtc.testing import synth_clip, tiny_qwen2_5_vl

Q = 0.7


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        ckpt = tiny_qwen2_5_vl(Path(d) / "qwen", min_pixels=112 * 140, max_pixels=112 * 140)
        clip = synth_clip(Path(d) / "clip.mp4", seconds=2.0, size=(160, 128))
        res = vtc.compress(clip, output=Path(d) / "t.safetensors", method="none", frames=16, target="qwen2.5-vl",
                           target_model=str(ckpt), dtype_out="float32")
        f = vtc.load(res.output)
    t = f.num_frames
    h, w = f.grid
    x = f.tokens.reshape(t, h * w, -1).float().contiguous()
    xn = torch.nn.functional.normalize(x, dim=-1)
    dis = torch.full((t, h * w), 255.0)
    dis[1:] = 1 - (xn[1:] * xn[:-1]).sum(-1)
    retained = max(h * w, int(t * h * w * (1 - Q)))
    keep = torch.zeros(t * h * w, dtype=torch.uint8)
    keep[torch.argsort(dis.reshape(-1), descending=True, stable=True)[:retained]] = 1
    meta = {
        "method": "evs",
        # as vLLM passes them for Qwen2.5-VL: the patch grid before the 2×2 spatial merge, and the merge size
        "params": json.dumps({"q": Q, "video_size_thw": [t, 2 * h, 2 * w], "spatial_merge_size": 2,
                              "tokens_per_frame": h * w}),
        "reference_repo": "vllm-project/vllm",
        "reference_path": "vllm/multimodal/evs.py::compute_retention_mask, restated from its documentation",
        "case": "Qwen2.5-VL-space tokens (tiny random-weight model) of a synthetic clip with a scene cut, q=0.7",
        "generator": "tests/golden/make_evs_qwen_case.py (vtc, not the authors' code: the rule is restated)",
        "inputs": "video_feats[T, h*w, D]: vtc --target qwen2.5-vl tokens, 16 frames -> 8 pairs, 4x5 merged cells",
        "outputs": "keep[T, h*w] uint8; retained; derived_dissimilarity[T, h*w]",
    }
    out = Path(__file__).parent / "evs" / "case_qwen_0.safetensors"
    save_file({"video_feats": x, "keep": keep.reshape(t, h * w), "retained": torch.tensor([retained]),
               "derived_dissimilarity": dis}, str(out), metadata=meta)
    print(f"wrote {out}: T={t}, grid {h}x{w}, kept {retained} of {t * h * w}")


if __name__ == "__main__":
    main()
