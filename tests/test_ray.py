"""`--engine ray` on a local Ray instance (2 CPUs): same outputs and manifest semantics as the local engine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import vtc
import vtc.data
from vtc.cli import app
from vtc.run.batch import read_manifest


@pytest.fixture(scope="module")
def ray_local():  # noqa: ANN201
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'vtc[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_matches_local_engine(ray_local, tmp_path: Path, clip_path: Path, silent_clip: Path, models) -> None:  # noqa: ANN001
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(clip_path, src / "a.mp4")
    shutil.copy(silent_clip, src / "sub" / "b.mp4")
    (src / "broken.mp4").write_bytes(b"not a video at all")
    cfg, ckpt = models["clip"]
    common = ["--method", "fastvid", "--ratio", "0.2", "--frames", "6", "--model", str(cfg), "--checkpoint",
              str(ckpt), "--json"]
    r_local = CliRunner().invoke(app, ["compress", str(src), "-o", str(tmp_path / "local"), *common])
    r_ray = CliRunner().invoke(app, ["compress", str(src), "-o", str(tmp_path / "ray"), "--engine", "ray", *common])
    assert r_local.exit_code == 1 and r_ray.exit_code == 1, r_ray.output

    s = json.loads(r_ray.output)
    assert s["ok"] == 2 and s["failed"] == 1
    s_local = json.loads(r_local.output)  # one batch core: the same summary from both executors
    for key in ("total", "ok", "failed", "skipped", "frames", "tokens", "source_tokens"):
        assert s[key] == s_local[key], key
    assert s["source_tokens"] > 0 and s["encoder_busy"] > 0
    assert [f["input"] for f in s["failures"]] == [f["input"] for f in s_local["failures"]]
    for rel in ("a", "sub/b"):
        a, b = vtc.load(tmp_path / "local" / f"{rel}.safetensors"), vtc.load(tmp_path / "ray" / f"{rel}.safetensors")
        assert torch.equal(a.positions, b.positions)
        assert torch.allclose(a.tokens.float(), b.tokens.float(), atol=1e-3)
    recs = read_manifest(tmp_path / "ray")
    assert recs[str(src / "broken.mp4")]["status"] == "failed"
    # resume on Ray: nothing left but the failure
    again = CliRunner().invoke(app, ["compress", str(src), "-o", str(tmp_path / "ray"), "--engine", "ray", *common])
    s2 = json.loads(again.output)
    assert s2["skipped"] == 2 and s2["ok"] == 0


def test_long_inputs_past_the_memory_budget_on_both_engines(ray_local, tmp_path: Path, clip_path: Path,  # noqa: ANN001
                                                            models) -> None:
    """Inputs whose features exceed the budget (a tiny one) spill and run in windows on the local and the Ray
    engine alike; the files agree, and resume skips them."""
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(clip_path, src / "a.mp4")
    shutil.copy(clip_path, src / "b.mp4")
    cfg, ckpt = models["clip"]
    common = ["--method", "dycoke", "--ratio", "0.3", "--fps", "12", "--memory-budget", "0.0001", "--model",
              str(cfg), "--checkpoint", str(ckpt), "--json"]
    outs = {}
    for engine in ("local", "ray"):
        r = CliRunner().invoke(app, ["compress", str(src), "-o", str(tmp_path / engine), "--engine", engine, *common])
        assert r.exit_code == 0 and json.loads(r.output)["ok"] == 2, r.output
        outs[engine] = vtc.load(tmp_path / engine / "a.safetensors")
        assert outs[engine].meta["info"]["windowed"]["windows"] > 1
        again = CliRunner().invoke(app, ["compress", str(src), "-o", str(tmp_path / engine), "--engine", engine,
                                         *common])
        assert json.loads(again.output)["skipped"] == 2
    assert torch.equal(outs["local"].positions, outs["ray"].positions)
    assert torch.allclose(outs["local"].tokens.float(), outs["ray"].tokens.float(), atol=1e-3)


def test_missing_ray_message(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from vtc.errors import MissingDependencyError
    from vtc.run import ray_engine

    real = builtins.__import__

    def fake(name: str, *a, **k):  # noqa: ANN002, ANN003, ANN202
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(MissingDependencyError, match=r"pip install 'vtc\[ray\]'"):
        ray_engine._ray()


def test_a_video_too_long_to_ship_is_decoded_by_the_actor(tmp_path: Path, clip_path: Path, models,  # noqa: ANN001
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode task ships frames only when they fit a share of the budget; otherwise the row says `stream`,
    carries no frames, and the actor decodes the video itself: the same file either way."""
    from vtc.run import ray_engine
    from vtc.run.config import CompressConfig
    from vtc.run.ray_engine import _decode_row, _EncodeActor
    from vtc.targets.encoders import encoder_geometry

    cfg, ckpt = models["clip"]
    files = {}
    for share, streamed in ((1 / 8, False), (1e-9, True)):
        monkeypatch.setattr(ray_engine, "FRAMES_SHARE", share)
        flat = CompressConfig(method="dycoke", ratio=0.3, fps=12.0, frames=None, memory_budget=1.0).as_flat()
        flat.update(model=str(cfg), checkpoint=str(ckpt), pretrained=None)
        cfg_json = json.dumps(flat)
        geometry = encoder_geometry(CompressConfig.from_flat(flat).encoder).as_dict()
        out = tmp_path / f"{streamed}.safetensors"
        row = _decode_row({"input": str(clip_path), "output": str(out)}, cfg_json, geometry)
        assert row["error"] is None and row["stream"] is streamed
        assert (row["frames"].shape[0] == 0) is streamed
        done = json.loads(_EncodeActor(cfg_json)(row)["outcome"])
        assert done["ok"] and done["error"] is None, done
        files[streamed] = vtc.load(out)
    assert torch.equal(files[True].positions, files[False].positions)
    assert torch.allclose(files[True].tokens.float(), files[False].tokens.float(), atol=1e-3)


