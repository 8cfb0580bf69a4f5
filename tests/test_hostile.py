"""Hostile inputs from the robustness study that the other test files do not already reproduce: each gets one clear
line and a vtc exit code, loses nothing, and stays within bounded time and memory."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vtc
from vtc.cli import app
from vtc.errors import UsageError
from vtc.io.decode import DecodeReport, Sampling, iter_frames, probe

from .test_decode import mux_frames, video_stream

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def cli(*args: object):  # noqa: ANN201
    return runner.invoke(app, [str(a) for a in args])


def flags(model_args) -> list[str]:  # noqa: ANN001
    a = model_args("clip")
    return ["--model", a["model"], "--checkpoint", a["checkpoint"]]


def one_line(r, code: int) -> str:  # noqa: ANN001
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    return r.output


def fast_clip(path: Path, frames: int = 400) -> Path:
    """`frames` frames at 1000 fps (time base 1/1000), 32×32 mpeg4."""
    import av

    with av.open(str(path), "w") as c:
        s = video_stream(c, Fraction(1, 1000), rate=1000)
        mux_frames(c, s, list(range(frames)), Fraction(1, 1000))
    return path


def test_frames_100000_on_a_1000_fps_clip_ends_quickly(tmp_path: Path) -> None:
    """More frames asked for than the stream holds: each frame once, in one pass, in well under the 120 s it took."""
    path = fast_clip(tmp_path / "fast.mkv")
    t0 = time.perf_counter()
    frames = list(iter_frames(path, Sampling(frames=100_000), lambda w, h: (w, h)))
    assert time.perf_counter() - t0 < 20
    assert len(frames) == 400 and len({t for t, _ in frames}) == 400


@pytest.mark.parametrize("args,message", [
    (["--fps", "1e12"], "--fps"),
    (["--fps", "-1"], "--fps"),
    (["--fps", "nan"], "--fps"),
    (["--frames", "100000000"], "--frames"),
    (["--every", "0"], "--every"),
])
def test_absurd_sampling_values_fail_before_work(tmp_path: Path, clip_path: Path, model_args,  # noqa: ANN001
                                                 no_work: dict[str, int], args: list[str], message: str) -> None:
    r = cli("compress", clip_path, "-o", tmp_path / "o.safetensors", *args, *flags(model_args))
    assert message in one_line(r, 2)
    assert no_work == {"decode": 0, "model": 0} and not (tmp_path / "o.safetensors").exists()


def test_compress_features_rejects_empty_and_misshapen_input() -> None:
    with pytest.raises(UsageError, match=r"T ≥ 1"):
        vtc.compress_features(torch.zeros(0, 4, 8), method="tome", ratio=0.5)
    x = torch.randn(3, 4, 8)
    with pytest.raises(UsageError, match="attn"):
        vtc.compress_features(x, method="fastvid", ratio=0.5, attn=torch.ones(2, 7), pooled=torch.randn(3, 8))
    with pytest.raises(UsageError, match="pooled"):
        vtc.compress_features(x, method="fastvid", ratio=0.5, attn=torch.ones(3, 4) / 4, pooled=torch.randn(3))


@pytest.mark.parametrize("where", ["read-only folder", "parent is a file"])
def test_an_unwritable_output_fails_before_decoding(tmp_path: Path, clip_path: Path, model_args,  # noqa: ANN001
                                                    no_work: dict[str, int], where: str) -> None:
    if where == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(stat.S_IRUSR | stat.S_IXUSR)
        out = d / "o.safetensors"
    else:
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "o.safetensors"
    try:
        r = cli("compress", clip_path, "-o", out, *flags(model_args))
        text = one_line(r, 2)
        assert "o.safetensors" in text and "square.mp4" not in text  # names the output, does not blame the input
        assert no_work == {"decode": 0, "model": 0}
    finally:
        if where == "read-only folder":
            (tmp_path / "ro").chmod(stat.S_IRWXU)


def test_resume_keys_on_the_resolved_path_and_removes_stale_temporaries(tmp_path: Path, clip_path: Path,  # noqa: ANN001
                                                                       model_args,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(clip_path, src / "a.mp4")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    r = cli("compress", "in", "-o", "out", "-m", "pool", "--frames", "2", "--json", *flags(model_args))
    assert json.loads(r.output)["ok"] == 1, r.output
    stale = out / ".a.safetensors.k1ll3d.tmp"  # what a killed run leaves behind
    stale.write_bytes(b"partial")
    (src / "b.mp4").write_bytes(clip_path.read_bytes())
    stale_b = out / ".b.safetensors.k1ll3d.tmp"
    stale_b.write_bytes(b"partial")
    r = cli("compress", src, "-o", out, "-m", "pool", "--frames", "2", "--json", *flags(model_args))
    s = json.loads(r.output)
    assert s["skipped"] == 1 and s["ok"] == 1, r.output  # a.mp4 typed relative then absolute: still done
    assert not stale_b.exists() and not list(out.glob(".*.tmp"))
    assert vtc.load(out / "b.safetensors").num_frames == 2


def test_an_empty_first_video_stream_is_skipped(tmp_path: Path) -> None:
    """The first video stream holds no frames: the stream with frames is read, completely, not called truncated."""
    import av

    path = tmp_path / "empty-first.mkv"
    with av.open(str(path), "w") as c:
        video_stream(c, Fraction(1, 10))
        s = video_stream(c, Fraction(1, 10))
        mux_frames(c, s, list(range(10)), Fraction(1, 10))
    info, report = probe(path), DecodeReport()
    frames = list(iter_frames(path, Sampling(frames=4), lambda w, h: (w, h), info=info, report=report))
    assert len(frames) == 4 and not report.truncated


def test_show_of_far_frames_is_quick_and_small(tmp_path: Path) -> None:
    """A position edited to frame 1e8 is refused at once (exit 4); a genuine file over 1e6 frames (one token per
    frame, a few kept) is shown, exported as JSON and drawn as HTML in seconds, and the page stays small (the study
    saw 61 s and a 122 MB page)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    res = vtc.compress_features(torch.randn(1_000_000, 1, 2), method="uniform", ratio=1e-5, grid=(1, 1))
    f = res.save(tmp_path / "long.safetensors")
    with safe_open(str(f), "pt") as h:
        meta = dict(h.metadata())
    tensors = load_file(str(f))
    tensors["positions"][0, 0] = 10**8
    edited = tmp_path / "edited.safetensors"
    save_file(tensors, str(edited), metadata=meta)
    for path, code in ((f, 0), (edited, 4)):
        for args in (["show", path], ["show", path, "--json"], ["show", path, "--html", tmp_path / "r.html"]):
            t0 = time.perf_counter()
            r = cli(*args)
            assert time.perf_counter() - t0 < 15, args
            assert r.exit_code == code and "Traceback" not in r.output, r.output
    assert (tmp_path / "r.html").stat().st_size < 5_000_000


