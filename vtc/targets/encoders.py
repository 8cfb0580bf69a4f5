"""One entry point for whatever makes the tokens: an open_clip tower (`vtc.io.encode`) or a target model's own
vision path (`vtc.targets`), chosen by `EncoderConfig.target`."""

from __future__ import annotations

from typing import TypeAlias

from vtc.io.encode import Encoder, EncoderConfig, check_config, geometry_for
from vtc.io.geometry import FrameGeometry
from vtc.targets import TargetEncoder, check_target, checkpoint_geometry, open_target

AnyEncoder: TypeAlias = Encoder | TargetEncoder


def check_encoder(config: EncoderConfig) -> None:
    """Validate an encoder configuration without loading weights (UsageError / ModelError)."""
    if config.target is not None or config.target_model is not None:
        check_target(config)
    else:
        check_config(config)


def open_encoder(config: EncoderConfig, *, text: bool = True) -> AnyEncoder:
    """Load the encoder `config` describes (`text=False`: the text tower is not needed, i.e. no --query)."""
    return open_target(config) if config.target is not None else Encoder(config, text=text)


def encoder_geometry(config: EncoderConfig) -> FrameGeometry:
    """The frame geometry of `config` from configuration files only (no weights)."""
    if config.target is not None:
        return checkpoint_geometry(check_target(config)[1])
    return geometry_for(config)
