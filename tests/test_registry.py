"""Declarations apart from implementations: every declared method has exactly one implementation (and the
reverse), the function's parameters are the declared ones; the discovery commands read the declarations alone and
do not import torch, yet say what the bound registry holds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib
from torch import Tensor

from vtc.methods.catalog import DECLARATIONS
from vtc.methods.declare import IMPLEMENTATIONS, Declaration, Implementation, Param
from vtc.methods.registry import _REGISTRY, all_methods, bind
from vtc.reduction import Reduction
from vtc.run.presets import list_presets
from vtc.signals import Signals

ROOT = Path(__file__).resolve().parents[1]


def test_every_declaration_has_exactly_one_implementation() -> None:
    names = [i.name for i in IMPLEMENTATIONS]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    assert set(names) == set(DECLARATIONS) == set(_REGISTRY)
    for spec in all_methods():
        decl = DECLARATIONS[spec.name]
        assert spec.params == decl.params and spec.paper_ratio == decl.paper_ratio
        assert (spec.in_encoder is not None) == decl.inside_encoder
        for p in spec.params:  # every default passes its own declaration's check
            assert p.check(spec.name, p.default) == p.default or p.default is None, (spec.name, p.name)
        assert spec.paper_ratio is None or 0 < spec.paper_ratio <= 1


def test_choices_are_the_implementations_tables() -> None:
    """Where an implementation keeps a table of the values a parameter takes, the declaration lists the same."""
    from vtc.methods.free_video_llm import POOLS
    from vtc.methods.gtp_vit import SELECTIONS
    from vtc.methods.ts_llava import VARIANTS
    from vtc.stages.segment import SEGMENTERS

    def choices(method: str, param: str) -> tuple:
        return next(p.choices for p in DECLARATIONS[method].params if p.name == param)

    for method in ("fastvid", "holitom", "prunevid"):
        assert choices(method, "segmenter") == tuple(SEGMENTERS)
    assert choices("free_video_llm", "middle_pool") == choices("free_video_llm", "slow_pool") == POOLS
    assert choices("gtp_vit", "selection") == SELECTIONS
    assert choices("ts_llava", "variant") == tuple(VARIANTS)


def _fn_ok(x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, k: int) -> Reduction:
    raise AssertionError("never run")


def _fn_default(x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, k: int = 3) -> Reduction:
    raise AssertionError("never run")


def _fn_wrong_type(x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, k: str) -> Reduction:
    raise AssertionError("never run")


def _fn_extra(x: Tensor, *, grid: tuple[int, int], ratio: float, signals: Signals, k: int, j: int) -> Reduction:
    raise AssertionError("never run")


def _merger(*, ratio: float, layers: int, tokens: int, protected: int) -> None:
    raise AssertionError("never run")


def _merger_default(*, ratio: float, layers: int, tokens: int, protected: int, k: int = 3) -> None:
    raise AssertionError("never run")


@pytest.mark.parametrize("decls, impls, says", [
    ({"a": Declaration("a", "s", (Param("k", 3, "h"),))}, [], "a: declared but not implemented"),
    ({}, [Implementation("b", _fn_ok)], "b: implemented"),
    ({"a": Declaration("a", "s", (Param("k", 3, "h"),))},
     [Implementation("a", _fn_ok), Implementation("a", _fn_ok)], "a: implemented 2 times"),
    ({"a": Declaration("a", "s", (Param("k", 3, "h"),))}, [Implementation("a", _fn_default)],
     "parameter 'k' has a default in the function"),
    ({"a": Declaration("a", "s", (Param("k", 3, "h"),))}, [Implementation("a", _fn_wrong_type)],
     "parameter 'k' is annotated"),
    ({"a": Declaration("a", "s", (Param("k", 3, "h"),))}, [Implementation("a", _fn_extra)],
     "parameters ['j', 'k'] declared as ['k']"),
    ({"a": Declaration("a", "s", (Param("k", 3, "h"),))}, [Implementation("a", _fn_ok, in_encoder=_merger)],
     "does not take the parameter(s) k"),
    ({"a": Declaration("a", "s", (Param("k", 3, "h"),), inside_encoder=True)}, [Implementation("a", _fn_ok)],
     "lacks a block merger"),
    ({"a": Declaration("a", "s", (Param("k", 3, "h"),), inside_encoder=True)},
     [Implementation("a", _fn_ok, in_encoder=_merger_default)], "hook gives default(s) for k"),
])
def test_bind_refuses_a_mismatch(decls, impls, says) -> None:  # noqa: ANN001
    with pytest.raises(TypeError) as e:
        bind(decls, impls)
    assert says in str(e.value)
    assert set(bind({"a": Declaration("a", "s", (Param("k", 3, "h"),))}, [Implementation("a", _fn_ok)])) == {"a"}


COMMANDS = [["methods"], ["methods", "--json"], ["presets"], ["presets", "--json"], ["--help"],
            ["compress", "--help"]] + [["methods", name] for name in ("fastvid", "dycoke:reference", "tome_vit")]


def test_discovery_commands_do_not_import_torch() -> None:
    """Each command runs in a fresh interpreter; torch must not be imported by it, and its output says what the
    registry (declarations bound to their implementations, imported here with torch) holds."""
    code = textwrap.dedent(f"""
        import json, sys
        from typer.testing import CliRunner
        from vtc.cli import app
        out = []
        for args in {COMMANDS!r}:
            r = CliRunner().invoke(app, args, env={{"COLUMNS": "200"}})
            out.append({{"args": args, "exit": r.exit_code, "output": r.output, "torch": "torch" in sys.modules}})
        print(json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    runs = {" ".join(r["args"]): r for r in json.loads(done.stdout)}
    for args, r in runs.items():
        assert r["exit"] == 0 and not r["torch"], (args, r["exit"], r["torch"], r["output"][-500:])
    listed = {m["name"]: m for m in json.loads(runs["methods --json"]["output"])}
    assert set(listed) == set(_REGISTRY)
    for spec in all_methods():
        m = listed[spec.name]
        assert m["paper_ratio"] == spec.paper_ratio and m["variants"] == spec.variants and m["scope"] == spec.scope
        assert m["runs"] == ("inside the encoder" if spec.in_encoder is not None else "after the encoder")
        assert [(p["name"], p["default"]) for p in m["params"]] == [(p.name, p.default) for p in spec.params]
        assert m["signals"] == list(spec.signals) and m["optional_signals"] == list(spec.optional_signals)
        assert f"{spec.name} — " in runs["methods"]["output"]
    text = runs["methods fastvid"]["output"]
    assert all(f"{p.name}={p.default!r}" in text for p in _REGISTRY["fastvid"].params) and "paper:" in text
    assert "variant dycoke:reference: reference_loops=True" in runs["methods dycoke:reference"]["output"]
    assert "runs inside the encoder" in runs["methods tome_vit"]["output"]
    presets = json.loads(runs["presets --json"]["output"])
    assert [p["name"] for p in presets] == list(list_presets())
    for p in presets:
        data = tomllib.loads(Path(p["path"]).read_text(encoding="utf-8"))
        assert p["description"] == data.pop("description", "") and p["settings"] == data
    assert "compress" in runs["--help"]["output"] and "--method" in runs["compress --help"]["output"]


def test_the_console_script_exits_like_python_without_its_teardown(tmp_path: Path) -> None:
    """After a command that imported torch, `vtc` (the console script) skips the interpreter's teardown (a second
    or two of freeing modules: objects left to it are not finalised) but keeps what Python's exit does that
    matters: atexit handlers run, output is flushed, the exit code is the command's (0, or 2 on a usage error)."""
    import torch
    from safetensors.torch import save_file

    feats = tmp_path / "f.safetensors"
    save_file({"features": torch.randn(2, 16, 8)}, str(feats))
    code = textwrap.dedent("""
        import atexit, sys
        from vtc.cli import run
        atexit.register(lambda: print("atexit ran", flush=False))
        class Late:  # freed only by the interpreter's teardown, which the console script skips
            def __del__(self):
                print("torn down")
        late = Late()
        sys.argv = ["vtc", *sys.argv[1:]]
        run()
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args, status in (([str(feats), "-o", str(tmp_path / "o.safetensors"), "-m", "uniform", "-r", "0.5"], 0),
                         ([str(feats), "-o", str(tmp_path / "x.safetensors"), "-m", "nosuch"], 2)):
        done = subprocess.run([sys.executable, "-c", code, "compress-features", *args], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == status, done.stdout + done.stderr
        assert done.stdout.rstrip().endswith("atexit ran") and "torn down" not in done.stdout, done.stdout
        assert "Traceback" not in done.stderr
    assert (tmp_path / "o.safetensors").is_file() and not (tmp_path / "x.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.safetensors", "o.safetensors"]  # no temporaries left
