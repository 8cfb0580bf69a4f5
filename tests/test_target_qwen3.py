"""The Qwen3-VL target: pixels, tokens with their DeepStack planes, per-frame timestamp groups and positions, against
the real transformers model (a tiny random-weight Qwen3-VL made from a config and written with `save_pretrained`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("transformers")
pytest.importorskip("transformers.models.qwen3_vl")

from transformers import AutoVideoProcessor, Qwen3VLForConditionalGeneration  # noqa: E402
from transformers.video_utils import VideoMetadata  # noqa: E402

import vtc  # noqa: E402
import vtc.hf  # noqa: E402
from vtc.cli import app  # noqa: E402
from vtc.errors import UsageError  # noqa: E402
from vtc.io.decode import Sampling, iter_frames, probe  # noqa: E402
from vtc.targets import TARGETS, checkpoint_geometry, read_checkpoint  # noqa: E402
from vtc.targets.qwen import patchify  # noqa: E402
from vtc.testing import TINY_QWEN_VISION_END, TINY_QWEN_VISION_START, tiny_qwen3_vl  # noqa: E402

runner = CliRunner()
FRAMES = 7  # odd on purpose: the last frame pairs with itself, as the model's processor does


class CharTokenizer:
    """A stand-in for the model's tokenizer (none ships with a random checkpoint): one id per character."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [3 + ord(c) % 200 for c in text]


TOK = CharTokenizer()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen3_vl(tmp_path_factory.mktemp("qwen3") / "qwen3")


@pytest.fixture(scope="module")
def model(ckpt: Path) -> Qwen3VLForConditionalGeneration:
    return Qwen3VLForConditionalGeneration.from_pretrained(ckpt).eval()


def decoded(clip: Path, ckpt: Path, frames: int = FRAMES) -> tuple[np.ndarray, list[float]]:
    geo = checkpoint_geometry(read_checkpoint(str(ckpt), TARGETS["qwen3-vl"]))
    got = list(iter_frames(clip, Sampling(frames=frames), geo.decode_size))
    return np.stack([f for _, f in got]), [t for t, _ in got]


def processed(clip: Path, ckpt: Path, frames: int = FRAMES) -> dict:
    """The model's own video processor on the same frames, told which frames of the video they are."""
    arr, times = decoded(clip, ckpt, frames)
    fps = probe(clip).fps
    meta = VideoMetadata(total_num_frames=int(probe(clip).num_frames), fps=fps,
                         frames_indices=[round(t * fps) for t in times])
    vp = AutoVideoProcessor.from_pretrained(ckpt)
    out = vp(videos=[arr], video_metadata=[meta], do_sample_frames=False, return_metadata=True, return_tensors="pt")
    out["stamps"] = [(a + b) / 2 for a, b in zip(*[iter([i / fps for i in meta.frames_indices]
                                                          + [meta.frames_indices[-1] / fps] * (len(times) % 2))] * 2,
                                                   strict=True)]
    return out


def prompt(model: Qwen3VLForConditionalGeneration) -> list[int]:
    return [5, 6, model.config.video_token_id, 7, 8, 9]


def expanded(ids: list[int], stamps: list[float], per_frame: int, vid: int) -> list[int]:
    """The processor's expansion of the placeholder (`replace_video_token`): per frame '<t seconds>', then
    <vision_start>, the frame's video tokens, <vision_end>."""
    at = ids.index(vid)
    body: list[int] = []
    for s in stamps:
        body += TOK.encode(f"<{s:.1f} seconds>") + [TINY_QWEN_VISION_START] + [vid] * per_frame + [TINY_QWEN_VISION_END]
    return ids[:at] + body + ids[at + 1:]


@pytest.mark.parametrize("frames", [FRAMES, 16])  # more frames: smaller pictures (the bound holds for all frames)
def test_pixels_equal_the_models_video_processor(clip_path: Path, ckpt: Path, frames: int) -> None:
    geo = checkpoint_geometry(read_checkpoint(str(ckpt), TARGETS["qwen3-vl"]))
    arr, _ = decoded(clip_path, ckpt, frames)
    ref = processed(clip_path, ckpt, frames)
    flat, thw = patchify(geo.preprocess(arr, video_frames=frames), 16, 2, 2)
    assert thw == ref["video_grid_thw"][0].tolist() and thw[0] == (frames + 1) // 2
    assert torch.equal(flat, ref["pixel_values_videos"])


