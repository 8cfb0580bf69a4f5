"""The `vtc` command line: parses options, calls the API, prints, and turns errors into exit codes."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from vtc._version import __version__
from vtc.errors import UsageError, VtcError

#: when the command line started (the summary accounts for the whole wall time, imports included)
_T0 = time.perf_counter()

app = typer.Typer(
    name="vtc",
    help="Turn videos into compact files of visual tokens for video LLMs.\n\n"
    "Example: vtc compress clip.mp4 --method fastvid --ratio 0.1",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
console = Console(stderr=True, soft_wrap=True)  # lines are never broken mid-phrase (logs, pipes)
out = Console(soft_wrap=True)


def print_json(obj: object) -> None:
    """Indented JSON on stdout, plain: rich's highlighter takes minutes on the per-frame lists of a long video."""
    typer.echo(json.dumps(obj, indent=2, default=str))


def safe(value: object) -> str:
    """A path or a message for rich output: no markup interpretation, no terminal control characters."""
    from rich.markup import escape

    from vtc.show import plain

    return escape(plain(value))


def _fail(err: VtcError) -> typer.Exit:
    console.print(f"[bold red]error:[/] {safe(err)}", highlight=False, soft_wrap=True)
    return typer.Exit(err.exit_code)


def _version(value: bool) -> None:
    if value:
        out.print(f"vtc {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """vtc: video → visual tokens."""


@app.command()
def compress(
    inputs: Annotated[list[str], typer.Argument(help="Video file(s), directories (recursive) or glob patterns.",
                                                show_default=False)],
    output: Annotated[str | None, typer.Option("-o", "--output", help="Token file to write [default: beside the "
                                              "input, .safetensors]; for several inputs, the output directory "
                                              "(the input tree is mirrored under it). A URL (s3://…) writes to "
                                              "object storage.")] = None,
    method: Annotated[str | None, typer.Option("-m", "--method", help="Compression method; 'vtc methods' "
                                               "lists them [default: fastvid]")] = None,
    ratio: Annotated[float | None, typer.Option("-r", "--ratio", help="Fraction of tokens to keep, in (0, 1] "
                                                "[default: the method's paper setting]")] = None,
    param: Annotated[list[str] | None, typer.Option("-p", "--param", help="Method parameter key=value "
                                                    "(repeatable), e.g. -p tau=0.8")] = None,
    frames: Annotated[int | None, typer.Option("--frames", "-t", help="Sample T frames uniformly "
                                               "[default: 32; llava-video target: 64]")] = None,
    fps: Annotated[float | None, typer.Option("--fps", help="Sample F frames per second instead.")] = None,
    every: Annotated[int | None, typer.Option("--every", help="Sample every n-th frame instead.")] = None,
    model: Annotated[str | None, typer.Option("--model", help="open_clip model name, hf-hub:ORG/REPO, or a "
                                              "JSON config [default: ViT-B-16]")] = None,
    pretrained: Annotated[str | None, typer.Option("--pretrained", help="open_clip pretrained tag "
                                                   "[default: openai]")] = None,
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="Local weights file for --model "
                                                    "(no network needed).")] = None,
    layer: Annotated[int | None, typer.Option("--layer", help="Block whose patch tokens are used; -2 = "
                                              "penultimate, as LLaVA [default: -2]")] = None,
    target: Annotated[str | None, typer.Option("--target", help="Write tokens in this video LLM's input space, made "
                                               "by its own vision path: llava-onevision, llava-video, qwen2.5-vl "
                                               "or qwen3-vl (needs --target-model; pip install 'vtc[hf]').")] = None,
    target_model: Annotated[str | None, typer.Option("--target-model", help="The target's transformers "
                                                     "checkpoint: a local directory or a hub id (only its vision "
                                                     "weights are read).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda [default: auto]")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="Encoder precision: auto (fp32 on CPU, bf16/"
                                              "fp16 on GPU), fp32, fp16, bf16")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Frames per encoder batch "
                                                   "[default: 16]")] = None,
    dtype_out: Annotated[str | None, typer.Option("--dtype-out", help="Stored token dtype: float16, "
                                                  "bfloat16, float32 [default: float16]")] = None,
    preset: Annotated[str | None, typer.Option("--preset", help="Preset name (presets/) or TOML file; "
                                               "explicit options override it.")] = None,
    allow_truncated: Annotated[bool, typer.Option("--allow-truncated", help="Keep the frames of a "
                                                  "truncated/corrupt video instead of failing.")] = False,
    query: Annotated[str | None, typer.Option("--query", help="Give more tokens to frames that match this text "
                                              "(encoded by the model's text tower); needs a query-aware method, "
                                              "e.g. --method budgeted -p budget=query.")] = None,
    memory_budget: Annotated[float | None, typer.Option("--memory-budget", help="GiB one video's features and "
                                                        "its method may use; past half of it features spill to "
                                                        "disk (float16), and the method runs on windows of frames, "
                                                        "recorded in the file [default: half the available memory]"
                                                        )] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing but errors.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Batch: re-run only the inputs whose "
                                               "last manifest record failed.")] = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Batch: stop at the first failure.")] = False,
    shard: Annotated[str | None, typer.Option("--shard", help="Batch: process shard i of n ('i/n'), or 'auto' "
                                              "from SLURM_PROCID/SLURM_NTASKS, RANK/WORLD_SIZE or VTC_SHARD.")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Batch: decode threads running ahead of the "
                                         "encoder.")] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Batch: print a JSON summary at the end.")] = False,
    engine: Annotated[str, typer.Option("--engine", help="Batch engine: local (threads, one machine) or ray "
                                        "(a Ray cluster; pip install 'vtc[ray]').")] = "local",
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster address (default: "
                                                    "RAY_ADDRESS, else a local Ray instance).")] = None,
    actors: Annotated[int, typer.Option("--actors", help="Ray: encoder actors (one GPU each when the "
                                        "cluster has GPUs).")] = 1,
    storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help="Object storage option "
                                                             "key=value for fsspec (repeatable), e.g. "
                                                             "endpoint_url=http://host:9000 or anon=true; "
                                                             "credentials come from the environment.")] = None,
    out_format: Annotated[str, typer.Option("--format", help="Batch output: files (one token file per video) or "
                                            "webdataset (tar shards of <key>.safetensors + <key>.json).")] = "files",
    shard_size: Annotated[int, typer.Option("--shard-size", help="Batch, --format webdataset: videos per tar "
                                            "shard.")] = 1000,
) -> None:
    """Compress videos into token files (decode → encode → compress → store).

    One file: writes FILE.safetensors beside it (or -o PATH). Several files, a directory or a glob: batch mode,
    with -o OUTDIR, a manifest (vtc-manifest.jsonl), resume and failures recorded per input.
    """
    import glob

    from vtc.api import compress as api_compress
    from vtc.io.storage import is_url, parse_option, set_options
    from vtc.run.config import parse_param

    try:
        set_options(dict(parse_option(o) for o in (storage_option or [])))
        # one existing file, or one path that is no glob pattern with matches (a missing file is reported as such)
        single = len(inputs) == 1 and out_format == "files" and (
            _single_remote(inputs[0]) if is_url(inputs[0]) else not Path(inputs[0]).is_dir() and (
                Path(inputs[0]).exists() or not any(ch in inputs[0] for ch in "*?[") or not glob.glob(inputs[0])))
    except VtcError as e:
        raise _fail(e) from None
    if not single:
        _batch(inputs, output, dict(
            method=method, ratio=ratio, frames=frames, fps=fps, every=every, model=model, pretrained=pretrained,
            checkpoint=str(checkpoint) if checkpoint else None, layer=layer, device=device, dtype=dtype,
            target=target, target_model=target_model,
            batch_size=batch_size, dtype_out=dtype_out, allow_truncated=allow_truncated or None, query=query,
            memory_budget=memory_budget), param,
            preset,
            quiet=quiet, retry_failed=retry_failed, fail_fast=fail_fast, shard=shard, workers=workers,
            as_json=as_json, engine=engine, ray_address=ray_address, actors=actors, out_format=out_format,
            shard_size=shard_size)
        return
    from vtc.io.storage import location

    input = location(inputs[0])
    try:
        params = dict(parse_param(p) for p in (param or []))
        options: dict[str, Any] = dict(
            method=method, ratio=ratio, frames=frames, fps=fps, every=every, model=model, pretrained=pretrained,
            checkpoint=str(checkpoint) if checkpoint else None, layer=layer, device=device, dtype=dtype,
            target=target, target_model=target_model,
            batch_size=batch_size, dtype_out=dtype_out, allow_truncated=allow_truncated or None, query=query,
            memory_budget=memory_budget,
        )
        if params:
            options["params"] = params
        show_bar = not quiet and console.is_terminal
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, disable=not show_bar, transient=True) as bar:
            task = bar.add_task(f"{safe(input.name)}: decoding", total=None)

            def progress(kind: str, done: int, total: int | None) -> None:
                bar.update(task, completed=done, description=f"{safe(input.name)}: {kind}")

            t_call = time.perf_counter()
            res = api_compress(input, output=output, preset=preset, progress=progress, **options)
    except VtcError as e:
        raise _fail(e) from None
    if not quiet:
        t = res.timings
        total = time.perf_counter() - _T0
        note = " [yellow](truncated input: kept what decoded)[/]" if res.truncated else ""
        out.print(
            f"{safe(res.output)}: {res.num_tokens} of {res.num_source_tokens} tokens "
            f"({100 * res.ratio_achieved:.1f}%) in {total:.2f}s — start-up {t_call - _T0:.2f}s, "
            f"model {t.get('load', 0):.2f}s, decode {t.get('decode', 0):.2f}s, encode {t.get('encode', 0):.2f}s, "
            f"compress {t.get('compress', 0):.3f}s, store {t.get('store', 0):.3f}s{note}",
            highlight=False,
        )


def _single_remote(url: str) -> bool:
    """One object (not a prefix ending in '/', not a glob, not a prefix holding objects)."""
    from vtc.io.storage import location

    if url.endswith("/") or any(ch in url.split("://", 1)[1] for ch in "*?["):
        return False
    return not location(url).is_dir()


def _batch(inputs: list[str], output: str | None, options: dict[str, Any], param: list[str] | None,
           preset: str | None, *, quiet: bool, retry_failed: bool, fail_fast: bool, shard: str | None,
           workers: int, as_json: bool, engine: str = "local", ray_address: str | None = None,
           actors: int = 1, out_format: str = "files", shard_size: int = 1000) -> None:
    from vtc.api import compress_batch
    from vtc.run.batch import parse_shard
    from vtc.run.config import parse_param

    try:
        if output is None:
            raise UsageError("several inputs (or a directory/glob) need -o OUTDIR for the token files.")
        from vtc.io.storage import RemotePath, location

        out_dir = location(output)
        if not isinstance(out_dir, RemotePath) and out_dir.exists() and not out_dir.is_dir():
            raise UsageError(f"-o {output} is a file; batch mode needs a directory.")
        params = dict(parse_param(p) for p in (param or []))
        if params:
            options["params"] = params
        shard_t = parse_shard(shard)
        fancy = not quiet and not as_json and console.is_terminal
        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                       console=console, disable=not fancy)
        state = {"frames": 0, "tokens": 0, "failed": 0, "done": 0, "total": 0}
        task = bar.add_task("files", total=None, stats="")

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "start":
                state["total"] = data["todo"]
                bar.update(task, total=data["todo"])
                if not quiet and not fancy and not as_json:
                    console.print(f"{data['total']} inputs, {data['skipped']} already done, {data['todo']} to do",
                                  highlight=False)
            elif kind == "encoded":
                state["frames"] += data["frames"]
            elif kind == "file":
                state["done"] += 1
                state["tokens"] += data["tokens"]
                state["failed"] += 0 if data["ok"] else 1
                bar.update(task, completed=state["done"])
                if not quiet and not as_json and not fancy:
                    status = "ok" if data["ok"] else f"FAILED: {safe(data['error'])}"
                    console.print(f"\\[{state['done']}/{state['total']}] {safe(data['input'])}: {status}",
                                  highlight=False, soft_wrap=True)
                elif fancy and not data["ok"]:
                    bar.console.print(f"[red]failed[/] {safe(data['error'])}", highlight=False, soft_wrap=True)
            bar.update(task, stats=f"{state['frames']} frames, {state['tokens']} tokens, {state['failed']} failed")

        with bar:
            summary = compress_batch(inputs, out_dir, preset=preset, shard=shard_t, retry_failed=retry_failed,
                                     fail_fast=fail_fast, engine=engine, workers=workers, out_format=out_format,
                                     shard_size=shard_size,
                                     ray_address=ray_address or os.environ.get("RAY_ADDRESS"), actors=actors,
                                     on_event=on_event, **options)
    except VtcError as e:
        raise _fail(e) from None
    info = summary.as_dict()
    if summary.warning and not as_json:
        console.print(f"[bold yellow]warning:[/] {safe(summary.warning)}", highlight=False)
    if as_json:
        print_json(info)
    elif not quiet:
        out.print(f"{summary.ok} ok, {summary.failed} failed, {summary.skipped} skipped of {summary.total} — "
                  f"{info['frames_per_s']} frames/s, encoder busy {100 * info['encoder_utilisation']:.0f}% of "
                  f"{summary.wall:.1f} s; manifest {safe(summary.manifest)}", highlight=False)
    if summary.failed:
        raise typer.Exit(1)


@app.command("compress-features")
def compress_features_cmd(
    features: Annotated[Path, typer.Argument(help="safetensors file with 'features' [T, N, D] (or [T, h, w, D]) "
                                             "and optional signals under vtc's names (attn, pooled, keys, …).",
                                             show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Token file to write.")],
    method: Annotated[str, typer.Option("-m", "--method", help="Method, or method:variant (e.g. "
                                        "dycoke:reference); 'vtc methods' lists them.")] = "fastvid",
    ratio: Annotated[float | None, typer.Option("-r", "--ratio", help="Fraction of tokens to keep, in (0, 1] "
                                                "[default: the method's paper setting]")] = None,
    param: Annotated[list[str] | None, typer.Option("-p", "--param", help="Method parameter key=value "
                                                    "(repeatable).")] = None,
    grid: Annotated[str | None, typer.Option("--grid", help="Patch grid h,w [default: the file's 'grid' "
                                             "metadata, else a square N].")] = None,
    dtype_out: Annotated[str, typer.Option("--dtype-out", help="Stored token dtype: float16, bfloat16, "
                                           "float32.")] = "float16",
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing but errors.")] = False,
) -> None:
    """Compress features from your own encoder (no video, no model): the CLI of vtc.compress_features."""
    from vtc.api import compress_features
    from vtc.io.store import load_features
    from vtc.run.config import parse_param
    from vtc.run.plan import check_output

    try:
        if dtype_out not in ("float16", "bfloat16", "float32"):
            raise UsageError(f"--dtype-out must be float16, bfloat16 or float32, not '{dtype_out}'.")
        params = dict(parse_param(p) for p in (param or []))
        grid_hw = None
        if grid is not None:
            try:
                h, w = (int(v) for v in grid.split(","))
            except ValueError:
                raise UsageError(f"--grid must look like h,w (e.g. 14,14), not '{grid}'.") from None
            grid_hw = (h, w)
        check_output(features, output)
        feats, signals, file_grid = load_features(features)
        grid_hw = grid_hw or file_grid
        res = compress_features(feats, method=method, ratio=ratio, grid=grid_hw, params=params, **signals)
        res.save(output, frame_times=signals.get("times"), dtype_out=dtype_out,
                 source={"path": str(features.resolve())})
    except VtcError as e:
        raise _fail(e) from None
    if not quiet:
        out.print(f"{safe(output)}: {res.reduction.num_outputs} of {res.reduction.num_sources} tokens "
                  f"({100 * res.ratio_achieved:.1f}%)", highlight=False)


@app.command()
def methods(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List every compression method: its default ratio, variants, signals and parameters."""
    from vtc.methods import all_methods

    specs = all_methods()
    if as_json:
        print_json([
            {"name": s.name, "summary": s.summary, "signals": list(s.signals), "optional_signals":
             list(s.optional_signals), "paper": s.paper, "paper_ratio": s.paper_ratio, "variants": s.variants,
             "runs": "inside the encoder" if s.in_encoder is not None else "after the encoder",
             "params": [{"name": p.name, "default": p.default, "type": p.describe_type(), "help": p.help,
                         "author_name": p.author_name, "choices": list(p.choices) if p.choices else None,
                         "range": [p.lo, p.hi] if p.lo is not None or p.hi is not None else None}
                        for p in s.params]}
            for s in specs])
        return
    for s in specs:
        out.print(f"[bold cyan]{s.name}[/] — {s.summary}", highlight=False)
        ratio = f"{s.paper_ratio:g}" if s.paper_ratio is not None else "none (its own knob sets the count)"
        out.print(f"  default ratio: {ratio}", style="dim", highlight=False)
        for v, settings in s.variants.items():
            knobs = ", ".join(f"{k}={val!r}" for k, val in settings.items())
            out.print(f"  variant [bold]{s.name}:{v}[/]: {knobs}", style="dim", highlight=False)
        if s.signals:
            out.print(f"  needs: {', '.join(s.signals)}", style="dim", highlight=False)
        if s.in_encoder is not None:
            out.print("  runs inside the encoder (between its blocks; not on --target or precomputed features)",
                      style="dim", highlight=False)
        for p in s.params:
            author = f" (authors: {p.author_name})" if p.author_name and p.author_name != p.name else ""
            allowed = f" one of {', '.join(map(str, p.choices))}" if p.choices else ""
            if p.lo is not None or p.hi is not None:
                allowed = f" in {p.describe_range()}"
            out.print(f"  [green]{p.name}[/]={p.default!r}{author}: {p.help}{allowed}", highlight=False)


@app.command()
def export(
    file: Annotated[str, typer.Argument(help="A Qwen target-space token file (vtc compress --target qwen3-vl); a "
                                        "URL (s3://…) works too.", show_default=False)],
    to: Annotated[str, typer.Option("--to", help="Engine: vllm or sglang.", show_default=False)],
    output: Annotated[str | None, typer.Option("-o", "--output", help="File to write (torch.save) [default: "
                                              "FILE with .vllm.pt / .sglang.pt]")] = None,
    storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help="Object storage option "
                                                             "key=value (repeatable).")] = None,
) -> None:
    """Write a token file in the shapes vLLM or SGLang take for precomputed video tokens (Qwen2.5-VL)."""
    from vtc.export import export as do_export
    from vtc.io.storage import location, parse_option, set_options

    try:
        set_options(dict(parse_option(o) for o in (storage_option or [])))
        out_path = location(output) if output else location(file).with_suffix(f".{to}.pt")
        written = do_export(location(file), to, out_path)
    except VtcError as e:
        raise _fail(e) from None
    out.print(f"wrote {safe(written)}", highlight=False)


