"""What every target family shares: the family interface, reading a checkpoint's JSON files, safetensors headers and
vision tensors (never the language model's), and `TargetEncoder`, the encoder surface over a family's vision path.

A *target* is a video LLM whose visual tokens vtc writes. Its checkpoint (`--target-model`, a local directory or a
hub id) is read selectively: only the tensors the family names (`TargetSpec.weight_role`) are materialised from the
safetensors shards. Each family (one module in `vtc.targets`) says which checkpoints it reads, builds its vision
modules from transformers, lays out its tokens, writes its file extras, feeds a file to the transformers model
(`hf_inputs`) and to the serving engines (`engine_video`).
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vtc.errors import MissingDependencyError, ModelError, UsageError, VtcError
from vtc.io.encode import EncoderConfig, FrameGrid, _hub_offline, _hub_reachable, _quiet_logs, pick_device, pick_dtype
from vtc.io.geometry import FrameGeometry
from vtc.io.peek import read_header
from vtc.io.store import TokenFile
from vtc.io.towers import Tower


@dataclass(frozen=True)
class TargetSpec(ABC):
    """One supported target family: which checkpoints it reads and how its tokens are made, stored and consumed.
    Subclasses (one per family module) implement the hooks."""

    name: str
    summary: str
    model_types: tuple[str, ...]
    frames: int
    example: str
    #: the checkpoint parts vtc reads; everything else (the language model, lm_head) is never touched
    parts: tuple[str, ...] = ()
    #: parts a checkpoint may lack (a module without weights, e.g. an average pooler)
    optional_parts: tuple[str, ...] = ()
    #: "llava" or "qwen": the checkpoint layout and which pre-encoder steps apply
    family: str = "llava"

    # ------------------------------------------------------------------ checkpoint
    @abstractmethod
    def weight_role(self, key: str) -> tuple[str, str] | None:
        """A checkpoint tensor name → (part, name inside that part's module), or None for weights vtc never reads."""

    def needs(self) -> str:
        """The weights this family needs, in words (for the error when some are missing)."""
        return " / ".join(self.parts)

    @abstractmethod
    def geometry(self, ckpt: Checkpoint) -> FrameGeometry:
        """The picture the target's own video processor makes."""

    def check(self, ckpt: Checkpoint) -> None:
        """Further up-front checks of a checkpoint's configuration (no weights, no transformers); ModelError.
        The base checks nothing more."""
        return None

    # ------------------------------------------------------------------ vision path
    @abstractmethod
    def modules(self, config: Any) -> dict[str, torch.nn.Module]:
        """The family's vision modules (one per part except weight-only parts), built from transformers with
        unallocated storage."""

    @abstractmethod
    def attach(self, holder: torch.nn.Module, modules: dict[str, torch.nn.Module],
               state: dict[str, dict[str, Tensor]]) -> None:
        """Put the loaded modules (and weight-only parts, e.g. a newline embedding) on `holder`, under the names
        the family's transformers code reads."""

    @abstractmethod
    def tower(self, holder: Any) -> Tower:
        """The family's tower adapter over the loaded `holder`."""

    @abstractmethod
    def file_extras(self, enc: TargetEncoder, positions: Tensor, rep: Tensor, grid: tuple[int, int],
                    num_frames: int, frame_times: list[float], info: Any, picture: tuple[int, int]
                    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Tensor]]:
        """(space additions, newline metadata, extra tensors) of one file."""

    # ------------------------------------------------------------------ consumers
    @abstractmethod
    def hf_inputs(self, tf: TokenFile, model: Any, ids: Tensor, at: int, *, positions: str, after_video: str,
                  rows: int | None, tokenizer: Any) -> dict[str, Any]:
        """What the transformers model's forward / generate needs for prompt `ids` [L] whose placeholder is at `at`."""

    def engine_video(self, tf: TokenFile) -> dict[str, Any]:
        """The engines' precomputed-video input: embeds, grid_thw, retention_mask, mrope_positions, time, num,
        complete, source; UsageError where no serving engine takes this family's precomputed video tokens."""
        raise UsageError(f"{tf.path} is in {self.name} space; vLLM and SGLang take no precomputed video tokens "
                         f"for it. Use vtc.hf.video_inputs with transformers.")


@dataclass
class Checkpoint:
    """A target checkpoint found on disk: its folder, config.json, and where each vision tensor lives."""

    path: Path
    config: dict[str, Any]
    #: checkpoint key → shard file, for the family's parts only
    vision_keys: dict[str, Path] = field(default_factory=dict)
    preprocess: dict[str, Any] = field(default_factory=dict)
    spec: TargetSpec | None = None


