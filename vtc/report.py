"""Visual reports of a token file: a self-contained HTML page and a PNG contact sheet (`vtc show --html/--png`).

For every sampled frame: the frame as the encoder saw it (when the video is at hand) with kept patches clear,
dropped ones dimmed, and merged tokens drawn as regions in one colour per output token — so a temporal merge
shows the same colour across frames. Below: a timeline of tokens per frame with the temporal segments, and the
audio saliency when the audio guided the budget. Without the video, the same maps are drawn without pixels.

Needs Pillow (`pip install 'vtc[show]'`).
"""

from __future__ import annotations

import base64
import colorsys
import html
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vtc.errors import MissingDependencyError
from vtc.io.decode import Sampling, content_hash, iter_frames
from vtc.io.geometry import FrameGeometry
from vtc.io.store import TokenFile, load

CELL_MAX = 32  # pixels per patch cell in the tiles (tiles are at most 16·32 = 512 px wide)
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
    """Per-cell drawing instructions for every frame: state (0 dropped, 1 kept as is, 2 merged), colour id."""

    state: np.ndarray  # [T, h, w] uint8
    colour: np.ndarray  # [T, h, w] int64 output row (or -1)
    outline: np.ndarray  # [T, h, w] bool: representative of a merged row


def cell_maps(f: TokenFile) -> Maps:
    h, w = f.grid
    n = h * w
    t = f.num_frames
    source = f["source"].long().numpy()[: t * n]
    sizes = f["sizes"].long().numpy()
    pos = f.positions.long().numpy()
    rep = np.where(pos[:, 1] >= 0, pos[:, 0] * n + pos[:, 1] * w + pos[:, 2], -1)
    state = np.zeros(t * n, np.uint8)
    has = source >= 0
    pure = np.zeros(t * n, bool)
    pure[has] = (sizes[source[has]] == 1) & (rep[source[has]] == np.arange(t * n)[has])
    state[has] = np.where(pure[has], 1, 2)
    outline = np.zeros(t * n, bool)
    merged_rows = np.nonzero((sizes > 1) & (rep >= 0))[0]
    outline[rep[merged_rows]] = True
    return Maps(state.reshape(t, h, w), source.reshape(t, h, w), outline.reshape(t, h, w))


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
    img = img * (1 - 0.72 * dim)
    merged = np.kron((state == 2).astype(np.float32), up)[..., None]
    tint = colours[np.clip(colour, 0, None) % len(colours)].astype(np.float32)  # [h, w, 3]
    tint_up = np.repeat(np.repeat(tint, cell, 0), cell, 1)
    img = img * (1 - 0.4 * merged) + tint_up * 0.4 * merged
    out = img.clip(0, 255).astype(np.uint8)
    if cell >= 6:  # outline representatives of merged tokens, and a faint grid
        for r, c in zip(*np.nonzero(maps.outline[t]), strict=True):
            y, x = r * cell, c * cell
            out[y, x : x + cell] = out[y + cell - 1, x : x + cell] = 255
            out[y : y + cell, x] = out[y : y + cell, x + cell - 1] = 255
    return out


def _png_bytes(arr: np.ndarray) -> bytes:
    Image, _ = _pil()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()


def _timeline_svg(per_frame: list[int], segments: list[list[int]] | None, saliency: list[float] | None,
                  width: int = 900, height: int = 120) -> str:
    t = max(len(per_frame), 1)
    top = max(per_frame, default=1) or 1
    bw = width / t
    parts = [f'<svg id="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 20}">']
    for i, (a, b) in enumerate(segments or []):
        fill = "#e8eef8" if i % 2 == 0 else "#f8efe2"
        parts.append(f'<rect class="segment" x="{a * bw:.1f}" y="0" width="{(b - a + 1) * bw:.1f}" '
                     f'height="{height}" fill="{fill}"><title>segment {i}: frames {a}–{b}</title></rect>')
    for i, v in enumerate(per_frame):
        hgt = v / top * (height - 10)
        parts.append(f'<rect class="bar" x="{i * bw + 1:.1f}" y="{height - hgt:.1f}" width="{max(bw - 2, 1):.1f}" '
                     f'height="{hgt:.1f}" fill="#3b6fd8"><title>frame {i}: {v} tokens</title></rect>')
    if saliency:
        m = max(saliency) or 1.0
        pts = " ".join(f"{i / max(len(saliency) - 1, 1) * width:.1f},{height - s / m * (height - 10):.1f}"
                       for i, s in enumerate(saliency))
        parts.append(f'<polyline id="saliency" points="{pts}" fill="none" stroke="#d83b3b" stroke-width="2"/>')
    parts.append(f'<text x="0" y="{height + 15}" font-size="12">tokens per frame (max {top})'
                 + (", audio saliency in red" if saliency else "") + "</text></svg>")
    return "".join(parts)


def _saliency(f: TokenFile) -> list[float] | None:
    sal = f.tensors.get("audio_saliency")
    return None if sal is None else [float(v) for v in sal.float().tolist()]


