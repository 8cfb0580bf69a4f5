"""The small exception hierarchy of vtc.

The library raises these; the CLI turns them into one readable line and an exit code.
Every message names the problem *and* the fix.
"""

from __future__ import annotations


class VtcError(Exception):
    """Base class of every error vtc raises on purpose."""

    exit_code = 1


class InputError(VtcError):
    """The input file is missing, unreadable, not a video, or has no decodable frames."""

    exit_code = 2


class TruncatedVideoError(InputError):
    """Decoding stopped early: the file is cut short or corrupt."""


class UsageError(VtcError):
    """A bad option value: unknown method, ratio outside (0, 1], bad parameter, bad preset."""

    exit_code = 2


class ModelError(VtcError):
    """The encoder could not be created or its weights could not be loaded."""

    exit_code = 3


class FormatError(VtcError):
    """A token file is not a valid vtc file (wrong format name, missing tensors, bad shapes)."""

    exit_code = 4


class MissingDependencyError(VtcError):
    """An optional dependency is needed for this feature."""

    exit_code = 5


class OutputError(VtcError):
    """An output could not be written (object storage: denied, no bucket, the network)."""

    exit_code = 2
