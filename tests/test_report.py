"""`vtc show --html/--png`: rendered for real (headless Chromium) and read back pixel by pixel."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
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


def independent_counts(f: vtc.TokenFile) -> dict[str, list[int]]:
    """Per frame, from the file's provenance alone (positions, sizes, source), row by row: tokens kept as they
    are (one cell, their own), merged tokens placed in the frame, tokens with no cell, cells merged."""
    h, w = f.grid
    t, n = f.num_frames, h * w
    source = f["source"].long().tolist()[: t * n]
    sizes = f["sizes"].long().tolist()
    out = {k: [0] * t for k in ("kept", "merged", "off", "covered")}
    cells_of: dict[int, list[int]] = {}
    for cell, row in enumerate(source):
        if row >= 0:
            cells_of.setdefault(row, []).append(cell)
    for row, (frame, r, c) in enumerate(f.positions.long().tolist()):
        if r < 0:
            out["off"][frame] += 1
        elif cells_of.get(row) == [frame * n + r * w + c] and sizes[row] == 1:
            out["kept"][frame] += 1
        else:
            out["merged"][frame] += 1
    for cell, row in enumerate(source):
        if row >= 0 and not (cells_of[row] == [cell] and sizes[row] == 1 and
                             tuple(f.positions[row].tolist()) == (cell // n, cell % n // w, cell % w)):
            out["covered"][cell // n] += 1
    return out


@pytest.mark.parametrize("method", ["tome", "framefusion", "pool", "ts_llava", "uniform"])
def test_counts_match_what_is_drawn(method: str, tmp_path: Path) -> None:
    """Merging methods and a thumbnail: every token placed on the grid is drawn once (a clear cell, or a white
    outline on a merged token's representative), the captions count exactly that, and thumbnail tokens (no cell)
    are counted apart as not drawn."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 64, 16, generator=g)
    x[1:] = x[0] + 0.05 * torch.randn(5, 64, 16, generator=g)  # near-static: merges over time
    extra = {"thumbnail": torch.randn(16, 16, generator=g)} if method == "ts_llava" else {}
    tok = vtc.compress_features(x, method=method, ratio=0.3, **extra).save(tmp_path / "f.safetensors")
    f = vtc.load(tok)
    want = independent_counts(f)
    assert sum(want["off"]) == (16 if method == "ts_llava" else 0)
    rep = build(tok, None)
    img = np.asarray(PIL.open(write_png(rep, tmp_path / "s.png")).convert("RGB")).astype(int)
    page = write_html(rep, tmp_path / "r.html").read_text()
    cell, (h, w) = rep["cell"], f.grid
    per_frame = torch.bincount(f.positions[:, 0].long(), minlength=f.num_frames).tolist()
    for k, i in enumerate(rep["frames"]):
        x0, y0 = tile_origin_png(rep, k)
        clear = outlined = covered = 0
        for r in range(h):
            for c in range(w):
                centre = img[y0 + r * cell + cell // 2, x0 + c * cell + cell // 2, :3]
                corner = img[y0 + r * cell, x0 + c * cell, :3]
                clear += bool((centre == 150).all())  # a kept cell of a map without pixels: the neutral grey
                outlined += bool((corner == 255).all())
                covered += len(set(centre.tolist())) > 1  # tinted; kept (150) and dropped (150 dimmed) are grey
        assert (clear, outlined, covered) == (want["kept"][i], want["merged"][i], want["covered"][i]), (method, i)
        kept, merged, off = want["kept"][i], want["merged"][i], want["off"][i]
        assert kept + merged + off == per_frame[i]
        assert (f'data-frame="{i}" data-kept="{kept}" data-merged="{merged}" data-off-grid="{off}" '
                f'data-covered="{want["covered"][i]}"') in page
        assert f"frame {i} · {f['frame_times'][i]:.2f} s · {per_frame[i]} tokens: {kept} kept" in page
    if method == "ts_llava":
        assert "16 tokens off the grid (not drawn on the tiles)" in page


def test_dark_frames_show_dropped_cells(tmp_path: Path, models) -> None:  # noqa: ANN001
    """On a black video dimming changes nothing: dropped cells must still differ from kept ones (grey hatching),
    at every cell size the report uses."""
    video = flat_clip(tmp_path / "black.mp4", (0, 0, 0), n=4)
    cfg, ckpt = models["clip"]
    tok = tmp_path / "black.safetensors"
    vtc.compress(video, output=tok, method="uniform", ratio=0.25, frames=2, model=str(cfg), checkpoint=str(ckpt))
    f = vtc.load(tok)
    rep = build(tok, video)
    img = np.asarray(PIL.open(write_png(rep, tmp_path / "s.png")).convert("RGB"))
    x0, y0 = tile_origin_png(rep, 0)
    (h, w), kept = f.grid, kept_cells(f, 0)

    def check(tile: np.ndarray, cell: int) -> None:
        for r in range(h):
            for c in range(w):
                block = tile[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell].reshape(-1, 3).astype(int)
                assert (block.max(-1) > 60).any() == ((r, c) not in kept), (cell, r, c)  # kept cells stay black

    check(img[y0 : y0 + h * rep["cell"], x0 : x0 + w * rep["cell"]], rep["cell"])  # the sheet: framed cells
    from vtc.report import render_tile

    for cell in (4, 5):  # cells too small for a frame (large grids): grey hatching
        check(render_tile(rep["maps"], 0, cell, np.zeros((h * cell, w * cell, 3), np.uint8),
                          np.zeros((1, 3), np.uint8)), cell)


def test_png_labels_each_tile(green: tuple[Path, Path], tmp_path: Path) -> None:
    """Under every tile of the PNG: its frame, time and token count (the same numbers as the file)."""
    video, tok = green
    rep = build(tok, video)
    img = np.asarray(PIL.open(write_png(rep, tmp_path / "s.png")).convert("L"))
    f = vtc.load(tok)
    per_frame = torch.bincount(f.positions[:, 0].long(), minlength=f.num_frames).tolist()
    th, tw = rep["tiles"][0].shape[:2]
    for k, i in enumerate(rep["frames"]):
        assert rep["labels"][k].startswith(f"#{i} {float(f['frame_times'][i]):.2f}s {per_frame[i]} tok")
        x0, y0 = tile_origin_png(rep, k)
        strip = img[y0 + th : y0 + th + 12, x0 : x0 + tw]
        assert (strip < 100).sum() > 20  # text drawn under the tile
