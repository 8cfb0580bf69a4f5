"""The plan: the one place where a run is validated and resolved, before a frame is decoded or a model loaded.

`Plan.make(config)` checks every option (types and ranges of the configuration, the method and its variant, each
method parameter against its declaration, the sampling, the encoder configuration without loading weights, the
output dtype) and decides what each provider must produce from the signal table (`vtc.signals.SIGNALS`).
Engines execute plans; they never look a method up or re-resolve a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtc.errors import UsageError
from vtc.io.decode import Sampling
from vtc.io.storage import RemotePath
from vtc.io.store import check_output, check_remote_outputs
from vtc.methods import MethodSpec
from vtc.methods.registry import parse_method
from vtc.run.config import CompressConfig
from vtc.signals import Provider, provided_by
from vtc.stages.gate import EmbeddingGate
from vtc.stages.pre_encoder import PreEncoderRule
from vtc.targets import LLAVA_ONLY_SIGNALS, TARGET_SIGNALS, TARGETS
from vtc.targets.encoders import check_encoder as check_encoder_config


@dataclass(frozen=True)
class Plan:
    """A validated run: the method with its resolved parameters, the sampling, and what each provider makes."""

    cfg: CompressConfig
    spec: MethodSpec
    variant: str | None
    params: dict[str, Any]
    sampling: Sampling
    #: every signal the method will be given, by provider
    signals: frozenset[str]
    #: a rule the engine applies before the encoder (RLT's frame skipping), or None
    pre_encoder: PreEncoderRule | None
    #: GRT's patch-embedding gate the engine applies inside the tower, or None
    embed_gate: EmbeddingGate | None = None

    @classmethod
    def make(cls, cfg: CompressConfig, *, check_encoder: bool = True) -> Plan:
        """Validate `cfg` completely; every error is a UsageError/ModelError raised here, before any work."""
        cfg.validate()
        spec, variant = parse_method(cfg.method)
        params = spec.resolve(cfg.params, variant)
        sampling = Sampling(frames=cfg.frames, fps=cfg.fps, every=cfg.every).validate()
        signals = set(spec.wanted_signals)
        text = {"relevance", "query_embed"}
        if not cfg.query and text & set(spec.signals):
            raise UsageError(f"{spec.name} is guided by a question: pass --query TEXT.")
        if cfg.query:
            if not text & signals:
                raise UsageError(f"--query needs a query-aware method; '{spec.name}' is not. Use --method budgeted "
                                 f"-p budget=query (or --preset query-attention).")
            signals.add("pooled")  # the frame embeddings the query is compared with
        else:
            signals -= text
        if check_encoder:
            check_encoder_config(cfg.encoder)
        rule = spec.pre_encoder(**params) if spec.pre_encoder is not None else None
        gate = rule if isinstance(rule, EmbeddingGate) else None
        rule = None if gate is not None else rule
        if gate is not None and cfg.encoder.target is not None:
            raise UsageError(f"{spec.name}'s patch-embedding gate (reuse_embeddings) is not available with --target "
                             f"{cfg.encoder.target}; pass -p reuse_embeddings=false.")
        target = cfg.encoder.target
        if spec.in_encoder is not None:
            if target is not None:
                raise UsageError(f"{spec.name} merges tokens inside the encoder, which is not available with --target "
                                 f"yet; use a post-encoder method (e.g. tome).")
            ratio = cfg.ratio if cfg.ratio is not None else spec.paper_ratio
            spec.in_encoder(ratio=ratio, layers=12, tokens=197, protected=1, **params)  # checks the parameters
        if target is None and "sensitivity" in spec.signals:
            raise UsageError(f"{spec.name} needs the LLM projector's sensitivity: use --target llava-onevision or "
                             f"llava-video (an open_clip tower has no nonlinear projector; under a linear one every "
                             f"token is equally sensitive).")
        llava_only = sorted(LLAVA_ONLY_SIGNALS & set(spec.signals))
        if target is not None and TARGETS.get(target, TARGETS["llava-onevision"]).family != "llava" and llava_only:
            raise UsageError(f"{spec.name} needs {', '.join(llava_only)}, which --target {target} does not provide "
                             f"(it merges patches in its own merger); use --target llava-onevision or llava-video.")
        if target is not None:
            missing = sorted(set(spec.signals) - TARGET_SIGNALS - provided_by("decode") - text)
            if missing:
                raise UsageError(f"{spec.name} needs {', '.join(missing)}, which --target {target} does not provide; "
                                 f"use an open_clip --model.")
            if cfg.query:
                raise UsageError("--query is not available with --target yet (a target has no text tower in the frame "
                                 "embedding space); drop --query or use an open_clip --model.")
            if rule is not None and (rule.changed_only or TARGETS.get(target, TARGETS["llava-onevision"]).family
                                     == "qwen"):
                raise UsageError(f"{spec.name}'s pre-encoder step (frame reuse / encode_changed_only) is not "
                                 f"available with --target {target}; pass -p skip_static_frames=false.")
        return cls(cfg, spec, variant, params, sampling, frozenset(signals), rule, gate)

    @property
    def method_label(self) -> str:
        """'dycoke' or 'dycoke:reference'."""
        return self.spec.name + (f":{self.variant}" if self.variant else "")

    def wants(self, provider: Provider) -> frozenset[str]:
        """The signals one provider must make for this run."""
        return self.signals & provided_by(provider)

    @property
    def encoder_signals(self) -> frozenset[str]:
        return self.wants("encoder")

    @property
    def keep_views(self) -> bool:
        """Whether the method sees the frames as the encoder saw them (signal `frames`)."""
        return "frames" in self.signals

    @property
    def keep_pixels(self) -> bool:
        """Whether the method asks for extra pictures made from the frames (TS-LLaVA's thumbnail)."""
        return self.spec.extra_images is not None


def check_outputs(pairs: list[tuple[Path | RemotePath, Path | RemotePath]]) -> dict[Path | RemotePath, UsageError]:
    """Many (input, output) pairs: each checked as by `check_output`, and no two inputs share an output (a
    UsageError for the run).  An output refused because of what already lies there (a file vtc may not replace,
    a folder) fails that input alone: → {output: its error}.  Outputs on object storage are checked together
    (`check_remote_outputs`: one listing, not a request per output)."""
    remote = [(src, dst) for src, dst in pairs if isinstance(dst, RemotePath)]
    pairs = [(src, dst) for src, dst in pairs if not isinstance(dst, RemotePath)]
    refused: dict[Path | RemotePath, UsageError] = dict(check_remote_outputs(remote)) if remote else {}
    seen: dict[Path, Path | RemotePath] = {}
    for src, dst in pairs:
        key = dst.resolve()
        if key in seen:
            raise UsageError(f"{seen[key]} and {src} would both be written to {dst}; rename one of them or run "
                             f"them in separate batches.")
        seen[key] = src
        try:
            check_output(src, dst)
        except UsageError as e:
            if not (dst.exists() or dst.is_symlink()):
                raise
            refused[dst] = e
    return refused


__all__ = ["Plan", "check_output", "check_outputs"]