PROBES = textwrap.dedent("""
    import sys
    from fractions import Fraction
    from pathlib import Path
    import av, numpy as np
    from typer.testing import CliRunner
    from vtc.cli import app
    from vtc.testing import write_video

    tmp, model, ckpt = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    runner = CliRunner()

    def clip(name, pts, tb, size=(32, 32), rate=25):
        p = tmp / name
        with av.open(str(p), "w") as c:
            s = c.add_stream("mpeg4", rate=rate)
            s.width, s.height, s.pix_fmt, s.time_base = size[0], size[1], "yuv420p", tb
            for i, t in enumerate(pts):
                f = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), 9 * i % 256, np.uint8), format="rgb24")
                f.pts, f.time_base = t, tb
                for k in s.encode(f):
                    c.mux(k)
            for k in s.encode(None):
                c.mux(k)
        return p

    wide = write_video(tmp / "wide.mp4", [np.full((8, 8000, 3), 90, np.uint8)] * 3, fps=3)
    thin = write_video(tmp / "thin.mp4", [np.full((16000, 2, 3), 90, np.uint8)] * 3, fps=3)
    cases = [
        (clip("claims-1e9.mkv", [0, 40, 10**12], Fraction(1, 1000)), ["--fps", "1", "--allow-truncated"]),
        (clip("jump.mkv", [0, 40, 80, 10**7], Fraction(1, 1000)), ["--fps", "1000", "--allow-truncated"]),
        (clip("fast.mkv", list(range(300)), Fraction(1, 1000), rate=1000), ["--frames", "100000"]),
        (wide, ["--frames", "3"]),
        (thin, ["--frames", "3"]),
    ]
    for path, args in cases:
        r = runner.invoke(app, ["compress", str(path), "-o", str(tmp / (path.stem + ".safetensors")), "-m", "pool",
                                "--model", model, "--checkpoint", ckpt, *args])
        assert r.exit_code in (0, 2), (path.name, r.output)
        assert "Traceback" not in r.output, r.output
    import torch, vtc
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    good = vtc.compress_features(torch.randn(4, 4, 8), method="tome", ratio=0.5).save(tmp / "good.safetensors")
    with safe_open(str(good), "pt") as h:
        meta0 = dict(h.metadata())
    for key, value in (("T", "10000000000"), ("grid", "[100000, 100000]"), ("frame", 2**31 - 1), ("frame", 10**8)):
        meta, tensors = dict(meta0), load_file(str(good))
        if key == "frame":
            tensors["positions"][0, 0] = value
        else:
            meta[key] = value
        bad = tmp / "bad.safetensors"
        save_file(tensors, str(bad), metadata=meta)
        for extra in ([], ["--json"], ["--html", str(tmp / "r.html")], ["--png", str(tmp / "r.png")]):
            r = runner.invoke(app, ["show", str(bad), *extra])
            assert r.exit_code == 4 and "Traceback" not in r.output, (key, extra, r.output)
    # VmHWM: this process's own peak (ru_maxrss would include the parent's peak from before the exec)
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
    print(int(hwm.split()[1]) * 1024)
""")


def test_hostile_videos_stay_under_3_gb(tmp_path: Path, model_args) -> None:  # noqa: ANN001
    """The study's runaway inputs (a claimed 1e9-s duration at 1 fps, a PTS jump at 1000 fps, 1e5 frames asked of a
    1000-fps clip, 8000×8 and 2×16000 frames) compressed one after another, then token files claiming T = 1e10, a
    1e5×1e5 grid or a token at frame 2^31−1 / 1e8 shown four ways, all in one process: peak RSS < 3 GB."""
    a = model_args("clip")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", PROBES, str(tmp_path), a["model"], a["checkpoint"]],
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    peak = int(done.stdout.strip().splitlines()[-1])
    assert peak < 3 * 2**30, f"peak RSS {peak / 2**30:.2f} GB"



# ---------------------------------------------------------------- data first: nothing the user has is destroyed


def token_file(path: Path, frames: int = 2) -> Path:
    return vtc.compress_features(torch.randn(frames, 4, 8), method="uniform", ratio=0.5).save(path)


