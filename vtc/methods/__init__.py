"""The compression methods.

`vtc.methods.catalog` declares every method (pure Python: `vtc methods` reads it without torch); each method file
implements one or more of them; `vtc.methods.registry` binds the two (importing it imports every method file).

The registry's names are also reachable from this package (`from vtc.methods import get_method`); they are looked
up on first use so that importing `vtc.methods.catalog` does not import the method files and torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MethodSpec", "Param", "all_methods", "get_method", "parse_method"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from vtc.methods import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'vtc.methods' has no attribute {name!r}")
