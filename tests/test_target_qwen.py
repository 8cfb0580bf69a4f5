"""The Qwen2.5-VL target: pixels, tokens, M-RoPE positions and generation against the real transformers model.

A tiny random-weight Qwen2.5-VL is built from a config and written with `save_pretrained`; vtc reads it through
`--target-model DIR`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("transformers")

from transformers import AutoProcessor, AutoVideoProcessor, Qwen2_5_VLForConditionalGeneration  # noqa: E402

import vtc  # noqa: E402
import vtc.hf  # noqa: E402
from vtc.cli import app  # noqa: E402
from vtc.errors import UsageError  # noqa: E402
from vtc.io.decode import Sampling, iter_frames  # noqa: E402
from vtc.run.config import make_config  # noqa: E402
from vtc.targets import TARGETS, checkpoint_geometry, read_checkpoint  # noqa: E402
from vtc.targets.encoders import open_encoder  # noqa: E402
from vtc.targets.qwen import patchify  # noqa: E402
from vtc.testing import TINY_QWEN_VISION_END, TINY_QWEN_VISION_START, tiny_qwen2_5_vl  # noqa: E402

from .test_target_processor import QWEN25_TEXT, reference_video  # noqa: E402

runner = CliRunner()
FRAMES = 7  # odd on purpose: the last frame pairs with itself, as the model's processor does


def cli(*args: object):  # noqa: ANN201
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen") / "qwen")


@pytest.fixture(scope="module")
def model(ckpt: Path) -> Qwen2_5_VLForConditionalGeneration:
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt).eval()


@pytest.fixture(scope="module")
def encoder(ckpt: Path):  # noqa: ANN201
    return open_encoder(make_config(target="qwen2.5-vl", target_model=str(ckpt)).encoder)


def decoded(clip: Path, ckpt: Path, frames: int = FRAMES) -> np.ndarray:
    geo = checkpoint_geometry(read_checkpoint(str(ckpt), TARGETS["qwen2.5-vl"]))
    return np.stack([f for _, f in iter_frames(clip, Sampling(frames=frames), geo.decode_size)])


def prompt(model: Qwen2_5_VLForConditionalGeneration) -> list[int]:
    return [5, 6, TINY_QWEN_VISION_START, model.config.video_token_id, TINY_QWEN_VISION_END, 7, 8, 9]


def processed(clip: Path, ckpt: Path) -> dict[str, torch.Tensor]:
    return AutoVideoProcessor.from_pretrained(ckpt)(videos=[decoded(clip, ckpt)], return_tensors="pt")


@pytest.mark.parametrize("clip_name", ["clip_path", "silent_clip"])
def test_pixels_equal_the_models_video_processor(request: pytest.FixtureRequest, ckpt: Path, clip_name: str) -> None:
    clip = request.getfixturevalue(clip_name)
    geo = checkpoint_geometry(read_checkpoint(str(ckpt), TARGETS["qwen2.5-vl"]))
    frames = decoded(clip, ckpt)
    ref = processed(clip, ckpt)
    flat, thw = patchify(geo.preprocess(frames), 14, 2, 2)
    assert thw == ref["video_grid_thw"][0].tolist() and thw[0] == (FRAMES + 1) // 2
    assert torch.equal(flat, ref["pixel_values_videos"])


def compress_none(tmp_path: Path, clip: Path, ckpt: Path, batch: int = 16) -> vtc.TokenFile:
    out = tmp_path / "q.safetensors"
    r = cli("compress", clip, "-o", out, "--target", "qwen2.5-vl", "--target-model", ckpt, "--method", "none",
            "--frames", FRAMES, "--dtype-out", "float32", "--batch-size", batch)
    assert r.exit_code == 0, r.output
    return vtc.load(out)


@pytest.mark.parametrize("batch", [16, 3])  # an odd batch size is rounded up: a batch never splits a frame pair
def test_logits_equal_the_models_own_forward(tmp_path: Path, clip_path: Path, ckpt: Path, model,  # noqa: ANN001
                                             batch: int) -> None:
    f = compress_none(tmp_path, clip_path, ckpt, batch)
    space = f.meta["space"]
    ref = processed(clip_path, ckpt)
    assert space["video_grid_thw"] == ref["video_grid_thw"][0].tolist()
    assert f.num_frames == (FRAMES + 1) // 2 and f.tokens.shape[0] == f.num_frames * f.grid[0] * f.grid[1]
    ids = prompt(model)
    at = ids.index(model.config.video_token_id)
    vid = model.config.video_token_id
    full = torch.tensor([ids[:at] + [vid] * f.tokens.shape[0] + ids[at + 1:]])
    with torch.no_grad():
        spg = processor_spg(clip_path, f, ckpt)  # the full processor's, never vtc's own value
        want = model(input_ids=full, pixel_values_videos=ref["pixel_values_videos"],
                     video_grid_thw=ref["video_grid_thw"], second_per_grid_ts=spg,
                     mm_token_type_ids=(full == vid).int() * 2).logits
        got = model(**vtc.hf.video_inputs(f, model, ids, after_video="model")).logits
    assert (got - want).abs().max() <= 1e-4


def processor_spg(clip: Path, f: vtc.TokenFile, ckpt: Path | str) -> torch.Tensor:
    """`second_per_grid_ts` [1] as the model's full processor sets it for the frames vtc sampled."""
    video, meta = reference_video(clip, f["sampled_frame_times"].tolist())
    return AutoProcessor.from_pretrained(ckpt)(text=[QWEN25_TEXT], videos=[video], video_metadata=[meta],
                                               do_sample_frames=False, return_tensors="pt")["second_per_grid_ts"]