def nothing_beside(folder: Path) -> None:
    """No temporaries left in `folder`."""
    assert not list(folder.glob(".*.tmp")), list(folder.glob(".*.tmp"))


def test_export_never_replaces_what_it_must_not(tmp_path: Path) -> None:
    """`vtc export -o` gets the output checks of `compress`: its own input, a video, a text file, another token file
    and an earlier export are refused (one line, exit 2, the file intact) unless --overwrite; the checks come before
    the file is even read."""
    q = token_file(tmp_path / "q.safetensors")
    other = token_file(tmp_path / "other.safetensors", frames=3)
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42 my holiday")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    earlier = tmp_path / "q.vllm.pt"
    earlier.write_bytes(b"an earlier export")
    for target in (q, video, notes, other, earlier):
        before = target.read_bytes()
        r = cli("export", q, "--to", "vllm", "-o", target)
        text = one_line(r, 2)
        assert target.name in text and target.read_bytes() == before
    r = cli("export", q, "--to", "vllm")  # the default output is the existing q.vllm.pt: refused too
    assert "refusing to overwrite" in one_line(r, 2) and earlier.read_bytes() == b"an earlier export"
    r = cli("export", q, "--to", "vllm", "-o", earlier, "--overwrite")  # past the output checks: q is no Qwen file
    assert "encoder-space" in one_line(r, 2) or "space" in r.output
    assert earlier.read_bytes() == b"an earlier export"
    nothing_beside(tmp_path)


def test_export_into_a_read_only_folder_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    q = token_file(tmp_path / "q.safetensors")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        r = cli("export", q, "--to", "vllm", "-o", ro / "q.pt")
        assert "not writable" in one_line(r, 2)
    finally:
        ro.chmod(stat.S_IRWXU)


def test_show_reports_replace_only_vtc_reports(tmp_path: Path) -> None:
    """`vtc show --html/--png` replaces a report it wrote, never another file (unless --overwrite), never the token
    file itself."""
    q = token_file(tmp_path / "q.safetensors")
    notes = tmp_path / "notes.html"
    notes.write_text("<html>my notes</html>")
    sheet = tmp_path / "notes.png"
    sheet.write_bytes(b"\x89PNG\r\n\x1a\n someone else's picture")
    for opt, target in (("--html", notes), ("--png", sheet)):
        before = target.read_bytes()
        r = cli("show", q, opt, target)
        assert r.exit_code == 2 and "refusing to overwrite" in r.output and target.read_bytes() == before, r.output
    r = cli("show", q, "--html", q)
    assert r.exit_code == 2 and vtc.load(q).num_frames == 2
    ours_html, ours_png = tmp_path / "r.html", tmp_path / "r.png"
    for _ in range(2):  # written, then replaced: vtc's own reports
        r = cli("show", q, "--html", ours_html, "--png", ours_png)
        assert r.exit_code == 0, r.output
    r = cli("show", q, "--html", notes, "--overwrite")
    assert r.exit_code == 0 and "vtc" in notes.read_text()
    nothing_beside(tmp_path)


def test_a_read_only_token_file_is_not_replaced(tmp_path: Path, clip_path: Path, model_args,  # noqa: ANN001
                                                no_work: dict[str, int]) -> None:
    out = token_file(tmp_path / "o.safetensors")
    out.chmod(0o444)
    before = out.read_bytes()
    r = cli("compress", clip_path, "-o", out, *flags(model_args))
    assert "read-only" in one_line(r, 2)
    assert out.read_bytes() == before and stat.S_IMODE(out.stat().st_mode) == 0o444
    assert no_work == {"decode": 0, "model": 0}


def test_single_file_runs_remove_what_a_killed_run_left(tmp_path: Path, clip_path: Path, model_args) -> None:  # noqa: ANN001
    out = tmp_path / "o.safetensors"
    stale = tmp_path / ".o.safetensors.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 1000)
    r = cli("compress", clip_path, "-o", out, "-m", "pool", "--frames", "2", *flags(model_args))
    assert r.exit_code == 0, r.output
    assert not stale.exists() and vtc.load(out).num_frames == 2
    nothing_beside(tmp_path)


def batch(src: Path, out: Path, model_args, *extra: object):  # noqa: ANN001, ANN201
    return cli("compress", src, "-o", out, "--frames", "2", "--json", *flags(model_args), *extra)


def test_a_torn_manifest_line_never_swallows_the_next_record(tmp_path: Path, clip_path: Path,  # noqa: ANN001
                                                            model_args) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(clip_path, src / "a.mp4")
    out = tmp_path / "out"
    assert json.loads(batch(src, out, model_args, "-m", "pool").output)["ok"] == 1
    manifest = out / "vtc-manifest.jsonl"
    manifest.write_bytes(manifest.read_bytes()[:-20])  # a killed run: the last line is cut
    shutil.copy(clip_path, src / "b.mp4")
    for _ in range(2):  # each resume appends records that parse; the torn line is reported, not trusted
        s = json.loads(batch(src, out, model_args, "-m", "pool").output)
        assert "malformed" in (s["warning"] or "")
    from vtc.run.batch import read_manifest

    recs = read_manifest(out)
    assert recs[str(src / "a.mp4")]["status"] == "ok" and recs[str(src / "b.mp4")]["status"] == "ok"
    s = json.loads(batch(src, out, model_args, "-m", "pool").output)
    assert s["skipped"] == 2 and s["ok"] == 0


