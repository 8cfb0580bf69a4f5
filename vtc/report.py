"""Visual reports of a token file: a self-contained HTML page and a PNG contact sheet (`vtc show --html/--png`).

For every sampled frame: the frame as the encoder saw it (when the video is at hand) with kept patches clear,
dropped ones dimmed, and merged tokens drawn as regions in one colour per output token — so a temporal merge
shows the same colour across frames. Below: a timeline of tokens per frame with the temporal segments, and the
curve that steered the budget (query relevance, or audio saliency) in red. Without the video, the same maps are
drawn without pixels.

Needs Pillow (`pip install 'vtc[show]'`).
"""

from __future__ import annotations

import base64
import colorsys
import html
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vtc._version import __version__
from vtc.errors import MissingDependencyError, UsageError
from vtc.io.decode import Sampling, content_hash, iter_frames
from vtc.io.geometry import FrameGeometry
from vtc.io.store import REPORT_MARK_HTML, TokenFile, atomic_write, check_output, is_token_file, is_vtc_report, load
from vtc.run.batch import VIDEO_EXTENSIONS

#: the generator mark of an HTML report (what lets a later run replace it: `is_vtc_report`)
MARK_HTML = REPORT_MARK_HTML.decode() + f' {__version__}">'
CELL_MAX = 32  # pixels per patch cell in the tiles (tiles are at most 16·32 = 512 px wide)
MERGE_TINT = 0.2  # how much of a merged token's colour is blended into its cells
DIM = 0.72  # how much darker a dropped cell is
DROPPED_EDGE = (110, 110, 110)  # the hatching and frame of a dropped cell (seen on black and on white pictures)
HATCH_EVERY = 4  # one diagonal hatching pixel in this many along a row of a dropped cell
TILE_TARGET = 192  # aim for tiles about this wide


def _pil() -> Any:
    try:
        from PIL import Image, ImageDraw
    except ImportError:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            "vtc show --html/--png needs Pillow: pip install 'vtc[show]' (or pip install pillow)."
        ) from None
    return Image, ImageDraw


def palette(k: int) -> np.ndarray:
    """k well-spread colours [k, 3] uint8 (golden-ratio hues)."""
    out = np.zeros((max(k, 1), 3), np.uint8)
    for i in range(k):
        h = (i * 0.61803398875) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.75, 1.0)
        out[i] = (int(r * 255), int(g * 255), int(b * 255))
    return out


@dataclass
class Maps:
    """Per-cell drawing instructions for every frame, and the per-frame counts of what is drawn.

    A grid cell is dropped (no output token uses it), kept as is (its own token: one source, its representative)
    or merged (one source of a token that stands for several cells, or for a cell other than itself). Each merged
    token's representative cell gets a white outline, so every output token placed on the grid is drawn exactly
    once: as a clear cell or as an outline. Tokens with no grid cell (a re-encoded thumbnail's) are not drawn.
    """

    state: np.ndarray  # [T, h, w] uint8: 0 dropped, 1 kept as is, 2 merged
    colour: np.ndarray  # [T, h, w] int64 output row (or -1)
    outline: np.ndarray  # [T, h, w] bool: representative of a merged row
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [T] tokens kept as is (clear cells)
    #: [T] merged tokens whose representative is in the frame (outlined cells)
    merged: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: [T] tokens recorded for the frame with no grid cell (not drawn)
    off_grid: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: [T] cells of the frame merged into a token (tinted cells)
    covered: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


