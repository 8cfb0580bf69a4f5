"""Qwen targets against the model's FULL processor (video processor + tokenizer) and its own forward.

The reference is transformers itself, never vtc's metadata: the frames vtc sampled are decoded again with PyAV,
their indices in the video counted from the stream, and `AutoProcessor` (a `Qwen2_5_VLProcessor` /
`Qwen3VLProcessor` with a real tokenizer, saved with the tiny checkpoint) is told which frames of the video they
are (`VideoMetadata`: total frames, fps, frame indices), as `qwen-vl-utils` and vLLM do. It then decides
`second_per_grid_ts`, the timestamp text, the expanded `input_ids` and `video_grid_thw`; the model's forward on
those is compared with its forward on `vtc.hf.video_inputs`, and its `get_rope_index` with vtc's positions.
Cases: odd and even frame counts, `--fps`, a clip whose first frame is not at 0 s and whose container stores no
frame count, a portrait clip, sizes that are no multiple of 28 or 32.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("transformers")

from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration  # noqa: E402
from transformers.video_utils import VideoMetadata  # noqa: E402

import vtc  # noqa: E402
import vtc.hf  # noqa: E402
from vtc.cli import app  # noqa: E402
from vtc.testing import tiny_llava_next_video, tiny_llava_onevision, tiny_qwen2_5_vl, tiny_qwen3_vl  # noqa: E402

from .conftest import MEDIA  # noqa: E402

runner = CliRunner()

#: (clip, sampling): odd/even counts, a rate, a clip starting at 0.033 s without a header frame count, a portrait
#: 244×432 clip, the README's bikes clip
CASES = [("square", ["--frames", 1]), ("square", ["--frames", 3]), ("square", ["--frames", 4]),
         ("square", ["--frames", 9]), ("square", ["--fps", 2]), ("asl_book.mkv", ["--frames", 5]),
         ("one_by_one_portrait_244x432.mp4", ["--frames", 3]), ("bikes.mp4", ["--frames", 5]),
         ("bikes.mp4", ["--fps", 2])]


def clip_of(name: str, square: Path) -> Path:
    if name == "square":
        return square
    path = MEDIA / name
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    return path


def reference_video(clip: Path, times: list[float]) -> tuple[np.ndarray, VideoMetadata]:
    """Decode the whole stream with PyAV: the frames nearest to `times` (RGB uint8 [F, H, W, 3]) and the
    `VideoMetadata` a processor is given for them (frame count and fps of the stream, each frame's index)."""
    with av.open(str(clip)) as c:
        stream = c.streams.video[0]
        fps = float(stream.average_rate)
        pts = [float(f.time) for f in c.decode(stream)]
    idx = [int(np.argmin([abs(p - t) for p in pts])) for t in times]
    want = set(idx)
    got: dict[int, np.ndarray] = {}
    with av.open(str(clip)) as c:
        for i, f in enumerate(c.decode(c.streams.video[0])):
            if i in want:
                got[i] = f.to_ndarray(format="rgb24")
    return np.stack([got[i] for i in idx]), VideoMetadata(total_num_frames=len(pts), fps=fps, frames_indices=idx)


def compress(tmp_path: Path, clip: Path, ckpt: Path, target: str, sampling: list[object], method: str = "none",
             *extra: object) -> vtc.TokenFile:
    out = tmp_path / f"{target}-{method}.safetensors"
    r = runner.invoke(app, [str(a) for a in ("compress", clip, "-o", out, "--target", target, "--target-model",
                                             ckpt, "--method", method, *sampling, "--dtype-out", "float32",
                                             *extra)])
    assert r.exit_code == 0, r.output
    return vtc.load(out)


# ------------------------------------------------------------------------------------------------ Qwen2.5-VL
@pytest.fixture(scope="module")
def qwen25(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object]:
    ckpt = tiny_qwen2_5_vl(tmp_path_factory.mktemp("q25") / "qwen25")
    return ckpt, AutoProcessor.from_pretrained(ckpt), Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt).eval()


QWEN25_TEXT = "ab<|vision_start|><|video_pad|><|vision_end|>cd"


