"""The one registry of methods by name.

A method is a pure function ``fn(x, *, grid, ratio, signals, **params) -> Reduction`` over the feature grid
x: [T, N, D] (N = h·w, row-major). Everything else about it is declared once, in `register`:

- its parameters: the defaults and types come from the function's signature, the help text, the authors' name
  and the allowed values or range from `Param`;
- `paper_ratio`: the fraction of tokens kept when no --ratio is given (the paper's headline setting), or None
  when the method's own knob decides the count (thresholds, run lengths);
- `variants`: named parameter settings, selectable as ``method:variant`` (``reference`` = the authors' code
  bit for bit where vtc's default differs);
- the signals it needs, and the pipeline hooks it asks for (extra pictures to encode, a pre-encoder rule, or a
  block merger for methods that run inside the encoder).

`MethodSpec.run` is the single entry that both `vtc.compress_features` and the engines call.
"""

from __future__ import annotations

import difflib
import inspect
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from vtc.errors import UsageError
from vtc.reduction import Reduction
from vtc.signals import Signals

#: the keywords every method takes; everything after them is a parameter
_FIXED = ("grid", "ratio", "signals")


@dataclass(frozen=True)
class Param:
    """One method parameter as declared: vtc name, help, the authors' name, allowed values or an inclusive range.

    The default and the type are read from the method's signature when it is registered (`default`, `kind`,
    `optional`), so they are written once.
    """

    name: str
    help: str
    author_name: str | None = None
    choices: tuple[Any, ...] | None = None
    lo: float | None = None
    hi: float | None = None
    default: Any = None
    kind: type = object
    optional: bool = False

    def check(self, method: str, value: Any) -> Any:
        """`value` converted to this parameter's type, or a UsageError naming the parameter and what it takes."""
        where = f"parameter '{self.name}' of '{method}'"
        if value is None:
            if self.optional:
                return None
            raise UsageError(f"{where} cannot be null; it takes {self.describe_type()}.")
        if self.kind is bool:
            if not isinstance(value, bool):
                raise UsageError(f"{where} takes true or false, not {value!r}.")
        elif self.kind is int:
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"{where} takes an integer, not {value!r}.")
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UsageError(f"{where} takes a finite number, not {value!r}.")
            value = float(value)
        elif self.kind is str and not isinstance(value, str):
            raise UsageError(f"{where} takes a string, not {value!r}.")
        if self.choices is not None and value not in self.choices:
            raise UsageError(f"{where} must be one of {', '.join(map(str, self.choices))}, not {value!r}.")
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            raise UsageError(f"{where} must be in {self.describe_range()}, not {value!r}.")
        return value

    def describe_type(self) -> str:
        name = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(self.kind, "a value")
        return name + (" or null" if self.optional else "")

    def describe_range(self) -> str:
        lo = "−∞" if self.lo is None else f"{self.lo:g}"
        hi = "∞" if self.hi is None else f"{self.hi:g}"
        return f"[{lo}, {hi}]"


