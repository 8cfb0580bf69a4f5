"""Every method, registered by name.  Importing this package fills the registry."""

from vtc.methods import baselines, dycoke, fastvid, holitom, prunevid  # noqa: F401
from vtc.methods.registry import MethodSpec, Param, all_methods, get_method, register

__all__ = ["MethodSpec", "Param", "all_methods", "get_method", "register"]
