"""Batch mode: mirrored tree, failures as data, resume, retry, shards, atomic outputs under SIGKILL."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import vtc
from vtc.cli import app
from vtc.errors import UsageError
from vtc.run.batch import discover, parse_shard, read_manifest

runner = CliRunner()


@pytest.fixture()
def tree(tmp_path: Path, clip_path: Path, silent_clip: Path) -> Path:
    """in/a.mp4, in/sub/b.mp4, in/sub/deeper/c.mp4, in/broken.mp4 (not a video), in/notes.txt."""
    root = tmp_path / "in"
    (root / "sub" / "deeper").mkdir(parents=True)
    shutil.copy(clip_path, root / "a.mp4")
    shutil.copy(silent_clip, root / "sub" / "b.mp4")
    shutil.copy(clip_path, root / "sub" / "deeper" / "c.mp4")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    (root / "notes.txt").write_text("not a video")
    return root


def run(tree: Path, out: Path, model_args, *extra: str):  # noqa: ANN001, ANN201
    a = model_args("clip")
    return runner.invoke(app, ["compress", str(tree), "-o", str(out), "--method", "pool", "--frames", "4",
                               "--model", a["model"], "--checkpoint", a["checkpoint"], *extra])


def test_discover_mirrors_tree(tree: Path) -> None:
    rels = [str(i.rel) for i in discover([str(tree)])]
    assert rels == ["a.mp4", "broken.mp4", "sub/b.mp4", "sub/deeper/c.mp4"]


def test_batch_failures_are_data_and_resume(tree: Path, tmp_path: Path, model_args) -> None:  # noqa: ANN001
    out = tmp_path / "out"
    r = run(tree, out, model_args)
    assert r.exit_code == 1, r.output  # one input failed
    for rel in ("a", "sub/b", "sub/deeper/c"):
        f = vtc.load(out / f"{rel}.safetensors")
        assert f.num_frames == 4
    assert not (out / "broken.safetensors").exists()
    recs = read_manifest(out)
    assert len(recs) == 4
    bad = recs[str(tree / "broken.mp4")]
    assert bad["status"] == "failed" and "cannot be opened" in bad["error"] and bad["output"] is None
    good = recs[str(tree / "a.mp4")]
    assert good["status"] == "ok" and good["config_hash"] and good["tokens"] > 0 and "encode" in good["timings"]
    # resume: nothing to redo but the failure
    mtime = (out / "a.safetensors").stat().st_mtime_ns
    r2 = run(tree, out, model_args, "--json")

    summary = json.loads(r2.output)
    assert summary["skipped"] == 3 and summary["failed"] == 1 and summary["ok"] == 0
    assert (out / "a.safetensors").stat().st_mtime_ns == mtime
    # retry only the failure, after fixing it
    shutil.copy(tree / "a.mp4", tree / "broken.mp4")
    r3 = run(tree, out, model_args, "--retry-failed", "--json")
    s3 = json.loads(r3.output)
    assert r3.exit_code == 0 and s3["ok"] == 1 and s3["skipped"] == 3
    # a changed configuration reprocesses everything
    r4 = run(tree, out, model_args, "--ratio", "0.5", "--json")
    assert json.loads(r4.output)["ok"] == 4


def test_fail_fast_and_shards(tree: Path, tmp_path: Path, model_args) -> None:  # noqa: ANN001
    out = tmp_path / "ff"
    r = run(tree, out, model_args, "--fail-fast", "--workers", "1", "--json")
    assert r.exit_code == 1
    s = json.loads(r.output)
    assert s["failed"] == 1 and s["ok"] + s["failed"] < 4  # stopped early
    parts = []
    for i in range(2):
        o = tmp_path / "sh"
        r = run(tree, o, model_args, "--shard", f"{i}/2", "--json")
        parts.append(json.loads(r.output))
    assert sum(p["total"] for p in parts) == 4
    assert len(list((tmp_path / "sh").glob("vtc-manifest.shard-*.jsonl"))) == 2
    assert len(read_manifest(tmp_path / "sh")) == 4


def test_parse_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_shard("1/4") == (1, 4)
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "3")
    assert parse_shard("auto") == (2, 3)
    with pytest.raises(UsageError):
        parse_shard("4/4")


def test_batch_needs_outdir(tree: Path) -> None:
    r = runner.invoke(app, ["compress", str(tree)])
    assert r.exit_code == 2 and "-o OUTDIR" in r.output


def test_sigkill_leaves_no_partial_output(tmp_path: Path, clip_path: Path, models) -> None:  # noqa: ANN001
    """Kill a batch run at random moments; every output present is complete, and the next run finishes."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):
        shutil.copy(clip_path, src / f"v{i}.mp4")
    out = tmp_path / "out"
    cfg, ckpt = models["clip"]
    cmd = [sys.executable, "-m", "vtc.cli", "compress", str(src), "-o", str(out), "--method", "pool",
           "--frames", "8", "--model", str(cfg), "--checkpoint", str(ckpt), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for delay in (2.5, 3.5):
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        for f in out.glob("*.safetensors"):
            vtc.load(f)  # complete and valid
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(f.name for f in out.glob("*.safetensors")) == [f"v{i}.safetensors" for i in range(6)]
    assert not list(out.glob(".*.tmp"))
    for f in out.glob("*.safetensors"):
        assert vtc.load(f).num_frames == 8


def test_resume_distrusts_damaged_outputs_and_odd_manifests(tree: Path, tmp_path: Path, model_args) -> None:  # noqa: ANN001
    """A damaged output with an ok record fails its input alone (then is redone once removed), never skipped
    forever nor overwritten blindly, and the other inputs run; records of the wrong shape and torn lines are ignored
    with a warning; --retry-failed retries a failure whatever options it failed with; a manifest that is a folder is
    one line."""
    out = tmp_path / "out"
    run(tree, out, model_args)
    (out / "a.safetensors").write_bytes(b"damaged")
    with open(out / "vtc-manifest.jsonl", "a") as f:
        f.write('{"input": "x", "finished": 5}\n{"input": ["a"]}\n{"input": "' + str(tree / "sub" / "b.mp4") +
                '", "status": 3}\n{"input": "torn')
    r = run(tree, out, model_args, "--json")  # never skipped as done, never overwritten blindly: the user decides
    s = json.loads(r.output)
    assert r.exit_code == 1 and s["failed"] == 2 and s["skipped"] == 2, r.output  # a.mp4 refused, broken.mp4 fails
    assert any("a.safetensors" in f["error"] and "not a vtc token file" in f["error"] for f in s["failures"])
    assert "4 malformed line(s)" in s["warning"]
    assert (out / "a.safetensors").read_bytes() == b"damaged"
    (out / "a.safetensors").unlink()
    r = run(tree, out, model_args, "--json")
    s = json.loads(r.output)
    assert s["ok"] == 1 and s["skipped"] == 2 and s["failed"] == 1  # a.mp4 redone; broken.mp4 still fails
    assert vtc.load(out / "a.safetensors").num_frames == 4
    r = run(tree, out, model_args, "--retry-failed", "--allow-truncated", "--json")
    assert json.loads(r.output)["failed"] == 1  # retried (it is not a video), not "0 to do"
    bad = tmp_path / "out2"
    (bad / "vtc-manifest.jsonl").mkdir(parents=True)
    r = run(tree, bad, model_args)
    assert r.exit_code == 2 and "is a directory" in r.output and "Traceback" not in r.output


def test_a_manifest_write_failure_does_not_stop_the_run(tree: Path, tmp_path: Path, model_args,  # noqa: ANN001
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk full while writing the manifest: every other input still completes, the summary warns."""
    from vtc.run import batch as batch_mod

    real = batch_mod.Manifest.write
    calls = {"n": 0}

    def flaky(self, record):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] >= 2:
            self._f.write = lambda *_: (_ for _ in ()).throw(OSError(28, "No space left on device"))
        return real(self, record)

    monkeypatch.setattr(batch_mod.Manifest, "write", flaky)
    out = tmp_path / "out"
    r = run(tree, out, model_args, "--json")
    s = json.loads(r.output)
    assert s["ok"] == 3 and s["failed"] == 1 and "No space left" in s["warning"]
    assert all((out / f"{rel}.safetensors").exists() for rel in ("a", "sub/b", "sub/deeper/c"))