def resolve_checkpoint(ref: str) -> Path:
    """A local checkpoint directory, or a hub id fetched (config, index and the vision shards only) or taken from
    the local cache when the hub is unreachable.  → the directory."""
    p = Path(ref).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelError(f"--target-model {ref} is a file; give the checkpoint's directory (config.json and "
                             f"*.safetensors) or a hub id.")
        return p
    if ref.count("/") != 1 or ref.startswith((".", "/", "~")):
        raise ModelError(f"--target-model {ref}: no such directory (and not a hub id like ORG/NAME).")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub comes with open_clip
        raise MissingDependencyError("hub ids need huggingface_hub: pip install 'vtc[hf]'") from None
    online = _hub_reachable()
    if not online:
        _hub_offline()
    try:
        with _quiet_logs():
            return Path(snapshot_download(ref, allow_patterns=["*.json"], local_files_only=not online))
    except Exception as e:
        if not online:
            raise ModelError(f"cannot use {ref}: the model hub is unreachable (offline?) and it is not in the local "
                             f"cache. Run once with network access, or download it elsewhere and pass its "
                             f"directory to --target-model.") from None
        raise ModelError(f"cannot fetch {ref} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
                         f"; check the id, or pass a local checkpoint directory.") from None


def _fetch_shards(ref: str, folder: Path, files: set[str]) -> None:
    """Make sure the shard files holding the vision weights of hub checkpoint `ref` are in the cache."""
    missing = [f for f in sorted(files) if not (folder / f).exists()]
    if not missing:
        return
    from huggingface_hub import hf_hub_download

    if not _hub_reachable():
        raise ModelError(f"{ref}: the shard(s) {', '.join(missing)} with the vision weights are not in the local "
                         f"cache and the hub is unreachable. Run once with network access.")
    with _quiet_logs():
        for f in missing:
            hf_hub_download(ref, f)


#: sane bounds of a vision config's sizes (the largest released towers: InternViT-6B 3200 wide, 48 blocks; Qwen2.5-VL
#: out_hidden 8192, image sizes ≤ 1 k): a crafted config past them is refused before anything is allocated
SIZE_BOUNDS = {"hidden_size": 1 << 16, "intermediate_size": 1 << 18, "out_hidden_size": 1 << 16,
               "embed_dim": 1 << 16, "num_hidden_layers": 1024, "depth": 1024, "num_attention_heads": 1024,
               "num_heads": 1024, "patch_size": 1024, "image_size": 16384, "spatial_merge_size": 64,
               "temporal_patch_size": 64, "num_channels": 64, "window_size": 16384, "num_position_embeddings": 1 << 20}
#: a config whose modules would need this many times the checkpoint's vision bytes (plus 256 MiB) is refused
SIZE_SLACK = 4


def check_config_sizes(folder: Path, config: dict[str, Any]) -> None:
    """Every size the vision config states is a whole number in [1, bound] (`SIZE_BOUNDS`); else a ModelError that
    names it — before a module is built (a crafted hidden_size would ask for terabytes, a negative one crash)."""
    for where in ("vision_config", "text_config"):
        sub = config.get(where)
        if sub is None:
            continue
        if not isinstance(sub, dict):
            raise ModelError(f"{folder}/config.json: '{where}' must be a JSON object.")
        for key, bound in SIZE_BOUNDS.items():
            if key not in sub or (where == "text_config" and key not in ("hidden_size",)):
                continue
            v = sub[key]
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= bound:
                raise ModelError(f"{folder}/config.json: {where}.{key} = {str(v)[:40]} is not a size vtc accepts "
                                 f"(a whole number in [1, {bound}]); the checkpoint's config is damaged or crafted.")


def read_config(ref: str, example: str) -> tuple[Path, dict[str, Any]]:
    """The checkpoint's folder and config.json (a JSON object)."""
    folder = resolve_checkpoint(ref)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{folder} is not a transformers checkpoint (no config.json). Give the directory written "
                         f"by save_pretrained, or a hub id such as {example}.")
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{cfg_path} cannot be read as JSON ({e}).") from None
    if not isinstance(config, dict):
        raise ModelError(f"{cfg_path} is not a model configuration (a JSON object).")
    return folder, config


