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
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from vtc.errors import UsageError
from vtc.io.encode import DEFAULT_MODEL, DEFAULT_PRETRAINED, EncoderConfig

DEFAULT_METHOD = "fastvid"


@dataclass
class CompressConfig:
    """Everything `vtc compress` needs besides the input path; the CLI flags have the same names."""

    method: str = DEFAULT_METHOD
    ratio: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    frames: int | None = 32
    fps: float | None = None
    every: int | None = None
    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    checkpoint: str | None = None
    layer: int = -2
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 16
    dtype_out: str = "float16"
    allow_truncated: bool = False
    query: str | None = None

    def validate(self) -> CompressConfig:
        if self.ratio is not None and not (0.0 < float(self.ratio) <= 1.0):
            raise UsageError(
                f"--ratio must be in (0, 1] — the fraction of tokens kept (e.g. 0.1) — not {self.ratio}."
            )
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be ≥ 1, not {self.batch_size}.")
        return self

    def encoder_config(self, **override: Any) -> EncoderConfig:
        """The encoder part of this configuration (fields overridable, e.g. device="cpu")."""
        fields = {f.name for f in dataclasses.fields(EncoderConfig)}
        return EncoderConfig(**{**{k: getattr(self, k) for k in fields}, **override})

    def hash_dict(self) -> dict[str, Any]:
        """The fields that decide the output (for resume/config hashes)."""
        d = dataclasses.asdict(self)
        d.pop("device", None)
        d.pop("batch_size", None)
        return d

    def config_hash(self) -> str:
        import hashlib

        return hashlib.sha256(json.dumps(self.hash_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def presets_dirs() -> list[Path]:
    """Where named presets live: the installed package's copy, then the repository's `presets/`."""
    package = Path(__file__).resolve().parents[1]
    return [package / "presets", package.parent / "presets"]


def list_presets() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in presets_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.toml")):
                found.setdefault(p.stem, p)
    return found


def load_preset(name_or_path: str) -> dict[str, Any]:
    """A preset's settings as a dict (`params` is a nested dict)."""
    p = Path(name_or_path)
    if not (p.suffix == ".toml" and p.exists()):
        presets = list_presets()
        if name_or_path not in presets:
            raise UsageError(
                f"unknown preset '{name_or_path}'. Named presets: {', '.join(presets) or '(none)'}; "
                f"or pass the path of a .toml file."
            )
        p = presets[name_or_path]
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"preset {p} is not valid TOML: {e}") from None
    fields = {f.name for f in dataclasses.fields(CompressConfig)}
    unknown = set(data) - fields - {"description"}
    if unknown:
        raise UsageError(
            f"preset {p}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(fields))}."
        )
    data.pop("description", None)
    for key in ("model", "checkpoint"):  # relative file paths in a preset are relative to the preset file
        value = data.get(key)
        if isinstance(value, str) and not Path(value).is_absolute() and (p.parent / value).exists():
            data[key] = str((p.parent / value).resolve())
    return data


def make_config(preset: str | None = None, **explicit: Any) -> CompressConfig:
    """Defaults, then the preset, then every explicit (non-None) option. `params` dicts are merged."""
    cfg = CompressConfig()
    layers: list[dict[str, Any]] = []
    if preset:
        layers.append(load_preset(preset))
    layers.append({k: v for k, v in explicit.items() if v is not None})
    for layer in layers:
        for key, value in layer.items():
            if key == "params":
                cfg.params = {**cfg.params, **dict(value)}
            else:
                setattr(cfg, key, value)
        if "checkpoint" in layer and layer["checkpoint"] and "pretrained" not in layer:
            cfg.pretrained = None
    if explicit.get("frames") is not None:
        cfg.fps = cfg.every = None
    if explicit.get("fps") is not None:
        cfg.every = None
    if explicit.get("every") is not None:
        cfg.fps = None
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
