"""The wave-3 in-encoder methods (SAINT, STA, PPT, FlowCut, GTP-ViT) beyond their goldens: the other modes and
variants end to end through `vtc compress` on both tower kinds, lower precision, and the block loop's per-frame
and cross-frame hooks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vtc.io.encode import Encoder, EncoderConfig
from vtc.methods import get_method

from .test_cli import check_file, cli, model_flags

CASES = [
    ("clip", "flowcut:reference", []),
    ("siglip", "flowcut:reference", []),
    ("siglip", "saint", ["-p", "mode=drop", "-p", "sim_threshold=0.2", "-p", "K=1"]),
    ("clip", "saint", ["-p", "block=0"]),
    ("clip", "gtp_vit", ["-p", "propagation=Mean", "-p", "sparsity=0.9", "-p", "selection=DiagAttnMax"]),
    ("siglip", "gtp_vit", ["-p", "graph_type=Semantic", "-p", "num_neighbours=2", "-p", "token_scale=false"]),
    ("siglip", "ppt", ["-p", "threshold=1.0"]),
    ("clip", "ppt", ["-p", "prop_attn=false", "-p", "pp_loc=[0, 1]"]),
    ("siglip", "sta", ["-p", "r=3"]),
]


@pytest.mark.parametrize("kind,method,params", CASES)
def test_modes_end_to_end(tmp_path: Path, clip_path: Path, model_args, method: str, params: list[str],  # noqa: ANN001
                          kind: str) -> None:
    out = tmp_path / "o.safetensors"
    r = cli("compress", clip_path, "-o", out, "--method", method, "--ratio", "0.4", "--frames", "6", *params,
            *model_flags(model_args, kind))
    assert r.exit_code == 0, r.output
    f = check_file(out, t=6)
    k = f.tokens.shape[0]
    assert k % 6 == 0 and 0 < k < 6 * f.grid[0] * f.grid[1]  # the same count in every frame, fewer than all


@pytest.mark.parametrize("name", ["saint", "sta", "ppt", "flowcut", "gtp_vit"])
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_bfloat16_tower(model_args, name: str, kind: str) -> None:  # noqa: ANN001
    """Scores, counts and graphs are computed in float32 where the arithmetic needs it: a bfloat16 tower gives a
    finite result with the float32 tower's count."""
    a = model_args(kind)
    pixels = torch.randn(3, 3, 48, 48)
    counts = []
    for dtype in ("fp32", "bf16"):
        enc = Encoder(EncoderConfig(model=a["model"], checkpoint=a["checkpoint"], pretrained=None, device="cpu",
                                    dtype=dtype), text=False)
        prefix = enc.tower.prefix_tokens
        spec = get_method(name)
        merger = spec.in_encoder(ratio=0.3, layers=enc.layer_index + 1, tokens=enc.num_patches + prefix,
                                 protected=prefix, **spec.defaults())
        out = enc.encode_merging(pixels[:, :, : enc.image_size[0], : enc.image_size[1]], merger)
        assert torch.isfinite(out["patches"]).all() and torch.isfinite(out["source"]).all()
        counts.append(out["patches"].shape[1])
    assert counts[0] == counts[1]


def test_flowcut_counts_per_frame_or_per_batch(model_args) -> None:  # noqa: ANN001
    """Per frame (default), each frame runs alone: the same tokens as encoding it by itself; with the batch count
    (the authors') every frame is pruned by the largest count; both end with the target in every frame."""
    from vtc.methods.flowcut import FlowCutMerger

    a = model_args("clip")
    enc = Encoder(EncoderConfig(model=a["model"], checkpoint=a["checkpoint"], pretrained=None, device="cpu"),
                  text=False)
    torch.manual_seed(0)
    pixels = torch.randn(3, 3, *enc.image_size)
    n = enc.num_patches
    per = FlowCutMerger(n // 4, enc.layer_index + 1, True, "frame")
    together = enc.encode_merging(pixels, per)
    alone = [enc.encode_merging(pixels[f : f + 1], FlowCutMerger(n // 4, enc.layer_index + 1, True, "frame"))
             for f in range(3)]
    assert torch.equal(together["patches"], torch.cat([o["patches"] for o in alone]))
    assert together["patches"].shape[1] == n // 4 and len(per.runs) == 3
    batch = FlowCutMerger(n // 4, enc.layer_index + 1, True, "batch")
    assert enc.encode_merging(pixels, batch)["patches"].shape[1] == n // 4 and len(batch.runs) == 1


def test_sta_frames_are_units() -> None:
    """vtc's per-frame STA equals the authors' merge step with one frame per unit on the concatenated frames, and
    the backward stage visits the frames from the last: its first (similarity-drop) unit is the last frame."""
    from vtc.methods.sta import STAMerger, sta_merge
    from vtc.stages.in_encoder import BlockView

    torch.manual_seed(1)
    t, n, d = 4, 9, 8
    x, k = torch.randn(t, n + 1, d), torch.randn(t, 2, n + 1, d)
    for stage, layer in ((0, 0), (1, 1)):
        m = STAMerger(2, 3, 1)
        m.start(x)
        out = m.after_block(layer, x, BlockView(layer, k, k, k, 1.0))
        ref, _ = sta_merge(x[:, 1:].reshape(1, t * n, d), k.mean(1)[:, 1:].reshape(1, t * n, d), t, 2, stage == 1)
        assert torch.equal(out[:, 1:].reshape(1, -1, d), ref) and torch.equal(out[:, 0], x[:, 0])


def test_methods_listed_inside_the_encoder() -> None:
    import json

    runs = {m["name"]: m["runs"] for m in json.loads(cli("methods", "--json").output)}
    assert all(runs[name] == "inside the encoder" for name in ("saint", "sta", "ppt", "flowcut", "gtp_vit"))
    assert "zero_tprune" not in runs


@pytest.mark.parametrize("method", ["sta", "flowcut:reference"])
def test_batch_mode_never_mixes_videos_in_an_encoder_batch(tmp_path: Path, clip_path: Path, silent_clip: Path,
                                                           model_args, method: str) -> None:  # noqa: ANN001
    """STA's frame chain and FlowCut's batch count see every frame of an encoder run: in batch mode a video whose
    frames fit one batch gets the decisions it gets alone (its frames never share a run with another video's)."""
    import shutil

    import vtc

    a = model_args("clip")
    clips = [clip_path, silent_clip] + [shutil.copy(silent_clip, tmp_path / f"copy{i}.mp4") for i in range(2)]
    opts = dict(method=method, ratio=0.4, frames=4, batch_size=8, **a)  # two whole videos fill a batch
    alone = [vtc.load(vtc.compress(p, output=tmp_path / f"{Path(p).stem}.alone.safetensors", **opts).output)
             for p in clips]
    summary = vtc.compress_batch([str(p) for p in clips], tmp_path / "batch", workers=2, **opts)
    assert summary.ok == len(clips)
    for single in alone:
        together = vtc.load(next((tmp_path / "batch").rglob(single.path.name.replace(".alone", ""))))
        assert torch.equal(together["source"], single["source"])  # the same decisions
        assert torch.equal(together.positions, single.positions)
        # float16 tokens of float32 values that a batch of another size may round differently
        tol = float(single.tokens.float().abs().max()) * 2.0**-9
        assert torch.allclose(together.tokens.float(), single.tokens.float(), rtol=0, atol=tol)