def compress(tmp_path: Path, clip: Path, ckpt: Path, method: str = "none", *extra: object) -> vtc.TokenFile:
    out = tmp_path / f"{method}.safetensors"
    r = runner.invoke(app, [str(a) for a in ("compress", clip, "-o", out, "--target", "qwen3-vl", "--target-model",
                                             ckpt, "--method", method, "--frames", FRAMES, "--dtype-out",
                                             "float32", *extra)])
    assert r.exit_code == 0, r.output
    return vtc.load(out)


def test_logits_equal_the_models_own_forward(tmp_path: Path, clip_path: Path, ckpt: Path, model) -> None:  # noqa: ANN001
    f = compress(tmp_path, clip_path, ckpt)
    space = f.meta["space"]
    ref = processed(clip_path, ckpt)
    assert space["video_grid_thw"] == ref["video_grid_thw"][0].tolist() and space["deepstack_planes"] == 2
    assert f["deepstack"].shape == (f.tokens.shape[0], 2, f.tokens.shape[1])
    np.testing.assert_allclose(space["frame_timestamps"], ref["stamps"], atol=1e-4)
    vid = model.config.video_token_id
    full = torch.tensor([expanded(prompt(model), ref["stamps"], f.grid[0] * f.grid[1], vid)])
    inputs = vtc.hf.video_inputs(f, model, prompt(model), tokenizer=TOK)
    assert torch.equal(inputs["input_ids"], full)
    with torch.no_grad():
        want = model(input_ids=full, pixel_values_videos=ref["pixel_values_videos"],
                     video_grid_thw=ref["video_grid_thw"], mm_token_type_ids=(full == vid).int() * 2).logits
        got = model(**inputs).logits
    assert (got - want).abs().max() <= 1e-4
    # every position (timestamps, start/end tokens, video, text after) is the model's own for the full sequence
    thw = torch.tensor([space["video_grid_thw"]])
    ref_pos, _ = model.model.get_rope_index(full, (full == vid).int() * 2, video_grid_thw=thw)
    assert torch.equal(inputs["position_ids"][-3:], ref_pos)


@pytest.mark.parametrize("method", ["evs", "fastvid", "divprune", "uniform"])
def test_pruned_tokens_keep_their_original_positions(tmp_path: Path, clip_path: Path, ckpt: Path, model,  # noqa: ANN001
                                                     method: str) -> None:
    f = compress(tmp_path, clip_path, ckpt, method, "--ratio", 0.25)
    h, w = f.grid
    vid = model.config.video_token_id
    stamps = f.meta["space"]["frame_timestamps"]
    full = torch.tensor([expanded(prompt(model), stamps, h * w, vid)])
    thw = torch.tensor([f.meta["space"]["video_grid_thw"]])
    ref, _ = model.model.get_rope_index(full, (full == vid).int() * 2, video_grid_thw=thw)  # [3, 1, L]
    inputs = vtc.hf.video_inputs(f, model, prompt(model), tokenizer=TOK, rows=3)
    got = inputs["position_ids"][:, 0]
    ids = inputs["input_ids"][0]
    # every kept token sits where the model puts that (frame, row, col) in the full sequence
    is_vid = torch.nonzero(full[0] == vid).flatten().reshape(len(stamps), h * w)
    pos = f.positions.long()[f.raster_order()]
    where = is_vid[pos[:, 0], pos[:, 1] * w + pos[:, 2]]
    assert torch.equal(got[:, ids == vid], ref[:, 0, where])
    # text after the video (and every timestamp) keeps its original position: the last prompt tokens match
    assert torch.equal(got[:, -3:], ref[:, 0, -3:])
    assert int(got.max()) == int(ref.max())
    assert (ids == vid).sum() == f.tokens.shape[0] < h * w * len(stamps)
    out = model.generate(**vtc.hf.video_inputs(f, model, prompt(model), tokenizer=TOK), max_new_tokens=3,
                         do_sample=False)
    assert out.shape[1] == ids.numel() + 3