@app.command()
def show(
    file: Annotated[str, typer.Argument(help="Token file (.safetensors) written by vtc; a URL (s3://…) works too.",
                                        show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable summary.")] = False,
    video: Annotated[Path | None, typer.Option("--video", help="The source video, to draw the frames' pixels.")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML report.")] = None,
    png_out: Annotated[Path | None, typer.Option("--png", help="Write a PNG contact sheet.")] = None,
    max_frames: Annotated[int, typer.Option("--max-frames", help="Frames drawn at most (uniformly chosen).")] = 256,
    storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help="Object storage option "
                                                             "key=value (repeatable).")] = None,
) -> None:
    """Summarise a token file: video, model, method, tokens before → after, tokens per frame.

    With --html/--png, draw which patches were kept (clear), dropped (dimmed) and merged (one colour per output
    token), with a timeline of tokens per frame and the temporal segments.
    """
    from vtc.io.storage import parse_option, set_options
    from vtc.show import summary, summary_table

    try:
        set_options(dict(parse_option(o) for o in (storage_option or [])))
        info = summary(file)
        if html_out or png_out:
            from vtc.report import build, check_report_path, write_html, write_png

            if video is not None and not video.exists():
                raise UsageError(f"--video {video}: no such file.")
            for opt, target in (("--html", html_out), ("--png", png_out)):
                if target is not None:
                    check_report_path(opt, target)
            rep = build(file, video, max_frames=max_frames)
            if rep["warning"]:
                console.print(f"[bold yellow]warning:[/] {safe(rep['warning'])}", highlight=False, soft_wrap=True)
            if html_out:
                write_html(rep, html_out)
            if png_out:
                write_png(rep, png_out)
    except VtcError as e:
        raise _fail(e) from None
    if as_json:
        print_json(info)
    else:
        summary_table(info, out)
        for p in (html_out, png_out):
            if p:
                out.print(f"wrote {safe(p)}", highlight=False)


@app.command()
def doctor() -> None:
    """Print versions (PyAV/FFmpeg, open_clip, torch, CUDA) and the device and dtype vtc would use."""
    import av

    def row(k: str, v: str) -> None:
        out.print(f"[bold]{k:<26}[/]{safe(v)}", highlight=False)

    # what needs no torch first: these lines appear at once; torch's own facts follow its import
    row("vtc", __version__)
    row("python", sys.version.split()[0])
    row("PyAV", av.__version__)
    row("FFmpeg libavcodec", ".".join(map(str, av.library_versions.get("libavcodec", ()))))
    row("open_clip", _version_of("open_clip_torch") or "not installed")
    row("transformers (--target)", _version_of("transformers") or "not installed: pip install 'vtc[hf]'")
    import torch

    from vtc.io.encode import pick_device, pick_dtype

    dev = pick_device("auto")
    row("torch", torch.__version__)
    row("CUDA (torch build)", str(torch.version.cuda or "none"))
    row("CUDA available", str(torch.cuda.is_available()))
    row("GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
    row("device", str(dev))
    row("dtype", str(pick_dtype(dev, "auto")).replace("torch.", ""))
    row("threads", str(torch.get_num_threads()))


def _version_of(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def run() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    run()
