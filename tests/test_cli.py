"""The CLI end to end through Typer's runner (in-process, tiny models via --checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import vtc
from vtc.cli import app
from vtc.methods import all_methods

runner = CliRunner()


def cli(*args: str):  # noqa: ANN201
    return runner.invoke(app, [str(a) for a in args])


def model_flags(model_args, kind: str = "clip") -> list[str]:  # noqa: ANN001
    a = model_args(kind)
    return ["--model", a["model"], "--checkpoint", a["checkpoint"]]


def check_file(path: Path, t: int | None = None) -> vtc.TokenFile:
    f = vtc.load(path)
    k, d = f.tokens.shape
    h, w = f.grid
    n = h * w
    T = f.num_frames
    assert f.positions.shape == (k, 3) and f["timestamps"].shape == (k,) and f["sizes"].shape == (k,)
    assert f["source"].shape == (T * n,)
    pos = f.positions
    assert ((pos[:, 0] >= 0) & (pos[:, 0] < T)).all()
    assert ((pos[:, 1] >= -1) & (pos[:, 1] < h) & (pos[:, 2] >= -1) & (pos[:, 2] < w)).all()
    ft = f["frame_times"]
    assert (ft[1:] > ft[:-1]).all() and ft[0] >= 0 and ft[-1] <= f.meta["video"]["duration"] + 1e-3
    # sizes add up to the number of (source, output) contributions; every kept/merged source is counted
    _, m_src, _ = f.merge_entries()  # the map's entries with its groups (format 2) spelled out
    assert int(f["sizes"].sum()) == m_src.numel()
    grid_src = m_src[m_src < T * n]
    assert int((f["source"] >= 0).sum()) == torch.unique(grid_src).numel()
    if t is not None:
        assert T == t
    return f


#: methods that need more than a tower: a question (free_video_llm) or a target's projector (zoo_prune); they run
#: end to end in tests/test_outer_methods.py
NOT_PLAIN = {"free_video_llm", "zoo_prune"}


@pytest.mark.parametrize("method", [m.name for m in all_methods() if m.name not in NOT_PLAIN])
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_compress_every_method(tmp_path: Path, clip_path: Path, model_args, method: str, kind: str) -> None:  # noqa: ANN001
    out = tmp_path / "o.safetensors"
    r = cli("compress", clip_path, "-o", out, "--method", method, "--ratio", "0.3", "--frames", "8",
            *model_flags(model_args, kind))
    assert r.exit_code == 0, r.output
    f = check_file(out, t=8)
    assert f.meta["method"] == method and f.meta["encoder"]["tower"] == kind
    if method == "fastvid":
        assert set(f.meta["signals"]) == {"attn", "pooled"} and kind in f.meta["signals"]["attn"]
    if method in ("visionzip", "fastervlm") and kind == "siglip":  # no CLS: the substitute is named in the file
        assert "substitute" in f.meta["signals"]["cls_attn"]
    if method == "ts_llava":  # the thumbnail was built and encoded for real: 36 off-grid rows at the end
        assert f["extra_tokens"].shape == (36, f.tokens.shape[1])
        assert (f.positions[-36:, 1] == -1).all() and (f.positions[:-36, 1] >= 0).all()
        assert torch.allclose(f.tokens[-36:].float(), f["extra_tokens"].float())


def test_defaults_beside_input_and_show(tmp_path: Path, clip_path: Path, model_args) -> None:  # noqa: ANN001
    video = tmp_path / "clip.mp4"
    video.write_bytes(clip_path.read_bytes())
    r = cli("compress", video, "--method", "pool", *model_flags(model_args))
    assert r.exit_code == 0, r.output
    out = tmp_path / "clip.safetensors"
    f = check_file(out)
    assert f.meta["video"]["sha256"] and f.meta["format"] == "vtc-tokens"
    assert f.tokens.dtype == torch.float16
    shown = cli("show", out)
    assert shown.exit_code == 0 and "pool" in shown.output and "→" in shown.output
    js = cli("show", out, "--json")
    info = json.loads(js.output)
    assert info["tokens_after"] == f.tokens.shape[0] and sum(info["tokens_per_frame"]) == f.tokens.shape[0]


def test_output_directory_for_one_file(tmp_path: Path, clip_path: Path, model_args) -> None:  # noqa: ANN001
    r = cli("compress", clip_path, "-o", tmp_path, "--method", "pool", "--frames", "2", *model_flags(model_args))
    assert r.exit_code == 0, r.output
    assert vtc.load(tmp_path / "square.safetensors").num_frames == 2


def test_preset_and_explicit_override(tmp_path: Path, clip_path: Path, model_args) -> None:  # noqa: ANN001
    preset = tmp_path / "p.toml"
    preset.write_text('method = "pool"\nframes = 6\ndtype_out = "float32"\n[params]\nstride = 3\n')
    out = tmp_path / "o.safetensors"
    r = cli("compress", clip_path, "-o", out, "--preset", preset, "--frames", "4", *model_flags(model_args))
    assert r.exit_code == 0, r.output
    f = vtc.load(out)
    assert f.num_frames == 4 and f.tokens.dtype == torch.float32 and f.meta["params"]["stride"] == 3


def test_methods_lists_registry() -> None:
    r = cli("methods")
    assert r.exit_code == 0
    for m in all_methods():
        assert m.name in r.output
    js = json.loads(cli("methods", "--json").output)
    runs = {m["name"]: m["runs"] for m in js}
    assert runs["tome_vit"] == runs["vid_tldr"] == "inside the encoder" and runs["fastvid"] == "after the encoder"
    assert "runs inside the encoder" in r.output
    fast = next(m for m in js if m["name"] == "fastvid")
    assert {"name": "tau", "default": 0.9} .items() <= next(p for p in fast["params"] if p["name"] == "tau").items()


def test_doctor() -> None:
    r = cli("doctor")
    assert r.exit_code == 0 and "torch" in r.output and "PyAV" in r.output and "device" in r.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "fastvd"], "Did you mean fastvid"),
        (["--ratio", "1.5"], "(0, 1]"),
        (["--ratio", "0"], "(0, 1]"),
        (["--param", "nonsense=1", "--method", "pool"], "no parameter 'nonsense'"),
    ],
)
def test_usage_errors(tmp_path: Path, clip_path: Path, model_args, args: list[str], message: str) -> None:  # noqa: ANN001
    out = tmp_path / "o.safetensors"
    r = cli("compress", clip_path, "-o", out, *args, *model_flags(model_args))
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_input_errors_leave_nothing(tmp_path: Path, truncated_clip: Path, model_args) -> None:  # noqa: ANN001
    out = tmp_path / "o.safetensors"
    bad = tmp_path / "notes.mp4"
    bad.write_text("hello")
    for src, msg in [(tmp_path / "missing.mp4", "no such file"), (bad, "cannot be opened as a video"),
                     (truncated_clip, "--allow-truncated")]:
        r = cli("compress", src, "-o", out, "--method", "pool", *model_flags(model_args))
        assert r.exit_code == 2, r.output
        assert msg in r.output and "Traceback" not in r.output
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.mp4"]


def test_truncated_allowed_is_recorded(tmp_path: Path, truncated_clip: Path, model_args) -> None:  # noqa: ANN001
    out = tmp_path / "o.safetensors"
    r = cli("compress", truncated_clip, "-o", out, "--method", "pool", "--allow-truncated",
            *model_flags(model_args))
    assert r.exit_code == 0, r.output
    f = check_file(out)
    assert f.meta["truncated"] is True and f.num_frames < 32


def test_unknown_model_error(tmp_path: Path, clip_path: Path) -> None:
    r = cli("compress", clip_path, "-o", tmp_path / "o.safetensors", "--model", "ViT-B-61")
    assert r.exit_code == 3 and "Did you mean" in r.output


def test_show_rejects_non_vtc_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    p = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(2)}, str(p))
    r = cli("show", p)
    assert r.exit_code == 4 and "not a vtc token file" in r.output


def test_hostile_paths_print_safely(tmp_path: Path, clip_path: Path, model_args) -> None:  # noqa: ANN001
    """A path with rich markup and control characters, a FIFO input: one readable line, no crash, no hang."""
    import os
    import shutil
    import stat

    odd = tmp_path / "br[/x]\x1b[31m"
    odd.mkdir(parents=True)
    video = odd / "a[b].mp4"
    shutil.copy(clip_path, video)
    r = cli("compress", video, "-o", odd / "t.safetensors", "--frames", "2", "-m", "pool", *model_flags(model_args))
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "t.safetensors" in r.output
    out = odd / "t.safetensors"
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~_umask()
    r = cli("show", out)
    assert r.exit_code == 0 and "Traceback" not in r.output and "\x1b" not in r.output, r.output
    r = cli("show", odd / "missing[/x].safetensors")
    assert r.exit_code == 2 and "no such file" in r.output
    r = cli("compress", odd / "missing[/x].mp4", "-o", tmp_path / "m.safetensors", *model_flags(model_args))
    assert r.exit_code == 2 and "no such file" in r.output
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    r = cli("compress", fifo, "-o", tmp_path / "p.safetensors", *model_flags(model_args))
    assert r.exit_code == 2 and "not a regular file" in r.output


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
