"""The layout is the architecture: core → IO → targets → run → face, imports pointing down only, no import loop.

Every `import vtc...` in every module counts, including imports inside functions (a lazy import must not hide a
loop or a climb).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vtc"
#: layer of each module (by dotted prefix); higher numbers may import lower ones, never the reverse
LAYERS = {
    "vtc._version": 0, "vtc.errors": 0, "vtc.reduction": 0, "vtc.signals": 0, "vtc.ops": 0, "vtc.stages": 0,
    "vtc.methods": 0,
    "vtc.io": 1,
    "vtc.targets": 1.5,
    "vtc.run": 2,
    "vtc.api": 3, "vtc.cli": 3, "vtc.show": 3, "vtc.report": 3, "vtc.testing": 3, "vtc.__main__": 3, "vtc.hf": 3,
    "vtc.export": 3, "vtc.fidelity_plot": 3, "vtc.serving": 3,
    "vtc": 4,  # the package's public face re-exports the API
}
FORBIDDEN_IN_CORE = ("av", "open_clip", "transformers", "timm", "safetensors")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(name: str) -> int:
    best = max((k for k in LAYERS if name == k or name.startswith(k + ".")), key=len)
    return LAYERS[best]


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names}
            if node.module != "vtc" or not subs <= set(MODULES):  # `from vtc import errors` imports vtc.errors
                found.add(node.module)
            found.update(subs)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def internal(names: set[str]) -> set[str]:
    return {n for n in names if n in MODULES}


def test_imports_point_down() -> None:
    climbs = []
    for name, path in MODULES.items():
        for dep in internal(imports(path)):
            if layer(dep) > layer(name):
                climbs.append(f"{name} → {dep}")
    assert not climbs, climbs


def test_core_is_pure_tensors() -> None:
    bad = []
    for name, path in MODULES.items():
        if layer(name) == 0:
            bad += [f"{name} → {d}" for d in imports(path) if d.split(".")[0] in FORBIDDEN_IN_CORE]
    assert not bad, bad


def test_serving_imports_only_what_the_engine_has() -> None:
    """vtc's vLLM plugin runs inside the engine's environment: vLLM, torch, numpy and the standard library."""
    bad = []
    for name, path in MODULES.items():
        if name.startswith("vtc.serving"):
            bad += [f"{name} → {d}" for d in imports(path) if d.split(".")[0] not in
                    ("vllm", "torch", "numpy", "__future__", "collections", "typing")]
    assert not bad, bad


def test_no_import_loop() -> None:
    graph = {name: {d for d in internal(imports(p)) if d != name and not name.startswith(d + ".")}
             for name, p in MODULES.items() if name != "vtc"}
    state: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for d in graph.get(n, ()):
            if state.get(d) == 1:
                raise AssertionError("import loop: " + " → ".join(stack[stack.index(d):] + [n, d]))
            if d not in state:
                visit(d, stack + [n])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [])


#: the methods' shared machinery: declarations (declare, catalog) and the registry that binds the implementations
SHARED_METHOD_MODULES = {"vtc.methods.registry", "vtc.methods.declare", "vtc.methods.catalog"}


def test_methods_do_not_import_each_other() -> None:
    for name, path in MODULES.items():
        if name.startswith("vtc.methods.") and name not in SHARED_METHOD_MODULES:
            others = {d for d in internal(imports(path)) if d.startswith("vtc.methods.") and d != name
                      and d not in SHARED_METHOD_MODULES}
            assert not others, f"{name} imports {others}: shared pieces belong in ops/ or stages/"


_PROBE = """
import sys
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print("<torch imported>", flush=True)
            sys.meta_path.remove(self)
        return None
sys.meta_path.insert(0, Watch())
from vtc.cli import run
sys.argv = ["vtc", *sys.argv[1:]]
try:
    run()
except SystemExit as e:
    print("exit", e.code)
"""


def test_commands_without_a_model_start_without_torch(tmp_path: Path) -> None:
    """--help, show, show --json, methods, methods NAME, presets and compress --help never import torch (seconds of
    start-up: `methods` reads the declarations, not the method modules); doctor prints what it knows without torch
    before importing it."""
    import subprocess
    import sys

    import torch

    import vtc

    res = vtc.compress_features(torch.randn(3, 4, 8), method="tome", ratio=0.5)
    f = res.save(tmp_path / "t.safetensors")
    env = {"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for args in (["--help"], ["show", str(f)], ["show", str(f), "--json"], ["methods"], ["methods", "sttm"],
                 ["presets"], ["compress", "--help"], ["doctor"]):
        r = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, env=env,
                           timeout=120)
        assert "exit 0" in r.stdout or r.returncode == 0, (args, r.stdout, r.stderr)
        if args == ["doctor"]:
            assert r.stdout.index("PyAV") < r.stdout.index("<torch imported>") < r.stdout.index("CUDA")
        else:
            assert "<torch imported>" not in r.stdout, args