@pytest.mark.parametrize(("clip_name", "sampling"), CASES)
def test_qwen2_5_vl_equals_the_processor_and_the_models_forward(tmp_path: Path, clip_path: Path, qwen25,  # noqa: ANN001
                                                                clip_name: str, sampling: list[object]) -> None:
    ckpt, proc, model = qwen25
    clip = clip_of(clip_name, clip_path)
    f = compress(tmp_path, clip, ckpt, "qwen2.5-vl", sampling)
    frames, meta = reference_video(clip, f["sampled_frame_times"].tolist())
    ref = proc(text=[QWEN25_TEXT], videos=[frames], video_metadata=[meta], do_sample_frames=False,
               return_tensors="pt")
    space = f.meta["space"]
    assert space["video_grid_thw"] == ref["video_grid_thw"][0].tolist()
    assert space["frame_indices"] == meta.frames_indices and space["video_frames"] == meta.total_num_frames
    # the processor keeps second_per_grid_ts as float32: vtc's float64 rounds to the same value
    assert torch.equal(torch.tensor([space["second_per_grid_t"]], dtype=torch.float32), ref["second_per_grid_ts"])
    ids = proc.tokenizer(QWEN25_TEXT).input_ids
    inputs = vtc.hf.video_inputs(f, model, ids, after_video="model")
    pos, _ = model.model.get_rope_index(ref["input_ids"], ref["mm_token_type_ids"],
                                        video_grid_thw=ref["video_grid_thw"],
                                        second_per_grid_ts=ref["second_per_grid_ts"])
    assert torch.equal(inputs["position_ids"][-3:], pos)
    with torch.no_grad():
        want = model(**ref).logits
        got = model(**inputs).logits
    assert (got - want).abs().max() <= 1e-4


@pytest.mark.parametrize("method", ["evs", "uniform"])
def test_qwen2_5_vl_pruned_positions_are_the_models(tmp_path: Path, clip_path: Path, qwen25, method: str) -> None:  # noqa: ANN001
    ckpt, proc, model = qwen25
    f = compress(tmp_path, clip_path, ckpt, "qwen2.5-vl", ["--frames", 7], method, "--ratio", 0.3)
    frames, meta = reference_video(clip_path, f["sampled_frame_times"].tolist())
    ref = proc(text=[QWEN25_TEXT], videos=[frames], video_metadata=[meta], do_sample_frames=False,
               return_tensors="pt")
    full, _ = model.model.get_rope_index(ref["input_ids"], ref["mm_token_type_ids"],
                                         video_grid_thw=ref["video_grid_thw"],
                                         second_per_grid_ts=ref["second_per_grid_ts"])
    vid = model.config.video_token_id
    slots = torch.nonzero(ref["input_ids"][0] == vid).flatten()  # the full video, in (frame, row, col) order
    h, w = f.grid
    pos = f.positions.long()[f.raster_order()]
    inputs = vtc.hf.video_inputs(f, model, proc.tokenizer(QWEN25_TEXT).input_ids, after_video="model")
    at = proc.tokenizer(QWEN25_TEXT).input_ids.index(vid)
    got = inputs["position_ids"][-3:, 0, at: at + pos.shape[0]]
    assert torch.equal(got, full[:, 0, slots[pos[:, 0] * h * w + pos[:, 1] * w + pos[:, 2]]])
    # the text after the video continues where the model's full sequence continues it
    assert torch.equal(inputs["position_ids"][-3:, 0, -2:], full[:, 0, -2:])


# ------------------------------------------------------------------------------------------------ Qwen3-VL
@pytest.fixture(scope="module")
def qwen3(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object, object]]:
    from transformers import Qwen3VLForConditionalGeneration

    out = {}
    for name, planes in (("deepstack", (0, 1)), ("plain", ())):
        ckpt = tiny_qwen3_vl(tmp_path_factory.mktemp("q3") / name, deepstack=planes)
        out[name] = (ckpt, AutoProcessor.from_pretrained(ckpt),
                     Qwen3VLForConditionalGeneration.from_pretrained(ckpt).eval())
    return out


QWEN3_TEXT = "ab<|video_pad|>cd"


#: Qwen3VLVideoProcessor refuses a single frame (t must reach temporal_patch_size); vtc pairs it with itself
@pytest.mark.parametrize(("clip_name", "sampling"), CASES[1:])
def test_qwen3_vl_equals_the_processor_and_the_models_forward(tmp_path: Path, clip_path: Path, qwen3,  # noqa: ANN001
                                                              clip_name: str, sampling: list[object]) -> None:
    ckpt, proc, model = qwen3["deepstack"]
    clip = clip_of(clip_name, clip_path)
    f = compress(tmp_path, clip, ckpt, "qwen3-vl", sampling)
    frames, meta = reference_video(clip, f["sampled_frame_times"].tolist())
    ref = proc(text=[QWEN3_TEXT], videos=[frames], video_metadata=[meta], do_sample_frames=False,
               return_tensors="pt")
    assert f.meta["space"]["video_grid_thw"] == ref["video_grid_thw"][0].tolist()
    inputs = vtc.hf.video_inputs(f, model, proc.tokenizer(QWEN3_TEXT).input_ids, tokenizer=proc.tokenizer)
    assert torch.equal(inputs["input_ids"], ref["input_ids"])  # the timestamp text is the processor's
    pos, _ = model.model.get_rope_index(ref["input_ids"], ref["mm_token_type_ids"],
                                        video_grid_thw=ref["video_grid_thw"])
    assert torch.equal(inputs["position_ids"][-3:], pos)
    with torch.no_grad():
        want = model(**ref).logits
        got = model(**inputs).logits
    assert (got - want).abs().max() <= 1e-4