def cell_maps(f: TokenFile) -> Maps:
    h, w = f.grid
    n = h * w
    t = f.num_frames
    source = f["source"].long().numpy()[: t * n]
    sizes = f["sizes"].long().numpy()
    pos = f.positions.long().numpy()
    k = len(pos)
    rep = np.where(pos[:, 1] >= 0, pos[:, 0] * n + pos[:, 1] * w + pos[:, 2], -1)
    on_grid = (rep >= 0) & (rep < t * n)
    as_is = np.zeros(k, bool)  # a token that is its own representative cell and nothing else
    as_is[on_grid] = (sizes[on_grid] == 1) & (source[rep[on_grid]] == np.arange(k)[on_grid])
    state = np.zeros(t * n, np.uint8)
    has = source >= 0
    state[has] = np.where(as_is[source[has]], 1, 2)
    outline = np.zeros(t * n, bool)
    outline[rep[on_grid & ~as_is]] = True
    frame = pos[:, 0]
    count = lambda rows: np.bincount(frame[rows & (frame >= 0)], minlength=t)[:t]  # noqa: E731
    return Maps(state.reshape(t, h, w), source.reshape(t, h, w), outline.reshape(t, h, w), count(as_is),
                count(on_grid & ~as_is), count(~on_grid), (state.reshape(t, n) == 2).sum(1))


def tile_caption(maps: Maps, i: int, seconds: float, *, short: bool = False) -> str:
    """What tile `i` shows, in numbers that match its drawing: tokens placed in the frame (clear cells + outlined
    representatives), the cells merged into tokens, and tokens of the frame that have no cell (not drawn)."""
    kept, merged, off, covered = (int(a[i]) for a in (maps.kept, maps.merged, maps.off_grid, maps.covered))
    if short:  # the PNG sheet: one line as wide as a tile
        text = f"#{i} {seconds:.2f}s {kept + merged + off} tok"
        return text + (f" ({merged} mrg)" if merged else "") + (f" +{off} off" if off else "")
    text = f"frame {i} · {seconds:.2f} s · {kept + merged + off} tokens: {kept} kept"
    if merged or covered:
        text += f", {merged} merged (outlined; {covered} cells merged here)"
    if off:
        text += f", {off} off the grid (not drawn)"
    return text

def file_geometry(f: TokenFile) -> FrameGeometry:
    """The frame geometry a token file was made with (files before it was recorded: size and resize mode)."""
    enc = f.meta.get("encoder", {}) or {}
    if isinstance(enc.get("geometry"), dict):
        return FrameGeometry.from_dict(enc["geometry"])
    size = enc.get("image_size") or f.meta.get("image_size") or (224, 224)
    return FrameGeometry((int(size[0]), int(size[-1])), enc.get("resize_mode", "shortest"))


def frame_views(video: str | os.PathLike[str], f: TokenFile, cell: int) -> list[np.ndarray]:
    """The sampled frames exactly as the encoder saw them (resize, crop or pad), scaled to tiles:
    uint8 [h·cell, w·cell, 3] each."""
    geo = file_geometry(f)
    times = f["frame_times"].double().numpy()
    h, w = f.grid
    Image, _ = _pil()
    out = []
    for _, arr in iter_frames(video, Sampling(frames=len(times)), geo.decode_size, times=times,
                              allow_truncated=True):
        seen = geo.view(geo.preprocess(arr[None]))[0].numpy()
        out.append(np.asarray(Image.fromarray(seen).resize((w * cell, h * cell), Image.BILINEAR)))
    return out