def _param_type(annotation: Any) -> tuple[type, bool]:
    """`float | None` → (float, True); `int` → (int, False)."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else object), type(None) in args
    return (annotation if isinstance(annotation, type) else object), False


@dataclass
class MethodSpec:
    """A registered method.  See the module docstring."""

    name: str
    fn: Callable[..., Reduction]
    summary: str
    params: list[Param]
    signals: tuple[str, ...] = ()
    optional_signals: tuple[str, ...] = ()
    paper_ratio: float | None = None
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    paper: str = ""
    #: extra pictures to encode: fn(frames [T, 3, H, W] normalised pixels, **params) → {signal: pixels [B, 3, H, W]}
    extra_images: Callable[..., dict[str, Any]] | None = None
    #: a rule applied before the encoder: fn(**params) → a `vtc.stages.pre_encoder.PreEncoderRule` or None
    pre_encoder: Callable[..., Any] | None = None
    #: a method that runs inside the encoder: fn(*, ratio, layers, tokens, protected, **params) → a
    #: `vtc.stages.in_encoder.BlockMerger` (the tower merges tokens between its blocks; `fn` is not used)
    in_encoder: Callable[..., Any] | None = None
    #: "frame": each frame is reduced on its own (any split of the frames gives the same tokens: exact in a live
    #: run's chunks and in windows); "clip": decisions across frames (segments, merges over time, a shared budget)
    scope: str = "clip"

    @property
    def wanted_signals(self) -> frozenset[str]:
        """Required and optional signals together."""
        return frozenset(self.signals) | frozenset(self.optional_signals)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def resolve(self, params: dict[str, Any], variant: str | None = None) -> dict[str, Any]:
        """Defaults < the variant's settings < `params`, each checked against its declaration.

        Unknown names (authors' names accepted), wrong types and values out of range are UsageErrors.
        """
        by_author = {p.author_name: p.name for p in self.params if p.author_name}
        names = {p.name: p for p in self.params}
        out = self.defaults()
        layers = [self.variant(variant), params] if variant else [params]
        for layer in layers:
            for key, value in layer.items():
                name = by_author.get(key, key)
                if name not in names:
                    close = difflib.get_close_matches(name, list(names), n=3)
                    hint = f" Did you mean {', '.join(close)}?" if close else ""
                    known = ", ".join(names) or "(none)"
                    raise UsageError(f"method '{self.name}' has no parameter '{key}'.{hint} Its parameters: {known}.")
                out[name] = names[name].check(self.name, value)
        return out

    def variant(self, name: str) -> dict[str, Any]:
        """The parameter settings of variant `name`, or a UsageError listing the variants."""
        if name not in self.variants:
            known = ", ".join(f"{self.name}:{v}" for v in self.variants) or "none"
            raise UsageError(f"method '{self.name}' has no variant '{name}' (its variants: {known}).")
        return self.variants[name]

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


_REGISTRY: dict[str, MethodSpec] = {}


def register(
    name: str,
    *,
    summary: str,
    params: list[Param] | None = None,
    signals: tuple[str, ...] = (),
    optional_signals: tuple[str, ...] = (),
    paper_ratio: float | None = None,
    variants: dict[str, dict[str, Any]] | None = None,
    paper: str = "",
    extra_images: Callable[..., dict[str, Any]] | None = None,
    pre_encoder: Callable[..., Any] | None = None,
    in_encoder: Callable[..., Any] | None = None,
    scope: str = "clip",
) -> Callable[[Callable[..., Reduction]], Callable[..., Reduction]]:
    """Decorator: add a method to the registry (defaults and types read from its signature)."""

    def deco(fn: Callable[..., Reduction]) -> Callable[..., Reduction]:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        declared = {p.name: p for p in params or []}
        keywords = [n for n in sig.parameters if n not in _FIXED and n != "x"]
        if set(keywords) != set(declared):  # the registry and the function must agree, or `vtc methods` would lie
            raise TypeError(f"{fn.__name__}: parameters {sorted(keywords)} declared as {sorted(declared)}")
        plist = []
        for n in keywords:
            kind, optional = _param_type(hints[n])
            p = declared[n]
            plist.append(Param(p.name, p.help, p.author_name, p.choices, p.lo, p.hi, sig.parameters[n].default,
                               kind, optional))
        if scope not in ("frame", "clip"):
            raise TypeError(f"{fn.__name__}: scope must be 'frame' or 'clip', not {scope!r}")
        spec = MethodSpec(name, fn, summary, plist, signals, optional_signals, paper_ratio, dict(variants or {}),
                          paper, extra_images, pre_encoder, in_encoder, scope)
        for v in spec.variants:
            spec.resolve({}, v)  # a variant's settings are checked like the user's
        _REGISTRY[name] = spec
        return fn

    return deco


def parse_method(text: str) -> tuple[MethodSpec, str | None]:
    """'dycoke' or 'dycoke:reference' → (spec, variant or None); unknown names are UsageErrors."""
    base, _, variant = text.partition(":")
    spec = get_method(base)
    if variant:
        spec.variant(variant)
    return spec, variant or None


def get_method(name: str) -> MethodSpec:
    """The method called `name`, or a UsageError listing the closest valid names."""
    key = name.strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UsageError(
            f"unknown method '{name}'.{hint} Run 'vtc methods' to list them ({', '.join(sorted(_REGISTRY))})."
        )
    return _REGISTRY[key]


def all_methods() -> list[MethodSpec]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]