def read_checkpoint(ref: str, spec: TargetSpec) -> Checkpoint:
    """Find and check a checkpoint for target `spec` from its JSON files and safetensors headers (no weights)."""
    folder, config = read_config(ref, spec.example)
    model_type = config.get("model_type")
    if model_type not in spec.model_types:
        raise ModelError(f"{folder} is a '{model_type}' checkpoint; --target {spec.name} needs a "
                         f"{' or '.join(spec.model_types)} checkpoint (e.g. {spec.example}).")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelError(f"{index} is not a safetensors index ({e}).") from None
        keys = {k: folder / f for k, f in weight_map.items() if spec.weight_role(k) is not None}
        if folder != Path(ref).expanduser():  # a hub snapshot: fetch only the shards with vision weights
            _fetch_shards(ref, folder, {p.name for p in keys.values()})
    else:
        shards = sorted(folder.glob("*.safetensors"))
        if not shards:
            hint = " (.bin weights are not supported: re-save with safe_serialization)" \
                if any(folder.glob("*.bin")) else ""
            raise ModelError(f"{folder} has no *.safetensors weights{hint}.")
        from safetensors import safe_open

        keys = {}
        for shard in shards:
            try:
                with safe_open(str(shard), framework="pt") as f:
                    keys.update({k: shard for k in f.keys() if spec.weight_role(k) is not None})
            except Exception as e:
                raise ModelError(f"{shard} is not a readable safetensors file ({e}).") from None
    found = {spec.weight_role(k)[0] for k in keys}  # type: ignore[index]
    missing = [p for p in spec.parts if p not in found and p not in spec.optional_parts]
    if missing:
        raise ModelError(f"{folder} has no {' / '.join(missing)} weights; a {spec.name} target needs "
                         f"{spec.needs()}.")
    return Checkpoint(folder, config, keys, video_processor_config(folder), spec)


def video_processor_config(folder: Path) -> dict[str, Any]:
    """The checkpoint's video processor settings, found as `AutoVideoProcessor` finds them: the `video_processor`
    entry of `processor_config.json` (transformers ≥ 5 saves processors nested there), else
    `video_preprocessor_config.json`, else the image processor's `preprocessor_config.json`; {} when none."""
    def read(name: str) -> Any:
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError):
            raise ModelError(f"{folder / name} cannot be read as JSON.") from None

    if (folder / "processor_config.json").is_file():
        nested = read("processor_config.json")
        if isinstance(nested, dict) and isinstance(nested.get("video_processor"), dict):
            return nested["video_processor"]
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if (folder / name).is_file():
            found = read(name)
            if not isinstance(found, dict):
                raise ModelError(f"{folder / name} is not a processor configuration (a JSON object).")
            return found
    return {}


def _tensor_bytes(t: Tensor) -> memoryview:
    return memoryview(t.contiguous().view(-1).view(torch.uint8).numpy())


def transformers_imports() -> Any:
    """transformers and its `no_init_weights` context (MissingDependencyError when transformers is absent)."""
    try:
        import transformers
        try:
            from transformers.initialization import no_init_weights  # transformers 5
        except ImportError:  # transformers 4
            from transformers.modeling_utils import no_init_weights  # type: ignore[no-redef]
    except ImportError as e:
        raise MissingDependencyError(f"--target needs transformers ({e.name} is missing): "
                                     f"pip install 'vtc[hf]'") from None
    return transformers, no_init_weights