def test_a_qwen3_file_needs_the_tokenizer(tmp_path: Path, clip_path: Path, ckpt: Path, model) -> None:  # noqa: ANN001
    f = compress(tmp_path, clip_path, ckpt, "uniform", "--ratio", 0.5)
    with pytest.raises(UsageError, match="tokenizer"):
        vtc.hf.video_inputs(f, model, prompt(model))


def test_export_carries_the_deepstack_planes(tmp_path: Path, clip_path: Path, ckpt: Path) -> None:
    f = compress(tmp_path, clip_path, ckpt, "evs", "--ratio", 0.5)
    k, d = f.tokens.shape
    space = f.meta["space"]
    order = f.raster_order()
    for engine in ("vllm", "sglang"):
        r = runner.invoke(app, ["export", str(f.path), "--to", engine, "-o", str(tmp_path / f"{engine}.pt")])
        assert r.exit_code == 0, r.output
        data = torch.load(tmp_path / f"{engine}.pt")
        item = data["multi_modal_data"]["video"] if engine == "vllm" else data["video_data"][0]
        embeds = item["video_embeds"] if engine == "vllm" else item["feature"]
        assert embeds.shape == (k, 3 * d)  # [tokens | plane 0 | plane 1], the layout both engines split
        assert torch.equal(embeds[:, :d], f.tokens[order]) and torch.equal(embeds[:, d:], f["deepstack"][order]
                                                                          .reshape(k, -1))
        assert item["video_grid_thw"].tolist() == [space["video_grid_thw"]]
        assert item["timestamps"] == [space["frame_timestamps"]] and "second_per_grid_ts" not in item
        assert int(data["retention_mask"].sum()) == k == data["num_placeholder_tokens"]


def test_a_long_input_streams_tokens_and_planes(tmp_path: Path, clip_path: Path, ckpt: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Run on windows (as past the memory budget: here forced to 2 token frames, the tiny model's features being
    far below the smallest budget), the planes reach the file a window at a time like the tokens, and a per-frame
    method's tokens and planes equal the one-call run's."""
    big = compress(tmp_path / "b", clip_path, ckpt, "pool")
    monkeypatch.setattr("vtc.run.finish.window_frames", lambda *a, **k: 2)
    small = compress(tmp_path / "s", clip_path, ckpt, "pool")
    assert small.meta["info"]["windowed"]["windows"] == 2 and "windowed" not in big.meta["info"]
    torch.testing.assert_close(small.tokens, big.tokens)
    torch.testing.assert_close(small["deepstack"], big["deepstack"])
    assert small.meta["D"] == big.meta["D"] == small.tokens.shape[1]


def test_show_and_errors(tmp_path: Path, clip_path: Path, ckpt: Path) -> None:
    f = compress(tmp_path, clip_path, ckpt, "uniform", "--ratio", 0.5)
    r = runner.invoke(app, ["show", str(f.path), "--video", str(clip_path), "--html", str(tmp_path / "r.html")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["show", str(f.path)])  # Qwen3-VL: its timestamps, no M-RoPE time step
    text = " ".join(r.output.split())
    first = f.meta["space"]["frame_timestamps"][0]
    assert r.exit_code == 0 and f"<{first:.1f} seconds>" in text and "None" not in text and "t step" not in text
    r = runner.invoke(app, ["compress", str(clip_path), "-o", str(tmp_path / "x.safetensors"), "--target",
                            "qwen2.5-vl", "--target-model", str(ckpt)])
    assert r.exit_code == 3 and "qwen3_vl" in r.output


def test_smart_resize_video_is_the_processors() -> None:
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

    from vtc.io.geometry import smart_resize_video

    for frames in (2, 3, 8, 31, 64, 768):
        for h, w in ((70, 90), (480, 640), (1080, 1920), (20, 300), (2000, 40)):
            want = smart_resize(frames, h, w, temporal_factor=2, factor=32, min_pixels=128 * 32 * 32,
                                max_pixels=32 * 32 * 768)
            assert smart_resize_video(frames, h, w, 2, 32, 128 * 32 * 32, 32 * 32 * 768) == want