def reference_positions(ids: list[int], at: int, thw: list[int], spg: float, tps: float) -> torch.Tensor:
    """Qwen2.5-VL's reference rule (its docstring, vLLM): text 0..at-1; video (⌊t·spg·tps⌋, h, w) + at over the
    merged grid; text after from the video's max + 1.  → [3, L]."""
    t, h, w = thw[0], thw[1] // 2, thw[2] // 2
    tt = (torch.arange(t) * (tps * torch.tensor(spg, dtype=torch.float32))).long()
    grid = torch.stack(torch.meshgrid(tt, torch.arange(h), torch.arange(w), indexing="ij")).reshape(3, -1) + at
    after = torch.arange(len(ids) - at - 1) + int(grid.max()) + 1
    return torch.cat([torch.arange(at).expand(3, -1), grid, after.expand(3, -1)], 1)


@pytest.mark.parametrize("method", ["evs", "fastvid", "dycoke", "divprune", "uniform"])
def test_pruned_tokens_keep_their_original_positions(tmp_path: Path, clip_path: Path, model, encoder,  # noqa: ANN001
                                                     method: str) -> None:
    res = vtc.compress(clip_path, output=tmp_path / "o.safetensors", method=method, ratio=0.25, frames=FRAMES,
                       target="qwen2.5-vl", target_model=str(encoder.config.target_model), encoder=encoder)
    f = vtc.load(res.output)
    space = f.meta["space"]
    k = f.tokens.shape[0]
    n_full = f.num_frames * f.grid[0] * f.grid[1]
    assert k < n_full and int(f["retention_mask"].sum()) == int((f.reduction().rep >= 0).sum())
    ids = prompt(model)
    at = ids.index(model.config.video_token_id)
    inputs = vtc.hf.video_inputs(f, model, ids)
    pos = inputs["position_ids"][1:, 0]  # rows t, h, w (row 0: text positions for the mask)
    assert inputs["position_ids"].shape == (4, 1, len(ids) - 1 + k)
    # each kept token's position is the one the model's own get_rope_index gives its cell in the full sequence
    vid = model.config.video_token_id
    full = torch.tensor([ids[:at] + [vid] * n_full + ids[at + 1:]])
    spg = processor_spg(clip_path, f, encoder.config.target_model)
    model_pos, _ = model.model.get_rope_index(full, mm_token_type_ids=(full == vid).int() * 2,
                                              video_grid_thw=torch.tensor([space["video_grid_thw"]]),
                                              second_per_grid_ts=spg)
    rep = f.reduction().rep
    order = torch.argsort(torch.where(rep >= 0, rep, -1), stable=True)
    kept = rep[order]
    assert torch.equal(pos[:, at:at + k][:, kept >= 0], model_pos[:, 0, at + kept[kept >= 0]])
    # text after the video: from the full grid's max + 1 (Qwen's reference rule)
    tps = model.config.vision_config.tokens_per_second
    want = reference_positions(ids, at, space["video_grid_thw"], float(spg[0]), tps)
    assert torch.equal(pos[:, at + k:], want[:, at + n_full:])
    assert int(pos[0, at + k]) == int(want[:, at:at + n_full].max()) + 1
    with torch.no_grad():
        gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert gen.shape[-1] == 3


