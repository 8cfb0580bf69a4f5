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
from vtc.errors import FormatError, UsageError, VtcError

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
                                                show_default=False, metavar="VIDEO")],
    output: Annotated[str | None, typer.Option("-o", "--output", help="Token file to write [default: beside the "
                                              "input, .safetensors]; for several inputs, the output directory "
                                              "(the input tree is mirrored under it). A URL (s3://…) writes to "
                                              "object storage.")] = None,
    method: Annotated[str | None, typer.Option("-m", "--method", help="Compression method; 'vtc methods' "
                                               "lists them [default: fastvid]")] = None,
    ratio: Annotated[float | None, typer.Option("-r", "--ratio", help="Fraction of tokens to keep, in (0, 1] "
                                                "[default: the method's paper setting]")] = None,
    param: Annotated[list[str] | None, typer.Option("-p", "--param", metavar="KEY=VALUE", help="Method parameter "
                                                    "key=value (repeatable), e.g. -p tau=0.8")] = None,
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
                                               "by its own vision path, e.g. llava-onevision, llava-video, "
                                               "qwen2.5-vl, qwen3-vl (vtc targets lists them; needs --target-model; "
                                               "pip install 'vtc[hf]').")] = None,
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
    live: Annotated[bool, typer.Option("--live", help="INPUT is a live stream (rtsp://, srt://, udp://, tcp://, "
                                       "http(s):// HLS, '-' for stdin, or a device with --live-format): compress it "
                                       "as it arrives into -o DIR, one token file per --chunk seconds.")] = False,
    chunk: Annotated[float, typer.Option("--chunk", help="Live: seconds of stream per chunk file.")] = 10.0,
    reconnect: Annotated[int, typer.Option("--reconnect", help="Live: reopen a source that drops or stalls up to "
                                           "N times in a row (the gap is recorded).")] = 0,
    stall_timeout: Annotated[float, typer.Option("--stall-timeout", help="Live: seconds without data before the "
                                                 "source counts as stalled.")] = 10.0,
    live_format: Annotated[str | None, typer.Option("--live-format", help="Live: FFmpeg input format (mpegts, "
                                                    "v4l2, avfoundation, …) [default: probed; mpegts on stdin]")
                           ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="One file: replace an existing file at -o even "
                                            "if it is read-only or not a vtc token file.")] = False,
) -> None:
    """Compress videos into token files (decode → encode → compress → store).

    One file: writes FILE.safetensors beside it (or -o PATH). Several files, a directory or a glob: batch mode,
    with -o OUTDIR, a manifest (vtc-manifest.jsonl), resume and failures recorded per input. With --live, a stream
    compressed as it arrives into -o DIR (chunk files and index.json); Ctrl-C writes the current chunk and stops.
    """
    import glob

    from vtc.io.storage import is_url, location, parse_option, set_options

    if live:
        _live(inputs, Path(output) if output is not None else None, dict(
            method=method, ratio=ratio, frames=frames, fps=fps, every=every, model=model, pretrained=pretrained,
            checkpoint=str(checkpoint) if checkpoint else None, layer=layer, device=device, dtype=dtype,
            target=target, target_model=target_model, batch_size=batch_size, dtype_out=dtype_out, query=query,
            memory_budget=memory_budget), param, preset, quiet=quiet, chunk=chunk, reconnect=reconnect,
            stall_timeout=stall_timeout, live_format=live_format)
        return
    try:
        set_options(dict(parse_option(o) for o in (storage_option or [])))
        # one existing file, or one path that is no glob pattern with matches (a missing file is reported as
        # such); patterns match recursively ('clips/**/*.avi'); a URL: one object
        single = len(inputs) == 1 and out_format == "files" and (
            _single_remote(inputs[0]) if is_url(inputs[0]) else not Path(inputs[0]).is_dir() and (
                Path(inputs[0]).exists() or not any(ch in inputs[0] for ch in "*?[")
                or not glob.glob(inputs[0], recursive=True)))
    except VtcError as e:
        raise _fail(e) from None
    if not single:
        if output is not None and location(output).suffix == ".safetensors" and not location(output).is_dir():
            raise _fail(UsageError(f"several inputs go to a directory, not to the file {output}; give -o OUTDIR."))
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
    input = location(inputs[0])
    try:
        from vtc.io.decode import check_input

        check_input(input)  # before torch is imported: a typo costs a fraction of a second, not seconds and a GB
    except VtcError as e:
        raise _fail(e) from None
    from vtc.api import compress as api_compress
    from vtc.run.config import parse_param

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
        name = safe(input.name)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not show_bar,
                      transient=True) as bar:
            tasks: dict[str, Any] = {}
            said: set[str] = set()
            t_call = time.perf_counter()

            def progress(stage: str, done: int, total: int | None) -> None:
                if show_bar:  # one bar per stage, with the planned total and an ETA where it is known
                    if stage not in tasks:
                        tasks[stage] = bar.add_task(f"{name}: {stage}", total=total)
                    bar.update(tasks[stage], completed=done, total=total)
                elif not quiet and stage not in said:  # not a terminal: one line as each stage starts
                    said.add(stage)
                    of = f" ({total} frames)" if total else ""
                    console.print(f"{name}: {stage}{of} … {time.perf_counter() - _T0:.1f} s", highlight=False)

            res = api_compress(input, output=output, preset=preset, progress=progress, overwrite=overwrite,
                               **options)
    except VtcError as e:
        raise _fail(e) from None
    if not quiet:
        t = res.timings
        total = time.perf_counter() - _T0
        note = " [yellow](truncated input: kept what decoded)[/]" if res.truncated else ""
        kept = f"{100 * res.ratio_achieved:.1f} %"
        if res.ratio_note:  # the ratio asked for was not what the method kept: say so, and why
            kept = f"[yellow]asked {100 * (res.ratio_asked or 0):.1f} %, got {kept} ({safe(res.ratio_note)})[/]"
        out.print(
            f"{safe(res.output)}: {res.num_tokens} of {res.num_source_tokens} tokens "
            f"({kept}) in {total:.2f}s — start-up {t_call - _T0:.2f}s, "
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


def _live(inputs: list[str], output: Path | None, options: dict[str, Any], param: list[str] | None,
          preset: str | None, *, quiet: bool, chunk: float, reconnect: int, stall_timeout: float,
          live_format: str | None) -> None:
    """`vtc compress SOURCE --live -o DIR`: a line per chunk, SIGINT/SIGTERM finish the current chunk."""
    import signal
    import threading

    from vtc.api import compress_live
    from vtc.run.config import parse_param

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():  # a second signal: stop now
            raise KeyboardInterrupt
        stop.set()
        console.print(f"{signal.Signals(signum).name}: writing the current chunk, then stopping", highlight=False)

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if quiet:
            return
        if kind == "chunk":
            lat = data["latency_s"]
            console.print(f"{data['file']}: {data['t0']:.1f}–{data['t1']:.1f} s, {data['frames']} frames, "
                          f"{data['source_tokens']} → {data['tokens']} tokens, latency p50 {lat['p50']:.2f} s "
                          f"(max {lat['max']:.2f} s)", highlight=False)
        elif kind == "behind":
            console.print(f"[bold yellow]warning:[/] encoding {data['frames']} frames took {data['encode_s']:.1f} s "
                          f"for {data['seconds']:.1f} s of stream: the encoder is slower than the stream and the "
                          f"latency will grow. Lower --fps, use a smaller --model, or a GPU.", highlight=False)
        elif kind == "gap":
            console.print(f"[yellow]gap[/] at {data['t']:.1f} s: {data['seconds']:.1f} s ({safe(data['reason'])})",
                          highlight=False)

    try:
        if len(inputs) != 1:
            raise UsageError(f"--live takes one source, not {len(inputs)}.")
        if output is None:
            raise UsageError("--live needs -o DIR: the directory that receives the chunk files and index.json.")
        params = dict(parse_param(p) for p in (param or []))
        if params:
            options["params"] = params
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            res = compress_live(inputs[0], output, chunk=chunk, reconnect=reconnect, stall_timeout=stall_timeout,
                                live_format=live_format, preset=preset, stop=stop, on_event=on_event, **options)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    except VtcError as e:
        raise _fail(e) from None
    if not quiet:
        p50, p95 = res.latency(0.5), res.latency(0.95)
        lat = f", latency p50 {p50:.2f} s, p95 {p95:.2f} s" if p50 is not None and p95 is not None else ""
        share = f" ({100 * res.tokens / res.source_tokens:.1f}%)" if res.source_tokens else ""
        out.print(f"{safe(res.output)}: {res.chunks} chunks, {res.frames} frames, {res.tokens} of "
                  f"{res.source_tokens} tokens{share}{lat}; {safe(res.stopped)}", highlight=False)
    if res.error is not None:
        raise _fail(res.error) from None


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
    features: Annotated[Path, typer.Argument(metavar="FEATURES", help="safetensors file with 'features' [T, N, D] "
                                             "(or [T, h, w, D]) and optional signals under vtc's names (attn, "
                                             "pooled, keys, …).",
                                             show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Token file to write.")],
    method: Annotated[str, typer.Option("-m", "--method", help="Method, or method:variant (e.g. "
                                        "dycoke:reference); 'vtc methods' lists them.")] = "fastvid",
    ratio: Annotated[float | None, typer.Option("-r", "--ratio", help="Fraction of tokens to keep, in (0, 1] "
                                                "[default: the method's paper setting]")] = None,
    param: Annotated[list[str] | None, typer.Option("-p", "--param", metavar="KEY=VALUE", help="Method parameter "
                                                    "key=value (repeatable).")] = None,
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
    name: Annotated[str | None, typer.Argument(help="One method to describe (e.g. fastvid); all when omitted.",
                                               show_default=False, metavar="[NAME]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List every compression method (or describe one): its default ratio, variants, signals and parameters."""
    from vtc.methods.catalog import all_declarations, parse_declared  # the declarations alone: no torch

    specs = all_declarations()
    if name is not None:
        try:
            spec, _ = parse_declared(name)
        except VtcError as e:
            raise _fail(e) from None
        specs = [spec]
    if as_json:
        print_json([
            {"name": s.name, "summary": s.summary, "signals": list(s.signals), "optional_signals":
             list(s.optional_signals), "paper": s.paper, "paper_ratio": s.paper_ratio, "variants": s.variants,
             "runs": "inside the encoder" if s.inside_encoder else "after the encoder", "scope": s.scope,
             "params": [{"name": p.name, "default": p.default, "type": p.describe_type(), "help": p.help,
                         "author_name": p.author_name, "choices": list(p.choices) if p.choices else None,
                         "range": [p.lo, p.hi] if p.lo is not None or p.hi is not None else None}
                        for p in s.params]}
            for s in specs])
        return
    for i, s in enumerate(specs):
        if i:
            out.print()  # one blank line between methods: each reads as a block
        out.print(f"[bold cyan]{s.name}[/] — {safe(s.summary)}", highlight=False)
        if name is not None and s.paper:
            out.print(f"  paper: {safe(s.paper)}", highlight=False)
        ratio = f"{s.paper_ratio:g}" if s.paper_ratio is not None else "none (its own knob sets the count)"
        out.print(f"  default ratio: {ratio}", style="dim", highlight=False)
        for v, settings in s.variants.items():
            knobs = ", ".join(f"{k}={val!r}" for k, val in settings.items())
            out.print(f"  variant [bold]{s.name}:{v}[/]: {safe(knobs)}", style="dim", highlight=False)
        if s.signals:
            out.print(f"  needs: {', '.join(s.signals)}", style="dim", highlight=False)
        live = "frame by frame (exactly as offline)" if s.scope == "frame" else "per chunk"
        out.print(f"  scope: {s.scope} (--live: {live})", style="dim", highlight=False)
        if s.optional_signals:
            out.print(f"  uses when present: {', '.join(s.optional_signals)}", style="dim", highlight=False)
        if s.inside_encoder:
            out.print("  runs inside the encoder (between its blocks; not on --target or precomputed features)",
                      style="dim", highlight=False)
        if s.params:
            out.print("  parameters (-p NAME=VALUE):", style="dim", highlight=False)
        for p in s.params:
            author = f" (authors: {p.author_name})" if p.author_name and p.author_name != p.name else ""
            allowed = f" one of {', '.join(map(str, p.choices))}" if p.choices else ""
            if p.lo is not None or p.hi is not None:
                allowed = f" in {p.describe_range()}"
            out.print(f"    [green]{p.name}[/]={safe(repr(p.default))}{author}: {safe(p.help)}{allowed}",
                      highlight=False)
    if name is None:  # the whole list ends with the signal table
        from vtc.signals import SIGNALS

        out.print()
        out.print("[bold]signals[/] (what each is; on towers without a CLS token, the substitute used):",
                  highlight=False)
        for sname, doc in SIGNALS.items():
            out.print(f"  [green]{sname}[/] ({doc.provider}): {safe(doc.meaning)}", style="dim", highlight=False)


@app.command()
def presets(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the named presets (--preset NAME): their description and settings."""
    from vtc.run.presets import list_presets, read_preset  # file handling alone: no torch

    rows = []
    for preset_name, path in list_presets().items():
        try:
            data = read_preset(path)
        except VtcError as e:
            data = {"description": f"(unreadable: {e})"}
        rows.append({"name": preset_name, "path": str(path), "description": data.pop("description", ""),
                     "settings": data})
    if as_json:
        print_json(rows)
        return
    for row in rows:
        settings = ", ".join(f"{k}={v!r}" for k, v in row["settings"].items() if k != "params")
        params = ", ".join(f"{k}={v!r}" for k, v in (row["settings"].get("params") or {}).items())
        out.print(f"[bold cyan]{safe(row['name'])}[/] — {safe(row['description'])}", highlight=False)
        out.print(f"  {safe(settings)}" + (f"; params: {safe(params)}" if params else ""), style="dim",
                  highlight=False)
    out.print("Use one with --preset NAME, or --preset FILE.toml; explicit options override it.", style="dim",
              highlight=False)


@app.command()
def targets(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the target families (--target): the checkpoints' model types, default frames, engines."""
    from vtc.targets import describe_targets

    rows = describe_targets()
    if as_json:
        print_json(rows)
        return
    for r in rows:
        out.print(f"[bold cyan]{r['name']}[/] — {r['summary']}", highlight=False)
        out.print(f"  model types: {', '.join(r['model_types'])}; default frames: {r['frames']}; e.g. "
                  f"{r['example']}; vtc export: {', '.join(r['engines']) or 'none (vtc.hf only)'}", style="dim",
                  highlight=False)


@app.command()
def export(
    file: Annotated[str, typer.Argument(help="A Qwen target-space token file (vtc compress --target qwen3-vl); a "
                                        "URL (s3://…) works too.", show_default=False)],
    to: Annotated[str, typer.Option("--to", help="Engine: vllm or sglang.", show_default=False)],
    output: Annotated[str | None, typer.Option("-o", "--output", help="File to write (torch.save) [default: "
                                              "FILE with .vllm.pt / .sglang.pt]")] = None,
    storage_option: Annotated[list[str] | None, typer.Option("--storage-option", help="Object storage option "
                                                             "key=value (repeatable).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file at the output.")] = False,
) -> None:
    """Write a Qwen2.5-VL or Qwen3-VL target token file in the shapes vLLM or SGLang take for precomputed video
    tokens."""
    from vtc.export import export as do_export
    from vtc.io.storage import location, parse_option, set_options

    try:
        set_options(dict(parse_option(o) for o in (storage_option or [])))
        out_path = location(output) if output else location(file).with_suffix(f".{to}.pt")
        written = do_export(location(file), to, out_path, overwrite=overwrite)
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
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file at --html/--png even if "
                                            "vtc did not write it.")] = False,
) -> None:
    """Summarise a token file: video, model, method, tokens before → after, tokens per frame.

    With --html/--png, draw which patches were kept (clear), dropped (dimmed) and merged (one colour per output
    token), with a timeline of tokens per frame and the temporal segments.
    """
    from vtc.io.decode import check_input
    from vtc.io.storage import location, parse_option, set_options
    from vtc.show import summary, summary_table

    try:
        set_options(dict(parse_option(o) for o in (storage_option or [])))
        if max_frames < 1:
            raise UsageError(f"--max-frames must be ≥ 1, not {max_frames}.")
        info = summary(file)
        if html_out or png_out:
            from vtc.report import build, check_report_path, write_html, write_png

            if video is not None:
                check_input(video)  # a missing file, a folder or a FIFO (which would wait forever)
            for opt, target in (("--html", html_out), ("--png", png_out)):
                if target is not None:
                    check_report_path(opt, target, token_file=location(file), overwrite=overwrite)
            try:
                rep = build(file, video, max_frames=max_frames)
            except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:  # metadata of odd shapes
                raise _metadata_error(file, e) from None
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
        try:
            summary_table(info, out)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:  # metadata of odd shapes
            raise _fail(_metadata_error(file, e)) from None
        for p in (html_out, png_out):
            if p:
                out.print(f"wrote {safe(p)}", highlight=False)


def _metadata_error(file: str | Path, e: Exception) -> FormatError:
    """A token file whose metadata passed the reader's checks but not the report's use of it."""
    return FormatError(f"{file}: its metadata is incomplete or inconsistent ({type(e).__name__}: {str(e)[:80]}).")


@app.command()
def fidelity(
    videos: Annotated[list[Path], typer.Argument(help="Video files to measure on.", show_default=False)],
    target: Annotated[str | None, typer.Option("--target", help="The video LLM whose answers are measured (vtc "
                                               "targets lists them).")] = None,
    target_model: Annotated[str | None, typer.Option("--target-model", help="Its transformers checkpoint (the "
                                                     "whole model is loaded).")] = None,
    methods: Annotated[str, typer.Option("--methods", help="Methods to compare, comma-separated (name or "
                                         "name:variant); 'none' is the uncompressed run itself.")
                       ] = "fastvid,dycoke,divprune",
    ratios: Annotated[str, typer.Option("--ratios", help="Fractions of tokens kept, comma-separated.")
                      ] = "0.1,0.25,0.5",
    prompts: Annotated[Path | None, typer.Option("--prompts", help="Text file of questions, one a line "
                                                 "[default: five generic video questions].")] = None,
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for fidelity.jsonl (resume), "
                                         ".json, .csv and the cached reference.")] = Path("vtc-fidelity"),
    answer_tokens: Annotated[int, typer.Option("--answer-tokens", help="N: tokens of the reference's greedy "
                                               "answer scored per prompt.")] = 8,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random-selection control.")] = 0,
    no_controls: Annotated[bool, typer.Option("--no-controls", help="Skip the random and pool controls.")] = False,
    param: Annotated[list[str] | None, typer.Option("-p", "--param", help="Method parameter METHOD.key=value "
                                                    "(repeatable), e.g. -p dycoke.prune_share=0.5")] = None,
    frames: Annotated[int | None, typer.Option("--frames", "-t", help="Sample T frames uniformly.")] = None,
    fps: Annotated[float | None, typer.Option("--fps", help="Sample F frames per second instead.")] = None,
    every: Annotated[int | None, typer.Option("--every", help="Sample every n-th frame instead.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda [default: auto]")] = None,
    dtype: Annotated[str | None, typer.Option("--dtype", help="Model precision: auto, fp32, fp16, bf16")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON summary instead of the table.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Print nothing but errors.")] = False,
) -> None:
    """Measure how far each method × ratio moves the target LLM's answers from the uncompressed run (label-free:
    loyalty to the uncompressed model, not accuracy). Each video is decoded and encoded once; the reference is
    cached; an interrupted sweep resumes from OUTPUT/fidelity.jsonl.
    """
    from vtc.api import fidelity as api_fidelity
    from vtc.run.config import parse_param

    try:
        params: dict[str, dict[str, Any]] = {}
        for p in param or []:
            key, value = parse_param(p)
            name, dot, pkey = key.partition(".")
            if not dot or not name or not pkey:
                raise UsageError(f"-p takes METHOD.key=value for fidelity (e.g. dycoke.prune_share=0.5), not '{p}'.")
            params.setdefault(name, {})[pkey] = value
        fancy = not quiet and not as_json and console.is_terminal
        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TimeRemainingColumn(), console=console, disable=not fancy)
        task = bar.add_task("runs", total=None)
        state = {"done": 0, "total": 0}

        def on_event(kind: str, data: dict[str, Any]) -> None:
            if kind == "start":
                state["done"], state["total"] = data["done"], data["total"]
                bar.update(task, total=data["total"], completed=data["done"])
                if not quiet and not as_json and not fancy:
                    console.print(f"{data['videos']} videos × {data['runs']} method runs = {data['total']}; "
                                  f"{data['done']} already done", highlight=False)
            elif kind == "note" and not quiet:
                console.print(f"note: {safe(data['message'])}", highlight=False, soft_wrap=True)
            elif kind == "run" and data["kind"] == "method":
                state["done"] += 1
                bar.update(task, completed=state["done"], description=f"{safe(data['method'])} {data['ratio']}")
                if not quiet and not as_json and not fancy:
                    console.print(f"\\[{state['done']}/{state['total']}] {safe(Path(data['video']).name)} "
                                  f"{safe(data['method'])} {data['ratio']}: KL {data['kl_answer']:.4g}",
                                  highlight=False)

        with bar:
            summary = api_fidelity(videos, output, target=target, target_model=target_model, methods=methods,
                                   ratios=ratios, prompts=prompts, answer_tokens=answer_tokens, seed=seed,
                                   controls=not no_controls, params=params, on_event=on_event, frames=frames,
                                   fps=fps, every=every, device=device, dtype=dtype)
    except VtcError as e:
        raise _fail(e) from None
    for video, err in summary.failed.items():
        console.print(f"[red]failed[/] {safe(video)}: {safe(err)}", highlight=False, soft_wrap=True)
    if as_json:
        print_json(summary.as_dict())
    elif not quiet:
        _fidelity_table(summary)
    if summary.failed:
        raise typer.Exit(1)


def _fidelity_table(summary: Any) -> None:
    from rich.table import Table

    from vtc.run.fidelity import iter_rows

    rows = list(iter_rows(summary))
    tab = Table(*rows[0], title=f"fidelity vs the uncompressed run ({summary.videos} video"
                f"{'s' if summary.videos != 1 else ''}; means over videos)")
    for r in rows[1:]:
        tab.add_row(*r)
    out.print(tab, width=None if out.is_terminal else 160)  # a pipe or a log gets the whole table
    for line in summary.pareto:
        out.print(safe(line), highlight=False)
    out.print(f"{summary.computed} runs computed, {summary.reused} reused; encoder passes "
              f"{sum(summary.encoder_passes.values())}, LLM forwards {summary.llm_forwards}; "
              f"{safe(summary.outdir / 'fidelity.json')}, .csv, .html, .png", highlight=False)


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
    row("Pillow (show --html/--png)", _version_of("pillow") or "not installed: pip install 'vtc[show]'")
    row("Ray (--engine ray)", _version_of("ray") or "not installed: pip install 'vtc[ray]'")
    row("model weights cached", _cached_weights())
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


def _cached_weights() -> str:
    """What the Hugging Face hub cache holds (open_clip and transformers load from it), without importing them."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    hub = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub"))
    models = sorted(p.name[len("models--"):].replace("--", "/") for p in hub.glob("models--*")) if hub.is_dir() else []
    if not models:
        return (f"none in {hub}: the first run downloads them (network needed), or pass --checkpoint; "
                f"python -m vtc.testing random-checkpoint MODEL OUT.pt makes random weights for offline trials")
    return f"{len(models)} in {hub}: " + ", ".join(models[:6]) + (" …" if len(models) > 6 else "")


def _version_of(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C: one line saying what state the run leaves, then the usual exit 130."""
    console.print("[bold yellow]interrupted:[/] stopped; no half-written file is left (outputs are written "
                  "atomically), and a batch resumes where it stopped.", highlight=False)
    raise KeyboardInterrupt


def run() -> None:
    """Console-script entry point (see `_leave` for how it exits)."""
    import signal

    signal.signal(signal.SIGINT, _interrupted)
    code: int | str | None = 0
    try:
        app()
    except SystemExit as e:
        code = e.code
    _leave(code)


def _leave(code: int | str | None) -> None:
    """Exit with `code` as Python would, without its teardown.

    A command that imported torch (and open_clip, transformers) spends about a second after its work is done
    freeing every module and object (2 s on a loaded machine, against 0.05 s without), the largest cost left
    outside the stages' timers. So, as Python's own exit does: wait for the other non-daemon threads, run the
    atexit handlers (temporary files, Ray's shutdown, logging) and flush the standard streams; then end the
    process with the command's exit code. Commands that never imported torch exit the ordinary way."""
    if "torch" not in sys.modules:
        sys.exit(code)
    import atexit
    import threading

    threading._shutdown()  # type: ignore[attr-defined]  # what Py_FinalizeEx does first
    atexit._run_exitfuncs()
    if isinstance(code, str):  # SystemExit("message"): printed, exit status 1
        print(code, file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


if __name__ == "__main__":
    run()
