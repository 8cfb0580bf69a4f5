"""Object storage against a real S3 API server (moto's server mode on 127.0.0.1; nothing of vtc's is mocked): one
file, a batch with a broken object, resume, a kill mid-batch, a connection dropped mid-read, show and export."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import vtc
from vtc.cli import app
from vtc.io.storage import RemotePath, set_options
from vtc.run.batch import read_manifest
from vtc.testing import synth_clip

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from tests.s3server import S3Server, child_env  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server


@pytest.fixture()
def env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    set_options({})
    return s3


def model_opts(model_args, frames: int = 4) -> list[str]:  # noqa: ANN001
    a = model_args("clip")
    return ["--method", "pool", "--frames", str(frames), "--model", a["model"], "--checkpoint", a["checkpoint"]]


def test_single_file_equals_local_and_show(env: S3Server, clip_path: Path, tmp_path: Path, model_args) -> None:  # noqa: ANN001
    """s3:// in and out: the same tokens as the local file gives; `show` and `load` read the object; the object
    is the only thing written (no temporary objects)."""
    env.bucket("single-in")
    env.bucket("single-out")
    env.put("s3://single-in/videos/clip.mp4", clip_path)
    local = tmp_path / "clip.safetensors"
    r = runner.invoke(app, ["compress", str(clip_path), "-o", str(local), *model_opts(model_args)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["compress", "s3://single-in/videos/clip.mp4", "-o", "s3://single-out/tok/",
                            *model_opts(model_args)])
    assert r.exit_code == 0, r.output
    assert env.keys("single-out") == ["tok/clip.safetensors"]
    remote, ref = vtc.load("s3://single-out/tok/clip.safetensors"), vtc.load(local)
    assert torch.equal(remote.tokens, ref.tokens) and torch.equal(remote.positions, ref.positions)
    assert remote.meta["video"]["path"] == "s3://single-in/videos/clip.mp4"
    assert remote.meta["video"]["etag"] and remote.meta["video"]["sha256"] is None
    r = runner.invoke(app, ["show", "s3://single-out/tok/clip.safetensors", "--json"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["file"] == "s3://single-out/tok/clip.safetensors" and info["tokens_after"] == ref.tokens.shape[0]


def test_errors_are_one_line(env: S3Server, clip_path: Path, model_args) -> None:  # noqa: ANN001
    """No bucket, no object, a wrong key: one line each, a non-zero exit, nothing written."""
    env.bucket("err-in")
    env.put("s3://err-in/clip.mp4", clip_path)
    for args in (["s3://no-such-bucket/clip.mp4", "-o", "s3://err-in/out.safetensors"],
                 ["s3://err-in/missing.mp4", "-o", "s3://err-in/out.safetensors"]):
        r = runner.invoke(app, ["compress", *args, *model_opts(model_args)])
        assert r.exit_code == 2, r.output
        assert len(r.output.strip().splitlines()) == 1 and "error:" in r.output, r.output
    r = runner.invoke(app, ["compress", "s3://err-in/clip.mp4", "-o", "s3://no-such-bucket/out.safetensors",
                            *model_opts(model_args)])
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1, r.output
    r = runner.invoke(app, ["show", "s3://err-in/nothing.safetensors"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert env.keys("err-in") == ["clip.mp4"]


def test_batch_broken_object_and_resume(env: S3Server, clip_path: Path, silent_clip: Path, model_args) -> None:  # noqa: ANN001
    """A prefix with a broken object: the others are done, the failure is a manifest record; the manifest is
    segment objects (no appends); a rerun skips what is done; --retry-failed retries only the failure."""
    env.bucket("batch-in")
    env.bucket("batch-out")
    env.put("s3://batch-in/v/a.mp4", clip_path)
    env.put("s3://batch-in/v/sub/b.mp4", silent_clip)
    env.put("s3://batch-in/v/broken.mp4", b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    env.put("s3://batch-in/v/notes.txt", b"not a video")
    r = runner.invoke(app, ["compress", "s3://batch-in/v/", "-o", "s3://batch-out/t", "--json",
                            *model_opts(model_args)])
    assert r.exit_code == 1, r.output
    assert r.output.strip(), (r.exit_code, repr(r.exception))
    s = json.loads(r.output)
    assert (s["ok"], s["failed"], s["total"]) == (2, 1, 3)
    keys = env.keys("batch-out")
    assert [k for k in keys if k.endswith(".safetensors")] == ["t/a.safetensors", "t/sub/b.safetensors"]
    manifests = [k for k in keys if k.startswith("t/vtc-manifest")]
    assert len(manifests) == 1 and manifests[0].endswith("-0000.jsonl")
    recs = read_manifest(RemotePath("s3://batch-out/t"))
    bad = recs["s3://batch-in/v/broken.mp4"]
    assert bad["status"] == "failed" and "cannot be opened" in bad["error"] and "\n" not in bad["error"]
    assert recs["s3://batch-in/v/a.mp4"]["output"] == "s3://batch-out/t/a.safetensors"
    assert vtc.load("s3://batch-out/t/sub/b.safetensors").num_frames == 4
    r = runner.invoke(app, ["compress", "s3://batch-in/v/", "-o", "s3://batch-out/t", "--json",
                            *model_opts(model_args)])
    s = json.loads(r.output)
    assert (s["ok"], s["failed"], s["skipped"]) == (0, 1, 2), r.output
    env.put("s3://batch-in/v/broken.mp4", clip_path)  # fixed
    r = runner.invoke(app, ["compress", "s3://batch-in/v/", "-o", "s3://batch-out/t", "--json", "--retry-failed",
                            *model_opts(model_args)])
    s = json.loads(r.output)
    assert r.exit_code == 0 and (s["ok"], s["skipped"]) == (1, 2), r.output
    assert all(v["status"] == "ok" for v in read_manifest(RemotePath("s3://batch-out/t")).values())


def test_kill_mid_batch_then_resume(env: S3Server, clip_path: Path, models) -> None:  # noqa: ANN001
    """SIGKILL a batch writing to S3 at two moments: every object present is a complete token file; the rerun
    finishes the rest and nothing else is in the bucket."""
    env.bucket("kill-in")
    env.bucket("kill-out")
    for i in range(6):
        env.put(f"s3://kill-in/v{i}.mp4", clip_path)
    cfg, ckpt = models["clip"]
    cmd = [sys.executable, "-m", "vtc.cli", "compress", "s3://kill-in/", "-o", "s3://kill-out/t", "--method", "pool",
           "--frames", "8", "--model", str(cfg), "--checkpoint", str(ckpt), "--quiet"]
    e = child_env(env)
    for delay in (3.0, 4.5):
        p = subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        for k in env.keys("kill-out"):
            if k.endswith(".safetensors"):
                vtc.load(f"s3://kill-out/{k}")  # complete and valid
    done = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    keys = env.keys("kill-out")
    assert [k for k in keys if not k.startswith("t/vtc-manifest")] == [f"t/v{i}.safetensors" for i in range(6)]
    recs = read_manifest(RemotePath("s3://kill-out/t"))
    assert {r["status"] for k, r in recs.items() if k.startswith("s3://")} == {"ok"}
    for i in range(6):
        assert vtc.load(f"s3://kill-out/t/v{i}.safetensors").num_frames == 8


def test_connection_dropped_mid_read(env: S3Server, tmp_path: Path, model_args, monkeypatch) -> None:  # noqa: ANN001
    """The server goes away in the middle of a video's bytes and comes back: within the retry window the read
    resumes at its offset and the batch completes; past it the video fails with one line (not as a truncated
    video), nothing half-written, and a rerun completes it."""
    big = synth_clip(tmp_path / "big.mp4", seconds=6.0, size=(160, 120), audio=False)
    env.bucket("drop-in")
    env.bucket("drop-out")
    for i in range(2):
        env.put(f"s3://drop-in/v{i}.mp4", big)
    # planning lists and reads the manifest: cut once ~half of the first video's bytes have gone through
    env.relay.cut_after(big.stat().st_size // 2, down=2.0)
    r = runner.invoke(app, ["compress", "s3://drop-in/", "-o", "s3://drop-out/t", "--json", *model_opts(model_args)])
    assert env.relay.cuts == 1
    assert r.exit_code == 0, r.output
    local = tmp_path / "v.safetensors"
    assert runner.invoke(app, ["compress", str(big), "-o", str(local), *model_opts(model_args)]).exit_code == 0
    for i in range(2):
        assert torch.equal(vtc.load(f"s3://drop-out/t/v{i}.safetensors").tokens, vtc.load(local).tokens)
    # now an outage longer than the retry window
    # (the client's own retries shortened too: botocore's off, s3fs's five take about 2 s)
    monkeypatch.setenv("VTC_READ_RETRY_SECONDS", "0.5")
    env.relay.cut_after(big.stat().st_size // 2, down=8.0)
    quick = json.dumps({"retries": {"max_attempts": 1}, "connect_timeout": 1})
    r = runner.invoke(app, ["compress", "s3://drop-in/", "-o", "s3://drop-out/u", "--json", *model_opts(model_args),
                            "--storage-option", f"config_kwargs={quick}"])
    assert env.relay.cuts == 2
    while env.relay.listener is None:  # until the server is back
        time.sleep(0.1)
    s = json.loads(r.output[r.output.index("{"):])
    assert s["failed"] >= 1, r.output
    for f in s["failures"]:
        assert "reading failed" in f["error"] or "storage error" in f["error"], f
        assert "\n" not in f["error"] and "truncated" not in f["error"]
    for k in env.keys("drop-out", "u/"):
        if k.endswith(".safetensors"):
            assert torch.equal(vtc.load(f"s3://drop-out/{k}").tokens, vtc.load(local).tokens)
    monkeypatch.setenv("VTC_READ_RETRY_SECONDS", "30")
    r = runner.invoke(app, ["compress", "s3://drop-in/", "-o", "s3://drop-out/u", "--json", *model_opts(model_args)])
    assert r.exit_code == 0, r.output
    assert [k for k in env.keys("drop-out", "u/") if k.endswith(".safetensors")] == ["u/v0.safetensors",
                                                                                    "u/v1.safetensors"]


def test_http_inputs_presigned_and_plain(env: S3Server, clip_path: Path, tmp_path: Path, model_args) -> None:  # noqa: ANN001
    """https:// inputs as users have them: a presigned S3 URL (the server serves byte ranges: streamed) and a
    plain HTTP server without range support (copied to a temporary file first); both give the local file's
    tokens, and the default output name drops the URL's query string."""
    import functools
    import http.server
    import threading

    env.bucket("http-in")
    env.put("s3://http-in/v/clip.mp4", clip_path)
    ref_out = tmp_path / "ref.safetensors"
    assert runner.invoke(app, ["compress", str(clip_path), "-o", str(ref_out), *model_opts(model_args)]).exit_code == 0
    ref = vtc.load(ref_out)
    url = env.client().generate_presigned_url("get_object", Params={"Bucket": "http-in", "Key": "v/clip.mp4"},
                                              ExpiresIn=600)
    assert "?" in url
    out_dir = tmp_path / "signed"
    r = runner.invoke(app, ["compress", url, "-o", f"{out_dir}/", *model_opts(model_args)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out_dir.iterdir()) == ["clip.safetensors", "vtc-manifest.jsonl"]
    assert torch.equal(vtc.load(out_dir / "clip.safetensors").tokens, ref.tokens)

    served = tmp_path / "www"
    served.mkdir()
    (served / "clip.mp4").write_bytes(clip_path.read_bytes())
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # no Range support
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        r = runner.invoke(app, ["compress", f"{base}/clip.mp4", "-o", str(tmp_path / "plain.safetensors"),
                                *model_opts(model_args)])
        assert r.exit_code == 0, r.output
        assert torch.equal(vtc.load(tmp_path / "plain.safetensors").tokens, ref.tokens)
        r = runner.invoke(app, ["compress", f"{base}/missing.mp4", "-o", str(tmp_path / "m.safetensors"),
                                *model_opts(model_args)])
        assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
        assert not (tmp_path / "m.safetensors").exists()
    finally:
        httpd.shutdown()