def render_tile(maps: Maps, t: int, cell: int, base: np.ndarray | None, colours: np.ndarray) -> np.ndarray:
    """One frame's tile [h·cell, w·cell, 3] uint8."""
    state, colour = maps.state[t], maps.colour[t]
    h, w = state.shape
    if base is None:  # no pixels: a neutral grey map
        img = np.full((h * cell, w * cell, 3), 150, np.float32)
    else:
        img = base.astype(np.float32)
    up = np.ones((cell, cell), np.float32)
    dim = np.kron((state == 0).astype(np.float32), up)[..., None]
    img = img * (1 - DIM * dim)
    merged = np.kron((state == 2).astype(np.float32), up)[..., None]
    tint = colours[np.clip(colour, 0, None) % len(colours)].astype(np.float32)  # [h, w, 3]
    tint_up = np.repeat(np.repeat(tint, cell, 0), cell, 1)
    img = img * (1 - MERGE_TINT * merged) + tint_up * MERGE_TINT * merged  # light: the picture stays visible
    out = img.clip(0, 255).astype(np.uint8)
    # dimming alone is invisible on a dark picture: dropped cells get a thin grey frame, or, when cells are too
    # small for a frame to leave a picture inside (large grids), grey hatching
    if cell < 6:
        hatch = np.kron((state == 0), np.ones((cell, cell), bool)) & _hatch(h * cell, w * cell)
        out[hatch] = DROPPED_EDGE
    else:
        grey = np.array(DROPPED_EDGE, np.uint8)
        for r, c in zip(*np.nonzero(state == 0), strict=True):
            y, x = r * cell, c * cell
            out[y, x : x + cell] = out[y + cell - 1, x : x + cell] = grey
            out[y : y + cell, x] = out[y : y + cell, x + cell - 1] = grey
    if cell >= 6:  # each merged token's region gets an edge in its colour where it meets another token
        edge = max(1, cell // 10)
        for r, c in zip(*np.nonzero(state == 2), strict=True):
            col, y, x = tint[r, c].astype(np.uint8), r * cell, c * cell
            if r == 0 or colour[r - 1, c] != colour[r, c]:
                out[y : y + edge, x : x + cell] = col
            if r == h - 1 or colour[r + 1, c] != colour[r, c]:
                out[y + cell - edge : y + cell, x : x + cell] = col
            if c == 0 or colour[r, c - 1] != colour[r, c]:
                out[y : y + cell, x : x + edge] = col
            if c == w - 1 or colour[r, c + 1] != colour[r, c]:
                out[y : y + cell, x + cell - edge : x + cell] = col
        for r, c in zip(*np.nonzero(maps.outline[t]), strict=True):  # representative cells: a white outline
            y, x = r * cell, c * cell
            out[y, x : x + cell] = out[y + cell - 1, x : x + cell] = 255
            out[y : y + cell, x] = out[y : y + cell, x + cell - 1] = 255
    return out


def _hatch(height: int, width: int) -> np.ndarray:
    """[height, width] bool: diagonal lines, one pixel in HATCH_EVERY along each row."""
    y, x = np.indices((height, width))
    return (x + y) % HATCH_EVERY == 0


def _png_bytes(arr: np.ndarray) -> bytes:
    Image, _ = _pil()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def _timeline_svg(per_frame: list[int], segments: list[list[int]] | None,
                  curve: tuple[str, list[float]] | None, width: int = 900, height: int = 120) -> str:
    """Tokens per frame as bars over the temporal segments (named S0, S1, ...), with labelled axes, and the curve
    that steered the budget (query relevance or audio saliency) in red."""
    curve_name, saliency = curve if curve else ("", None)
    t = max(len(per_frame), 1)
    left, bottom = 40, 34  # room for the y labels and the x axis
    plot_w = width - left
    bw = plot_w / t
    parts = [f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + bottom}" '
             f'font-family="system-ui,sans-serif">']
    segments = segments or []
    drawn = segments if len(segments) <= plot_w else []  # more bands than pixels would be noise, and megabytes
    for i, (a, b) in enumerate(drawn):
        fill = "#e8eef8" if i % 2 == 0 else "#f8efe2"
        x = left + a * bw
        parts.append(f'<rect class="segment" x="{x:.1f}" y="0" width="{(b - a + 1) * bw:.1f}" height="{height}" '
                     f'fill="{fill}"><title>segment S{i}: frames {a}–{b}</title></rect>')
        if (b - a + 1) * bw >= 18:
            parts.append(f'<text class="segment-name" x="{x + 2:.1f}" y="11" font-size="10" fill="#667">S{i}</text>')
    # at most one bar per two pixels: a long video's frames are binned, each bar the bin's largest count
    bins = _bins(t, max(int(plot_w // 2), 1))
    top = max((max(per_frame[a : b + 1]) for a, b in bins), default=1) or 1
    for a, b in bins:
        v = max(per_frame[a : b + 1], default=0)
        hgt = v / top * (height - 14)
        what = f"frame {a}: {v} tokens" if a == b else \
            f"frames {a}–{b}: up to {v} per frame, {sum(per_frame[a : b + 1])} in all"
        parts.append(f'<rect class="bar" x="{left + a * bw + 1:.1f}" y="{height - hgt:.1f}" '
                     f'width="{max((b - a + 1) * bw - 2, 1):.1f}" height="{hgt:.1f}" fill="#3b6fd8">'
                     f'<title>{what}</title></rect>')
    if saliency:
        sal_bins = _bins(len(saliency), int(plot_w))
        peak = [max(saliency[a : b + 1]) for a, b in sal_bins]
        m = max(peak) or 1.0
        n = max(len(saliency) - 1, 1)
        pts = " ".join(f"{left + (a + b) / 2 / n * plot_w:.1f},{height - s / m * (height - 14):.1f}"
                       for (a, b), s in zip(sal_bins, peak, strict=True))
        parts.append(f'<polyline id="saliency" points="{pts}" fill="none" stroke="#d83b3b" stroke-width="2"/>')
    axis = "#444"
    parts.append(f'<line x1="{left}" y1="{height}" x2="{width}" y2="{height}" stroke="{axis}"/>'
                 f'<line x1="{left}" y1="0" x2="{left}" y2="{height}" stroke="{axis}"/>'
                 f'<text x="{left - 4}" y="{height - (height - 14) + 4}" font-size="10" text-anchor="end">{top}</text>'
                 f'<text x="{left - 4}" y="{height}" font-size="10" text-anchor="end">0</text>'
                 f'<text x="{left - 30}" y="{height / 2}" font-size="10" transform="rotate(-90 {left - 30} '
                 f'{height / 2})" text-anchor="middle">tokens</text>')
    for i in sorted({0, (t - 1) // 2, t - 1}):
        x = left + (i + 0.5) * bw
        anchor = "end" if x + 4 * len(str(i)) > width else "middle"  # the last label stays inside the picture
        parts.append(f'<text class="tick" x="{min(x, width - 1):.1f}" y="{height + 13}" font-size="10" '
                     f'text-anchor="{anchor}">{i}</text>')
    label = "frame index (tokens per frame" + (f"; red: {curve_name}" if saliency else "") + \
        ("; shaded bands: temporal segments" if drawn else "") + \
        (f"; {len(segments)} temporal segments, too many to shade" if segments and not drawn else "") + ")"
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height + 28}" font-size="11" text-anchor="middle">'
                 f'{label}</text></svg>')
    return "".join(parts)


def _bins(n: int, most: int) -> list[tuple[int, int]]:
    """[0, n) cut into at most `most` contiguous, inclusive (first, last) ranges of near-equal length."""
    k = max(min(n, most), 1)
    edges = [i * n // k for i in range(k + 1)]
    return [(a, b - 1) for a, b in zip(edges, edges[1:], strict=False) if b > a]


def describe_view(geo: FrameGeometry) -> str:
    """In words, how a frame became the picture the encoder saw (and the tiles show)."""
    h, w = geo.image_size
    return {
        "shortest": f"the short side resized, then centre-cropped to {h}×{w}: the edges of wide frames are cut off",
        "longest": f"the long side resized to fit {h}×{w}, then padded",
        "squash": f"resized to {h}×{w} ignoring the aspect ratio",
        "smart": f"resized to multiples of {geo.factor} px keeping the aspect ratio (Qwen's processor)",
    }.get(geo.resize_mode, geo.resize_mode)


def _model_line(m: dict[str, Any]) -> str:
    """Which model made the tokens: a target's vision path (its own layer choice), or the open_clip tower and the
    block read."""
    space = m.get("space") if isinstance(m.get("space"), dict) else {}
    if space.get("kind") == "target":
        return f"{space.get('target')} vision path of {space.get('checkpoint')}"
    if not m.get("model"):
        return "features from your own encoder (compress_features)"
    return f"{m.get('model')} {m.get('pretrained') or ''} layer {m.get('layer')}".replace("  ", " ")


def _saliency(f: TokenFile) -> tuple[str, list[float]] | None:
    """The curve that steered the budget, drawn over the timeline: the query relevance per frame when the run had
    a --query (it set the budget), else the audio saliency when the method used it.  → (name, values) or None."""
    for name, label in (("relevance", "query relevance"), ("audio_saliency", "audio saliency")):
        sal = f.tensors.get(name)
        if sal is not None and sal.numel():
            return label, [float(v) for v in sal.float().reshape(-1).tolist()]
    return None


def check_video(f: TokenFile, video: str | os.PathLike[str] | None) -> str | None:
    """A warning when `video` is not the video the file was made from (content hash), else None."""
    if video is None:
        return None

    want = (f.meta.get("video") or {}).get("sha256")
    if not want:
        return (f"{f.path} records no source video (or no content hash of it): {video} is drawn as given, and may "
                f"not be the video the tokens came from.")
    if content_hash(video) != want:
        return (f"{video} is not the video this file was made from (content hash differs): the pictures below "
                f"do not match the tokens.")
    return None


def build(file: str | os.PathLike[str], video: str | os.PathLike[str] | None = None,
          max_frames: int = 256) -> dict[str, Any]:
    """Everything a report shows: tiles (uint8 arrays), header facts, timeline data, warnings."""
    f = load(file)
    h, w = f.grid
    cell = max(4, min(CELL_MAX, TILE_TARGET // max(h, w)))
    maps = cell_maps(f)
    warning = check_video(f, video)
    bases: list[np.ndarray] | None = None
    if video is not None:
        bases = frame_views(video, f, cell)
    colours = palette(max(1, f.tokens.shape[0]))
    t = f.num_frames
    shown = list(range(t)) if t <= max_frames else np.linspace(0, t - 1, max_frames).round().astype(int).tolist()
    tiles = [render_tile(maps, i, cell, bases[i] if bases and i < len(bases) else None, colours) for i in shown]
    seg = f.tensors.get("segments")
    m = f.meta
    times = [float(x) for x in f["frame_times"].tolist()]
    off = int((maps.off_grid.sum()) + (f.positions[:, 0] < 0).sum())
    off_note = f"; {off} tokens off the grid (not drawn on the tiles)" if off else ""
    return {
        "file": f, "tiles": tiles, "frames": shown, "cell": cell, "warning": warning, "maps": maps,
        "captions": [tile_caption(maps, i, times[i] if i < len(times) else 0.0) for i in shown],
        "labels": [tile_caption(maps, i, times[i] if i < len(times) else 0.0, short=True) for i in shown],
        "per_frame": f.tokens_per_frame().tolist(),
        "segments": seg.tolist() if seg is not None else None,
        "saliency": _saliency(f),
        "times": times,
        "header": {
            "video": (m.get("video") or {}).get("path", "?"),
            "model": _model_line(m),
            "method": m.get("method"),
            "params": m.get("params", {}),
            "tokens": f"{t * h * w} → {f.tokens.shape[0]} ({100 * float(m.get('ratio_achieved') or 0):.1f}% kept)"
                      f"{off_note}",
            "signals": m.get("signals", {}),
        },
        "pixels": video is not None,
        "view": describe_view(file_geometry(f)),
    }


def check_report_path(option: str, path: str | os.PathLike[str], *, token_file: Path | None = None,
                      overwrite: bool = False) -> None:
    """A report can be written at `path` (the output checks of every vtc output: not the token file itself, not a
    folder, a writable folder, and an existing file replaced only when it is a report vtc wrote, or with
    `overwrite`), else a UsageError before any drawing."""
    p = Path(path)
    if not p.is_dir() and not p.parent.is_dir():
        raise UsageError(f"{option} {p}: the folder {p.parent} does not exist.")
    if p.is_file() and (is_token_file(p) or p.suffix.lower() in VIDEO_EXTENSIONS):
        raise UsageError(f"{option} {p} would overwrite a token file or a video; choose another name.")
    check_output(token_file, p, replaceable=is_vtc_report, overwrite=overwrite, option=option,
                 kind="a report vtc wrote")


def write_html(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """A self-contained HTML page (images inline, no network needed)."""
    hd = report["header"]
    rows = []
    maps = report["maps"]
    for i, tile, caption in zip(report["frames"], report["tiles"], report["captions"], strict=True):
        b64 = base64.b64encode(_png_bytes(tile)).decode()
        counts = (f'data-kept="{maps.kept[i]}" data-merged="{maps.merged[i]}" data-off-grid="{maps.off_grid[i]}" '
                  f'data-covered="{maps.covered[i]}"')
        rows.append(f'<figure class="frame-card"><img class="frame" id="frame-{i}" data-frame="{i}" {counts} '
                    f'width="{tile.shape[1]}" height="{tile.shape[0]}" src="data:image/png;base64,{b64}">'
                    f'<figcaption>{html.escape(caption)}</figcaption></figure>')
    warn = (f'<div id="hash-mismatch" class="warning">⚠ {html.escape(report["warning"])}</div>'
            if report["warning"] else "")
    nopix = "" if report["pixels"] else '<p class="note">No video given: grid maps without pixels.</p>'
    params = html.escape(json.dumps(hd["params"], default=str))
    title = html.escape(str(hd["video"]))
    page = f"""<!doctype html><html><head><meta charset="utf-8">{MARK_HTML}<title>vtc report — {title}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:16px;color:#222;background:#fff}}
h1{{font-size:18px;margin:0 0 8px}} table{{border-collapse:collapse;font-size:13px}}
td{{padding:2px 8px;vertical-align:top}} .warning{{background:#ffe3e0;border:2px solid #d33;padding:8px;margin:8px 0;
font-weight:bold}} .grid{{display:flex;flex-wrap:wrap;gap:8px}} figure{{margin:0}} figcaption{{font-size:11px}}
img.frame{{image-rendering:pixelated;display:block}}
.legend{{list-style:none;padding:0;margin:8px 0;font-size:13px}} .legend li{{margin:2px 0}}
.sw{{display:inline-block;width:14px;height:14px;vertical-align:-2px;margin-right:6px;box-sizing:border-box}}
.note{{font-size:13px;color:#444}}
</style></head><body>
<h1 id="title">{html.escape(str(hd['video']))}</h1>{warn}
<table id="header"><tr><td>model</td><td>{html.escape(hd['model'])}</td></tr>
<tr><td>method</td><td id="method">{html.escape(str(hd['method']))} <code>{params}</code></td></tr>
<tr><td>tokens</td><td id="tokens">{html.escape(hd['tokens'])}</td></tr></table>
<ul class="legend" id="legend">
<li><i class="sw" style="background:#ddd"></i>clear cell: kept as is</li>
<li><i class="sw" style="background:#3d3d3d;border:1px solid #6e6e6e"></i>dimmed cell with a grey frame (grey
hatching on small cells): dropped</li>
<li><i class="sw" style="background:#fbe3f3;border:2px solid #e0a"></i>light tint with a coloured edge: merged —
one colour per output token, the same colour across frames when a token merges over time</li>
<li><i class="sw" style="background:#999;border:2px solid #fff;outline:1px solid #999"></i>white outline: a merged
token's representative cell (its position in the file)</li></ul>
<p class="note" id="view-note">Frames are shown as the encoder saw them: {html.escape(report.get('view', ''))}.</p>
{nopix}{_timeline_svg(report['per_frame'], report['segments'], report['saliency'])}
<div class="grid">{''.join(rows)}</div></body></html>"""
    return atomic_write(Path(path), lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))


def write_png(report: dict[str, Any], path: str | os.PathLike[str], columns: int = 8) -> Path:
    """A PNG contact sheet: a header line, then the tiles in a grid (frame 0 top-left)."""
    Image, ImageDraw = _pil()
    tiles = report["tiles"]
    th, tw = tiles[0].shape[:2]
    cols = min(columns, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    pad, head = 4, _png_head(report)
    width = max(cols * (tw + pad) + pad, 620)
    sheet = Image.new("RGB", (width, head + rows * (th + _LABEL_H + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    hd = report["header"]
    draw.text((pad, 4), f"{hd['video']}", fill=(0, 0, 0))
    draw.text((pad, 20), f"{hd['method']} - {hd['tokens']}".replace("→", "->"), fill=(0, 0, 0))
    y = 36
    if report["warning"]:
        draw.text((pad, y), "WARNING: " + report["warning"][:150], fill=(200, 0, 0))
        y += 20
    x = pad  # legend: swatches and words, as on the HTML page
    for swatch, words in (((225, 225, 225), "kept"), ((60, 60, 60), "dropped (grey frame)"),
                          ((240, 160, 210), "merged (colour = output token)"),
                          (None, "white outline = representative")):
        if swatch is None:
            draw.rectangle((x, y + 1, x + 10, y + 11), outline=(255, 255, 255), fill=(150, 150, 150), width=2)
        else:
            draw.rectangle((x, y + 1, x + 10, y + 11), fill=swatch)
        draw.text((x + 14, y), words, fill=(0, 0, 0))
        x += 24 + int(draw.textlength(words))
    y += 18
    per = report["per_frame"]  # a small timeline: tokens per frame
    top = max(per, default=1) or 1
    bw = (width - 2 * pad) / max(len(per), 1)
    for i, v in enumerate(per):
        hgt = v / top * (_TIMELINE_H - 2)
        draw.rectangle((pad + i * bw, y + _TIMELINE_H - hgt, pad + (i + 1) * bw - 1, y + _TIMELINE_H), fill=(59, 111,
                                                                                                           216))
    draw.text((pad, y + _TIMELINE_H + 2), f"tokens per frame, frames 0-{len(per) - 1} (max {top}); under each "
              f"tile: #frame, time, tokens", fill=(0, 0, 0))
    for k, (tile, label) in enumerate(zip(tiles, report["labels"], strict=True)):
        x0, y0 = tile_origin_png(report, k, columns)
        sheet.paste(Image.fromarray(tile), (x0, y0))
        while label and draw.textlength(label) > tw:  # the label stays under its own tile
            label = label[:-1]
        draw.text((x0, y0 + th + 1), label, fill=(0, 0, 0))
    from PIL.PngImagePlugin import PngInfo

    mark = PngInfo()
    mark.add_text("Software", f"vtc {__version__}")  # what lets a later run replace this sheet (is_vtc_report)
    return atomic_write(Path(path), lambda tmp: sheet.save(tmp, format="PNG", pnginfo=mark))


_TIMELINE_H = 28
_LABEL_H = 12  # the label line under each tile


def _png_head(report: dict[str, Any]) -> int:
    """Height of the PNG sheet's header: two lines, the warning, the legend, the timeline and its caption."""
    return 36 + (20 if report["warning"] else 0) + 18 + _TIMELINE_H + 18


def tile_origin_png(report: dict[str, Any], k: int, columns: int = 8) -> tuple[int, int]:
    """Top-left pixel of tile k in the PNG sheet (its label line is under it)."""
    th, tw = report["tiles"][0].shape[:2]
    cols = min(columns, len(report["tiles"]))
    pad, head = 4, _png_head(report)
    r, c = divmod(k, cols)
    return pad + c * (tw + pad), head + pad + r * (th + _LABEL_H + pad)
