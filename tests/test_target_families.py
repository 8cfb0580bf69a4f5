"""Every Qwen-style target family, the three proofs on a tiny random-weight model built from a config, with the
model's FULL processor (video processor + tokenizer, saved with the checkpoint) as the reference:

1. `--method none` tokens (and DeepStack planes) are the model's own `get_video_features` on the processor's
   pixels;
2. the logits of the model's forward on `vtc.hf.video_inputs` equal its forward on the processor's inputs;
3. after pruning, every kept token and the text after the video sit at the positions the model's own
   `get_rope_index` gives them in the full (uncompressed) sequence.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("transformers")

from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

import vtc  # noqa: E402
import vtc.hf  # noqa: E402
from vtc.cli import app  # noqa: E402
from vtc.testing import tiny_qwen2_5_vl, tiny_qwen2_vl, tiny_qwen3_vl  # noqa: E402

from .test_target_processor import QWEN3_TEXT, QWEN25_TEXT, compress, reference_video  # noqa: E402

runner = CliRunner()

#: (target, model type, checkpoint builder, prompt with one placeholder)
FAMILIES: list[tuple[str, str, Callable[[Path], Path], str]] = [
    ("qwen2-vl", "qwen2_vl", tiny_qwen2_vl, QWEN25_TEXT),
    ("qwen2.5-vl", "qwen2_5_vl", tiny_qwen2_5_vl, QWEN25_TEXT),
    ("qwen3-vl", "qwen3_vl", tiny_qwen3_vl, QWEN3_TEXT),
    ("qwen3-vl", "qwen3_vl_moe", lambda p: tiny_qwen3_vl(p, model_type="qwen3_vl_moe"), QWEN3_TEXT),
    ("qwen3.5", "qwen3_5", lambda p: tiny_qwen3_vl(p, model_type="qwen3_5"), QWEN3_TEXT),
    ("qwen3.5", "qwen3_5_moe", lambda p: tiny_qwen3_vl(p, model_type="qwen3_5_moe"), QWEN3_TEXT),
]


@pytest.fixture(scope="module", params=FAMILIES, ids=[f[1] for f in FAMILIES])
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    target, model_type, build, text = request.param
    ckpt = build(tmp_path_factory.mktemp(model_type) / model_type)
    model = AutoModelForImageTextToText.from_pretrained(ckpt).eval()
    assert model.config.model_type == model_type
    return target, ckpt, AutoProcessor.from_pretrained(ckpt), model, text


def reference(f: vtc.TokenFile, clip: Path, proc, text: str) -> dict:  # noqa: ANN001
    video, meta = reference_video(clip, f["sampled_frame_times"].tolist())
    return proc(text=[text], videos=[video], video_metadata=[meta], do_sample_frames=False, return_tensors="pt")


def rope(model, ref: dict) -> torch.Tensor:  # noqa: ANN001
    """The model's own positions [3, 1, L] for the processor's full sequence."""
    extra = {"second_per_grid_ts": ref["second_per_grid_ts"]} if "second_per_grid_ts" in ref else {}
    pos, _ = model.model.get_rope_index(ref["input_ids"], ref["mm_token_type_ids"],
                                        video_grid_thw=ref["video_grid_thw"], **extra)
    return pos


def hf_inputs(f: vtc.TokenFile, model, proc, text: str) -> dict:  # noqa: ANN001
    return vtc.hf.video_inputs(f, model, proc.tokenizer(text).input_ids, after_video="model",
                               tokenizer=proc.tokenizer)


def test_method_none_is_the_models_own_features(tmp_path: Path, clip_path: Path, family) -> None:  # noqa: ANN001
    target, ckpt, proc, model, text = family
    f = compress(tmp_path, clip_path, ckpt, target, ["--frames", 5])
    ref = reference(f, clip_path, proc, text)
    assert f.meta["space"]["video_grid_thw"] == ref["video_grid_thw"][0].tolist()
    assert f.meta["layer"] == "merger"  # what the tokens are read from: the patch merger's output
    with torch.no_grad():
        own = model.model.get_video_features(pixel_values_videos=ref["pixel_values_videos"],
                                             video_grid_thw=ref["video_grid_thw"])
    tokens = torch.cat(list(own.pooler_output)) if isinstance(own.pooler_output, (list, tuple)) else own.pooler_output
    order = f.raster_order()
    scale = float(tokens.abs().max())
    # float32 on both sides, frame pairs batched differently: rounding of a few ulps of the largest value
    assert (f.tokens[order] - tokens).abs().max() <= 1e-5 * scale
    planes = getattr(own, "deepstack_features", None) or []
    assert f.meta["space"].get("deepstack_planes", 0) == len(planes)
    for i, plane in enumerate(planes):
        plane = torch.cat(list(plane)) if isinstance(plane, (list, tuple)) else plane  # one entry per video
        assert (f["deepstack"][order][:, i] - plane).abs().max() <= 1e-5 * float(plane.abs().max())


def test_logits_equal_the_models_forward_on_the_processors_inputs(tmp_path: Path, clip_path: Path,
                                                                  family) -> None:  # noqa: ANN001
    target, ckpt, proc, model, text = family
    f = compress(tmp_path, clip_path, ckpt, target, ["--frames", 7])
    ref = reference(f, clip_path, proc, text)
    inputs = hf_inputs(f, model, proc, text)
    assert torch.equal(inputs["position_ids"][-3:], rope(model, ref))
    with torch.no_grad():
        want = model(**ref).logits
        got = model(**inputs).logits
    assert (got - want).abs().max() <= 1e-4


def test_pruned_tokens_keep_the_models_positions(tmp_path: Path, clip_path: Path, family) -> None:  # noqa: ANN001
    target, ckpt, proc, model, text = family
    f = compress(tmp_path, clip_path, ckpt, target, ["--frames", 7], "evs", "--ratio", 0.3)
    ref = reference(f, clip_path, proc, text)
    full = rope(model, ref)[:, 0]
    vid = model.config.video_token_id
    slots = torch.nonzero(ref["input_ids"][0] == vid).flatten()  # the full video in (frame, row, col) order
    h, w = f.grid
    pos = f.positions.long()[f.raster_order()]
    want = full[:, slots[pos[:, 0] * h * w + pos[:, 1] * w + pos[:, 2]]]
    inputs = hf_inputs(f, model, proc, text)
    got = inputs["position_ids"][-3:, 0]
    if "input_ids" in inputs:  # the prompt expanded by vtc (Qwen3-style): the video tokens are marked
        kept = got[:, inputs["input_ids"][0] == vid]
    else:  # Qwen2-style: the kept tokens replace the placeholder
        at = proc.tokenizer(text).input_ids.index(vid)
        kept = got[:, at: at + pos.shape[0]]
    assert kept.shape[1] == f.tokens.shape[0] < ref["input_ids"].shape[1]
    assert torch.equal(kept, want)
    assert torch.equal(got[:, -2:], full[:, -2:])  # the text after the video: where the full sequence has it
    with torch.no_grad():
        logits = model(**inputs).logits
    assert torch.isfinite(logits).all()


def test_engine_export(tmp_path: Path, clip_path: Path, family) -> None:  # noqa: ANN001
    target, ckpt, _, _, _ = family
    f = compress(tmp_path, clip_path, ckpt, target, ["--frames", 4], "uniform", "--ratio", 0.5)
    out = tmp_path / "x.vllm.pt"
    r = runner.invoke(app, ["export", str(f.path), "--to", "vllm", "-o", str(out)])
    assert r.exit_code == 0, r.output
    data = torch.load(out)
    video = data["multi_modal_data"]["video"]
    planes = f.meta["space"].get("deepstack_planes", 0)
    assert video["video_embeds"].shape == (f.tokens.shape[0], f.tokens.shape[1] * (1 + planes))
    assert video["video_grid_thw"].tolist() == [f.meta["space"]["video_grid_thw"]]
    assert int(data["retention_mask"].sum()) == f.tokens.shape[0] and not data["complete"]
