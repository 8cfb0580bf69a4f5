"""`vtc show --html/--png`: rendered for real (headless Chromium) and read back pixel by pixel."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import vtc
from vtc.cli import app
from vtc.report import build, tile_origin_png, write_html, write_png
from vtc.testing import write_video

PIL = pytest.importorskip("PIL.Image")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
GREEN = np.array([0, 200, 0])


def flat_clip(path: Path, colour: tuple[int, int, int] = (0, 200, 0), n: int = 12) -> Path:
    img = np.zeros((96, 96, 3), np.uint8)
    img[:] = colour
    return write_video(path, [img] * n, fps=12, lossless=True)


@pytest.fixture(scope="module")
def green(tmp_path_factory: pytest.TempPathFactory, models) -> tuple[Path, Path]:  # noqa: ANN001
    d = tmp_path_factory.mktemp("report")
    video = flat_clip(d / "green.mp4")
    cfg, ckpt = models["clip"]
    out = d / "green.safetensors"
    vtc.compress(video, output=out, method="uniform", ratio=0.25, frames=4, model=str(cfg), checkpoint=str(ckpt))
    return video, out


def kept_cells(f: vtc.TokenFile, frame: int) -> set[tuple[int, int]]:
    pos = f.positions
    return {(int(r), int(c)) for t, r, c in pos.tolist() if t == frame}


def check_tile(
    img: np.ndarray, x0: int, y0: int, cell: int, grid: tuple[int, int], kept: set, base: np.ndarray
) -> None:
    h, w = grid
    assert kept and len(kept) < h * w
    for r in range(h):
        for c in range(w):
            px = img[y0 + r * cell + cell // 2, x0 + c * cell + cell // 2, :3].astype(int)
            if (r, c) in kept:
                assert np.abs(px - base).max() < 30, (r, c, px)
            else:
                assert np.abs(px - base * 0.28).max() < 30, (r, c, px)  # dimmed


def test_png_pixels(green: tuple[Path, Path], tmp_path: Path) -> None:
    video, tok = green
    rep = build(tok, video)
    assert rep["warning"] is None
    png = write_png(rep, tmp_path / "s.png")
    img = np.asarray(PIL.open(png).convert("RGB"))
    f = vtc.load(tok)
    for k in range(2):
        x0, y0 = tile_origin_png(rep, k)
        check_tile(img, x0, y0, rep["cell"], f.grid, kept_cells(f, k), GREEN)


def test_grid_maps_without_video(green: tuple[Path, Path], tmp_path: Path) -> None:
    _, tok = green
    rep = build(tok, None)
    img = np.asarray(PIL.open(write_png(rep, tmp_path / "s.png")).convert("RGB"))
    x0, y0 = tile_origin_png(rep, 0)
    f = vtc.load(tok)
    check_tile(img, x0, y0, rep["cell"], f.grid, kept_cells(f, 0), np.array([150, 150, 150]))


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_html_rendered_in_chromium(green: tuple[Path, Path], tmp_path: Path) -> None:
    video, tok = green
    page = write_html(build(tok, video), tmp_path / "r.html")
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text  # offline
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--force-device-scale-factor=1", "--window-size=1100,900", f"--screenshot={shot}",
                    page.as_uri()], check=True, capture_output=True, timeout=120)
    img = np.asarray(PIL.open(shot).convert("RGB")).astype(int)
    # locate frame 0's tile: the first pixel (row-major) that is green or dimmed green
    greenish = (img[..., 1] - img[..., 0] > 30) & (img[..., 1] - img[..., 2] > 30)  # not grey text
    match = greenish & ((np.abs(img - GREEN).max(-1) < 30) | (np.abs(img - GREEN * 0.28).max(-1) < 30))
    ys, xs = np.nonzero(match)
    y0 = int(ys.min())
    x0 = int(xs[ys == y0].min())
    f = vtc.load(tok)
    check_tile(img, x0, y0, build(tok, video)["cell"], f.grid, kept_cells(f, 0), GREEN)
    # the timeline bars are drawn (blue)
    assert (np.abs(img - np.array([0x3B, 0x6F, 0xD8])).max(-1) < 10).sum() > 100


def test_hash_mismatch_is_flagged(green: tuple[Path, Path], tmp_path: Path, clip_path: Path) -> None:
    _, tok = green
    other = flat_clip(tmp_path / "red.mp4", (200, 0, 0))
    r = CliRunner().invoke(app, ["show", str(tok), "--video", str(other), "--html", str(tmp_path / "r.html"),
                                 "--png", str(tmp_path / "r.png")])
    assert r.exit_code == 0, r.output
    assert "not the video this file was made from" in r.output
    assert 'id="hash-mismatch"' in (tmp_path / "r.html").read_text()


def test_many_frames_stay_usable(tmp_path: Path, models) -> None:  # noqa: ANN001
    from vtc.testing import synth_clip

    video = synth_clip(tmp_path / "long.mp4", seconds=11, fps=24, size=(64, 48), audio=False)
    cfg, ckpt = models["clip"]
    tok = tmp_path / "long.safetensors"
    vtc.compress(video, output=tok, method="dycoke", ratio=0.5, frames=256, model=str(cfg), checkpoint=str(ckpt))
    assert vtc.load(tok).num_frames == 256
    rep = build(tok, video)
    page = write_html(rep, tmp_path / "r.html")
    assert len(rep["tiles"]) == 256 and page.stat().st_size < 20_000_000
    assert page.read_text().count('class="frame"') == 256


@pytest.mark.parametrize("where", ["missing-folder", "a-directory", "a-video"])
def test_bad_report_paths_fail_before_drawing(green: tuple[Path, Path], tmp_path: Path, where: str) -> None:
    video, tok = green
    target = {"missing-folder": tmp_path / "nope" / "r.html", "a-directory": tmp_path, "a-video": video}[where]
    for opt in ("--html", "--png"):
        r = CliRunner().invoke(app, ["show", str(tok), opt, str(target)])
        assert r.exit_code == 2 and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1
    assert video.stat().st_size > 1000  # the video was not replaced
