"""A seeded mutation fuzzer over valid token files: every mutation loads, or raises vtc's FormatError (exit 4, one
line) — never another exception, never a huge allocation or a hang.  Fixed budget: a few seconds in CI."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

import vtc
from vtc.cli import app
from vtc.errors import VtcError
from vtc.report import build
from vtc.show import summary

runner = CliRunner()
MUTATIONS = 240
BUDGET_S = 60.0  # the whole fuzz run; a single case that hangs would blow it


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Valid files of several shapes: pruning, merging with segments, extra (off-grid) tokens."""
    d = tmp_path_factory.mktemp("fuzz")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 16, 8, generator=gen)
    attn = torch.softmax(torch.randn(6, 16, generator=gen), -1)
    out = []
    for method, kw in (("uniform", {}), ("fastvid", {"attn": attn, "pooled": torch.randn(6, 8, generator=gen)}),
                       ("visionzip", {"cls_attn": attn, "keys": torch.randn(6, 17, 4, generator=gen),
                                      "cls_token": torch.randn(6, 8, generator=gen)}), ("tome", {})):
        res = vtc.compress_features(x, method=method, ratio=0.3, grid=(4, 4), **kw)
        out.append(res.save(d / f"{method}.safetensors"))
    return out


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


HOSTILE_VALUES = ["abc", -1, 0, 10**10, 2**31 - 1, 1e308, [1, 2, 3], {"a": 1}, None, True, "[" * 5000, [-5, 0],
                  [10**5, 10**5], [0, 4], 1.5]


def mutate(rng: random.Random, meta: dict[str, str], tensors: dict[str, torch.Tensor]
           ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    meta, tensors = dict(meta), dict(tensors)
    kind = rng.randrange(6)
    if kind == 0:  # a metadata field gets a hostile JSON value
        key = rng.choice(sorted(meta) + ["T", "K", "grid", "N"])
        meta[key] = json.dumps(rng.choice(HOSTILE_VALUES))
    elif kind == 1:  # deeply nested JSON
        meta[rng.choice(["params", "info", "video", "signals"])] = "[" * 20000 + "]" * 20000
    elif kind == 2:  # a tensor loses a dimension or gains one
        name = rng.choice(sorted(tensors))
        t = tensors[name]
        tensors[name] = t.reshape(-1)[: max(0, t.numel() - rng.randrange(3))].contiguous() if rng.random() < 0.5 \
            else t.reshape(-1)[:1].reshape(1, 1, 1).contiguous() if t.numel() else t
    elif kind == 3:  # indices far outside their range
        name = rng.choice(["positions", "source", "merge_src", "merge_dst", "segments", "sizes"])
        if name in tensors and tensors[name].numel():
            t = tensors[name].clone().reshape(-1)
            t[rng.randrange(t.numel())] = rng.choice([-(2**31), -7, 2**31 - 1, 10**8])
            tensors[name] = t.reshape(tensors[name].shape).contiguous()
    elif kind == 4:  # a tensor removed, or of the wrong dtype
        name = rng.choice(sorted(tensors))
        if rng.random() < 0.5:
            tensors.pop(name)
        else:
            tensors[name] = tensors[name].float() if not tensors[name].is_floating_point() else tensors[name].int()
    else:  # non-finite floats
        name = rng.choice(["frame_times", "merge_w", "tokens", "timestamps"])
        t = tensors[name].clone().float().reshape(-1)
        t[rng.randrange(t.numel())] = rng.choice([float("nan"), float("inf")])
        tensors[name] = t.reshape(tensors[name].shape).to(tensors[name].dtype).contiguous()
    return meta, tensors


def exercise(path: Path) -> None:
    """What a user runs on a file: load, the summary (show/--json) and the report maps (no video)."""
    for fn in (vtc.load, summary, build):
        try:
            fn(path)
        except VtcError:
            pass


def test_mutated_token_files_fail_cleanly(seeds: list[Path], tmp_path: Path) -> None:
    rng = random.Random(1234)
    t0 = time.perf_counter()
    loaded = failed = 0
    for i in range(MUTATIONS):
        meta, tensors = _read(rng.choice(seeds))
        meta, tensors = mutate(rng, meta, tensors)
        bad = tmp_path / f"m{i}.safetensors"
        save_file(tensors, str(bad), metadata=meta)
        try:
            vtc.load(bad)
            loaded += 1
        except VtcError:
            failed += 1
        exercise(bad)  # any other exception fails the test with its traceback
        assert time.perf_counter() - t0 < BUDGET_S, f"fuzzing past its budget at mutation {i}"
    assert failed > MUTATIONS // 3 and loaded > 0  # the fuzzer does reach both outcomes


def test_byte_flips_and_truncations(seeds: list[Path], tmp_path: Path) -> None:
    rng = random.Random(99)
    for i in range(80):
        data = bytearray(rng.choice(seeds).read_bytes())
        if rng.random() < 0.5:
            for _ in range(rng.randrange(1, 6)):
                j = rng.randrange(min(len(data), 8 + 2000))
                data[j] = rng.randrange(256)
        else:
            data = data[: rng.randrange(len(data))]
        bad = tmp_path / f"b{i}.safetensors"
        bad.write_bytes(bytes(data))
        exercise(bad)


@pytest.mark.parametrize("case", ["positions-2-cols", "frame-2**31", "T-1e10", "grid-huge", "zero-tokens",
                                  "segments-3-cols", "nested-json", "T-string"])
def test_named_reproductions_exit_4_in_one_line(seeds: list[Path], tmp_path: Path, case: str) -> None:
    meta, tensors = _read(seeds[1])
    if case == "positions-2-cols":
        tensors["positions"] = tensors["positions"][:, :2].contiguous()
    elif case == "frame-2**31":
        tensors["positions"][0, 0] = 2**31 - 1
    elif case == "T-1e10":
        meta["T"] = "10000000000"
    elif case == "grid-huge":
        meta["grid"] = "[100000, 100000]"
    elif case == "zero-tokens":
        for name in ("tokens", "positions", "timestamps", "sizes"):
            tensors[name] = tensors[name][:0].contiguous()
    elif case == "segments-3-cols":
        tensors["segments"] = torch.zeros(2, 3, dtype=torch.int32)
    elif case == "nested-json":
        meta["params"] = "[" * 100000 + "]" * 100000
    else:
        meta["T"] = "abc"
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    for args in (["show", bad], ["show", bad, "--json"], ["show", bad, "--html", tmp_path / "r.html"]):
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 4, r.output
        assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_valid_files_still_load(seeds: list[Path]) -> None:
    for p in seeds:
        f = vtc.load(p)
        assert f.tokens.shape[0] >= 1 and np.isfinite(f["frame_times"].numpy()).all()
