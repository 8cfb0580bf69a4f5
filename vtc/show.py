"""`vtc show`: a terminal summary of a token file (and `--json` for machines)."""

from __future__ import annotations

import os
import re
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from vtc.io.peek import peek

BARS = "▁▂▃▄▅▆▇█"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(value: object) -> str:
    """Text from a file or a path, made safe to print: control characters (terminal escapes) become '?'."""
    return _CONTROL.sub("?", str(value))


class _PlainTable(Table):
    """A table whose cells are never parsed as rich markup (paths and metadata may contain '[' ... ']')."""

    def add_row(self, *cells: object, **kw: object) -> None:  # type: ignore[override]
        super().add_row(*(c if isinstance(c, Text) else Text(plain(c)) for c in cells), **kw)  # type: ignore[arg-type]


def num(value: object, spec: str) -> str:
    """`value` formatted with `spec` when it is a number, else as it is (a hostile file's metadata may hold
    anything)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return "?" if value is None else str(value)[:40]


def _fact(value: object) -> str:
    """A reported value in words: a table as `(key=value, ...)`, not a Python dict."""
    if isinstance(value, dict):
        return "(" + ", ".join(f"{k}={_fact(v)}" for k, v in value.items()) + ")"
    return str(value)


def sparkline(values: list[int], width: int = 64) -> str:
    """Unicode sparkline of `values` (resampled to at most `width` cells)."""
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [max(values[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)]) for i in range(width)]
    top = max(values) or 1
    return "".join(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1) + 0.5))] if v else " " for v in values)


def summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Facts about a token file (or a live output directory: its index, and its last chunk), as plain data."""
    if os.path.isdir(path):
        return live_summary(path)
    f = peek(path)  # header and small tensors: no torch
    m = f.meta
    per_frame = f.tokens_per_frame()
    seg = f.segments
    t = int(f.frame_times.size)  # the reader checked metadata T against the tensors
    h, w = m["grid"]  # checked by the reader: [h ≥ 1, w ≥ 1]
    n = m["N"] if isinstance(m.get("N"), int) else h * w
    params = m.get("params", {}) if isinstance(m.get("params"), dict) else {}
    info = m.get("info", {}) if isinstance(m.get("info"), dict) else {}
    return {
        "file": str(f.path),
        "format": f"{m.get('format')} v{m.get('format_version')}",
        "vtc_version": m.get("vtc_version"),
        "created": m.get("created"),
        "video": m.get("video", {}),  # a dict: the reader checks its type
        "model": {k: m.get(k) for k in ("model", "pretrained", "checkpoint", "checkpoint_sha256", "layer")},
        "grid": m.get("grid"),
        "image_size": m.get("image_size"),
        "method": m.get("method"),
        "variant": m.get("variant", ""),
        "features": m.get("features") if isinstance(m.get("features"), dict) else None,
        "params": params,
        # a knob left unset (None) is shown with the value the method found for it (e.g. LLaVA-Scissor's τ)
        "params_effective": {k: info.get(k, v) if v is None else v for k, v in params.items()},
        "info": info,
        "signals": m.get("signals", {}),
        # which token space: the encoder's own (files written before targets existed say nothing) or a target LLM's
        "space": m.get("space") if isinstance(m.get("space"), dict) else {"kind": "encoder"},
        "newline": m.get("newline") if isinstance(m.get("newline"), dict) else {"layout": "none"},
        "frames": t,
        "tokens_before": t * n,
        "tokens_after": int(f.tokens_shape[0]),
        "dim": int(f.tokens_shape[1]) if len(f.tokens_shape) > 1 else 0,
        "dtype": f.tokens_dtype,
        "ratio_requested": m.get("ratio_requested"),
        "ratio_achieved": m.get("ratio_achieved"),
        "tokens_per_frame": per_frame,
        "frame_times": [round(float(x), 3) for x in f.frame_times.tolist()],
        "segments": seg.tolist() if seg is not None else None,
        "truncated": m.get("truncated", False),
        "sampling": m.get("sampling", {}),
    }


