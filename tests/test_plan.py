"""The plan validates everything before any work: bad options fail with one line and exit 2, nothing decoded,
no model loaded; variants and declared facts are visible; features in, token file out from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import vtc
from vtc.cli import app
from vtc.errors import UsageError
from vtc.io.encode import Encoder, EncoderConfig, geometry_for
from vtc.methods import get_method
from vtc.run.config import make_config
from vtc.run.plan import Plan

from .conftest import GOLDEN

runner = CliRunner()


def one_line_exit2(result) -> None:  # noqa: ANN001
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output


def test_unknown_keyword_to_compress(clip_path: Path, no_work: dict[str, int]) -> None:
    with pytest.raises(UsageError, match="unknown option 'methd'. Did you mean 'method'"):
        vtc.compress(clip_path, methd="tome")
    assert no_work == {"decode": 0, "model": 0}


@pytest.mark.parametrize("args,message", [
    (["-m", "llava_scissor", "-p", "tau=abc"], "takes a finite number, not 'abc'"),
    (["-m", "fastvid", "-p", "min_segments=-3"], "must be in [1, ∞]"),
    (["-m", "fastvid", "-p", "min_segments=2.5"], "takes an integer"),
    (["-m", "dycoke", "-p", "reference_loops=3"], "takes true or false"),
    (["-m", "fastvid", "-p", "segmenter=nope"], "must be one of"),
    (["-m", "dycoke:nope"], "has no variant 'nope'"),
    (["-m", "fastvidd"], "unknown method"),
    (["--frames", "8", "--fps", "1"], "not --frames and --fps"),
    (["--fps", "inf"], "--fps must be a number"),
    (["--frames", "0"], "--frames must be an integer"),
    (["--dtype-out", "int8"], "--dtype-out"),
])
def test_bad_options_fail_before_work(tmp_path: Path, clip_path: Path, model_args, no_work: dict[str, int],  # noqa: ANN001
                                      args: list[str], message: str) -> None:
    a = model_args("clip")
    r = runner.invoke(app, ["compress", str(clip_path), "-o", str(tmp_path / "o.safetensors"), *args,
                            "--model", a["model"], "--checkpoint", a["checkpoint"]])
    one_line_exit2(r)
    assert message in r.output.replace("\n", " ")
    assert no_work == {"decode": 0, "model": 0}
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_batch_plan_on_the_driver(tmp_path: Path, clip_path: Path, silent_clip: Path, model_args,  # noqa: ANN001
                                  no_work: dict[str, int], engine: str) -> None:
    a = model_args("clip")
    r = runner.invoke(app, ["compress", str(clip_path), str(silent_clip), "-o", str(tmp_path / "out"),
                            "--engine", engine, "-m", "no_such_method", "--model", a["model"],
                            "--checkpoint", a["checkpoint"]])
    one_line_exit2(r)
    assert "unknown method 'no_such_method'" in r.output
    assert no_work == {"decode": 0, "model": 0}
    assert not (tmp_path / "out").exists()


def test_preset_sampling_is_replaced_not_conflicting() -> None:
    cfg = make_config("llava-onevision", fps=1.0)
    assert cfg.fps == 1.0 and cfg.frames is None and cfg.every is None


def test_variant_and_params_resolve_once() -> None:
    plan = Plan.make(make_config(method="dycoke:reference", params={"merging_ratio": 0.5}), check_encoder=False)
    assert plan.variant == "reference" and plan.params == {"prune_share": 0.5, "reference_loops": True}
    assert plan.method_label == "dycoke:reference"
    # user params win over the variant's settings
    plan = Plan.make(make_config(method="dycoke:reference", params={"reference_loops": False}), check_encoder=False)
    assert plan.params["reference_loops"] is False


def test_methods_shows_ratio_and_variants() -> None:
    r = runner.invoke(app, ["methods", "--json"])
    data = {m["name"]: m for m in json.loads(r.output)}
    assert data["fastvid"]["paper_ratio"] == 0.1 and data["dycoke"]["paper_ratio"] is None
    assert data["dycoke"]["variants"] == {"reference": {"reference_loops": True}}
    assert data["llava_scissor"]["variants"]["reference"] == {"union_find": "reference"}
    text = runner.invoke(app, ["methods"]).output
    assert "default ratio: 0.1" in text and "variant dycoke:reference" in text


def test_geometry_known_without_weights(model_args) -> None:  # noqa: ANN001
    for kind in ("clip", "siglip"):
        a = model_args(kind)
        cfg = EncoderConfig(model=a["model"], checkpoint=a["checkpoint"], pretrained=None)
        assert geometry_for(cfg) == Encoder(cfg).geometry


def test_no_ratio_means_paper_ratio() -> None:
    x = torch.randn(4, 16, 8)
    spec = get_method("tome")
    a = spec.run(x, grid=(4, 4), ratio=None, signals=vtc.signals.Signals(), params=spec.defaults())
    b = spec.run(x, grid=(4, 4), ratio=spec.paper_ratio, signals=vtc.signals.Signals(), params=spec.defaults())
    assert torch.equal(a.rep, b.rep)


REFERENCE_CASES = sorted(p for m in ("dycoke", "llava_scissor") for p in (GOLDEN / m).glob("case_*.safetensors")) \
    if GOLDEN.is_dir() else []


@pytest.mark.skipif(not REFERENCE_CASES, reason="no golden cases")
@pytest.mark.parametrize("path", REFERENCE_CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_reference_variant_from_the_cli(tmp_path: Path, path: Path) -> None:
    """`vtc compress-features … -m METHOD:reference` reproduces the authors' outputs, through the token file."""
    from .test_golden import HARNESS_KEYS, RATIO_KEYS, read_case

    meta, t = read_case(path)
    params = json.loads(meta["params"])
    ratio = next((params.pop(k) for k in RATIO_KEYS if k in params), None)
    feats = tmp_path / "features.safetensors"
    save_file({"features": t["features"].contiguous()}, str(feats))
    args = ["compress-features", str(feats), "-o", str(tmp_path / "out.safetensors"), "-m",
            f"{meta['method']}:reference", "--dtype-out", "float32"]
    if ratio is not None:
        args += ["-r", str(ratio)]
    for k, v in params.items():
        if k not in HARNESS_KEYS:
            args += ["-p", f"{k}={json.dumps(v)}"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    f = vtc.load(tmp_path / "out.safetensors")
    assert f.meta["variant"] == "reference"
    one_line_exit2(runner.invoke(app, [*args[:3], str(feats), *args[4:]]))  # never over its own input
    ours, ref = f.tokens.double(), t["tokens"].double()
    assert ours.shape == ref.shape
    dist = torch.cdist(ours, ref)
    assert (dist.min(1).values < 1e-4).all() and torch.equal(dist.argmin(1).sort().values, torch.arange(len(ref)))


def test_output_never_replaces_the_input_or_other_files(tmp_path: Path, clip_path: Path, model_args,  # noqa: ANN001
                                                        no_work: dict[str, int]) -> None:
    a = model_args("clip")
    video = tmp_path / "clip.mp4"
    video.write_bytes(clip_path.read_bytes())
    notes = tmp_path / "notes.safetensors"
    notes.write_text("my notes")
    for target, message in [(video, "is the input itself"), (notes, "refusing to overwrite")]:
        r = runner.invoke(app, ["compress", str(video), "-o", str(target), "--model", a["model"],
                                "--checkpoint", a["checkpoint"]])
        one_line_exit2(r)
        assert message in r.output.replace("\n", " ")
    assert video.read_bytes() == clip_path.read_bytes() and notes.read_text() == "my notes"
    assert no_work == {"decode": 0, "model": 0}


def test_batch_inputs_that_share_an_output_fail_up_front(tmp_path: Path, clip_path: Path, model_args,  # noqa: ANN001
                                                         no_work: dict[str, int]) -> None:
    a = model_args("clip")
    for cam in ("camA", "camB"):
        (tmp_path / cam).mkdir()
        (tmp_path / cam / "0001.mp4").write_bytes(clip_path.read_bytes())
    (tmp_path / "camA" / "0001.mkv").write_bytes(clip_path.read_bytes())
    r = runner.invoke(app, ["compress", str(tmp_path / "camA"), str(tmp_path / "camB"), "-o", str(tmp_path / "out"),
                            "--model", a["model"], "--checkpoint", a["checkpoint"]])
    one_line_exit2(r)
    assert "would both be written to" in r.output.replace("\n", " ")
    assert no_work == {"decode": 0, "model": 0} and not (tmp_path / "out").exists()


def test_python_dash_m() -> None:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "vtc", "--version"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.startswith("vtc ")


def test_show_prints_found_knobs_and_reports(tmp_path: Path) -> None:
    x = torch.randn(4, 16, 8, generator=torch.Generator().manual_seed(0))
    res = vtc.compress_features(x, method="llava_scissor", ratio=0.3)
    res.save(tmp_path / "s.safetensors")
    assert res.grid == (4, 4)
    data = json.loads(runner.invoke(app, ["show", str(tmp_path / "s.safetensors"), "--json"]).output)
    assert data["params"]["tau"] is None and data["params_effective"]["tau"] == res.reduction.info["tau"]
    assert data["info"]["n_after_spatial"] == res.reduction.info["n_after_spatial"]
    text = runner.invoke(app, ["show", str(tmp_path / "s.safetensors")]).output
    assert "tau=None" not in text and f"tau={res.reduction.info['tau']}" in text and "n_after_spatial" in text