def test_resume_trusts_an_output_only_when_it_records_these_settings(tmp_path: Path, clip_path: Path,  # noqa: ANN001
                                                                     model_args) -> None:
    """Two runs with different settings into one folder: the file that ends up there records the settings that
    made it, and a resume redoes it when they are not its own, whatever the manifest's latest record says."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(clip_path, src / "a.mp4")
    out, other = tmp_path / "out", tmp_path / "other"
    assert json.loads(batch(src, out, model_args, "-m", "pool").output)["ok"] == 1
    assert json.loads(batch(src, other, model_args, "-m", "uniform", "-r", "0.5").output)["ok"] == 1
    shutil.copy(other / "a.safetensors", out / "a.safetensors")  # the other run's write landed last
    s = json.loads(batch(src, out, model_args, "-m", "pool").output)
    assert s["ok"] == 1 and s["skipped"] == 0
    assert vtc.load(out / "a.safetensors").meta["method"] == "pool"


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path: Path, clip_path: Path, model_args) -> None:  # noqa: ANN001
    from vtc.run.batch import Manifest

    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(clip_path, src / "a.mp4")
    out = tmp_path / "out"
    held = Manifest(out / "vtc-manifest.jsonl")  # another run holds the folder
    try:
        r = cli("compress", src, "-o", out, "--frames", "2", "-m", "pool", *flags(model_args))
        assert "another vtc run" in one_line(r, 2)
        assert not (out / "a.safetensors").exists()
    finally:
        held.close()


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_features_are_refused_naming_the_frame(tmp_path: Path, bad: str) -> None:
    from safetensors.torch import save_file

    x = torch.randn(4, 4, 8)
    x[2, 1, 3] = float(bad)
    with pytest.raises(UsageError, match="frame 2"):
        vtc.compress_features(x, method="tome", ratio=0.5)
    save_file({"features": x}, str(tmp_path / "f.safetensors"))
    r = cli("compress-features", tmp_path / "f.safetensors", "-o", tmp_path / "o.safetensors", "-m", "tome")
    assert "frame 2" in one_line(r, 2) and not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("shape,grid", [((2, 196, 8), "-14,-14"), ((2, 4, 0), "2,2"), ((2, 4, 8), "0,0")])
def test_compress_features_never_writes_a_file_its_reader_refuses(tmp_path: Path, shape: tuple[int, ...],
                                                                   grid: str) -> None:
    from safetensors.torch import save_file

    save_file({"features": torch.randn(*shape)}, str(tmp_path / "f.safetensors"))
    r = cli("compress-features", tmp_path / "f.safetensors", "-o", tmp_path / "o.safetensors", "-m", "uniform",
            f"--grid={grid}")
    one_line(r, 2)
    assert not (tmp_path / "o.safetensors").exists()
    nothing_beside(tmp_path)


def test_the_writer_refuses_a_file_the_reader_would_reject(tmp_path: Path) -> None:
    """The last guard: whatever made them, tensors the reader would refuse never reach the path."""
    from vtc.errors import FormatError
    from vtc.io.store import token_tensors, write

    res = vtc.compress_features(torch.randn(2, 4, 8), method="uniform", ratio=0.5)
    tensors = token_tensors(res.reduction, res.tokens, (2, 2), torch.arange(2.0), torch.float16)
    tensors["merge_src"] = tensors["merge_src"] + 100  # indices past the sources
    with pytest.raises(FormatError, match="merge_src"):
        write(tmp_path / "o.safetensors", tensors, {"grid": [2, 2], "T": 2, "K": res.reduction.num_outputs})
    assert not (tmp_path / "o.safetensors").exists()
    nothing_beside(tmp_path)


def test_an_encoder_giving_nan_fails_in_one_line_naming_the_frame(tmp_path: Path, clip_path: Path,  # noqa: ANN001
                                                                   model_args) -> None:
    a = model_args("clip")
    state = torch.load(a["checkpoint"], weights_only=True)
    name = next(k for k in state if k.startswith("visual.") and k.endswith("proj.weight") or "conv1" in k)
    state[name] = torch.full_like(state[name], float("nan"))
    ckpt = tmp_path / "nan.pt"
    torch.save(state, ckpt)
    out = tmp_path / "o.safetensors"
    r = cli("compress", clip_path, "-o", out, "-m", "pool", "--frames", "2", "--model", a["model"],
            "--checkpoint", ckpt)
    assert r.exit_code == 3 and "Traceback" not in r.output, r.output
    (error,) = [line for line in r.output.splitlines() if line.startswith("error:")]  # after the stage lines
    assert r.output.strip().splitlines()[-1] == error
    assert "NaN" in error and "frame 0" in error and not out.exists()
    nothing_beside(tmp_path)


# ---------------------------------------------------------------- hostile inputs: one line, the right code, no hang


def preset_cases(tmp_path: Path) -> list[tuple[str, Path, str]]:
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    both = tmp_path / "both.toml"
    both.write_text("frames = 8\nfps = 2.0\n")
    plain = tmp_path / "notes"
    plain.write_text("frames = 8\n")
    return [("folder", folder, "not a regular file"), ("fifo", fifo, "not a regular file"),
            ("deep", deep, "nested too deeply"), ("both", both, "more than one way of sampling"),
            ("not toml", plain, "not a .toml file")]


def test_hostile_presets_are_one_line_before_any_work(tmp_path: Path, clip_path: Path, model_args,  # noqa: ANN001
                                                      no_work: dict[str, int]) -> None:
    """A folder, a FIFO (which used to hang), a deeply nested TOML (a 3,000-line RecursionError), frames and fps
    together (fps silently won), a file that is no .toml: each one line, exit 2, nothing done."""
    for _, preset, message in preset_cases(tmp_path):
        r = cli("compress", clip_path, "-o", tmp_path / "o.safetensors", "--preset", preset, *flags(model_args))
        assert message in one_line(r, 2), (preset, r.output)
    assert no_work == {"decode": 0, "model": 0} and not (tmp_path / "o.safetensors").exists()


def crafted(tmp_path: Path, name: str, space: object, drop: tuple[str, ...] = (), add: dict | None = None) -> Path:
    """A token file (2 frames of a 2×2 grid) whose `space` metadata and tensors are edited as given."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    good = token_file(tmp_path / f"{name}-good.safetensors")
    with safe_open(str(good), "pt") as h:
        meta = dict(h.metadata())
    tensors = {k: v for k, v in load_file(str(good)).items() if k not in drop}
    tensors.update(add or {})
    meta["space"] = space if isinstance(space, str) else json.dumps(space)
    out = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(out), metadata=meta)
    return out


