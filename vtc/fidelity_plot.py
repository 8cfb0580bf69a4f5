"""The picture of a fidelity sweep: kept fraction vs KL and vs agreement, one line per method, the controls beside.

One list of drawing primitives is rendered twice: as inline SVG in a self-contained HTML page (no network, no
script) and as a PNG (Pillow, `pip install 'vtc[show]'`).
"""

from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any

from vtc.errors import UsageError

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
CONTROL_COLOUR = "#777777"
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 460, 320, 64, 16, 30, 44

# a primitive: ("line", [(x, y), …], colour, dashed) | ("mark", (x, y), colour, shape) | ("text", (x, y), str, anchor)
Prim = tuple[Any, ...]


def _panel(rows: list[dict[str, Any]], key: str, title: str, log: bool) -> list[Prim]:
    """One panel: x = kept fraction (achieved, 0..1), y = rows[key] (log scale for KL)."""
    pts = [(r["ratio_achieved"], r[key]) for r in rows]
    pts += [(r["ratio_achieved"], r[f"{c}_{key}"]) for r in rows for c in ("random", "pool")
            if r.get(f"{c}_{key}") is not None]
    ys = [y for _, y in pts if y is not None and (not log or y > 0)]
    if log:
        lo, hi = (math.log10(min(ys)), math.log10(max(ys))) if ys else (-6.0, 0.0)
        lo, hi = math.floor(lo), math.ceil(hi) if hi > lo else math.floor(lo) + 1
    else:
        lo, hi = 0.0, 1.0

    def at(x: float, y: float) -> tuple[float, float]:
        v = (math.log10(y) if y > 0 else lo) if log else y
        return (PAD_L + x * (W - PAD_L - PAD_R), PAD_T + (1 - (v - lo) / (hi - lo)) * (H - PAD_T - PAD_B))

    out: list[Prim] = [("line", [at(0, 10**lo if log else lo), at(1, 10**lo if log else lo)], "#000", False),
                       ("line", [at(0, 10**lo if log else lo), at(0, 10**hi if log else hi)], "#000", False),
                       ("text", (W / 2, 18), title, "middle"),
                       ("text", (W / 2, H - 8), "kept fraction (achieved)", "middle")]
    for i in range(6):
        x = i / 5
        px, py = at(x, 10**lo if log else lo)
        out.append(("text", (px, py + 16), f"{x:.1f}", "middle"))
    ticks = range(int(lo), int(hi) + 1) if log else [0.0, 0.25, 0.5, 0.75, 1.0]
    for t in ticks:
        y = 10.0**t if log else float(t)
        px, py = at(0, y)
        out.append(("text", (px - 6, py + 4), f"1e{t}" if log else f"{t:g}", "end"))
        out.append(("line", [(px, py), at(1, y)], "#e5e5e5", False))
    methods = sorted({r["method"] for r in rows})
    for i, m in enumerate(methods):
        colour = PALETTE[i % len(PALETTE)]
        mine = sorted((r for r in rows if r["method"] == m), key=lambda r: r["ratio_achieved"])
        line = [at(r["ratio_achieved"], r[key]) for r in mine]
        if len(line) > 1:
            out.append(("line", line, colour, False))
        out += [("mark", p, colour, "dot") for p in line]
        for c, shape in (("random", "x"), ("pool", "plus")):
            out += [("mark", at(r["ratio_achieved"], r[f"{c}_{key}"]), CONTROL_COLOUR, shape) for r in mine
                    if r.get(f"{c}_{key}") is not None]
    return out