class TargetEncoder(FrameGrid):
    """A target model's vision path, loaded from its checkpoint without the language model.

    Same surface as `vtc.io.encode.Encoder`: `geometry`, `grid`, `width` (the LLM hidden size), `encode_pixels`,
    `describe`, `signal_sources`; plus `temporal_patch` (frames per token frame), `grid_for` (the token grid of a
    picture size, which varies per video for Qwen) and `file_extras` (the space metadata and tensors of a file)."""

    def __init__(self, config: EncoderConfig, spec: TargetSpec, ckpt: Checkpoint) -> None:
        self.config = config
        self.spec, self.ckpt = spec, ckpt
        self.device = pick_device(config.device)
        self.dtype = pick_dtype(self.device, config.dtype)
        self.geometry = spec.geometry(self.ckpt)
        self.name = f"{self.spec.name}:{config.target_model}"
        self.holder, self.vision_sha256 = self._load()
        self.tower: Tower = spec.tower(self.holder)
        self.kind = self.tower.kind
        self.grid = self.tower.grid
        self.num_layers = self.tower.num_layers
        self.width = self.tower.width
        self.layer_index = -1
        self.temporal_patch = int(getattr(self.tower, "temporal", 1))
        #: planes carried after each token's features (Qwen3-VL's DeepStack): reduced along, stored apart
        self.carried = int(getattr(self.tower, "carried", 0))
        image_newline = getattr(self.holder, "image_newline", None)
        self.newline = None if image_newline is None else image_newline.detach().float().cpu()

    def _check_build_size(self, config: Any) -> None:
        """Build the modules on the meta device (no memory) and compare what they would take with the checkpoint's
        vision tensors (from the safetensors headers): a config that asks for far more (crafted sizes) is refused
        before anything is allocated."""
        try:
            with torch.device("meta"):
                probe = self.spec.modules(config)
        except Exception as e:
            raise ModelError(f"{self.ckpt.path}: its config does not make a vision model "
                             f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}).") from None
        need = sum(t.numel() * t.element_size() for m in probe.values() for t in (*m.parameters(), *m.buffers()))
        have = 0
        by_file: dict[Path, list[str]] = {}
        for key, shard in self.ckpt.vision_keys.items():
            by_file.setdefault(shard, []).append(key)
        for shard, keys in by_file.items():  # the shapes from each shard's JSON header: no tensor is read
            try:
                header = read_header(shard)
                have += sum(math.prod(int(d) for d in header[key]["shape"]) * 4 for key in keys)
            except (VtcError, KeyError, TypeError, ValueError) as e:
                raise ModelError(f"{shard}: cannot read its safetensors header ({e}).") from None
        if need > SIZE_SLACK * have + (256 << 20):
            raise ModelError(f"{self.ckpt.path}: its config describes vision modules of {need / 2**30:.1f} GiB but "
                             f"the checkpoint holds {have / 2**30:.2f} GiB of vision weights (float32); the config "
                             f"is damaged or crafted.")

    def _load(self) -> tuple[Any, str]:
        """Build the vision modules, then assign only their checkpoint tensors (read one by one from the shards);
        hash what was read."""
        transformers, no_init_weights = transformers_imports()
        from safetensors import safe_open
        from transformers import AutoConfig

        with _quiet_logs():
            transformers.logging.set_verbosity_error()
            try:
                config = AutoConfig.from_pretrained(str(self.ckpt.path))
            except Exception as e:
                raise ModelError(f"{self.ckpt.path}: transformers cannot read its config "
                                 f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__}).") from None
            self._check_build_size(config)
            with no_init_weights():
                modules = self.spec.modules(config)
        state: dict[str, dict[str, Tensor]] = {p: {} for p in self.spec.parts}
        digest = hashlib.sha256(json.dumps(self.ckpt.config, sort_keys=True).encode())
        by_file: dict[Path, list[str]] = {}
        for key, shard in self.ckpt.vision_keys.items():
            by_file.setdefault(shard, []).append(key)
        for shard, keys in sorted(by_file.items()):
            try:
                with safe_open(str(shard), framework="pt") as f:
                    for key in sorted(keys):
                        t = f.get_tensor(key)
                        digest.update(key.encode())
                        digest.update(_tensor_bytes(t))
                        part, name = self.spec.weight_role(key)  # type: ignore[misc]
                        state[part][name] = t.to(self.dtype)
            except Exception as e:
                raise ModelError(f"{shard}: cannot read its vision weights ({e}).") from None
        tower = modules.get("vision_tower")
        if tower is not None and getattr(tower, "head", None) is not None \
                and not any(k.startswith("head.") for k in state["vision_tower"]):
            tower.head = None  # the config has a head, the checkpoint does not: no head signals
        for part, module in modules.items():
            own = dict(module.state_dict())
            missing = sorted(set(own) - set(state[part]))
            if missing:
                raise ModelError(f"{self.ckpt.path}: the {part} weights do not match its config (missing "
                                 f"{', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}).")
            try:
                module.load_state_dict({k: v for k, v in state[part].items() if k in own}, strict=True,
                                       assign=True)
            except RuntimeError as e:
                raise ModelError(f"{self.ckpt.path}: the {part} weights do not fit its config "
                                 f"({str(e).splitlines()[-1][:200]}).") from None

        class Holder(torch.nn.Module):
            """What the tower adapter (and the family's transformers code) read: config and vision modules."""

            def __init__(self) -> None:
                super().__init__()
                self.config = config

        holder = Holder()
        self.spec.attach(holder, modules, state)
        return holder.eval().to(self.device), digest.hexdigest()

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """The token grid of a picture of height × width pixels (fixed for LLaVA; per video for Qwen)."""
        grid_for = getattr(self.tower, "grid_for", None)
        return grid_for(height, width) if grid_for is not None else self.grid

    def file_extras(self, positions: Tensor, rep: Tensor, grid: tuple[int, int], num_frames: int,
                    frame_times: list[float], info: Any, picture: tuple[int, int]) -> tuple[dict[str, Any],
                                                                                             dict[str, Tensor]]:
        """The `space` and `newline` metadata and the extra tensors of one file.

        positions [K, 3] (frame, row, col of each kept token), rep [K] (flat source index or -1), grid (h, w),
        num_frames T (token frames), frame_times [F] of the sampled frames, the video's header (`VideoInfo`: fps,
        frame count, first frame's time), the picture (H, W)."""
        space = self.space()
        more, newline, tensors = self.spec.file_extras(self, positions, rep, grid, num_frames, frame_times, info,
                                                       picture)
        space.update(more)
        return {"space": space, "newline": newline}, tensors

    # ------------------------------------------------------------------ the Encoder surface
    @torch.inference_mode()
    def encode_pixels(self, pixels: Tensor, want: set[str] | frozenset[str] = frozenset()) -> dict[str, Tensor]:
        """Normalised pixels [B, 3, h, w] → float32 CPU `patches` [B, N', D_llm] and the wanted signals."""
        out = self.tower.forward(pixels.to(self.device, self.dtype), frozenset(want), self.layer_index)
        return {k: v.float().cpu() for k, v in out.items()}

    def encode_patches(self, pixels: Tensor, keep: Tensor) -> Tensor:
        return self.tower.forward_subset(pixels, keep, self.layer_index)

    def encode_text(self, text: str) -> Tensor:
        raise UsageError("--query is not available with --target yet (the target has no text tower in the frame "
                         "embedding space); drop --query or use an open_clip --model.")

    def space(self) -> dict[str, Any]:
        """The `space` metadata of a token file."""
        return {"kind": "target", "target": self.spec.name, "checkpoint": str(self.config.target_model),
                "checkpoint_dir": str(self.ckpt.path.resolve()), "vision_sha256": self.vision_sha256,
                "model_type": self.ckpt.config.get("model_type"), "hidden_size": self.width,
                "vision_grid": list(getattr(self.tower, "vision_grid", ())),
                "grid": list(self.grid), "pool": getattr(self.tower, "pool", "merge"),
                "video_token_id": self.ckpt.config.get("video_token_index", self.ckpt.config.get("video_token_id"))}

    def describe(self) -> dict[str, Any]:
        vc = self.holder.config.vision_config
        return {
            "model": self.name,
            "pretrained": "",
            "checkpoint": str(self.config.target_model),
            "checkpoint_sha256": self.vision_sha256,
            "tower": self.kind,
            "layer": getattr(self.tower, "layer_label", -1),
            "image_size": list(self.image_size),
            "resize_mode": self.geometry.resize_mode,
            "geometry": self.geometry.as_dict(),
            "grid": list(self.grid),
            "dim": self.width,
            "vision_dim": int(getattr(vc, "hidden_size", getattr(vc, "embed_dim", 0))),
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    def signal_sources(self) -> dict[str, str]:
        return self.tower.signal_sources(-1)


# ---------------------------------------------------------------------- helpers the consumers share
def video_token_id(model: Any) -> int:
    cfg = model.config
    for name in ("video_token_id", "video_token_index"):
        value = getattr(cfg, name, None)
        if value is not None:
            return int(value)
    raise UsageError(f"{type(model).__name__} has no video placeholder token (config.video_token_id).")


def default_rows() -> int:
    """Rows of M-RoPE `position_ids`: 4 on transformers ≥ 5 (row 0: text positions for the mask), 3 before."""
    import transformers

    return 4 if int(transformers.__version__.split(".")[0]) >= 5 else 3


def with_rows(pos3: Tensor, rows: int | None) -> Tensor:
    """[3, L] M-RoPE positions → [rows, 1, L] (`rows` 4: a first row 0..L-1 for the mask)."""
    rows = rows or default_rows()
    if rows not in (3, 4):
        raise UsageError(f"rows must be 3 or 4, not {rows}.")
    if rows == 4:
        pos3 = torch.cat([torch.arange(pos3.shape[1])[None], pos3])
    return pos3[:, None, :]


def retention_mask(rep: Tensor, total: int) -> Tensor:
    """[total] bool: which cells of the full token grid a kept token stands for (rep [K], -1 = none)."""
    mask = torch.zeros(total, dtype=torch.bool)
    mask[rep[rep >= 0].long()] = True
    return mask