TARGET_CASES = {
    "qwen3 without fields": ({"kind": "target", "target": "qwen3-vl"}, "spatial_merge_size"),
    "qwen3 grid of strings": ({"kind": "target", "target": "qwen3-vl", "spatial_merge_size": 2,
                               "video_grid_thw": ["2", "4", "4"]}, "video_grid_thw"),
    "qwen3 no mask": ({"kind": "target", "target": "qwen3-vl", "spatial_merge_size": 1,
                       "video_grid_thw": [2, 2, 2]}, "retention_mask"),
    "qwen2.5 no mrope": ({"kind": "target", "target": "qwen2.5-vl", "spatial_merge_size": 1,
                          "video_grid_thw": [2, 2, 2]}, "mrope_positions"),
    "not json": ("{target: qwen3-vl", "space"),
    "unknown kind": ({"kind": "teleport"}, "kind"),
    "no target": ({"kind": "target"}, "names no target"),
}


@pytest.mark.parametrize("case", sorted(TARGET_CASES))
def test_target_fields_are_checked_by_the_reader(tmp_path: Path, case: str) -> None:
    """Files claiming a target space without what it carries: `export`, `show`, `show --json` and `--html` are one
    line, exit 4 (they were KeyError/IndexError tracebacks, or an engine file written with exit 0)."""
    space, field = TARGET_CASES[case]
    mask = {"retention_mask": torch.ones(8, dtype=torch.bool)} if "no mrope" in case else None
    f = crafted(tmp_path, "c", space, add=mask)
    for args in (["export", f, "--to", "vllm", "-o", tmp_path / "e.pt"], ["show", f], ["show", f, "--json"],
                 ["show", f, "--html", tmp_path / "r.html"]):
        r = cli(*args)
        assert field in one_line(r, 4), (args, r.output)
    assert not (tmp_path / "e.pt").exists() and not (tmp_path / "r.html").exists()


