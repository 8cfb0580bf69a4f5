"""vtc: turn a video into a compact file of visual tokens for any video LLM.

    import vtc
    vtc.compress("clip.mp4", method="fastvid", ratio=0.1)          # → clip.safetensors
    res = vtc.compress_features(feats, method="dycoke", ratio=0.3)  # bring your own encoder
    f = vtc.load("clip.safetensors"); f.tokens, f.positions
    vtc.compress_live("udp://127.0.0.1:5000", "live_out/", fps=1, chunk=10)   # a stream, chunk by chunk

The public names are imported on first use (PEP 562), so `vtc --help`, `vtc show` and `import vtc` itself do not
pay for torch until something needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vtc._version import __version__
from vtc.errors import VtcError

if TYPE_CHECKING:
    from vtc.api import (
        CompressResult,
        FeatureResult,
        FidelitySummary,
        compress,
        compress_features,
        compress_live,
        fidelity,
        load,
    )
    from vtc.io.store import TokenFile

#: public name → the module that defines it
_LAZY = {"CompressResult": "vtc.api", "FeatureResult": "vtc.api", "compress": "vtc.api",
         "compress_features": "vtc.api", "compress_batch": "vtc.api", "compress_live": "vtc.api",
         "TokenFile": "vtc.io.store", "load": "vtc.api", "fidelity": "vtc.api", "FidelitySummary": "vtc.api"}

__all__ = ["CompressResult", "FeatureResult", "FidelitySummary", "TokenFile", "VtcError", "__version__", "compress",
           "compress_batch", "compress_features", "compress_live", "fidelity", "load"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vtc' has no attribute {name!r}")