def vllm_retention_mask(x: torch.Tensor, q: float) -> torch.Tensor:
    """vLLM's `compute_retention_mask`, restated from its documentation: tokens [T, h·w, D] → dissimilarity to the
    same cell of the previous frame (1 − cos), the first frame forced in (255), a stable descending sort keeps
    max(h·w, ⌊T·h·w·(1 − q)⌋) tokens.  → bool [T·h·w]."""
    t, n, _ = x.shape
    xn = torch.nn.functional.normalize(x.float(), dim=-1)
    dis = torch.full((t, n), 255.0)
    dis[1:] = 1 - (xn[1:] * xn[:-1]).sum(-1)
    keep = max(n, int(t * n * (1 - q)))
    mask = torch.zeros(t * n, dtype=torch.bool)
    mask[torch.argsort(dis.reshape(-1), descending=True, stable=True)[:keep]] = True
    return mask


def test_evs_keeps_what_vllm_keeps(tmp_path: Path, clip_path: Path, encoder) -> None:  # noqa: ANN001
    full = vtc.load(compress_none(tmp_path, clip_path, Path(encoder.config.target_model)).path)
    x = full.tokens.reshape(full.num_frames, -1, full.tokens.shape[-1])
    for q in (0.5, 0.75, 0.9):
        res = vtc.compress(clip_path, output=tmp_path / f"evs{q}.safetensors", method="evs", params={"q": q},
                           frames=FRAMES, target="qwen2.5-vl", target_model=str(encoder.config.target_model),
                           encoder=encoder, dtype_out="float32")
        f = vtc.load(res.output)
        assert torch.equal(f["retention_mask"], vllm_retention_mask(x, q))


def test_export_for_vllm_and_sglang(tmp_path: Path, clip_path: Path, encoder) -> None:  # noqa: ANN001
    res = vtc.compress(clip_path, output=tmp_path / "o.safetensors", method="evs", ratio=0.5, frames=FRAMES,
                       target="qwen2.5-vl", target_model=str(encoder.config.target_model), encoder=encoder)
    f = vtc.load(res.output)
    k, d = f.tokens.shape
    space = f.meta["space"]
    r = cli("export", res.output, "--to", "vllm", "-o", tmp_path / "v.pt")
    assert r.exit_code == 0, r.output
    v = torch.load(tmp_path / "v.pt")
    video = v["multi_modal_data"]["video"]
    assert video["video_embeds"].shape == (k, d) and video["video_grid_thw"].tolist() == [space["video_grid_thw"]]
    assert video["second_per_grid_ts"].shape == (1,)
    mask = video["video_retention_mask"]
    assert mask.dtype == torch.bool and int(mask.sum()) == k and torch.equal(mask, f["retention_mask"].reshape(-1))
    assert set(v) == {"engine", "multi_modal_data", "needs_plugin", "prompt_placeholder", "num_placeholder_tokens",
                      "complete", "source"}
    assert v["prompt_placeholder"] == "<|vision_start|><|video_pad|><|vision_end|>"
    r = cli("export", res.output, "--to", "sglang", "-o", tmp_path / "s.pt")  # SGLang cannot take a pruned item
    assert r.exit_code == 2 and "vtc export --to vllm" in r.output and not (tmp_path / "s.pt").exists()
    res = vtc.compress(clip_path, output=tmp_path / "n.safetensors", method="none", frames=FRAMES,
                       target="qwen2.5-vl", target_model=str(encoder.config.target_model), encoder=encoder)
    n = int(vtc.load(res.output).tokens.shape[0])
    r = cli("export", res.output, "--to", "sglang", "-o", tmp_path / "s.pt")
    assert r.exit_code == 0, r.output
    s = torch.load(tmp_path / "s.pt")
    item = s["video_data"][0]
    assert item["format"] == "precomputed_embedding" and item["feature"].shape == (n, d) and s["complete"]
    assert item["video_grid_thw"].tolist() == [space["video_grid_thw"]] and s["num_placeholder_tokens"] == n
    r = cli("export", res.output, "--to", "tensorrt", "-o", tmp_path / "x.pt")
    assert r.exit_code == 2 and "vllm" in r.output


