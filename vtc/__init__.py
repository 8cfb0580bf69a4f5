"""vtc: turn a video into a compact file of visual tokens for any video LLM.

    import vtc
    vtc.compress("clip.mp4", method="fastvid", ratio=0.1)          # → clip.safetensors
    res = vtc.compress_features(feats, method="dycoke", ratio=0.3)  # bring your own encoder
    f = vtc.load("clip.safetensors"); f.tokens, f.positions
"""

from vtc._version import __version__
from vtc.api import CompressResult, FeatureResult, compress, compress_features  # noqa: E402
from vtc.errors import VtcError  # noqa: E402
from vtc.io.store import TokenFile, load  # noqa: E402

__all__ = ["CompressResult", "FeatureResult", "TokenFile", "VtcError", "__version__", "compress",
           "compress_features", "load"]
