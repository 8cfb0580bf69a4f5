"""How a method is declared, and how an implementation is bound to its declaration.  Pure Python: no torch.

A method has two halves:

- its **declaration** (`Declaration`, all of them in `vtc.methods.catalog`): the name, summary, paper, parameters
  with their defaults, types, help, the authors' names and allowed values (`Param`), the paper ratio, the named
  variants, the signals it needs, its scope and whether it runs inside the encoder. Everything `vtc methods`,
  presets and the run plan's checks need, readable without importing torch;
- its **implementation**: a pure function ``fn(x, *, grid, ratio, signals, **params) -> Reduction`` over the
  feature grid x: [T, N, D], marked ``@implements("name", ...)`` in its method file, with the pipeline hooks it
  asks for (extra pictures to encode, a pre-encoder rule, or a block merger for methods that run inside the
  encoder). Its parameters are keyword-only and carry no defaults: the defaults are written once, in the
  declaration, and `MethodSpec.run` always passes every parameter.

`vtc.methods.registry` binds the two and checks that each declaration has exactly one implementation (and the
reverse), that the function's parameters are the declared ones with matching types, and that the hooks agree.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vtc.errors import UsageError


@dataclass(frozen=True)
class Param:
    """One method parameter: vtc name, default, help, the authors' name, allowed values or an inclusive range.

    `kind` (the type a value is converted to) is the default's type when the default is a bool, int, float or
    str; give it when the default is None or of another type. `optional` (whether null is allowed) defaults to
    whether the default is None. The implementation's annotation must agree (checked by the registry).
    """

    name: str
    default: Any
    help: str
    author_name: str | None = None
    choices: tuple[Any, ...] | None = None
    lo: float | None = None
    hi: float | None = None
    kind: type | None = None
    optional: bool | None = None

    def __post_init__(self) -> None:
        d = self.default
        if self.kind is None:
            inferred = type(d) if d is not None and type(d) in (bool, int, float, str) else object
            object.__setattr__(self, "kind", inferred)
        if self.optional is None:
            object.__setattr__(self, "optional", d is None)

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


@dataclass(frozen=True)
class Declaration:
    """Everything about a method but its code (see the module docstring)."""

    name: str
    summary: str
    params: tuple[Param, ...] = ()
    signals: tuple[str, ...] = ()
    optional_signals: tuple[str, ...] = ()
    #: the fraction of tokens kept when no --ratio is given (the paper's headline setting), or None when the
    #: method's own knob decides the count (thresholds, run lengths)
    paper_ratio: float | None = None
    #: named parameter settings, selectable as ``method:variant`` (``reference`` = the authors' code bit for bit
    #: where vtc's default differs)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    paper: str = ""
    #: the method merges tokens between the encoder's blocks (its implementation supplies an `in_encoder` merger)
    inside_encoder: bool = False
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


@dataclass(frozen=True)
class Implementation:
    """The code of one method: the reduction and the pipeline hooks it asks for."""

    name: str
    fn: Callable[..., Any]
    #: extra pictures to encode: fn(frames [T, 3, H, W] normalised pixels, **params) → {signal: pixels [B, 3, H, W]}
    extra_images: Callable[..., dict[str, Any]] | None = None
    #: a rule applied before the encoder: fn(**params) → a `vtc.stages.pre_encoder.PreEncoderRule` or None
    pre_encoder: Callable[..., Any] | None = None
    #: a method that runs inside the encoder: fn(*, ratio, layers, tokens, protected, **params) → a
    #: `vtc.stages.in_encoder.BlockMerger` (the tower merges tokens between its blocks; `fn` is not used)
    in_encoder: Callable[..., Any] | None = None


#: every implementation recorded by `implements`, in import order (a name twice is an error the registry reports)
IMPLEMENTATIONS: list[Implementation] = []


def implements(
    name: str,
    *,
    extra_images: Callable[..., dict[str, Any]] | None = None,
    pre_encoder: Callable[..., Any] | None = None,
    in_encoder: Callable[..., Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: `fn` implements the method declared as `name` in `vtc.methods.catalog` (checked by the
    registry when it binds the two)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        IMPLEMENTATIONS.append(Implementation(name, fn, extra_images, pre_encoder, in_encoder))
        return fn

    return deco
