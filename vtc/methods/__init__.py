"""Every method, registered by name.  Importing this package fills the registry."""

from vtc.methods import (  # noqa: F401
    aim,
    baselines,
    budgeted,
    divprune,
    dycoke,
    evs,
    fastervlm,
    fastvid,
    framefusion,
    free_video_llm,
    gprune,
    grt,
    hiprune,
    holitom,
    llava_scissor,
    omnizip,
    prunevid,
    recoverable,
    rlt,
    sttm,
    tome,
    tome_vit,
    ts_llava,
    vid_tldr,
    visionzip,
    vscan,
    zoo_prune,
)
from vtc.methods.registry import MethodSpec, Param, all_methods, get_method, register

__all__ = ["MethodSpec", "Param", "all_methods", "get_method", "register"]