def test_qwen3_vl_without_deepstack_works_in_hf_and_export(tmp_path: Path, clip_path: Path, qwen3) -> None:  # noqa: ANN001
    ckpt, proc, model = qwen3["plain"]
    f = compress(tmp_path, clip_path, ckpt, "qwen3-vl", ["--frames", 5])
    assert f.meta["space"]["deepstack_planes"] == 0 and "deepstack" not in f.tensors
    frames, meta = reference_video(clip_path, f["sampled_frame_times"].tolist())
    ref = proc(text=[QWEN3_TEXT], videos=[frames], video_metadata=[meta], do_sample_frames=False,
               return_tensors="pt")
    inputs = vtc.hf.video_inputs(f, model, proc.tokenizer(QWEN3_TEXT).input_ids, tokenizer=proc.tokenizer)
    with torch.no_grad():
        assert (model(**inputs).logits - model(**ref).logits).abs().max() <= 1e-4
    for engine in ("vllm", "sglang"):
        out = tmp_path / f"x.{engine}.pt"
        r = runner.invoke(app, ["export", str(f.path), "--to", engine, "-o", str(out)])
        assert r.exit_code == 0, r.output
        data = torch.load(out)
        embeds = data["multi_modal_data"]["video"]["video_embeds"] if engine == "vllm" else \
            data["video_data"][0]["feature"]
        assert embeds.shape == f.tokens.shape  # no planes to append


# ------------------------------------------------------------------------------------------------ LLaVA
@pytest.fixture(scope="module")
def llava(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object]:
    from transformers import LlavaOnevisionForConditionalGeneration

    ckpt = tiny_llava_onevision(tmp_path_factory.mktemp("llava") / "llava", image_size=56)
    return ckpt, AutoProcessor.from_pretrained(ckpt), \
        LlavaOnevisionForConditionalGeneration.from_pretrained(ckpt).eval()


LLAVA_TEXT = "ab<video>cd"


@pytest.mark.parametrize("target", ["llava-onevision", "llava-video"])
@pytest.mark.parametrize("frames", [1, 5])
def test_llava_targets_equal_the_processor_and_the_models_forward(tmp_path: Path, clip_path: Path, llava,  # noqa: ANN001
                                                                  target: str, frames: int) -> None:
    """LLaVA-Video's transformers checkpoint runs OneVision's video path: bilinear pool (ceil), one newline per
    video. The processor's expansion and the model's forward on its output are the reference."""
    ckpt, proc, model = llava
    f = compress(tmp_path, clip_path, ckpt, target, ["--frames", frames])
    frames_rgb, _ = reference_video(clip_path, f["frame_times"].tolist())
    ref = proc(text=[LLAVA_TEXT], videos=[frames_rgb], return_tensors="pt")
    inputs = vtc.hf.video_inputs(f, model, proc.tokenizer(LLAVA_TEXT).input_ids)
    assert inputs["inputs_embeds"].shape[1] == ref["input_ids"].shape[1]  # 2 + F·2·2 + 1 newline + 2
    with torch.no_grad():
        want = model(**ref).logits
        got = model(**inputs).logits
    assert (got - want).abs().max() <= 1e-4


