"""Every method, registered by name.  Importing this package fills the registry."""

from vtc.methods import (  # noqa: F401
    baselines,
    budgeted,
    divprune,
    dycoke,
    evs,
    fastervlm,
    fastvid,
    flowcut,
    framefusion,
    gprune,
    gtp_vit,
    hiprune,
    holitom,
    llava_scissor,
    omnizip,
    ppt,
    prunevid,
    rlt,
    saint,
    sta,
    sttm,
    tome,
    tome_vit,
    ts_llava,
    vid_tldr,
    visionzip,
)
from vtc.methods.registry import MethodSpec, Param, all_methods, get_method, register

__all__ = ["MethodSpec", "Param", "all_methods", "get_method", "register"]
