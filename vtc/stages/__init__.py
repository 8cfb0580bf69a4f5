"""Stages that compose into methods: temporal segmenters (and, later, budgeters).

`SEGMENTERS` maps a name to a function ``(x, signals, **params) -> segments [S, 2]`` so that any method
with a ``segmenter`` parameter can use any of them (for example HoliTom's windows with FastVID's pruning).
"""

from vtc.stages.segment import SEGMENTERS, dyseg, fixed_windows, holitom_windows, prunevid_windows, segment

__all__ = ["SEGMENTERS", "dyseg", "fixed_windows", "holitom_windows", "prunevid_windows", "segment"]
