"""Named presets: where they live and how a preset file is read.  Pure Python (no torch), so that `vtc presets`
lists them at once; `vtc.run.config.load_preset` checks the settings against the run's options."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib

from vtc.errors import UsageError

#: the largest preset file read (a preset is a few lines; this bounds a hostile one)
MAX_PRESET_BYTES = 1_000_000


def presets_dirs() -> list[Path]:
    """Where named presets live: the installed package's copy, then the repository's `presets/`."""
    package = Path(__file__).resolve().parents[1]
    return [package / "presets", package.parent / "presets"]


def list_presets() -> dict[str, Path]:
    """Preset name → file, the package's copy first."""
    found: dict[str, Path] = {}
    for d in presets_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.toml")):
                found.setdefault(p.stem, p)
    return found


def find_preset(name_or_path: str) -> Path:
    """The file of a named preset or a .toml path, or a UsageError listing the named presets."""
    p = Path(name_or_path)
    if not (p.suffix == ".toml" and p.exists()):
        presets = list_presets()
        if name_or_path not in presets:
            if p.exists():  # a path, but not one of a TOML file
                raise UsageError(f"preset {p} is not a .toml file; named presets: {', '.join(presets) or '(none)'}.")
            raise UsageError(
                f"unknown preset '{name_or_path}'. Named presets: {', '.join(presets) or '(none)'}; "
                f"or pass the path of a .toml file."
            )
        p = presets[name_or_path]
    return p


def read_preset(p: Path) -> dict[str, Any]:
    """The TOML table of preset file `p` (its `description` included), or a UsageError: not a regular file (a
    folder, a FIFO that would block, a device), too large, unreadable, not TOML, nested too deeply."""
    if not p.is_file():
        raise UsageError(f"preset {p} is not a regular file.")
    if p.stat().st_size > MAX_PRESET_BYTES:
        raise UsageError(f"preset {p} is {p.stat().st_size} bytes; a preset is a few lines of TOML.")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"preset {p} is not valid TOML: {e}") from None
    except RecursionError:
        raise UsageError(f"preset {p} is nested too deeply to be a preset.") from None
    except OSError as e:
        raise UsageError(f"cannot read preset {p} ({e.strerror or e}).") from None
