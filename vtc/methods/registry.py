"""The one registry of methods by name.

A method is a pure function ``fn(x, *, grid, ratio, signals, **params) -> Reduction`` over the feature grid
x: [T, N, D] (N = h·w, row-major). `register` records its parameters (names, defaults, help), the signals it
needs and the parameter values that reproduce the authors' code bit for bit (`reference`).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vtc.errors import UsageError
from vtc.reduction import Reduction


@dataclass(frozen=True)
class Param:
    """One method parameter: vtc name, default, help text and the authors' own name for it."""

    name: str
    default: Any
    help: str
    author_name: str | None = None
    choices: tuple[Any, ...] | None = None


@dataclass
class MethodSpec:
    """A registered method."""

    name: str
    fn: Callable[..., Reduction]
    summary: str
    params: list[Param]
    signals: tuple[str, ...] = ()
    optional_signals: tuple[str, ...] = ()
    reference: dict[str, Any] = field(default_factory=dict)
    paper: str = ""
    #: extra pictures to encode: fn(frames [T, 3, H, W] normalised pixels, **params) → {signal: pixels [B, 3, H, W]}
    extra_images: Callable[..., dict[str, Any]] | None = None

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def resolve(self, params: dict[str, Any]) -> dict[str, Any]:
        """Defaults overridden by `params`; unknown names (authors' names accepted) are a UsageError."""
        by_author = {p.author_name: p.name for p in self.params if p.author_name}
        names = {p.name: p for p in self.params}
        out = self.defaults()
        for key, value in params.items():
            name = by_author.get(key, key)
            if name not in names:
                close = difflib.get_close_matches(name, list(names), n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                known = ", ".join(names) or "(none)"
                raise UsageError(
                    f"method '{self.name}' has no parameter '{key}'.{hint} Its parameters: {known}."
                )
            p = names[name]
            if p.choices is not None and value not in p.choices:
                raise UsageError(
                    f"parameter '{name}' of '{self.name}' must be one of {', '.join(map(str, p.choices))}, "
                    f"not {value!r}."
                )
            out[name] = value
        return out


_REGISTRY: dict[str, MethodSpec] = {}


def register(
    name: str,
    *,
    summary: str,
    params: list[Param] | None = None,
    signals: tuple[str, ...] = (),
    optional_signals: tuple[str, ...] = (),
    reference: dict[str, Any] | None = None,
    paper: str = "",
    extra_images: Callable[..., dict[str, Any]] | None = None,
) -> Callable[[Callable[..., Reduction]], Callable[..., Reduction]]:
    """Decorator: add a method to the registry."""

    def deco(fn: Callable[..., Reduction]) -> Callable[..., Reduction]:
        plist = list(params or [])
        sig = inspect.signature(fn)
        for p in plist:  # the registry and the function must agree, or `vtc methods` would lie
            if p.name not in sig.parameters:
                raise TypeError(f"{fn.__name__} has no keyword '{p.name}'")
        _REGISTRY[name] = MethodSpec(
            name, fn, summary, plist, signals, optional_signals, dict(reference or {}), paper, extra_images
        )
        return fn

    return deco


def get_method(name: str) -> MethodSpec:
    """The method called `name`, or a UsageError listing the closest valid names."""
    _load_all()
    key = name.strip().lower().replace("-", "_")
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UsageError(
            f"unknown method '{name}'.{hint} Run 'vtc methods' to list them ({', '.join(sorted(_REGISTRY))})."
        )
    return _REGISTRY[key]


def all_methods() -> list[MethodSpec]:
    _load_all()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def _load_all() -> None:
    import vtc.methods  # noqa: F401  (importing the package registers every method)
