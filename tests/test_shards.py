"""--format webdataset: tar shards (read back with the `webdataset` package), per-sample and shard rows, resume per
shard, on local disk and on the S3 test server; vtc.data's datasets and collate."""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_bytes
from torch.utils.data import DataLoader
from typer.testing import CliRunner

import vtc
import vtc.data
from vtc.cli import app
from vtc.io.storage import RemotePath, set_options
from vtc.run.batch import read_manifest

runner = CliRunner()


@pytest.fixture()
def tree(tmp_path: Path, clip_path: Path, silent_clip: Path) -> Path:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    shutil.copy(clip_path, root / "a.mp4")
    shutil.copy(silent_clip, root / "sub" / "b.v2.mp4")
    shutil.copy(clip_path, root / "c.mp4")
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    return root


def opts(model_args) -> list[str]:  # noqa: ANN001
    a = model_args("clip")
    return ["--method", "pool", "--frames", "4", "--model", a["model"], "--checkpoint", a["checkpoint"]]


def test_webdataset_shards_resume_and_readers(tree: Path, tmp_path: Path, model_args) -> None:  # noqa: ANN001
    files, shards = tmp_path / "files", tmp_path / "shards"
    assert runner.invoke(app, ["compress", str(tree), "-o", str(files), *opts(model_args)]).exit_code == 1
    r = runner.invoke(app, ["compress", str(tree), "-o", str(shards), "--format", "webdataset", "--shard-size", "2",
                            "--json", *opts(model_args)])
    assert r.exit_code == 1, r.output
    s = json.loads(r.output)
    assert (s["ok"], s["failed"], s["total"]) == (3, 1, 4)
    # sorted: a, broken | c, sub/b.v2 → two shards; the failure is a row, not a member
    assert sorted(p.name for p in shards.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    with tarfile.open(shards / "shard-000000.tar") as t:
        assert t.getnames() == ["a.safetensors", "a.json"]
    with tarfile.open(shards / "shard-000001.tar") as t:
        assert t.getnames() == ["c.safetensors", "c.json", "sub/b_v2.safetensors", "sub/b_v2.json"]
    recs = read_manifest(shards)
    assert recs["shard:shard-000000.tar"]["failed"] == 1 and recs["shard:shard-000001.tar"]["ok"] == 2
    assert recs[str(tree / "broken.mp4")]["status"] == "failed" and recs[str(tree / "broken.mp4")]["shard"]
    assert recs[str(tree / "c.mp4")]["output"].endswith("shard-000001.tar#c")

    # the webdataset package reads the shards; each member equals the file-per-video output
    wds = pytest.importorskip("webdataset")
    seen = {}
    for sample in wds.WebDataset(str(shards / "shard-{000000..000001}.tar"), shardshuffle=False):
        seen[sample["__key__"]] = sample
        info = json.loads(sample["json"])
        assert info["status"] == "ok" and info["tokens"] > 0
    assert sorted(seen) == ["a", "c", "sub/b_v2"]
    for key, rel in (("a", "a"), ("c", "c"), ("sub/b_v2", "sub/b.v2")):
        ref = vtc.load(files / f"{rel}.safetensors")
        got = load_bytes(seen[key]["safetensors"])
        assert torch.equal(got["tokens"], ref.tokens) and torch.equal(got["positions"], ref.positions)

    # vtc.data: the iterable over shards, the map-style over files, the collate
    samples = list(vtc.data.TokenShards(shards))
    assert [x["key"] for x in samples] == ["a", "c", "sub/b_v2"]
    batch = vtc.data.collate(samples)
    lengths = [vtc.load(files / f"{r}.safetensors").tokens.shape[0] for r in ("a", "c", "sub/b.v2")]
    assert batch["lengths"].tolist() == lengths and batch["mask"].sum(1).tolist() == lengths
    for i, n in enumerate(lengths):
        assert torch.equal(batch["tokens"][i, :n], samples[i]["tokens"])
        assert (batch["tokens"][i, n:] == 0).all() and (batch["positions"][i, n:] == -1).all()
    loader = DataLoader(vtc.data.TokenShards(shards), batch_size=2, collate_fn=vtc.data.collate, num_workers=2)
    assert sorted(k for b in loader for k in b["keys"]) == ["a", "c", "sub/b_v2"]
    mapped = vtc.data.TokenFiles(files)
    assert len(mapped) == 3 and torch.equal(mapped[0]["tokens"], vtc.load(files / "a.safetensors").tokens)

    # resume per shard: nothing to do; --retry-failed redoes only the shard with the failure
    r = runner.invoke(app, ["compress", str(tree), "-o", str(shards), "--format", "webdataset", "--shard-size", "2",
                            "--json", *opts(model_args)])
    s = json.loads(r.output)
    assert (s["ok"], s["failed"], s["skipped"]) == (0, 0, 4), r.output
    (tree / "broken.mp4").unlink()
    shutil.copy(tree / "a.mp4", tree / "broken.mp4")
    before = (shards / "shard-000001.tar").stat().st_mtime_ns
    r = runner.invoke(app, ["compress", str(tree), "-o", str(shards), "--format", "webdataset", "--shard-size", "2",
                            "--json", "--retry-failed", *opts(model_args)])
    s = json.loads(r.output)
    assert r.exit_code == 0 and (s["ok"], s["skipped"]) == (2, 2), r.output
    assert (shards / "shard-000001.tar").stat().st_mtime_ns == before
    with tarfile.open(shards / "shard-000000.tar") as t:
        assert t.getnames() == ["a.safetensors", "a.json", "broken.safetensors", "broken.json"]
    assert not list(shards.glob(".*.tmp"))


@pytest.fixture(scope="module")
def s3() -> Iterator:  # noqa: ANN001
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from tests.s3server import S3Server

    with S3Server() as server:
        yield server


def test_webdataset_on_s3(s3, tree: Path, model_args, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """The same shards written to the S3 server; resume; vtc.data reads them back from the bucket."""
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    set_options({})
    s3.bucket("wds-out")
    args = ["compress", str(tree), "-o", "s3://wds-out/shards", "--format", "webdataset", "--shard-size", "3",
            "--json", *opts(model_args)]
    r = runner.invoke(app, args)
    assert r.exit_code == 1, r.output
    keys = s3.keys("wds-out")
    assert [k for k in keys if k.endswith(".tar")] == ["shards/shard-000000.tar", "shards/shard-000001.tar"]
    assert not [k for k in keys if "staging" in k or k.endswith(".tmp")]
    recs = read_manifest(RemotePath("s3://wds-out/shards"))
    assert recs["shard:shard-000000.tar"]["samples"] == ["a", "broken", "c"]
    s = json.loads(runner.invoke(app, args).output)
    assert s["skipped"] == 4 and s["ok"] == 0
    got = sorted(x["key"] for x in vtc.data.TokenShards("s3://wds-out/shards"))
    assert got == ["a", "c", "sub/b_v2"]