def test_llava_layout_follows_the_checkpoints_llava_next_keys(tmp_path: Path, clip_path: Path, llava) -> None:  # noqa: ANN001
    """A config naming LLaVA-NeXT's layout (average pool, stride 2, one newline per frame) gets that layout, with
    either LLaVA-Video target; a layout vtc cannot reproduce is refused before decoding."""
    import json
    import shutil

    ckpt, _, _ = llava
    mine = tmp_path / "next"
    shutil.copytree(ckpt, mine)
    cfg = json.loads((mine / "config.json").read_text())
    cfg.update(mm_spatial_pool_mode="average", mm_spatial_pool_stride=2, mm_newline_position="frame")
    (mine / "config.json").write_text(json.dumps(cfg))
    for target in ("llava-video", "llava-video-next"):
        f = compress(tmp_path, clip_path, mine, target, ["--frames", 3])
        assert f.grid == (2, 2) and f.meta["newline"]["layout"] == "per_frame"
        seq = vtc.hf.visual_sequence(f)
        assert seq.embeds.shape[0] == 3 * (4 + 1) and seq.is_newline.tolist() == ([False] * 4 + [True]) * 3
    cfg["mm_newline_position"] = "diagonal"
    (mine / "config.json").write_text(json.dumps(cfg))
    r = runner.invoke(app, ["compress", str(clip_path), "-o", str(tmp_path / "x.safetensors"), "--target",
                            "llava-video", "--target-model", str(mine)])
    assert r.exit_code == 3 and "mm_newline_position" in r.output and "Traceback" not in r.output


def test_a_cls_strategy_on_siglip_is_refused_up_front(tmp_path: Path, clip_path: Path, llava) -> None:  # noqa: ANN001
    import json
    import shutil

    ckpt, _, _ = llava
    mine = tmp_path / "cls"
    shutil.copytree(ckpt, mine)
    cfg = json.loads((mine / "config.json").read_text())
    cfg["vision_feature_select_strategy"] = "default"
    (mine / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "x.safetensors"
    r = runner.invoke(app, ["compress", str(clip_path), "-o", str(out), "--target", "llava-onevision",
                            "--target-model", str(mine)])
    assert r.exit_code == 3 and "CLS" in r.output and "Traceback" not in r.output and not out.exists()


@pytest.mark.parametrize("generation", [2, 3])
def test_cap_pixels_per_frame_is_the_processors(tmp_path: Path, clip_path: Path, generation: int) -> None:
    """`cap_pixels_per_frame` (transformers' coming default, qwen-vl-utils' rule) bounds the frame size by the
    frame count; a small `max_video_tokens` makes the bound bite."""
    if generation == 2:
        ckpt = tiny_qwen2_5_vl(tmp_path / "cap2", cap_pixels_per_frame=True, max_video_tokens=20)
        target, text = "qwen2.5-vl", QWEN25_TEXT
    else:
        ckpt = tiny_qwen3_vl(tmp_path / "cap3", cap_pixels_per_frame=True, max_video_tokens=4)
        target, text = "qwen3-vl", QWEN3_TEXT
    proc = AutoProcessor.from_pretrained(ckpt)
    for frames in (3, 9):
        f = compress(tmp_path, clip_path, ckpt, target, ["--frames", frames])
        video, meta = reference_video(clip_path, f["sampled_frame_times"].tolist())
        ref = proc(text=[text], videos=[video], video_metadata=[meta], do_sample_frames=False, return_tensors="pt")
        assert f.meta["space"]["video_grid_thw"] == ref["video_grid_thw"][0].tolist()
        uncapped = proc(text=[text], videos=[video], video_metadata=[meta], do_sample_frames=False,
                        cap_pixels_per_frame=False, return_tensors="pt")
        if frames == 9:  # the cap binds: smaller frames than without it
            assert ref["video_grid_thw"][0].prod() < uncapped["video_grid_thw"][0].prod()


def test_targets_lists_the_families_and_an_unsupported_model_type_names_them(tmp_path: Path, clip_path: Path,
                                                                             qwen25) -> None:  # noqa: ANN001
    import json

    r = runner.invoke(app, ["targets", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.output)}
    assert rows["qwen2.5-vl"]["model_types"] == ["qwen2_5_vl"] and rows["qwen2.5-vl"]["engines"] == ["vllm", "sglang"]
    assert "llava_onevision" in rows["llava-video"]["model_types"]
    assert "qwen3-vl" in runner.invoke(app, ["targets"]).output
    # a Qwen2.5-VL checkpoint given to another family: the right --target is named, before any decoding
    out = tmp_path / "x.safetensors"
    r = runner.invoke(app, ["compress", str(clip_path), "-o", str(out), "--target", "qwen3-vl", "--target-model",
                            str(qwen25[0])])
    assert r.exit_code == 3 and "--target qwen2.5-vl" in r.output and not out.exists()
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    r = runner.invoke(app, ["compress", str(clip_path), "-o", str(out), "--target", "qwen3-vl", "--target-model",
                            str(other)])
    assert r.exit_code == 3 and "'bert'" in r.output and "llava-onevision (llava_onevision)" in r.output


# ------------------------------------------------------------------------------------------------ LLaVA-NeXT-Video
@pytest.fixture(scope="module")
def next_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, object]:
    from transformers import LlavaNextVideoForConditionalGeneration

    ckpt = tiny_llava_next_video(tmp_path_factory.mktemp("lnv") / "lnv")
    return ckpt, AutoProcessor.from_pretrained(ckpt), \
        LlavaNextVideoForConditionalGeneration.from_pretrained(ckpt).eval()