def check_video(f: TokenFile, video: str | os.PathLike[str] | None) -> str | None:
    """A warning when `video` is not the video the file was made from (content hash), else None."""
    if video is None:
        return None

    want = (f.meta.get("video") or {}).get("sha256")
    if want and content_hash(video) != want:
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
    return {
        "file": f, "tiles": tiles, "frames": shown, "cell": cell, "warning": warning,
        "per_frame": f.tokens_per_frame().tolist(),
        "segments": seg.tolist() if seg is not None else None,
        "saliency": _saliency(f),
        "times": [float(x) for x in f["frame_times"].tolist()],
        "header": {
            "video": (m.get("video") or {}).get("path", "?"),
            "model": f"{m.get('model')} {m.get('pretrained') or ''} layer {m.get('layer')}".strip(),
            "method": m.get("method"),
            "params": m.get("params", {}),
            "tokens": f"{t * h * w} → {f.tokens.shape[0]} ({100 * float(m.get('ratio_achieved') or 0):.1f}% kept)",
            "signals": m.get("signals", {}),
        },
        "pixels": video is not None,
    }


def write_html(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """A self-contained HTML page (images inline, no network needed)."""
    hd = report["header"]
    rows = []
    for i, tile in zip(report["frames"], report["tiles"], strict=True):
        b64 = base64.b64encode(_png_bytes(tile)).decode()
        tsec = report["times"][i] if i < len(report["times"]) else 0.0
        rows.append(f'<figure class="frame-card"><img class="frame" id="frame-{i}" data-frame="{i}" '
                    f'width="{tile.shape[1]}" height="{tile.shape[0]}" src="data:image/png;base64,{b64}">'
                    f'<figcaption>frame {i} · {tsec:.2f} s · {report["per_frame"][i]} tokens</figcaption></figure>')
    warn = (f'<div id="hash-mismatch" class="warning">⚠ {html.escape(report["warning"])}</div>'
            if report["warning"] else "")
    nopix = "" if report["pixels"] else '<p class="note">No video given: grid maps without pixels.</p>'
    params = html.escape(json.dumps(hd["params"], default=str))
    title = html.escape(str(hd["video"]))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>vtc report — {title}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:16px;color:#222;background:#fff}}
h1{{font-size:18px;margin:0 0 8px}} table{{border-collapse:collapse;font-size:13px}}
td{{padding:2px 8px;vertical-align:top}} .warning{{background:#ffe3e0;border:2px solid #d33;padding:8px;margin:8px 0;
font-weight:bold}} .grid{{display:flex;flex-wrap:wrap;gap:8px}} figure{{margin:0}} figcaption{{font-size:11px}}
img.frame{{image-rendering:pixelated;display:block}}
.legend span{{display:inline-block;padding:2px 6px;margin-right:6px}}
</style></head><body>
<h1 id="title">{html.escape(str(hd['video']))}</h1>{warn}
<table id="header"><tr><td>model</td><td>{html.escape(hd['model'])}</td></tr>
<tr><td>method</td><td id="method">{html.escape(str(hd['method']))} <code>{params}</code></td></tr>
<tr><td>tokens</td><td id="tokens">{html.escape(hd['tokens'])}</td></tr></table>
<p class="legend"><span style="background:#ccc">clear: kept as is</span><span style="background:#555;color:#fff">
dimmed: dropped</span><span style="background:#f0a">colour: merged (one colour per output token)</span></p>
{nopix}{_timeline_svg(report['per_frame'], report['segments'], report['saliency'])}
<div class="grid">{''.join(rows)}</div></body></html>"""
    out = Path(path)
    out.write_text(page, encoding="utf-8")
    return out


def write_png(report: dict[str, Any], path: str | os.PathLike[str], columns: int = 8) -> Path:
    """A PNG contact sheet: a header line, then the tiles in a grid (frame 0 top-left)."""
    Image, ImageDraw = _pil()
    tiles = report["tiles"]
    th, tw = tiles[0].shape[:2]
    cols = min(columns, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    pad, head = 4, 40 + (20 if report["warning"] else 0)
    sheet = Image.new("RGB", (cols * (tw + pad) + pad, head + rows * (th + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    hd = report["header"]
    draw.text((pad, 4), f"{hd['video']}", fill=(0, 0, 0))
    draw.text((pad, 20), f"{hd['method']} - {hd['tokens']}".replace("→", "->"), fill=(0, 0, 0))
    if report["warning"]:
        draw.text((pad, 36), "WARNING: " + report["warning"][:150], fill=(200, 0, 0))
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet.paste(Image.fromarray(tile), (pad + c * (tw + pad), head + pad + r * (th + pad)))
    out = Path(path)
    sheet.save(out)
    return out


def tile_origin_png(report: dict[str, Any], k: int, columns: int = 8) -> tuple[int, int]:
    """Top-left pixel of tile k in the PNG sheet (for tests and tools)."""
    th, tw = report["tiles"][0].shape[:2]
    cols = min(columns, len(report["tiles"]))
    pad, head = 4, 40 + (20 if report["warning"] else 0)
    r, c = divmod(k, cols)
    return pad + c * (tw + pad), head + pad + r * (th + pad)
