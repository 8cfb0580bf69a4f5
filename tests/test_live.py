"""Live mode: a real MPEG-TS stream (tests/live_source.py muxes a clip at real-time pace) into a pipe or a local TCP
socket, compressed chunk by chunk while it runs; compared with the offline run of the same clip."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import vtc
from vtc.errors import InputError, UsageError
from vtc.io.live import Sampler
from vtc.methods import all_methods
from vtc.signals import Signals

from .conftest import MEDIA

SOURCE = Path(__file__).with_name("live_source.py")
BIKES = MEDIA / "bikes.mp4"  # 10 s, 25 fps, H.264
needs_media = pytest.mark.skipif(not BIKES.exists(), reason="needs ../shared/media")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(clip: Path, port: int, speed: float = 1.0, loops: int = 1) -> subprocess.Popen[bytes]:
    """The muxer listening on 127.0.0.1:port; vtc connects to it."""
    p = subprocess.Popen([sys.executable, str(SOURCE), str(clip), f"tcp://127.0.0.1:{port}?listen=1",
                          "--speed", str(speed), "--loops", str(loops)])
    time.sleep(0.8)  # let it listen
    return p


def vtc_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "vtc.cli", "compress", *args]


def index(d: Path) -> dict:
    return json.loads((d / "index.json").read_text())


def tolerance(x: torch.Tensor) -> float:
    """Tokens are stored as float16: one run's float32 value and another's may round to neighbouring halves."""
    return float(x.float().abs().max()) * 2.0**-10


def test_sampler_picks_the_offline_frames() -> None:
    """Times 0, 0.04, … (25 fps) sampled at 2 fps: the nearest frame to each k/2 s, ties to the earlier one —
    what `iter_frames` picks for a file (targets start + k/fps)."""
    s = Sampler(2.0, None)
    kept = [t for i in range(250) for t, _ in s.push(i / 25, i)]
    import numpy as np

    frames = np.arange(250) / 25
    targets = np.arange(20) / 2.0
    nearest = [frames[np.argmin(np.abs(frames - x) + (frames > x) * 1e-12)] for x in targets]
    assert kept == pytest.approx(nearest)
    every = Sampler(None, 3)
    assert [t for i in range(10) for t, _ in every.push(float(i), i)] == [0.0, 3.0, 6.0, 9.0]


@pytest.mark.parametrize("spec", [s for s in all_methods() if s.scope == "frame" and s.in_encoder is None],
                         ids=lambda s: s.name)
def test_frame_scope_methods_split_anywhere(spec) -> None:  # noqa: ANN001
    """A method that declares scope "frame" gives the same tokens on any split of the frames (what makes its
    live chunks equal to the offline run)."""
    torch.manual_seed(0)
    t, h, w, d = 5, 4, 4, 8
    n = h * w
    x = torch.randn(1, n, d) + 0.5 * torch.randn(t, n, d).cumsum(0)
    sig = {"cls_attn": torch.rand(t, n).softmax(-1), "keys": torch.randn(t, n + 1, d), "cls_token": torch.randn(t, d),
           "received": torch.rand(t, n), "received_object": torch.rand(t, n), "attn": torch.rand(t, n).softmax(-1)}
    params = spec.resolve({})

    def run(a: int, b: int) -> torch.Tensor:
        s = Signals(**{k: v[a:b] for k, v in sig.items() if k in spec.wanted_signals})
        return spec.run(x[a:b], grid=(h, w), ratio=0.5, signals=s, params=params).apply(x[a:b])

    whole = run(0, t)
    assert torch.allclose(whole, torch.cat([run(0, 2), run(2, 3), run(3, t)]), atol=1e-6)


def test_live_refuses_what_it_cannot_do(model_args, tmp_path: Path) -> None:
    a = model_args()
    with pytest.raises(UsageError, match="--fps"):
        vtc.compress_live("-", tmp_path / "o", frames=8, **a)
    with pytest.raises(UsageError, match="network URL"):
        vtc.compress_live(str(tmp_path / "clip.mp4"), tmp_path / "o", **a)
    with pytest.raises(UsageError, match="audio"):
        vtc.compress_live("-", tmp_path / "o", method="omnizip", **a)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="other files"):
        vtc.compress_live("tcp://127.0.0.1:9", tmp_path / "busy", **a)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


@needs_media
def test_tcp_stream_chunks_while_running_and_equal_offline(model_args, tmp_path: Path) -> None:
    """Chunks appear (in the index) while the source still runs; joined, they equal the offline run of the clip:
    same frame times, tokens, positions and provenance (a per-frame method)."""
    a = model_args()
    port = free_port()
    src = serve(BIKES, port)
    out = tmp_path / "live"
    run = subprocess.Popen(vtc_cmd(f"tcp://127.0.0.1:{port}", "--live", "-o", str(out), "--fps", "2", "--chunk",
                                   "2", "-m", "fastervlm", "-r", "0.25", "--model", a["model"], "--checkpoint",
                                   a["checkpoint"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen_while_running = 0
    while src.poll() is None:
        if (out / "index.json").exists():
            seen_while_running = max(seen_while_running, len(index(out)["chunks"]))
        time.sleep(0.2)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert seen_while_running >= 2, "chunks must be durable while the stream is still running"
    idx = index(out)
    assert [c["index"] for c in idx["chunks"]] == [0, 1, 2, 3, 4]
    assert idx["ended"] == "the source ended"
    assert "5 chunks, 20 frames" in stdout
    live = vtc.load(out)
    off = vtc.load(vtc.compress(BIKES, output=tmp_path / "off.safetensors", fps=2, method="fastervlm", ratio=0.25,
                                **a).output)
    assert torch.equal(live["frame_times"], off["frame_times"] - off["frame_times"][0])
    assert torch.equal(live.positions, off.positions)
    assert torch.equal(live["source"], off["source"])
    assert torch.equal(live["merge_src"], off["merge_src"]) and torch.equal(live["merge_dst"], off["merge_dst"])
    assert torch.allclose(live.tokens.float(), off.tokens.float(), rtol=0, atol=tolerance(off.tokens))
    last_two = vtc.load(out, last=2)
    assert last_two.tokens.shape[0] == sum(c["tokens"] for c in idx["chunks"][-2:])
    assert float(last_two["frame_times"][0]) == pytest.approx(6.0)
    shown = subprocess.run([sys.executable, "-m", "vtc.cli", "show", str(out), "--json"], capture_output=True,
                           text=True)
    assert shown.returncode == 0 and json.loads(shown.stdout)["live"]["chunks"] == 5


@needs_media
def test_stdin_pipe_sigint_keeps_complete_chunks_and_a_new_run_continues(model_args, tmp_path: Path) -> None:
    """`muxer | vtc compress - --live`: SIGINT mid-stream writes the current chunk and exits 0, leaving only
    complete chunks; a second run into the same directory continues the index after a recorded gap."""
    a = model_args()
    out = tmp_path / "live"
    cmd = vtc_cmd("-", "--live", "-o", str(out), "--fps", "2", "--chunk", "2", "-m", "pool", "--model", a["model"],
                  "--checkpoint", a["checkpoint"])
    src = subprocess.Popen([sys.executable, str(SOURCE), str(BIKES), "-", "--start-after", str(out / "index.json")],
                           stdout=subprocess.PIPE)
    run = subprocess.Popen(cmd, stdin=src.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert src.stdout is not None
    src.stdout.close()
    deadline = time.time() + 300  # start-up on a loaded machine; the muxer waits for the index
    while time.time() < deadline and not ((out / "index.json").exists() and len(index(out)["chunks"]) >= 2):
        time.sleep(0.1)
    time.sleep(0.7)  # inside the third chunk
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=300)
    src.kill()
    src.wait()
    assert run.returncode == 0, stderr
    assert "writing the current chunk" in stderr
    first = index(out)
    assert first["ended"] == "stopped" and 2 <= len(first["chunks"]) <= 4
    assert sorted(p.name for p in out.iterdir()) == sorted(["index.json"] + [c["file"] for c in first["chunks"]])
    for c in first["chunks"]:
        vtc.load(out / c["file"])  # each chunk is complete and valid on its own
    assert sum(c["frames"] for c in first["chunks"]) < 20  # stopped before the stream's end
    # the source comes back: a new run continues the index
    src = subprocess.Popen([sys.executable, str(SOURCE), str(BIKES), "-", "--speed", "4"], stdout=subprocess.PIPE)
    done = subprocess.run(cmd, stdin=src.stdout, capture_output=True, text=True, timeout=300)
    src.wait()
    assert done.returncode == 0, done.stderr
    second = index(out)
    old = len(first["chunks"])
    assert [c["index"] for c in second["chunks"]] == list(range(len(second["chunks"])))
    assert second["chunks"][old]["t0"] >= first["chunks"][-1]["t1"]
    assert len(second["sessions"]) == 2 and second["gaps"][-1]["reason"] == "a new run"
    joined = vtc.load(out)
    assert bool((joined["frame_times"][1:] > joined["frame_times"][:-1]).all())
    assert joined.positions[:, 0].max() == sum(c["frames"] for c in second["chunks"]) - 1


def test_a_stalled_source_times_out_with_one_line(model_args, tmp_path: Path) -> None:
    """A server that accepts the connection and sends nothing: exit 2 after --stall-timeout, one line, no chunk."""
    a = model_args()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        # a source that never stalls out would hang here: the subprocess timeout is the guard, not a timing claim
        done = subprocess.run(vtc_cmd(f"tcp://127.0.0.1:{port}", "--live", "-o", str(tmp_path / "o"),
                                      "--stall-timeout", "1", "--model", a["model"], "--checkpoint", a["checkpoint"]),
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.count("error:") == 1
    assert "stall" in done.stderr or "cannot open" in done.stderr
    assert not list((tmp_path / "o").glob("chunk_*"))


@needs_media
def test_a_dropped_source_is_reconnected_and_the_gap_recorded(model_args, tmp_path: Path) -> None:
    a = model_args()
    port = free_port()
    first = serve(BIKES, port, speed=4)
    got: list[dict] = []
    out = tmp_path / "live"

    def restart_later() -> None:
        first.wait()
        time.sleep(1.5)
        got.append({"second": serve(BIKES, port, speed=4)})

    import threading

    threading.Thread(target=restart_later, daemon=True).start()
    summary = vtc.compress_live(f"tcp://127.0.0.1:{port}", out, fps=1, chunk=2, reconnect=8, method="pool", **a)
    got[0]["second"].wait()
    idx = index(out)
    assert summary.gaps and summary.gaps[0]["reason"] == "the source ended"
    assert len(idx["gaps"]) == 1 and idx["gaps"][0]["seconds"] > 1.0
    times = vtc.load(out)["frame_times"]
    assert times.numel() == 20 and bool((times[1:] > times[:-1]).all())
    assert float(times[10]) >= 10.0 + idx["gaps"][0]["seconds"] - 0.05  # the clock counts the time it was gone


@needs_media
def test_memory_stays_flat_over_a_long_stream(model_args, tmp_path: Path) -> None:
    """Ten minutes of stream (the clip 60 times, 25× real time) at 2 fps in 10-s chunks: resident memory after the
    last chunks is what it was after the first ones (chunks are freed once written)."""
    a = model_args()
    src = subprocess.Popen([sys.executable, str(SOURCE), str(BIKES), "-", "--speed", "25", "--loops", "60"],
                           stdout=subprocess.PIPE)
    done = subprocess.run(vtc_cmd("-", "--live", "-o", str(tmp_path / "o"), "--fps", "2", "--chunk", "10", "-m",
                                  "tome", "-q", "--model", a["model"], "--checkpoint", a["checkpoint"]),
                          stdin=src.stdout, capture_output=True, text=True, timeout=300)
    src.wait()
    assert done.returncode == 0, done.stderr
    chunks = index(tmp_path / "o")["chunks"]
    assert len(chunks) == 60
    rss = [c["rss_mb"] for c in chunks]
    if rss[0] is None:
        pytest.skip("no /proc/self/statm here")
    early, late = max(rss[5:15]), max(rss[-10:])
    assert late <= early * 1.05 + 16, f"resident memory grew from {early:.0f} MB to {late:.0f} MB"


def test_load_of_a_directory_without_index(tmp_path: Path) -> None:
    with pytest.raises((InputError, OSError)):
        vtc.load(tmp_path)


@needs_media
def test_live_chunks_in_a_targets_space_are_what_its_processor_makes(tmp_path: Path) -> None:
    """--target qwen2.5-vl: each chunk is a video item of its own — grid, second_per_grid_ts and the logits through
    vtc.hf equal the model's own processor and forward on that chunk's frames (VideoMetadata counted from the
    chunk's first decoded frame)."""
    import av
    import numpy as np
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration
    from transformers.video_utils import VideoMetadata

    import vtc.hf
    from vtc.testing import tiny_qwen2_5_vl

    ckpt = tiny_qwen2_5_vl(tmp_path / "qwen25")
    port = free_port()
    src = serve(BIKES, port, speed=4)
    out = tmp_path / "live"
    vtc.compress_live(f"tcp://127.0.0.1:{port}", out, fps=2, chunk=2, method="none", target="qwen2.5-vl",
                      target_model=str(ckpt), dtype_out="float32")
    src.wait()
    with pytest.raises(UsageError, match="separate video"):
        vtc.load(out)
    with av.open(str(BIKES)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]  # 25 fps, first frame at 0
    proc = AutoProcessor.from_pretrained(ckpt)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt).eval()
    text = "ab<|vision_start|><|video_pad|><|vision_end|>cd"
    f = vtc.load(out / "chunk_000001.safetensors")  # [2, 4) s: decoded frames 50..99
    first = 50
    idx = [round(float(t) * 25) - first for t in f["sampled_frame_times"]]
    meta = VideoMetadata(total_num_frames=50, fps=25.0, frames_indices=idx)
    ref = proc(text=[text], videos=[np.stack([frames[first + i] for i in idx])], video_metadata=[meta],
               do_sample_frames=False, return_tensors="pt")
    space = f.meta["space"]
    assert space["video_grid_thw"] == ref["video_grid_thw"][0].tolist()
    assert torch.equal(torch.tensor([space["second_per_grid_t"]], dtype=torch.float32), ref["second_per_grid_ts"])
    inputs = vtc.hf.video_inputs(f, model, proc.tokenizer(text).input_ids, after_video="model")
    with torch.no_grad():
        assert (model(**inputs).logits - model(**ref).logits).abs().max() <= 1e-4