def test_show_checks_every_index_like_html(tmp_path: Path) -> None:
    """An out-of-range merge_src used to pass `vtc show` with exit 0."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    good = token_file(tmp_path / "g.safetensors")
    with safe_open(str(good), "pt") as h:
        meta = dict(h.metadata())
    tensors = load_file(str(good))
    tensors["merge_src"][0] = 10**6
    save_file(tensors, str(tmp_path / "b.safetensors"), metadata=meta)
    for extra in ([], ["--json"]):
        assert "merge_src" in one_line(cli("show", tmp_path / "b.safetensors", *extra), 4)


VIDEO_META = [{}, {"fps": "fast", "duration": "long", "width": None}, {"path": ["x"], "fps": [1]},
              {"sha256": 5, "duration": {"a": 1}}]


@pytest.mark.parametrize("i", range(len(VIDEO_META)))
def test_show_survives_incomplete_or_mistyped_metadata(tmp_path: Path, i: int) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    good = token_file(tmp_path / "g.safetensors")
    with safe_open(str(good), "pt") as h:
        meta = dict(h.metadata())
    meta["video"] = json.dumps(VIDEO_META[i])
    meta["encoder"] = json.dumps({"geometry": {"size": "x"}, "image_size": "big"})
    meta["info"] = json.dumps({"budget_floor": "x", "windowed": {"a": 1}})
    meta["ratio_requested"] = "0.5"
    meta["space"] = json.dumps({"kind": "target", "target": "llava-onevision", "video_grid_thw": "abc"})
    f = tmp_path / "m.safetensors"
    save_file(load_file(str(good)), str(f), metadata=meta)
    for extra in ([], ["--json"], ["--html", tmp_path / "r.html"], ["--png", tmp_path / "r.png"]):
        r = cli("show", f, *extra)
        assert r.exit_code in (0, 4) and "Traceback" not in r.output, (extra, r.output)
        if r.exit_code == 4:
            one_line(r, 4)


@pytest.mark.parametrize("value", ["-1", "-5", "0"])
def test_show_max_frames_must_be_positive(tmp_path: Path, value: str) -> None:
    q = token_file(tmp_path / "q.safetensors")
    assert "--max-frames" in one_line(cli("show", q, "--html", tmp_path / "r.html", "--max-frames", value), 2)


def test_show_video_fifo_fails_at_once(tmp_path: Path) -> None:
    q = token_file(tmp_path / "q.safetensors")
    fifo = tmp_path / "v.mp4"
    os.mkfifo(fifo)
    code = textwrap.dedent(f"""
        from typer.testing import CliRunner
        from vtc.cli import app
        r = CliRunner().invoke(app, ["show", {str(q)!r}, "--html", {str(tmp_path / "r.html")!r}, "--video",
                                     {str(fifo)!r}])
        print(r.exit_code, r.output)
    """)
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("2 ") and "not a regular file" in done.stdout, done.stdout + done.stderr


def test_a_recursive_glob_is_a_batch(tmp_path: Path, clip_path: Path, model_args) -> None:  # noqa: ANN001
    """`vtc compress 'clips/**/*.mp4'` (the README's form) finds videos at any depth; it was 'no such file'."""
    deep = tmp_path / "clips" / "a" / "b"
    deep.mkdir(parents=True)
    shutil.copy(clip_path, deep / "c.mp4")
    r = cli("compress", f"{tmp_path}/clips/**/*.mp4", "-o", tmp_path / "out", "-m", "pool", "--frames", "2",
            "--json", *flags(model_args))
    assert r.exit_code == 0 and json.loads(r.output)["ok"] == 1, r.output


def test_a_missing_input_is_named_first_without_torch(tmp_path: Path) -> None:
    """Offline, with the default model (weights absent): the missing file is the error (exit 2), found before torch
    is imported."""
    code = textwrap.dedent("""
        import sys
        from typer.testing import CliRunner
        from vtc.cli import app
        r = CliRunner().invoke(app, ["compress", "does-not-exist.mp4", "--model", "ViT-L-14", "--pretrained", "x"])
        print(r.exit_code, "torch" in sys.modules, r.output.strip())
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.stdout.startswith("2 False ") and "no such file" in done.stdout, done.stdout + done.stderr
    r = cli("compress", tmp_path / "nope.mp4", "--model", "ViT-L-14", "--pretrained", "x")
    assert "no such file" in one_line(r, 2)


def test_ctrl_c_says_what_it_leaves(tmp_path: Path) -> None:
    """SIGINT exits 130 with one line (it exited 130 without a word)."""
    import signal

    code = textwrap.dedent(f"""
        import sys, time
        import vtc.api
        def slow(*a, **k):
            print("ready", flush=True)
            time.sleep(60)
        vtc.api.compress = slow
        from vtc.testing import write_video
        sys.argv = ["vtc", "compress", {str(tmp_path / "v.mp4")!r}]
        import numpy as np
        write_video({str(tmp_path / "v.mp4")!r}, [np.zeros((16, 16, 3), np.uint8)] * 2, fps=2)
        from vtc.cli import run
        run()
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err


def test_offline_query_with_a_hub_tokenizer_fails_in_one_line(tmp_path: Path, clip_path: Path,  # noqa: ANN001
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose tokenizer lives on the hub (SigLIP's), the hub unreachable: offline-ness is decided once, the
    error is one line (exit 3), and the process is switched to the local cache (no retry loop, no warnings)."""
    import huggingface_hub.constants as hc

    from vtc.testing import TINY_TEXT, save_random_checkpoint, tiny_clip_config

    conf = tiny_clip_config(tmp_path / "hubtok.json")
    cfg = json.loads(conf.read_text())
    cfg["text_cfg"] = {**TINY_TEXT, "hf_tokenizer_name": "timm/vtc-never-cached-tokenizer"}
    conf.write_text(json.dumps(cfg))
    ckpt = save_random_checkpoint(conf, tmp_path / "hubtok.pt")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # restored afterwards, whatever the run sets
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", hc.HF_HUB_OFFLINE)
    monkeypatch.setenv("VTC_HUB_HOST", "127.0.0.1")  # nothing listens on 443 here: unreachable at once
    out = tmp_path / "o.safetensors"
    r = cli("compress", clip_path, "-o", out, "-m", "budgeted", "-p", "budget=query", "--query", "a square",
            "--frames", "2", "--model", conf, "--checkpoint", ckpt)
    assert r.exit_code == 3 and "Traceback" not in r.output, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "tokenizer" in errors[0] and "warn" not in r.output.lower()
    assert hc.HF_HUB_OFFLINE is True and not out.exists()


# ---------------------------------------------------------------- honest progress and results


def test_the_result_line_says_when_the_ratio_was_not_kept(tmp_path: Path, clip_path: Path,  # noqa: ANN001
                                                          model_args) -> None:
    out = tmp_path / "o.safetensors"
    r = cli("compress", clip_path, "-o", out, "-m", "none", "-r", "0.25", "--frames", "2", *flags(model_args))
    assert r.exit_code == 0, r.output
    last = r.output.strip().splitlines()[-1]
    assert "asked 25.0 %, got 100.0 %" in last and "keeps at least" in last, last
    r = cli("compress", clip_path, "-o", out, "-m", "uniform", "-r", "0.25", "--frames", "2", *flags(model_args))
    last = r.output.strip().splitlines()[-1]
    assert "(25.0 %)" in last and "asked" not in last, last  # kept what was asked: nothing to explain


def test_progress_names_each_stage_with_its_total(tmp_path: Path, clip_path: Path, model_args) -> None:  # noqa: ANN001
    """The callback hears loading, decoding and encoding with the planned frame count (it was always None, and the
    stage was wrong while encoding); without a terminal the CLI prints one line as each stage starts."""
    seen: list[tuple[str, int, int | None]] = []
    vtc.compress(clip_path, output=tmp_path / "o.safetensors", method="pool", frames=4,
                 progress=lambda *a: seen.append(a), **model_args("clip"))
    stages = list(dict.fromkeys(s for s, _, _ in seen))
    assert stages == ["loading model", "decoding", "encoding", "compressing and writing"], seen
    assert {t for s, _, t in seen if s in ("decoding", "encoding")} == {4}
    assert max(d for s, d, _ in seen if s == "encoding") == 4
    r = cli("compress", clip_path, "-o", tmp_path / "o.safetensors", "-m", "pool", "--frames", "4",
            *flags(model_args))
    lines = r.output.strip().splitlines()
    assert [line.split(":")[1].split("…")[0].strip() for line in lines[:-1]] == [
        "loading model", "decoding (4 frames)", "encoding (4 frames)", "compressing and writing"], r.output


def test_a_query_report_draws_the_relevance_that_set_the_budget(tmp_path: Path, clip_path: Path,  # noqa: ANN001
                                                                 model_args) -> None:
    out = tmp_path / "q.safetensors"
    vtc.compress(clip_path, output=out, method="budgeted", params={"budget": "query"}, ratio=0.5, frames=4,
                 query="a white square", **model_args("clip"))
    r = cli("show", out, "--html", tmp_path / "r.html")
    assert r.exit_code == 0, r.output
    page = (tmp_path / "r.html").read_text()
    assert "red: query relevance" in page and 'id="saliency"' in page and "audio saliency" not in page


def test_the_last_tick_label_stays_inside_the_timeline() -> None:
    import re

    from vtc.report import _timeline_svg

    svg = _timeline_svg([1] * 1000, None, None, width=900)
    ticks = re.findall(r'class="tick" x="([\d.]+)"[^>]*text-anchor="(\w+)">(\d+)<', svg)
    x, anchor, label = ticks[-1]
    assert label == "999" and (anchor == "end" and float(x) <= 900 or float(x) + 3 * 6 <= 900), ticks


# ---------------------------------------------------------------- tests that say what they skipped


def test_a_run_without_the_shared_folder_says_what_it_skipped(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VTC_GOLDEN_DIR": str(tmp_path / "no-golden"),
           "VTC_MEDIA_DIR": str(tmp_path / "no-media")}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_media.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:]
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("vtc: ")]
    assert "skipped" in line and "VTC_GOLDEN_DIR" in line and "VTC_MEDIA_DIR" in line


# ---------------------------------------------------------------- discoverability


def test_methods_name_describes_one_method_and_the_list_reads_as_blocks() -> None:
    r = cli("methods", "fastvid")
    assert r.exit_code == 0 and r.output.startswith("fastvid") and "parameters" in r.output, r.output
    assert "\ntome" not in r.output and "paper:" in r.output
    one = json.loads(cli("methods", "dycoke:reference", "--json").output)
    assert [m["name"] for m in one] == ["dycoke"]
    assert "unknown method" in one_line(cli("methods", "fastvidd"), 2).lower()
    listing = cli("methods").output
    assert "\n\nfastvid — " in listing and "\n\ntome — " in listing  # a blank line before each method


def test_presets_are_listed() -> None:
    from vtc.run.presets import list_presets

    rows = json.loads(cli("presets", "--json").output)
    assert [r["name"] for r in rows] == list(list_presets()) and rows
    text = cli("presets").output
    assert all(r["name"] in text for r in rows) and "--preset NAME" in text


def test_doctor_reports_optional_parts_and_cached_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    r = cli("doctor")
    assert r.exit_code == 0, r.output
    for word in ("Pillow", "Ray", "model weights cached"):
        assert word in r.output
    assert "random-checkpoint" in r.output  # nothing cached: says how to try offline
    (tmp_path / "hub" / "models--timm--ViT-B-16-SigLIP").mkdir(parents=True)
    assert "timm/ViT-B-16-SigLIP" in cli("doctor").output


def test_a_random_checkpoint_for_offline_trials(tmp_path: Path, clip_path: Path) -> None:
    from vtc.testing import tiny_clip_config

    conf = tiny_clip_config(tmp_path / "arch.json")
    out = tmp_path / "w.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "vtc.testing", "random-checkpoint", str(conf), str(out)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and out.exists(), done.stderr
    r = cli("compress", clip_path, "-o", tmp_path / "o.safetensors", "-m", "pool", "--frames", "2", "--model", conf,
            "--checkpoint", out)
    assert r.exit_code == 0, r.output
    done = subprocess.run([sys.executable, "-m", "vtc.testing", "random-checkpoint", "ViT-Q-99", str(tmp_path / "x")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "unknown model" in done.stderr


def test_two_inputs_and_a_file_output_is_one_line(tmp_path: Path, clip_path: Path, model_args) -> None:  # noqa: ANN001
    r = cli("compress", clip_path, clip_path, "-o", tmp_path / "out.safetensors", *flags(model_args))
    assert "directory" in one_line(r, 2) and not (tmp_path / "out.safetensors").exists()


def test_cosmetic_messages() -> None:
    from vtc.io.encode import _fetch_error

    assert "/openai" not in str(_fetch_error(None, "hf-hub:timm/ViT-B-16-SigLIP", "openai", offline=True))
    assert "ViT-B-16/openai" in str(_fetch_error(None, "ViT-B-16", "openai", offline=True))
    with pytest.raises(UsageError, match="compress-features"):
        vtc.compress_features(torch.randn(2, 4, 8), method="fastvid", ratio=0.5)


def test_dropped_cells_show_on_a_black_picture() -> None:
    from vtc.report import Maps, palette, render_tile

    state = np.array([[[1, 0], [0, 1]]], np.uint8)
    maps = Maps(state, np.array([[[0, -1], [-1, 1]]]), np.zeros_like(state, bool))
    tile = render_tile(maps, 0, 16, np.zeros((32, 32, 3), np.uint8), palette(2))
    kept, dropped = tile[:16, :16], tile[:16, 16:]
    assert kept.max() == 0 and dropped.max() > 60  # the kept cell is the (black) picture; the dropped one is framed
    assert tile[8, 24].max() == 0  # its centre stays the dimmed picture


def test_reported_tables_and_target_models_read_as_words(tmp_path: Path) -> None:
    from vtc.report import _model_line

    f = vtc.compress_features(torch.randn(4, 4, 8), method="uniform", ratio=0.5, window=2).save(
        tmp_path / "w.safetensors")
    r = cli("show", f)
    assert r.exit_code == 0 and "windowed=(" in r.output and "{'" not in r.output, r.output
    target = {"space": {"kind": "target", "target": "qwen3-vl", "checkpoint": "ckpt"}, "layer": "-2"}
    assert _model_line(target) == "qwen3-vl vision path of ckpt"


def test_a_full_temporary_folder_is_named_not_blamed_on_the_video(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import tempfile as tf

    from vtc.errors import VtcError
    from vtc.run.spill import FeatureBuffer

    def full(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tf, "TemporaryFile", full)
    buf = FeatureBuffer(budget=16)
    with pytest.raises(VtcError, match="temporary folder .*No space left.*TMPDIR"):
        buf.append(torch.zeros(4, 4, 4))


def test_a_resume_from_another_folder_with_relative_paths(tmp_path: Path, clip_path: Path,  # noqa: ANN001
                                                          model_args, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "work" / "in").mkdir(parents=True)
    shutil.copy(clip_path, tmp_path / "work" / "in" / "a.mp4")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    assert json.loads(batch(Path("in"), Path("out"), model_args, "-m", "pool").output)["ok"] == 1
    monkeypatch.chdir(tmp_path)  # the same folders, typed from another place
    s = json.loads(batch(Path("work/in"), Path("work/out"), model_args, "-m", "pool").output)
    assert s["skipped"] == 1 and s["ok"] == 0, s


def test_an_unwritable_folder_is_one_line_for_every_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """export, show --html and compress-features into a folder the process may not write (as root cannot be made
    to happen, os.access says so): one line, exit 2, before any work (a PermissionError traceback for export)."""
    q = token_file(tmp_path / "q.safetensors")
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if Path(p) == locked else real(p, mode, **k))
    for args in (["export", q, "--to", "vllm", "-o", locked / "q.pt"], ["show", q, "--html", locked / "r.html"],
                 ["compress-features", q, "-o", locked / "o.safetensors"]):
        assert "not writable" in one_line(cli(*args), 2), args
    assert not list(locked.iterdir())


# ------------------------------------------------------------------ crafted target checkpoints
@pytest.fixture(scope="module")
def tiny_targets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vtc.testing import tiny_llava_onevision, tiny_qwen2_5_vl

    d = tmp_path_factory.mktemp("targets")
    return {"llava-onevision": tiny_llava_onevision(d / "llava"), "qwen2.5-vl": tiny_qwen2_5_vl(d / "qwen")}


def crafted_checkpoint(src: Path, dst: Path, file: str, edit) -> Path:  # noqa: ANN001
    shutil.copytree(src, dst)
    cfg = json.loads((dst / file).read_text())
    edit(cfg)
    (dst / file).write_text(json.dumps(cfg))
    return dst


def video_processor(cfg: dict) -> dict:
    return cfg.get("video_processor", cfg)


CRAFTED = [
    ("llava-onevision", "config.json", lambda c: c["vision_config"].update(hidden_size=10**7), "hidden_size"),
    ("llava-onevision", "config.json", lambda c: c["vision_config"].update(patch_size=-14), "patch_size"),
    ("llava-onevision", "config.json", lambda c: c["vision_config"].update(hidden_size=8192, num_attention_heads=8),
     "GiB"),  # within the bounds, but far beyond the checkpoint's weights: refused from the meta-device build
    ("qwen2.5-vl", "config.json", lambda c: c["vision_config"].update(depth=10**6), "depth"),
    ("qwen2.5-vl", "processor_config.json", lambda c: video_processor(c).update(max_pixels=10**12), "max_pixels"),
    ("qwen2.5-vl", "processor_config.json",
     lambda c: video_processor(c).update(min_pixels=0, max_pixels=0, size={"shortest_edge": 0, "longest_edge": 0}),
     "min_pixels"),
]


@pytest.mark.parametrize("target,file,edit,named", CRAFTED)
def test_crafted_target_configs_are_one_line_before_any_allocation(tmp_path: Path, clip_path: Path, tiny_targets,  # noqa: ANN001
                                                                   target: str, file: str, edit, named: str) -> None:
    ckpt = crafted_checkpoint(tiny_targets[target], tmp_path / "ckpt", file, edit)
    out = tmp_path / "o.safetensors"
    r = cli("compress", clip_path, "-o", out, "--target", target, "--target-model", ckpt, "--frames", 4)
    assert r.exit_code == 3 and "Traceback" not in r.output, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0], r.output  # one line (after the "loading model" progress line)
    assert not out.exists()