@pytest.mark.parametrize("clip_name", ["square", "one_by_one_portrait_244x432.mp4"])
def test_llava_next_video_three_proofs(tmp_path: Path, clip_path: Path, next_video, clip_name: str) -> None:  # noqa: ANN001
    """Features = the model's own `get_video_features` on the processor's pixels (short side resized, centre
    crop); logits = its forward on the processor's inputs; a pruned token's original position = its index in the
    full sequence the processor makes (LLaVA's positions are 0..L-1)."""
    ckpt, proc, model = next_video
    clip = clip_of(clip_name, clip_path)
    f = compress(tmp_path, clip, ckpt, "llava-next-video", ["--frames", 3])
    assert f.grid == (2, 2) and f.meta["newline"]["layout"] == "none"
    assert f.meta["layer"] == str(model.config.vision_feature_layer) == "-2"  # the read-out layer, not a default
    video, _ = reference_video(clip, f["frame_times"].tolist())
    ref = proc(text=[LLAVA_TEXT], videos=[video], return_tensors="pt")
    with torch.no_grad():
        own = model.model.get_video_features(pixel_values_videos=ref["pixel_values_videos"]).pooler_output
    own = own.reshape(-1, own.shape[-1])
    assert (f.tokens[f.raster_order()] - own).abs().max() <= 1e-5 * float(own.abs().max())
    ids = proc.tokenizer(LLAVA_TEXT).input_ids
    inputs = vtc.hf.video_inputs(f, model, ids)
    with torch.no_grad():
        assert (model(**inputs).logits - model(**ref).logits).abs().max() <= 1e-4
    pruned = compress(tmp_path, clip, ckpt, "llava-next-video", ["--frames", 3], "uniform", "--ratio", 0.5)
    pos = vtc.hf.video_inputs(pruned, model, ids, positions="original")["position_ids"][0]
    vid = model.config.video_token_id
    slots = torch.nonzero(ref["input_ids"][0] == vid).flatten()
    at, (h, w) = ids.index(vid), pruned.grid
    p = pruned.positions.long()[pruned.raster_order()]
    assert torch.equal(pos[at: at + p.shape[0]], slots[p[:, 0] * h * w + p[:, 1] * w + p[:, 2]])
    assert torch.equal(pos[-2:], torch.arange(ref["input_ids"].shape[1])[-2:])


def test_llava_next_video_cls_attention_is_the_towers(next_video) -> None:  # noqa: ANN001
    """A CLIP tower has a CLS: `cls_attn` is its attention row (mean over heads) in the last block used, over the
    patches, 2×2 average-pooled like the tokens — compared with the tower's own `output_attentions`."""
    import torch.nn.functional as F
    from transformers import AutoModel

    from vtc.run.config import make_config
    from vtc.targets.encoders import open_encoder

    ckpt, proc, model = next_video
    enc = open_encoder(make_config(target="llava-next-video", target_model=str(ckpt)).encoder)
    video = np.random.default_rng(0).integers(0, 256, (2, 70, 90, 3), dtype=np.uint8)
    pixels = proc.video_processor(videos=[video], return_tensors="pt")["pixel_values_videos"][0]
    got = enc.encode_pixels(pixels, {"cls_attn", "keys"})
    tower = AutoModel.from_config(model.config.vision_config, attn_implementation="eager").eval()
    tower.load_state_dict(model.model.vision_tower.state_dict())
    with torch.no_grad():
        att = tower(pixels, output_attentions=True).attentions
    block = model.config.vision_config.num_hidden_layers + model.config.vision_feature_layer  # hidden_states[-2]
    row = att[block].mean(1)[:, 0, 1:].reshape(2, 1, 4, 4)  # CLS → the 4×4 patches
    want = F.avg_pool2d(row, 2).reshape(2, -1)
    assert torch.allclose(got["cls_attn"], want, atol=1e-6)
    assert got["keys"].shape == (2, 1 + 4, model.config.vision_config.hidden_size // 4)
    assert "CLS → patch attention" in enc.signal_sources()["cls_attn"]
