"""Windowed execution (long inputs in bounded memory): every method's windows join into one valid Reduction whose
rows only mix frames of their own window; per-frame methods give exactly the one-call answer."""

from __future__ import annotations

import pytest
import torch

import vtc
from vtc.errors import UsageError
from vtc.methods import get_method
from vtc.run.spill import EntryFile
from vtc.signals import Signals
from vtc.stages.window import frame_windows, run_windowed_parts, windowed_rows

from .test_methods import METHODS, make_signals, video_like

#: methods whose decisions are per frame: windowing cannot change them
PER_FRAME = {"pool": {}, "visionzip": {}, "fastervlm": {}, "hiprune": {}, "gprune": {},
             "divprune": {"mode": "per_frame"}}


def test_frame_windows() -> None:
    assert frame_windows(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert frame_windows(9, 4) == [(0, 4), (4, 9)]  # a 1-frame tail joins the window before
    assert frame_windows(3, 8) == [(0, 3)]
    assert frame_windows(12, 5, multiple=2) == [(0, 4), (4, 8), (8, 12)]


def case(name: str, t: int, seed: int, h: int = 4, w: int = 4, d: int = 8) -> tuple[torch.Tensor, dict]:
    """Video-like features [T, h·w, d] and the signals method `name` wants."""
    gen = torch.Generator().manual_seed(seed)
    x = video_like(t, h, w, d, gen)
    sig = make_signals(t, h * w, d, gen, h, w)
    return x, {k: v for k, v in sig.present().items() if k in get_method(name).wanted_signals}


@pytest.mark.parametrize("name", METHODS)
def test_windowed_reduction_is_valid_and_local(name: str) -> None:
    t, h, w, d = 11, 4, 4, 8
    x, kw = case(name, t, 7)
    res = vtc.compress_features(x, method=name, ratio=0.3, window=4, **kw)
    red, n_src = res.reduction, t * h * w
    win_info = red.info["windowed"]
    assert red.num_sources == n_src and (win_info["frames"], win_info["windows"]) == (4, 3)
    assert sum(win_info["tokens_per_window"]) == red.num_outputs
    # the joined map with its entries kept per window (how a long video reaches its file) has the same rows,
    # frames, sizes and sources, and its streamed rows are the tokens
    spec = get_method(name)
    parts = run_windowed_parts(lambda xw, sw: spec.run(xw, grid=(h, w), ratio=0.3, signals=sw,
                                                       params=spec.resolve({}, None)),
                               x, Signals(**kw), 4, store=EntryFile())
    assert torch.equal(parts.rep, red.rep) and torch.equal(parts.row_frames(h * w), red.row_frames(h * w))
    assert torch.equal(parts.sizes(), red.sizes()) and torch.equal(parts.source(), red.source())
    assert torch.equal(parts.to_reduction().dense(), red.dense()) and parts.num_entries == red.dst.numel()
    torch.testing.assert_close(torch.cat(list(windowed_rows(parts, x))), res.tokens.float(), atol=1e-5, rtol=1e-5)
    parts.close()
    grid_entries = red.src < n_src
    assert red.src.min() >= 0 and ((red.rep >= -1) & (red.rep < n_src)).all()
    # every output row mixes frames of one window only
    window_of = torch.tensor([0] * 4 + [1] * 4 + [2] * 3).repeat_interleave(h * w)
    win = window_of[red.src[grid_entries]]
    dst = red.dst[grid_entries]
    lo = torch.full((red.num_outputs,), 9).scatter_reduce(0, dst, win, "amin")
    hi = torch.full((red.num_outputs,), -1).scatter_reduce(0, dst, win, "amax")
    assert (lo[hi >= 0] == hi[hi >= 0]).all()
    if red.segments is not None:
        assert red.segments.min() >= 0 and red.segments.max() < t
    full = x.reshape(n_src, d) if red.extra is None else torch.cat([x.reshape(n_src, d), red.extra])
    torch.testing.assert_close(res.tokens.double(), red.dense() @ full.double(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(PER_FRAME))
def test_per_frame_methods_are_unchanged_by_windows(name: str) -> None:
    x, kw = case(name, 9, 3)
    one = vtc.compress_features(x, method=name, ratio=0.3, params=PER_FRAME[name], **kw)
    win = vtc.compress_features(x, method=name, ratio=0.3, params=PER_FRAME[name], window=2, **kw)
    assert torch.equal(one.reduction.dense(), win.reduction.dense())
    torch.testing.assert_close(one.tokens, win.tokens)


def test_bad_window() -> None:
    with pytest.raises(UsageError, match="window"):
        vtc.compress_features(torch.randn(4, 4, 8), method="pool", window=0)


def test_a_video_past_the_memory_budget_spills_and_runs_in_windows(tmp_path, clip_path, model_args) -> None:  # noqa: ANN001
    """With a budget far below the clip's features: they spill to disk (float16), the method runs on windows and
    the file says so; a per-frame method's tokens equal the in-memory run's (to float16 rounding)."""
    from typer.testing import CliRunner

    from vtc.cli import app

    a = model_args("clip")
    flags = ["--model", a["model"], "--checkpoint", a["checkpoint"], "--frames", "24"]
    runner = CliRunner()
    # visionzip's attention keys, rlt's frames and ts_llava's pixels are buffered (and spilled) like the features
    for method in ("pool", "fastvid", "visionzip", "rlt", "ts_llava"):
        small, big = tmp_path / f"{method}-small.safetensors", tmp_path / f"{method}-big.safetensors"
        r = runner.invoke(app, ["compress", str(clip_path), "-o", str(small), "-m", method, "--memory-budget",
                                "0.0001", *flags])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["compress", str(clip_path), "-o", str(big), "-m", method, *flags])
        assert r.exit_code == 0, r.output
        f, g = vtc.load(small), vtc.load(big)
        info = f.meta["info"]
        assert info["windowed"]["windows"] > 1 and "memory budget" in info["windowed"]["reason"]
        assert "float16" in info["features_spilled"] and "windowed" not in g.meta["info"]
        assert f.num_frames == g.num_frames == 24
        if method == "pool":
            torch.testing.assert_close(f.tokens.float(), g.tokens.float(), atol=2e-2, rtol=1e-2)
            assert torch.equal(f.positions, g.positions)
    r = runner.invoke(app, ["compress", str(clip_path), "-o", str(tmp_path / "x.safetensors"), "--memory-budget",
                            "-1", *flags])
    assert r.exit_code == 2 and "--memory-budget" in r.output


def test_feature_buffer_spills_any_per_frame_array() -> None:
    """Float arrays spill as float16 and come back in their dtype; integer ones (frames) exactly; reads by slice
    and by frame indices agree with the in-memory buffer."""
    from vtc.run.spill import FeatureBuffer

    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(10, 5, 3, generator=gen)
    frames = torch.randint(0, 256, (10, 4, 4, 3), generator=gen, dtype=torch.uint8)
    for x, exact in ((keys, False), (frames, True)):
        ram, disk = FeatureBuffer(1 << 30), FeatureBuffer(x[0].numel() * x.element_size() * 3)
        for part in x.split(4):
            ram.append(part)
            disk.append(part)
        assert not ram.spilled and disk.spilled and disk.shape == x.shape
        picks = torch.tensor([0, 9, 3])
        for got in (disk[2:7], disk[picks], disk.tensor()):
            assert got.dtype == x.dtype
        if exact:
            assert torch.equal(disk[2:7], x[2:7]) and torch.equal(disk[picks], x[picks])
        else:
            torch.testing.assert_close(disk[picks], x[picks], atol=2e-3, rtol=1e-3)
        assert torch.equal(ram[picks], x[picks]) and torch.equal(ram[2:7], x[2:7])
        disk.close()


def test_a_windowed_run_reports_the_floor_of_its_windows() -> None:
    """EVS keeps every window's first frame whole: a run in 3 windows keeps at least 3 frames, and the result's
    note says so (the floor of one window alone would hide why the ratio was missed)."""
    from vtc.run.finish import ratio_note

    t, h, w = 12, 4, 4
    x = torch.randn(t, h * w, 8, generator=torch.Generator().manual_seed(0))
    res = vtc.compress_features(x, method="evs", ratio=0.05, grid=(h, w), window=4)
    red = res.reduction
    assert red.info["windowed"]["windows"] == 3 and red.info["budget_floor"] == 3 * h * w <= red.num_outputs
    assert ratio_note(0.05, red.ratio(), red.info, t * h * w) == f"the method keeps at least {3 * h * w} of " \
                                                                  f"{t * h * w} tokens"
