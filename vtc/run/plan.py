"""The plan: the one place where a run is validated and resolved, before a frame is decoded or a model loaded.

`Plan.make(config)` checks every option (types and ranges of the configuration, the method and its variant, each
method parameter against its declaration, the sampling, the encoder configuration without loading weights, the
output dtype) and decides what each provider must produce from the signal table (`vtc.signals.SIGNALS`).
Engines execute plans; they never look a method up or re-resolve a parameter.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtc.errors import UsageError
from vtc.io.decode import Sampling
from vtc.io.encoders import check_encoder as check_encoder_config
from vtc.io.storage import RemotePath
from vtc.io.store import is_token_file
from vtc.io.target import TARGETS
from vtc.methods import MethodSpec
from vtc.methods.registry import parse_method
from vtc.run.config import CompressConfig
from vtc.run.remote import check_remote_outputs
from vtc.signals import Provider, provided_by
from vtc.stages.pre_encoder import PreEncoderRule


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

    @classmethod
    def make(cls, cfg: CompressConfig, *, check_encoder: bool = True) -> Plan:
        """Validate `cfg` completely; every error is a UsageError/ModelError raised here, before any work."""
        cfg.validate()
        spec, variant = parse_method(cfg.method)
        params = spec.resolve(cfg.params, variant)
        sampling = Sampling(frames=cfg.frames, fps=cfg.fps, every=cfg.every).validate()
        signals = set(spec.wanted_signals)
        if cfg.query:
            if "relevance" not in signals:
                raise UsageError(f"--query needs a query-aware method; '{spec.name}' is not. Use --method budgeted "
                                 f"-p budget=query (or --preset query-attention).")
            signals.add("pooled")  # the frame embeddings the query is compared with
        else:
            signals.discard("relevance")
        if check_encoder:
            check_encoder_config(cfg.encoder)
        rule = spec.pre_encoder(**params) if spec.pre_encoder is not None else None
        target = cfg.encoder.target
        if spec.in_encoder is not None:
            if target is not None:
                raise UsageError(f"{spec.name} merges tokens inside the encoder, which is not available with --target "
                                 f"yet; use a post-encoder method (e.g. tome).")
            ratio = cfg.ratio if cfg.ratio is not None else spec.paper_ratio
            spec.in_encoder(ratio=ratio, layers=12, tokens=197, protected=1, **params)  # checks the parameters
        if target is not None:
            if cfg.query:
                raise UsageError("--query is not available with --target yet (a target has no text tower in the frame "
                                 "embedding space); drop --query or use an open_clip --model.")
            if rule is not None and (rule.changed_only or TARGETS.get(target, TARGETS["llava-onevision"]).family
                                     == "qwen"):
                raise UsageError(f"{spec.name}'s pre-encoder step (frame reuse / encode_changed_only) is not "
                                 f"available with --target {target}; pass -p skip_static_frames=false.")
        return cls(cfg, spec, variant, params, sampling, frozenset(signals), rule)

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


def check_output(input: Path | RemotePath, output: Path | RemotePath) -> None:
    """An output may be written: it is not the input, not a folder, its folder is not a file, and it does not
    replace anything but an earlier vtc token file.  Else a UsageError, before any work."""
    if isinstance(output, RemotePath) or isinstance(input, RemotePath):
        check_remote_outputs([(input, output)])
        if isinstance(output, RemotePath):
            return
    if output.resolve() == input.resolve():
        raise UsageError(f"the output {output} is the input itself; choose another -o.")
    if output.is_dir():
        raise UsageError(f"the output {output} is a directory.")
    if output.exists() and not is_token_file(output):
        raise UsageError(f"refusing to overwrite {output}: it is not a vtc token file. Remove it or choose another -o.")
    parent = next((p for p in output.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"cannot write {output}: {parent} is a file, not a directory.")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {output}: the folder {parent} is not writable.")


def check_outputs(pairs: list[tuple[Path | RemotePath, Path | RemotePath]]) -> None:
    """Many (input, output) pairs: each checked as by `check_output`, and no two inputs share an output."""
    if any(isinstance(dst, RemotePath) for _, dst in pairs):  # one listing, not a request per output
        check_remote_outputs(pairs)
        return
    seen: dict[Path, Path] = {}
    for src, dst in pairs:
        key = dst.resolve()
        if key in seen:
            raise UsageError(f"{seen[key]} and {src} would both be written to {dst}; rename one of them or run "
                             f"them in separate batches.")
        seen[key] = src
        check_output(src, dst)
