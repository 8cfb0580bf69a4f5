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
from vtc.methods.registry import MethodSpec, Param, all_methods, get_method, register

__all__ = ["MethodSpec", "Param", "all_methods", "get_method", "register"]
