"""Run configuration: defaults < preset file < explicit options.  Presets are TOML files.

A preset names any `CompressConfig` field at top level and method parameters in a `[params]` table:

    model = "ViT-SO400M-14-SigLIP-384"
    pretrained = "webli"
    layer = -2
    frames = 32
    method = "pool"
    [params]
    stride = 2
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtc.errors import UsageError
from vtc.io.encode import EncoderConfig
from vtc.io.store import OUT_DTYPES
from vtc.run.presets import find_preset, read_preset
from vtc.targets import TARGETS

DEFAULT_METHOD = "fastvid"
#: the encoder's fields, declared once in `EncoderConfig`, given flat in options and presets
ENCODER_FIELDS = tuple(f.name for f in dataclasses.fields(EncoderConfig))
SAMPLING_FIELDS = ("frames", "fps", "every")


@dataclass
class CompressConfig:
    """Everything `vtc compress` needs besides the input path.  Options and presets use flat names: the run's
    own fields below, and the encoder's (`EncoderConfig`: model, pretrained, checkpoint, layer, device, dtype)."""

    method: str = DEFAULT_METHOD
    ratio: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    frames: int | None = 32
    fps: float | None = None
    every: int | None = None
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    batch_size: int = 16
    dtype_out: str = "float16"
    allow_truncated: bool = False
    query: str | None = None
    #: GiB a video's features and the method may use (None: half the memory available); past it features spill to
    #: disk and the method runs on frame windows
    memory_budget: float | None = None

    @classmethod
    def option_names(cls) -> list[str]:
        """Every flat option name (what `vtc.compress`, presets and the CLI accept)."""
        return [f.name for f in dataclasses.fields(cls) if f.name != "encoder"] + list(ENCODER_FIELDS)

    def set(self, key: str, value: Any) -> None:
        """Set one flat option."""
        if key in ENCODER_FIELDS:
            self.encoder = dataclasses.replace(self.encoder, **{key: value})
        else:
            setattr(self, key, value)

    def validate(self) -> CompressConfig:
        """Types and ranges of every field (the method and its parameters are checked by the plan)."""
        _check(self.method, str, "--method")
        if self.ratio is not None:
            _check(self.ratio, float, "--ratio")
            if not 0.0 < float(self.ratio) <= 1.0:
                raise UsageError(
                    f"--ratio must be in (0, 1] — the fraction of tokens kept (e.g. 0.1) — not {self.ratio}."
                )
        if not isinstance(self.params, dict):
            raise UsageError(f"params must be a table of method parameters, not {self.params!r}.")
        _check(self.batch_size, int, "--batch-size")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be ≥ 1, not {self.batch_size}.")
        if self.dtype_out not in OUT_DTYPES:
            raise UsageError(f"--dtype-out must be float16, bfloat16 or float32, not '{self.dtype_out}'.")
        _check(self.allow_truncated, bool, "--allow-truncated")
        if self.memory_budget is not None:
            _check(self.memory_budget, float, "--memory-budget")
            if not (math.isfinite(self.memory_budget) and 1e-4 <= self.memory_budget <= 1e6):
                raise UsageError(f"--memory-budget takes GiB in [0.0001, 1e6], not {self.memory_budget}.")
        if self.query is not None:
            _check(self.query, str, "--query")
        e = self.encoder
        _check(e.model, str, "--model")
        _check(e.layer, int, "--layer")
        for name in ("pretrained", "checkpoint", "target", "target_model"):
            if getattr(e, name) is not None:
                _check(getattr(e, name), str, f"--{name}")
        return self

    def as_flat(self) -> dict[str, Any]:
        """Flat options (JSON-able): the inverse of `from_flat`."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "encoder"}
        return {**d, **dataclasses.asdict(self.encoder)}

    @classmethod
    def from_flat(cls, options: dict[str, Any]) -> CompressConfig:
        cfg = cls()
        for key, value in options.items():
            cfg.set(key, value)
        return cfg

    def hash_dict(self) -> dict[str, Any]:
        """The fields that decide the output (for resume/config hashes)."""
        d = self.as_flat()
        d.pop("device", None)
        d.pop("batch_size", None)
        d.pop("memory_budget", None)  # decides only where features live and, past it, windows (recorded in the file)
        return d

    def config_hash(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(self.hash_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _check(value: Any, kind: type, option: str) -> None:
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        name = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}[kind]
        raise UsageError(f"{option} takes {name}, not {value!r}.")


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset's settings as a dict (`params` is a nested dict), checked against the run's option names."""
    p = find_preset(name_or_path)
    data = read_preset(p)
    sampling = [k for k in SAMPLING_FIELDS if k in data]
    if len(sampling) > 1:
        raise UsageError(f"preset {p} gives more than one way of sampling frames ({' and '.join(sampling)}); "
                         f"keep one.")
    fields = set(CompressConfig.option_names())
    unknown = set(data) - fields - {"description"}
    if unknown:
        raise UsageError(
            f"preset {p}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(fields))}."
        )
    data.pop("description", None)
    for key in ("model", "checkpoint", "target_model"):  # relative paths in a preset are relative to the preset
        value = data.get(key)
        if isinstance(value, str) and not Path(value).is_absolute() and (p.parent / value).exists():
            data[key] = str((p.parent / value).resolve())
    return data


def make_config(preset: str | None = None, **explicit: Any) -> CompressConfig:
    """Defaults, then the preset, then every explicit (non-None) option. `params` dicts are merged.

    Unknown option names and more than one explicit sampling option (--frames, --fps, --every) are UsageErrors;
    an explicit sampling option replaces the preset's.
    """
    known = CompressConfig.option_names()
    unknown = sorted(set(explicit) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UsageError(f"unknown option '{unknown[0]}'.{hint} Options: {', '.join(known)}.")
    given = {k: v for k, v in explicit.items() if v is not None}
    sampling = [k for k in SAMPLING_FIELDS if k in given]
    if len(sampling) > 1:
        raise UsageError(f"give one way of sampling frames, not {' and '.join('--' + k for k in sampling)}.")
    cfg = CompressConfig()
    sampled = False
    layers: list[dict[str, Any]] = []
    if preset:
        layers.append(load_preset(preset))
    layers.append(given)
    for layer in layers:
        if any(k in layer for k in SAMPLING_FIELDS):
            cfg.frames = cfg.fps = cfg.every = None
            sampled = True
        for key, value in layer.items():
            if key == "params":
                if not isinstance(value, dict):
                    raise UsageError(f"params must be a table of method parameters, not {value!r}.")
                cfg.params = {**cfg.params, **dict(value)}
            else:
                cfg.set(key, value)
        if layer.get("checkpoint") and "pretrained" not in layer:
            cfg.set("pretrained", None)
    if not sampled and cfg.encoder.target in TARGETS:  # the target's own frame count (LLaVA-Video: 64)
        cfg.frames = TARGETS[cfg.encoder.target].frames
    return cfg.validate()


def parse_param(text: str) -> tuple[str, Any]:
    """`key=value` with value parsed as JSON when it is JSON (numbers, true/false, null), else a string."""
    if "=" not in text:
        raise UsageError(f"--param expects key=value, not '{text}'.")
    key, value = text.split("=", 1)
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value