def test_actors_the_cluster_cannot_start_are_one_line(ray_local, tmp_path: Path, clip_path: Path, models,  # noqa: ANN001
                                                      monkeypatch) -> None:
    """Work is handed out once every encoder actor is up; asking for more actors than the cluster can place
    (3 × 1 CPU on 2 CPUs) ends after VTC_RAY_ACTOR_START_S with one line and exit 2, not a hang."""
    monkeypatch.setenv("VTC_RAY_ACTOR_CPUS", "1")
    monkeypatch.setenv("VTC_RAY_ACTOR_START_S", "5")
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(clip_path, src / "a.mp4")
    cfg, ckpt = models["clip"]
    r = CliRunner().invoke(app, ["compress", str(src), "-o", str(tmp_path / "out"), "--engine", "ray", "--actors", "3",
                                 "--method", "pool", "--frames", "2", "--model", str(cfg), "--checkpoint", str(ckpt)])
    assert r.exit_code == 2, r.output
    assert "did not start 3 encoder actor(s) (1 CPU each) within 5 s" in r.output
    assert "Traceback" not in r.output
    assert not list((tmp_path / "out").glob("*.safetensors")) if (tmp_path / "out").exists() else True


def test_webdataset_shards_on_ray(ray_local, tmp_path: Path, clip_path: Path, silent_clip: Path, models) -> None:  # noqa: ANN001
    """--format webdataset with --engine ray: the same shards, members and manifest rows as the local engine
    (the actors stage token files under OUTDIR, which is removed once the shards are written)."""
    import tarfile

    src = tmp_path / "in"
    src.mkdir()
    for name, clip in (("a", clip_path), ("b", silent_clip), ("c", clip_path)):
        shutil.copy(clip, src / f"{name}.mp4")
    (src / "broken.mp4").write_bytes(b"not a video at all")
    cfg, ckpt = models["clip"]
    common = ["--format", "webdataset", "--shard-size", "2", "--method", "pool", "--frames", "3", "--model", str(cfg),
              "--checkpoint", str(ckpt), "--json"]
    runs = {}
    for engine in ("local", "ray"):
        out = tmp_path / engine
        r = CliRunner().invoke(app, ["compress", str(src), "-o", str(out), "--engine", engine, *common])
        assert r.exit_code == 1, r.output
        s = json.loads(r.output)
        assert (s["ok"], s["failed"]) == (3, 1)
        runs[engine] = out
        assert not (out / ".vtc-staging").exists() or not any((out / ".vtc-staging").rglob("*"))
    for name in ("shard-000000.tar", "shard-000001.tar"):
        with tarfile.open(runs["local"] / name) as a, tarfile.open(runs["ray"] / name) as b:
            assert a.getnames() == b.getnames()
    got = {x["key"]: x for x in vtc.data.TokenShards(runs["ray"])}
    want = {x["key"]: x for x in vtc.data.TokenShards(runs["local"])}
    assert sorted(got) == sorted(want) == ["a", "b", "c"]
    for k in want:
        assert torch.equal(got[k]["positions"], want[k]["positions"])
        assert torch.allclose(got[k]["tokens"].float(), want[k]["tokens"].float(), atol=1e-3)
    recs_l, recs_r = read_manifest(runs["local"]), read_manifest(runs["ray"])
    assert {k: v["status"] for k, v in recs_l.items()} == {k: v["status"] for k, v in recs_r.items()}
    again = CliRunner().invoke(app, ["compress", str(src), "-o", str(runs["ray"]), "--engine", "ray", *common])
    assert json.loads(again.output)["ok"] == 0, again.output