def live_summary(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Facts about a live output directory: chunks, stream span, tokens, gaps, latency; the last chunk's summary."""
    from vtc.io.chunks import read_index  # the index alone needs no torch

    index = read_index(directory)
    chunks = index["chunks"]
    lat = sorted(float(c.get("latency_s", {}).get("p50", 0.0)) for c in chunks)
    return {
        "file": str(directory),
        "live": {
            "chunks": len(chunks),
            "span": [chunks[0]["t0"], chunks[-1]["t1"]] if chunks else None,
            "frames": sum(int(c.get("frames", 0)) for c in chunks),
            "tokens_before": sum(int(c.get("source_tokens", 0)) for c in chunks),
            "tokens_after": sum(int(c.get("tokens", 0)) for c in chunks),
            "tokens_per_chunk": [int(c.get("tokens", 0)) for c in chunks],
            "sessions": index.get("sessions", []),
            "gaps": index.get("gaps", []),
            "ended": index.get("ended"),
            "latency_p50_median": lat[len(lat) // 2] if lat else None,
            "settings": index.get("settings", {}),
        },
        "last_chunk": summary(os.path.join(directory, chunks[-1]["file"])) if chunks else None,
    }


def summary_table(info: dict[str, Any], console: Console) -> None:
    """Print `summary(...)` as a rich table."""
    if "live" in info:
        lv = info["live"]
        table = _PlainTable(title=Text(plain(f"{info['file']} (live)")), show_header=False, title_justify="left")
        table.add_column(style="bold")
        table.add_column()
        span = lv["span"] or [0, 0]
        table.add_row("stream", f"{lv['chunks']} chunks, {span[0]:.1f}–{span[1]:.1f} s, {lv['frames']} frames, "
                      f"{len(lv['sessions'])} run(s), {len(lv['gaps'])} gap(s); ended: {lv['ended'] or 'running'}")
        kept = 100 * lv["tokens_after"] / lv["tokens_before"] if lv["tokens_before"] else 0.0
        table.add_row("tokens", f"{lv['tokens_before']} → {lv['tokens_after']} ({kept:.1f}% kept)")
        table.add_row("per chunk", sparkline(lv["tokens_per_chunk"]))
        if lv["latency_p50_median"] is not None:
            table.add_row("latency", f"median of the chunks' p50: {lv['latency_p50_median']:.2f} s")
        console.print(table)
        if info["last_chunk"] is not None:
            summary_table(info["last_chunk"], console)
        return
    v = info["video"] or {}
    table = _PlainTable(title=Text(plain(info["file"])), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    dur = v.get("duration")
    mdl = info["model"]
    if v:
        facts = Text(plain(f"{v.get('path', '?')}\n{v.get('width')}×{v.get('height')}, {num(v.get('fps'), '.3g')} fps, "
                           f"{num(dur, '.1f')} s, {v.get('codec', '?')}"))
        if info["truncated"]:
            facts.append(" (truncated input)", style="yellow")
        table.add_row("video", facts)
    space = info["space"]
    if space.get("kind") == "target":
        nl = info["newline"]
        head = (f"target {space.get('target')} ({space.get('checkpoint')}, vision sha256 "
                f"{str(space.get('vision_sha256', ''))[:12]}), LLM hidden size {space.get('hidden_size')}")
        thw = space.get("video_grid_thw")
        if isinstance(thw, list) and len(thw) == 3:  # Qwen: frame pairs, merged cells, original M-RoPE positions
            t, gh, gw = thw
            body = (f"video_grid_thw [{t}, {gh}, {gw}] (patches) → {t} × {info['grid'][0]}×{info['grid'][1]} merged "
                    f"cells, each token frame = {space.get('temporal_patch_size')} sampled frames, picture "
                    f"{space.get('image_size')}\n")
            if "frame_timestamps" in space:  # Qwen3-VL: each token frame its own group after its timestamp
                raw = space.get("frame_timestamps")
                stamps = [f"<{x:.1f} seconds>" if isinstance(x, (int, float)) else "<?>"
                          for x in (raw if isinstance(raw, list) else [])]
                body += (f"timestamps {' '.join(stamps[:6])}{' …' if len(stamps) > 6 else ''}; DeepStack planes "
                         f"{space.get('deepstack_planes', 0)}; kept tokens keep their original positions")
            elif "second_per_grid_t" in space:  # Qwen2.5-VL: time-scaled temporal positions
                body += (f"M-RoPE: t step {num(space.get('second_per_grid_t'), '.4g')} s × "
                         f"{space.get('tokens_per_second')} tokens/s; kept tokens keep their original (t, h, w)")
            else:  # Qwen2-VL
                body += "M-RoPE: t = token frame; kept tokens keep their original (t, h, w)"
        else:
            body = (f"token grid {space.get('grid')} from vision grid {space.get('vision_grid')}\n"
                    f"newline: {nl.get('layout')} — {nl.get('where', '')}")
        table.add_row("space", f"{head}\n{body}")
        table.add_row("model", f"vision path of {space.get('checkpoint')}, grid {info['grid']}")
    elif mdl.get("model"):
        table.add_row("space", "encoder (the vision tower's own tokens; not an LLM's input space)")
        src = mdl.get("pretrained") or (f"checkpoint {mdl.get('checkpoint')}" if mdl.get("checkpoint") else "")
        table.add_row("model", f"{mdl.get('model')} {src}, layer {mdl.get('layer')}, grid {info['grid']}")
    else:
        origin = (info.get("features") or {}).get("path") or "(compress_features)"
        table.add_row("source", f"features {origin}, grid {info['grid']}")
    params = ", ".join(f"{k}={val}" for k, val in (info["params_effective"] or {}).items())
    variant = f":{info['variant']}" if info.get("variant") else ""
    table.add_row("method", f"{info['method']}{variant}  {params}")
    facts = {k: v for k, v in (info["info"] or {}).items()
             if k not in info["params_effective"] and (not isinstance(v, list) or len(v) <= 8)}
    if facts:
        table.add_row("reported", ", ".join(f"{k}={_fact(v)}" for k, v in facts.items()))
    req = info["ratio_requested"]
    table.add_row("tokens", f"{info['tokens_before']} → {info['tokens_after']} "
                  f"({num(100 * (info['ratio_achieved'] or 0), '.1f')} % kept"
                  + (f", asked {num(100 * req, '.1f')} %" if req is not None else "")
                  + f"), dim {info['dim']} {info['dtype']}")
    per = info["tokens_per_frame"]
    table.add_row("per frame", f"{sparkline(per)}\nmin {min(per, default=0)}, max {max(per, default=0)} "
                  f"over {info['frames']} frames")
    if info["segments"]:
        segs = info["segments"]
        table.add_row("segments", f"{len(segs)}: " + " ".join(f"[{a}–{b}]" for a, b in segs[:24])
                      + (" …" if len(segs) > 24 else ""))
    if info["signals"]:
        table.add_row("signals", "\n".join(f"{k}: {val}" for k, val in info["signals"].items()))
    console.print(table)
