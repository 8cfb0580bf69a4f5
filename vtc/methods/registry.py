"""The one registry of methods by name: each declaration (`vtc.methods.catalog`) bound to its implementation.

A method is a pure function ``fn(x, *, grid, ratio, signals, **params) -> Reduction`` over the feature grid
x: [T, N, D] (N = h·w, row-major), marked ``@implements("name")`` in its method file (see `vtc.methods.declare`).
Importing this module imports every method file and binds them (`bind`), which checks:

- each declaration has exactly one implementation, and each implementation a declaration;
- the function's parameters are exactly the declared ones, keyword-only, without defaults (the default is written
  once, in the declaration), with annotations of the declared types;
- the pipeline hooks agree with the declaration (a block merger exactly when it runs inside the encoder) and
  accept every declared parameter.

`MethodSpec.run` is the single entry that both `vtc.compress_features` and the engines call.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from vtc.errors import UsageError
from vtc.methods import (  # noqa: F401  (importing a method file records its implementations)
    aim,
    baselines,
    budgeted,
    divprune,
    dycoke,
    evs,
    fastervlm,
    fastvid,
    flowcut,
    framefusion,
    free_video_llm,
    gprune,
    grt,
    gtp_vit,
    hiprune,
    holitom,
    llava_scissor,
    omnizip,
    ppt,
    prunevid,
    recoverable,
    rlt,
    saint,
    sta,
    sttm,
    tome,
    tome_vit,
    ts_llava,
    vid_tldr,
    visionzip,
    vscan,
    zoo_prune,
)
from vtc.methods.catalog import DECLARATIONS, get_declaration, normalise, parse_declared
from vtc.methods.declare import IMPLEMENTATIONS, Declaration, Implementation, Param
from vtc.reduction import Reduction
from vtc.signals import Signals

#: the keywords every method takes; everything after them is a parameter
_FIXED = ("grid", "ratio", "signals")


@dataclass(frozen=True, kw_only=True)
class MethodSpec(Declaration):
    """A declared method with its implementation (the fields of `Declaration` and `Implementation`)."""

    fn: Callable[..., Reduction]
    extra_images: Callable[..., dict[str, Any]] | None = None
    pre_encoder: Callable[..., Any] | None = None
    in_encoder: Callable[..., Any] | None = None

    def run(self, x: Tensor, *, grid: tuple[int, int], ratio: float | None, signals: Signals,
            params: dict[str, Any]) -> Reduction:
        """Apply the method.  x: [T, N, D] with N = h·w; `params` as returned by `resolve`.

        A missing required signal is a UsageError; no --ratio means the method's `paper_ratio`.
        """
        if x.dim() != 3 or x.shape[0] < 1 or x.shape[1] != grid[0] * grid[1] or x.shape[1] < 1:
            raise UsageError(f"method '{self.name}' needs features [T ≥ 1, N = h·w, D] for grid {tuple(grid)}, "
                             f"got {tuple(x.shape)}.")
        for name in self.signals:
            signals.require(name, self.name)
        signals.check(x.shape[0], x.shape[1])
        r = self.paper_ratio if ratio is None else ratio
        return self.fn(x, grid=tuple(grid), ratio=r, signals=signals, **params)


def _param_type(annotation: Any) -> tuple[type, bool]:
    """`float | None` → (float, True); `int` → (int, False); `list[int] | None` → (list, True)."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            return object, type(None) in args
        kind, _ = _param_type(rest[0])
        return kind, type(None) in args
    origin = typing.get_origin(annotation)
    if isinstance(origin, type):
        return origin, False
    return (annotation if isinstance(annotation, type) else object), False