def _legend(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    methods = sorted({r["method"] for r in rows})
    return [(m, PALETTE[i % len(PALETTE)], "dot") for i, m in enumerate(methods)] + \
        [("random (same kept fraction)", CONTROL_COLOUR, "x"), ("pool (same kept fraction)", CONTROL_COLOUR, "plus")]


def _svg(prims: list[Prim]) -> str:
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
             f'font-size="11">']
    for p in prims:
        if p[0] == "line":
            pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in p[1])
            dash = ' stroke-dasharray="4 3"' if p[3] else ""
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{p[2]}" stroke-width="1.5"{dash}/>')
        elif p[0] == "mark":
            (x, y), colour, shape = p[1], p[2], p[3]
            if shape == "dot":
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{colour}"/>')
            else:
                d = 4
                segs = [((x - d, y - d), (x + d, y + d)), ((x - d, y + d), (x + d, y - d))] if shape == "x" else \
                    [((x - d, y), (x + d, y)), ((x, y - d), (x, y + d))]
                for (a, b), (c, e) in segs:
                    parts.append(f'<line x1="{a:.1f}" y1="{b:.1f}" x2="{c:.1f}" y2="{e:.1f}" stroke="{colour}" '
                                 f'stroke-width="1.5"/>')
        else:
            (x, y), text, anchor = p[1], p[2], p[3]
            parts.append(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}">{html.escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def panels(summary: dict[str, Any]) -> list[list[Prim]]:
    rows = summary["table"]
    return [_panel(rows, "kl_answer", "KL(reference || compressed) over the answer (lower is better)", True),
            _panel(rows, "agreement", "top-1 agreement with the reference (higher is better)", False)]


def write_html(summary: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """A self-contained page: both panels, the legend, the Pareto sentences and the table."""
    rows = summary["table"]
    legend = "".join(f'<span style="color:{c};margin-right:1.2em">{"●" if s == "dot" else "×" if s == "x" else "+"} '
                     f"{html.escape(m)}</span>" for m, c, s in _legend(rows))
    cols = ["method", "ratio", "ratio_achieved", "kl_first", "kl_answer", "agreement", "flip_rate",
            "first_divergence", "random_kl_answer", "pool_kl_answer"]

    def cell(v: Any) -> str:
        return "—" if v is None else (f"{v:.4g}" if isinstance(v, float) else html.escape(str(v)))

    table = "<tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    words = "".join(f"<li>{html.escape(s)}</li>" for s in summary["pareto"])
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>vtc fidelity</title><style>body{{font-family:"
            f"sans-serif;margin:1.5em}}td,th{{padding:2px 8px;text-align:right}}table{{border-collapse:collapse}}"
            f"tr:nth-child(even){{background:#f4f4f4}}</style></head><body><h2>vtc fidelity: {summary['videos']} "
            f"video(s), loyalty to the uncompressed model (not accuracy)</h2>"
            + "".join(_svg(p) for p in panels(summary)) + f"<p>{legend}</p><ul>{words}</ul><table>{table}</table>"
            "</body></html>")
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


def write_png(summary: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Both panels side by side with the legend below (Pillow)."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        raise UsageError("the PNG needs Pillow: pip install 'vtc[show]'.") from None
    rows = summary["table"]
    img = Image.new("RGB", (2 * W, H + 24), "white")
    d = ImageDraw.Draw(img)
    for k, prims in enumerate(panels(summary)):
        ox = k * W
        for p in prims:
            if p[0] == "line":
                d.line([(x + ox, y) for x, y in p[1]], fill=p[2], width=2 if p[2] != "#e5e5e5" else 1)
            elif p[0] == "mark":
                (x, y), colour, shape = p[1], p[2], p[3]
                x += ox
                if shape == "dot":
                    d.ellipse([x - 3.5, y - 3.5, x + 3.5, y + 3.5], fill=colour)
                elif shape == "x":
                    d.line([(x - 4, y - 4), (x + 4, y + 4)], fill=colour, width=2)
                    d.line([(x - 4, y + 4), (x + 4, y - 4)], fill=colour, width=2)
                else:
                    d.line([(x - 4, y), (x + 4, y)], fill=colour, width=2)
                    d.line([(x, y - 4), (x, y + 4)], fill=colour, width=2)
            else:
                (x, y), text, anchor = p[1], p[2], p[3]
                w = d.textlength(text)
                x += ox - (w / 2 if anchor == "middle" else w if anchor == "end" else 0)
                d.text((x, y - 10), text, fill="black")
    x = 10.0
    for m, colour, shape in _legend(rows):
        d.text((x, H + 6), {"dot": "o ", "x": "x ", "plus": "+ "}[shape] + m, fill=colour)
        x += d.textlength(m) + 30
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp.png")
    img.save(tmp, format="PNG")
    os.replace(tmp, out)
    return out
