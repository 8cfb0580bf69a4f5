"""Targets: tokens in a video LLM's own space, checked against the real transformers model.

A tiny random-weight LLaVA-OneVision is built from a config and written with `save_pretrained`; vtc reads it
through `--target-model DIR`, the same path a hub checkpoint takes.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

pytest.importorskip("transformers")

from transformers import AutoVideoProcessor, LlavaOnevisionForConditionalGeneration  # noqa: E402

import vtc  # noqa: E402
import vtc.hf  # noqa: E402
from vtc.cli import app  # noqa: E402
from vtc.errors import ModelError, UsageError  # noqa: E402
from vtc.io.decode import Sampling, iter_frames  # noqa: E402
from vtc.run.config import make_config  # noqa: E402
from vtc.targets import TARGETS, checkpoint_geometry, read_checkpoint  # noqa: E402
from vtc.targets.encoders import open_encoder  # noqa: E402
from vtc.testing import tiny_llava_onevision  # noqa: E402

runner = CliRunner()
#: 98 px / patch 14 → a 7×7 vision grid: LLaVA-OneVision pools it to 4×4 (ceil), LLaVA-Video to 3×3 (floor)
SIZE = 98
FRAMES = 6
LLAVA = [name for name, spec in TARGETS.items() if "llava_onevision" in spec.model_types]


def cli(*args: object):  # noqa: ANN201
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llava_onevision(tmp_path_factory.mktemp("llava") / "ov", image_size=SIZE)


@pytest.fixture(scope="module")
def model(ckpt: Path) -> LlavaOnevisionForConditionalGeneration:
    return LlavaOnevisionForConditionalGeneration.from_pretrained(ckpt).eval()


def decoded(clip: Path, ckpt: Path, frames: int = FRAMES) -> np.ndarray:
    geo = checkpoint_geometry(read_checkpoint(str(ckpt), TARGETS["llava-onevision"]))
    return np.stack([f for _, f in iter_frames(clip, Sampling(frames=frames), geo.decode_size)])


def prompt_ids(model: LlavaOnevisionForConditionalGeneration) -> list[int]:
    return [5, 17, 9, model.config.video_token_id, 33, 2, 71]


@pytest.mark.parametrize("clip_name", ["clip_path", "silent_clip"])
def test_pixels_equal_the_models_video_processor(request: pytest.FixtureRequest, ckpt: Path, clip_name: str) -> None:
    clip = request.getfixturevalue(clip_name)
    frames = decoded(clip, ckpt)
    geo = checkpoint_geometry(read_checkpoint(str(ckpt), TARGETS["llava-onevision"]))
    assert frames.shape[1:3] != (SIZE, SIZE)  # the decoder hands native frames; the resize is the processor's
    ref = AutoVideoProcessor.from_pretrained(ckpt)(videos=[frames], return_tensors="pt")["pixel_values_videos"][0]
    assert torch.equal(geo.preprocess(frames), ref)


def compress_none(tmp_path: Path, clip: Path, ckpt: Path, target: str) -> vtc.TokenFile:
    """`vtc compress --target TARGET --method none` in float32 through the CLI → the token file."""
    out = tmp_path / f"{target}.safetensors"
    r = cli("compress", clip, "-o", out, "--target", target, "--target-model", ckpt, "--method", "none",
            "--frames", FRAMES, "--dtype-out", "float32")
    assert r.exit_code == 0, r.output
    return vtc.load(out)


def test_onevision_logits_equal_the_models_own_forward(tmp_path: Path, clip_path: Path, ckpt: Path,
                                                      model: LlavaOnevisionForConditionalGeneration) -> None:
    f = compress_none(tmp_path, clip_path, ckpt, "llava-onevision")
    out = f.path
    assert f.meta["space"]["kind"] == "target" and f.meta["space"]["target"] == "llava-onevision"
    assert f.grid == (4, 4) and f.tokens.shape == (FRAMES * 16, 48) and f.meta["newline"]["layout"] == "one"
    pixels = AutoVideoProcessor.from_pretrained(ckpt)(videos=[decoded(clip_path, ckpt)],
                                                       return_tensors="pt")["pixel_values_videos"]
    ids = prompt_ids(model)
    at = ids.index(model.config.video_token_id)
    expanded = ids[:at] + [model.config.video_token_id] * (FRAMES * 16 + 1) + ids[at + 1:]
    with torch.no_grad():
        want = model(input_ids=torch.tensor([expanded]), pixel_values_videos=pixels).logits
        got = model(**vtc.hf.video_inputs(out, model, ids)).logits
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-4


def llava_video_reference(model: LlavaOnevisionForConditionalGeneration, pixels: torch.Tensor) -> torch.Tensor:
    """LLaVA-NeXT's LLaVA-Video path, restated independently: penultimate-style feature layer → projector →
    get_2dPool (average, stride 2) → add_token_per_grid (a newline after every row).  → [T·g'·(g'+1), D]."""
    m = model.model
    hidden = m.vision_tower(pixels, output_hidden_states=True).hidden_states[model.config.vision_feature_layer]
    feats = m.multi_modal_projector(hidden)  # [T, 49, D]
    t, n, d = feats.shape
    g = int(math.isqrt(n))
    pooled = F.avg_pool2d(feats.view(t, g, g, d).permute(0, 3, 1, 2), 2)  # [T, D, 3, 3]
    gp = pooled.shape[-1]
    grid = pooled.permute(1, 0, 2, 3).reshape(d, t * gp, gp)  # [D, T·rows, cols]
    newline = m.image_newline[:, None, None].expand(d, t * gp, 1)
    return torch.cat([grid, newline], -1).flatten(1, 2).transpose(0, 1)


def test_llava_video_next_logits_equal_the_reference_path(tmp_path: Path, clip_path: Path, ckpt: Path,
                                                           model: LlavaOnevisionForConditionalGeneration) -> None:
    f = compress_none(tmp_path, clip_path, ckpt, "llava-video-next")
    out = f.path
    assert f.grid == (3, 3) and f.meta["newline"]["layout"] == "per_row"
    pixels = AutoVideoProcessor.from_pretrained(ckpt)(videos=[decoded(clip_path, ckpt)],
                                                       return_tensors="pt")["pixel_values_videos"][0]
    ids = prompt_ids(model)
    at = ids.index(model.config.video_token_id)
    with torch.no_grad():
        text = model.get_input_embeddings()(torch.tensor(ids))
        ref = torch.cat([text[:at], llava_video_reference(model, pixels), text[at + 1:]])[None]
        want = model(inputs_embeds=ref).logits
        inputs = vtc.hf.video_inputs(out, model, ids)
        assert inputs["inputs_embeds"].shape == ref.shape  # 6 frames × 3 rows × (3 + newline)
        got = model(**inputs).logits
    assert (got - want).abs().max() <= 1e-4


@pytest.fixture(scope="module")
def encoders(ckpt: Path) -> dict[str, object]:
    return {t: open_encoder(make_config(target=t, target_model=str(ckpt)).encoder) for t in LLAVA}


METHODS = ["fastvid", "holitom", "dycoke", "prunevid", "divprune", "visionzip", "tome", "evs", "uniform", "pool"]


@pytest.mark.parametrize("target", LLAVA)
@pytest.mark.parametrize("method", METHODS)
def test_compressed_files_feed_generate(tmp_path: Path, clip_path: Path, model, encoders, target: str,  # noqa: ANN001
                                        method: str) -> None:
    res = vtc.compress(clip_path, output=tmp_path / "o.safetensors", method=method, frames=FRAMES, target=target,
                       target_model=str(encoders[target].config.target_model), encoder=encoders[target])
    f = vtc.load(res.output)
    t, n = f.num_frames, f.grid[0] * f.grid[1]
    k = f.tokens.shape[0]
    assert res.num_source_tokens == t * n and k <= t * n
    assert f.meta["ratio_achieved"] == pytest.approx(k / (t * n), abs=1e-6)
    seq = vtc.hf.visual_sequence(f)
    assert int((~seq.is_newline).sum()) == k  # every kept token goes to the LLM, newlines are extra
    if target != "llava-video-next":  # transformers' layout: one newline after the video
        assert int(seq.is_newline.sum()) == 1 and bool(seq.is_newline[-1])
    else:  # one newline after every (frame, row) that keeps a token
        pos = f.positions[f.positions[:, 1] >= 0]
        assert int(seq.is_newline.sum()) == len({(int(a), int(b)) for a, b, _ in pos})
    inputs = vtc.hf.video_inputs(f, model, prompt_ids(model))
    assert inputs["inputs_embeds"].shape[1] == len(prompt_ids(model)) - 1 + seq.embeds.shape[0]
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert gen.shape[-1] == 3 and ((gen >= 0) & (gen < model.config.text_config.vocab_size)).all()


def test_original_positions_keep_the_gaps(tmp_path: Path, clip_path: Path, model, encoders) -> None:  # noqa: ANN001
    res = vtc.compress(clip_path, output=tmp_path / "o.safetensors", method="uniform", ratio=0.25, frames=FRAMES,
                       target="llava-onevision", target_model=str(encoders["llava-onevision"].config.target_model),
                       encoder=encoders["llava-onevision"])
    ids = prompt_ids(model)
    at = ids.index(model.config.video_token_id)
    pos = vtc.hf.video_inputs(res.output, model, ids, positions="original")["position_ids"][0]
    contiguous = vtc.hf.video_inputs(res.output, model, ids)["position_ids"][0]
    assert torch.equal(contiguous, torch.arange(len(contiguous)))
    assert (pos[1:] > pos[:-1]).all() and torch.equal(pos[:at], torch.arange(at))
    full = FRAMES * 16 + 1
    assert int(pos[-1]) == len(ids) - 1 + full - 1  # the text after the video keeps its uncompressed position
    f = vtc.load(res.output)
    first = f.positions[0]
    assert int(pos[at]) == at + int(first[0]) * 16 + int(first[1]) * 4 + int(first[2])


def test_only_vision_weights_are_read(tmp_path: Path, clip_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tiny_llava_onevision(tmp_path / "sharded", image_size=SIZE, shard_size="40KB")
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    lm_only = {f for f in set(index.values())
               if all(k.startswith(("language_model", "lm_head", "model.language_model")) for k, v in index.items()
                      if v == f)}
    assert lm_only  # the language model has shards of its own
    import safetensors

    opened: list[str] = []
    read: list[str] = []
    real = safetensors.safe_open

    class Spy:
        def __init__(self, path: str, framework: str) -> None:
            opened.append(Path(path).name)
            self.f = real(path, framework=framework)

        def __enter__(self) -> Spy:
            self.f.__enter__()
            return self

        def __exit__(self, *a: object) -> None:
            self.f.__exit__(*a)

        def keys(self) -> list[str]:
            return self.f.keys()

        def get_tensor(self, key: str) -> torch.Tensor:
            read.append(key)
            return self.f.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    enc = open_encoder(make_config(target="llava-onevision", target_model=str(ckpt)).encoder)
    assert read and not any("language_model" in k or "lm_head" in k for k in read)
    assert not lm_only & set(opened)
    assert {k for k in index if not k.startswith(("language_model", "lm_head"))} == set(read)
    out = enc.encode(decoded(clip_path, ckpt, 2))
    assert out["patches"].shape == (2, 16, 48)


def test_signals_and_their_sources(ckpt: Path, tmp_path: Path, clip_path: Path) -> None:
    frames = decoded(clip_path, ckpt, 3)
    plain = open_encoder(make_config(target="llava-onevision", target_model=str(ckpt)).encoder)
    want = {"attn", "pooled", "cls_attn", "cls_token", "keys"}
    out = plain.encode(frames, want)
    assert out["attn"].shape == (3, 16) and out["keys"].shape[:2] == (3, 17) and out["pooled"].shape == (3, 32)
    assert out["cls_token"].shape == (3, 48)
    # 'attention received' sums to 1 over the 7×7 patches; the pooling keeps the mean (1/49), not the sum
    assert torch.allclose(out["cls_attn"].mean(-1), torch.full((3,), 1 / 49), rtol=0.1)
    assert "substitute" in plain.signal_sources()["attn"]
    headed = tiny_llava_onevision(tmp_path / "head", image_size=SIZE, head=True)
    enc = open_encoder(make_config(target="llava-onevision", target_model=str(headed)).encoder)
    assert "attention-pool head" in enc.signal_sources()["attn"]
    out = enc.encode(frames, {"attn", "pooled"})
    assert out["attn"].shape == (3, 16) and out["pooled"].shape == (3, 32)


def test_llava_video_samples_64_frames_by_default(ckpt: Path) -> None:
    assert make_config(target="llava-video", target_model=str(ckpt)).frames == 64
    assert make_config(target="llava-onevision", target_model=str(ckpt)).frames == 32
    assert make_config(target="llava-video", target_model=str(ckpt), fps=1.0).frames is None


def test_show_names_the_space(tmp_path: Path, clip_path: Path, encoders) -> None:  # noqa: ANN001
    res = vtc.compress(clip_path, output=tmp_path / "o.safetensors", method="pool", frames=FRAMES,
                       target="llava-video-next", target_model=str(encoders["llava-video-next"].config.target_model),
                       encoder=encoders["llava-video-next"])
    r = cli("show", res.output, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["space"]["kind"] == "target" and info["space"]["hidden_size"] == 48
    assert info["newline"]["layout"] == "per_row" and info["dim"] == 48
    r = cli("show", res.output)
    assert "target llava-video-next" in r.output and "newline" in r.output


def test_encoder_space_files_are_refused_by_the_consumer(tmp_path: Path, clip_path: Path, model,  # noqa: ANN001
                                                         model_args) -> None:  # noqa: ANN001
    a = model_args("clip")
    res = vtc.compress(clip_path, output=tmp_path / "e.safetensors", method="pool", frames=4, model=a["model"],
                       checkpoint=a["checkpoint"])
    assert vtc.load(res.output).meta["space"]["kind"] == "encoder"
    with pytest.raises(UsageError, match="encoder-space"):
        vtc.hf.video_inputs(res.output, model, prompt_ids(model))


def test_prompt_needs_exactly_one_placeholder(tmp_path: Path, clip_path: Path, model, encoders) -> None:  # noqa: ANN001
    res = vtc.compress(clip_path, output=tmp_path / "o.safetensors", method="pool", frames=2,
                       target="llava-onevision", target_model=str(encoders["llava-onevision"].config.target_model),
                       encoder=encoders["llava-onevision"])
    vid = model.config.video_token_id
    for ids in ([1, 2, 3], [1, vid, vid, 2]):
        with pytest.raises(UsageError, match="exactly once"):
            vtc.hf.video_inputs(res.output, model, ids)
    with pytest.raises(UsageError, match="positions"):
        vtc.hf.video_inputs(res.output, model, [1, vid], positions="gapped")


def test_a_file_from_another_checkpoint_is_refused(tmp_path: Path, clip_path: Path, encoders) -> None:  # noqa: ANN001
    res = vtc.compress(clip_path, output=tmp_path / "o.safetensors", method="pool", frames=2,
                       target="llava-onevision", target_model=str(encoders["llava-onevision"].config.target_model),
                       encoder=encoders["llava-onevision"])
    other = LlavaOnevisionForConditionalGeneration.from_pretrained(
        tiny_llava_onevision(tmp_path / "other", image_size=SIZE, seed=7)).eval()
    with pytest.raises(UsageError, match="another checkpoint"):
        vtc.hf.video_inputs(res.output, other, [1, other.config.video_token_id])


def _bad_checkpoints(tmp_path: Path, ckpt: Path) -> dict[str, Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    novision = tmp_path / "novision"
    shutil.copytree(ckpt, novision)
    from safetensors.torch import load_file, save_file

    weights = load_file(novision / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "multi_modal_projector" not in k}, novision / "model.safetensors",
              metadata={"format": "pt"})
    return {"empty": empty, "bert": bert, "novision": novision}


@pytest.mark.parametrize("case, args, code, message", [
    ("empty", ["--target", "llava-onevision"], 3, "not a transformers checkpoint"),
    ("bert", ["--target", "llava-onevision"], 3, "'bert' checkpoint"),
    ("novision", ["--target", "llava-video"], 3, "projector"),
    ("good", ["--target", "llava-onevision", "--checkpoint", "x.pt"], 2, "--checkpoint"),
    ("good", ["--target", "qwen9"], 2, "unknown --target"),
    ("good", [], 2, "--target-model needs --target"),
])
def test_bad_targets_fail_up_front(tmp_path: Path, clip_path: Path, ckpt: Path, case: str, args: list[str],
                                   code: int, message: str) -> None:
    folder = ckpt if case == "good" else _bad_checkpoints(tmp_path, ckpt)[case]
    out = tmp_path / "out.safetensors"
    r = cli("compress", clip_path, "-o", out, "--target-model", folder, *args)
    assert r.exit_code == code, r.output
    assert message in r.output and len(r.output.strip().splitlines()) <= 3 and "Traceback" not in r.output
    assert not out.exists() and not list(tmp_path.glob(".out.safetensors*"))


def test_target_without_model_and_offline_hub_ids(tmp_path: Path, clip_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    r = cli("compress", clip_path, "-o", tmp_path / "o.safetensors", "--target", "llava-onevision")
    assert r.exit_code == 2 and "--target-model" in r.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelError, match="unreachable"):
        make_config(target="llava-onevision", target_model="llava-hf/llava-onevision-qwen2-7b-ov-hf")
        open_encoder(make_config(target="llava-onevision",
                                 target_model="llava-hf/llava-onevision-qwen2-7b-ov-hf").encoder)


def test_target_presets_and_batch(tmp_path: Path, clip_path: Path, silent_clip: Path, ckpt: Path) -> None:
    for name, target, frames in (("llava-onevision-target", "llava-onevision", 32),
                                 ("llava-video-target", "llava-video", 64)):
        cfg = make_config(name, target_model=str(ckpt))
        assert cfg.encoder.target == target and cfg.frames == frames and cfg.encoder.target_model == str(ckpt)
    out = tmp_path / "tokens"
    r = cli("compress", clip_path, silent_clip, "-o", out, "--preset", "llava-video-target", "--target-model", ckpt,
            "--frames", 4, "-q")
    assert r.exit_code == 0, r.output
    files = sorted(out.rglob("*.safetensors"))
    assert len(files) == 2
    for f in map(vtc.load, files):
        assert f.meta["space"]["target"] == "llava-video" and f.num_frames == 4 and "newline" in f.tensors
