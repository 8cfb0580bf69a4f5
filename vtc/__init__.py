"""vtc: turn a video into a compact file of visual tokens for any video LLM."""

__version__ = "0.1.0"