def _check_function(decl: Declaration, fn: Callable[..., Any]) -> list[str]:
    """What is wrong with `fn` as the implementation of `decl` (empty when it fits)."""
    where = f"{decl.name} ({fn.__module__}.{fn.__qualname__})"
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn)
    problems = []
    kinds = {n: p.kind for n, p in sig.parameters.items()}
    if list(sig.parameters)[:1] != ["x"] or any(kinds.get(n) is not inspect.Parameter.KEYWORD_ONLY for n in _FIXED):
        problems.append(f"{where}: takes (x, *, grid, ratio, signals, ...)")
    keywords = [n for n in sig.parameters if n not in _FIXED and n != "x"]
    declared = {p.name: p for p in decl.params}
    if set(keywords) != set(declared):  # the declaration and the function must agree, or `vtc methods` would lie
        problems.append(f"{where}: parameters {sorted(keywords)} declared as {sorted(declared)}")
    for n in keywords:
        if n not in declared:
            continue
        p = sig.parameters[n]
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            problems.append(f"{where}: parameter '{n}' must be keyword-only")
        if p.default is not inspect.Parameter.empty:
            problems.append(f"{where}: parameter '{n}' has a default in the function; it belongs to the "
                            f"declaration alone")
        kind, optional = _param_type(hints.get(n, Any))
        want = declared[n]
        if kind is not want.kind or optional != want.optional:
            problems.append(f"{where}: parameter '{n}' is annotated {hints.get(n)!r}, declared as "
                            f"{want.kind.__name__}{' or None' if want.optional else ''}")
    return problems


def _check_hooks(decl: Declaration, impl: Implementation) -> list[str]:
    problems = []
    if (impl.in_encoder is not None) != decl.inside_encoder:
        problems.append(f"{decl.name}: declared {'' if decl.inside_encoder else 'not '}to run inside the encoder, "
                        f"but its implementation {'lacks' if decl.inside_encoder else 'gives'} a block merger")
    for hook in ("extra_images", "pre_encoder", "in_encoder"):
        f = getattr(impl, hook)
        if f is None:
            continue
        params = inspect.signature(f).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            continue
        missing = [p.name for p in decl.params if p.name not in params]
        if missing:
            problems.append(f"{decl.name}: its {hook} hook does not take the parameter(s) {', '.join(missing)}")
        empty = inspect.Parameter.empty
        doubled = [p.name for p in decl.params if p.name in params and params[p.name].default is not empty]
        if doubled:
            problems.append(f"{decl.name}: its {hook} hook gives default(s) for {', '.join(doubled)}; they belong "
                            f"to the declaration alone")
    return problems


def bind(declarations: dict[str, Declaration], implementations: list[Implementation]) -> dict[str, MethodSpec]:
    """name → MethodSpec, or a TypeError listing every mismatch between declarations and implementations."""
    by_name: dict[str, list[Implementation]] = {}
    for impl in implementations:
        by_name.setdefault(impl.name, []).append(impl)
    problems = []
    for name in declarations:
        if name not in by_name:
            problems.append(f"{name}: declared but not implemented")
    for name, impls in by_name.items():
        if name not in declarations:
            problems.append(f"{name}: implemented ({impls[0].fn.__module__}) but not declared in vtc.methods.catalog")
        elif len(impls) > 1:
            problems.append(f"{name}: implemented {len(impls)} times "
                            f"({', '.join(f'{i.fn.__module__}.{i.fn.__qualname__}' for i in impls)})")
    specs = {}
    for name, decl in declarations.items():
        impls = by_name.get(name, [])
        if len(impls) != 1:
            continue
        impl = impls[0]
        found = _check_function(decl, impl.fn) + _check_hooks(decl, impl)
        problems += found
        if not found:
            fields = {f.name: getattr(decl, f.name) for f in dataclasses.fields(Declaration)}
            specs[name] = MethodSpec(**fields, fn=impl.fn, extra_images=impl.extra_images,
                                     pre_encoder=impl.pre_encoder, in_encoder=impl.in_encoder)
    if problems:
        raise TypeError("method registry: " + "; ".join(problems))
    return specs


_REGISTRY: dict[str, MethodSpec] = bind(DECLARATIONS, IMPLEMENTATIONS)


def parse_method(text: str) -> tuple[MethodSpec, str | None]:
    """'dycoke' or 'dycoke:reference' → (spec, variant or None); unknown names are UsageErrors."""
    decl, variant = parse_declared(text)
    return _REGISTRY[decl.name], variant


def get_method(name: str) -> MethodSpec:
    """The method called `name`, or a UsageError listing the closest valid names."""
    get_declaration(name)  # the error for an unknown name
    return _REGISTRY[normalise(name)]


def all_methods() -> list[MethodSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


__all__ = ["MethodSpec", "Param", "all_methods", "bind", "get_method", "parse_method"]