def test_show_and_errors(tmp_path: Path, clip_path: Path, ckpt: Path, encoder) -> None:  # noqa: ANN001
    res = vtc.compress(clip_path, output=tmp_path / "o.safetensors", method="uniform", ratio=0.5, frames=FRAMES,
                       target="qwen2.5-vl", target_model=str(ckpt), encoder=encoder)
    r = cli("show", res.output, "--json")
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["space"]["target"] == "qwen2.5-vl" and info["space"]["video_grid_thw"][0] == info["frames"]
    r = cli("show", res.output, "--video", clip_path, "--html", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    r = cli("compress", clip_path, "-o", tmp_path / "x.safetensors", "--target", "qwen2.5-vl", "--target-model",
            ckpt, "--method", "rlt")
    assert r.exit_code == 2 and "skip_static_frames" in r.output
    r = cli("compress", clip_path, "-o", tmp_path / "x.safetensors", "--target", "llava-onevision",
            "--target-model", ckpt)
    assert r.exit_code == 3 and "qwen2_5_vl" in r.output
    with pytest.raises(UsageError, match="after_video"):
        vtc.hf.video_inputs(res.output, Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt), [1, 291],
                            after_video="later")


def test_export_between_buckets(tmp_path: Path, clip_path: Path, encoder, monkeypatch) -> None:  # noqa: ANN001
    """`vtc export s3://… -o s3://…` against the S3 test server: the object written is the local export, byte for
    byte in its tensors; the default output lands beside the input; an existing object is never replaced without
    --overwrite."""
    import io

    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from tests.s3server import S3Server
    from vtc.io.storage import set_options

    res = vtc.compress(clip_path, output=tmp_path / "o.safetensors", method="evs", ratio=0.5, frames=FRAMES,
                       target="qwen2.5-vl", target_model=str(encoder.config.target_model), encoder=encoder)
    assert cli("export", res.output, "--to", "vllm", "-o", tmp_path / "v.pt").exit_code == 0
    local = torch.load(tmp_path / "v.pt")
    with S3Server() as server:
        for k, v in server.env.items():
            monkeypatch.setenv(k, v)
        set_options({})
        server.bucket("exp")
        server.put("s3://exp/tok/o.safetensors", Path(res.output))
        r = cli("export", "s3://exp/tok/o.safetensors", "--to", "vllm", "-o", "s3://exp/engine/o.pt")
        assert r.exit_code == 0, r.output
        r = cli("export", "s3://exp/tok/o.safetensors", "--to", "vllm")
        assert r.exit_code == 0, r.output
        assert server.keys("exp") == ["engine/o.pt", "tok/o.safetensors", "tok/o.vllm.pt"]
        client = server.client()
        for key in ("engine/o.pt", "tok/o.vllm.pt"):
            got = torch.load(io.BytesIO(client.get_object(Bucket="exp", Key=key)["Body"].read()))
            video, want = got["multi_modal_data"]["video"], local["multi_modal_data"]["video"]
            assert set(video) == set(want) and all(torch.equal(video[k], want[k]) for k in want)
            assert {k: v for k, v in got.items() if k != "multi_modal_data" and k != "source"} == \
                {k: v for k, v in local.items() if k != "multi_modal_data" and k != "source"}
        before = client.get_object(Bucket="exp", Key="engine/o.pt")["ETag"]
        r = cli("export", "s3://exp/tok/o.safetensors", "--to", "vllm", "-o", "s3://exp/tok/o.safetensors")
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output  # its own input
        r = cli("export", "s3://exp/tok/o.safetensors", "--to", "vllm", "-o", "s3://exp/engine/o.pt")
        assert r.exit_code == 2 and "--overwrite" in r.output, r.output
        assert client.get_object(Bucket="exp", Key="engine/o.pt")["ETag"] == before
        r = cli("export", "s3://exp/tok/o.safetensors", "--to", "vllm", "-o", "s3://exp/engine/o.pt", "--overwrite")
        assert r.exit_code == 0, r.output
