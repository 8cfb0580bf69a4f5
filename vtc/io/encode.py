"""Encode (open_clip): load a model, and turn frames into patch tokens and signals through its tower adapter.

`Encoder` owns what every tower shares: loading (a pretrained tag, an hf-hub id, a local --checkpoint, offline
failures in seconds), device and dtype, the frame geometry (`vtc.io.geometry`) and the text tower for --query.
What differs between tower families lives in `vtc.io.towers` (CLIP with a CLS token; SigLIP with an
attention-pool head). `geometry_for` gives the frame geometry of a configuration without loading weights.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vtc.errors import MissingDependencyError, ModelError, UsageError
from vtc.io.clip_vit import VisionOnly, builtin_config, builtin_names, read_config, vision_transformer
from vtc.io.geometry import DEFAULT_PREPROCESS, FrameGeometry
from vtc.io.towers import Tower, make_tower
from vtc.signals import provided_by

DEFAULT_MODEL = "ViT-B-16"
DEFAULT_PRETRAINED = "openai"

#: signals the encoder can produce
ENCODER_SIGNALS = provided_by("encoder")


@dataclass(frozen=True)
class EncoderConfig:
    """Which encoder to build and how to run it (the CLI's --model/--pretrained/--checkpoint/--layer/...).

    With `target` (and `target_model`), tokens come from that video LLM's own vision path instead of an open_clip
    tower (`vtc.targets`); model/pretrained/checkpoint/layer then do not apply."""

    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    checkpoint: str | None = None
    layer: int = -2
    device: str = "auto"
    dtype: str = "auto"
    target: str | None = None
    target_model: str | None = None


def pick_device(device: str = "auto") -> torch.device:
    """'auto' → CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but torch sees no CUDA GPU. Use --device cpu or auto.")
    if device not in ("cpu",) and not device.startswith("cuda") and device != "mps":
        raise UsageError(f"--device must be auto, cpu or cuda[:i], not '{device}'.")
    return torch.device(device)


def pick_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """'auto' → fp32 on CPU; bf16 on GPUs that support it, else fp16."""
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in table:
        raise UsageError(f"--dtype must be auto, fp32, fp16 or bf16, not '{dtype}'.")
    return table[dtype]


def _cache_file(name: str = "sha256.json") -> Path:
    """A small JSON file of vtc's own cache ($VTC_CACHE_DIR, else ~/.cache/vtc)."""
    root = os.environ.get("VTC_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                           os.path.expanduser("~/.cache"), "vtc")
    return Path(root) / name


def _cache_read(name: str) -> dict[str, Any]:
    import json

    try:
        known = json.loads(_cache_file(name).read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _cache_write(name: str, known: dict[str, Any]) -> None:
    """Replace a cache file atomically; best effort (a read-only home just means working it out again)."""
    import json

    cache = _cache_file(name)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, cache)
    except OSError:
        pass


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, cached by (absolute path, size, mtime) so a checkpoint is hashed once, not every run."""
    p = Path(path).resolve()
    st = p.stat()
    key = f"{p}|{st.st_size}|{st.st_mtime_ns}"
    known = _cache_read("sha256.json")
    if isinstance(known.get(key), str):
        return known[key]
    digest = _sha256(p)
    known = {k: v for k, v in known.items() if not k.startswith(f"{p}|")}
    known[key] = digest
    _cache_write("sha256.json", known)
    return digest


def _tag_key(name: str, tag: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        oc = version("open_clip_torch")
    except PackageNotFoundError:  # pragma: no cover
        oc = "?"
    return f"{name}|{tag}|open_clip {oc}"


def cached_tag(name: str, tag: str) -> dict[str, Any] | None:
    """What open_clip resolved weights `name`/`tag` to on an earlier run ({"file", "preprocess"}), while that file is
    still there unchanged: later runs load it without importing open_clip (~3 s). Keyed by open_clip's version."""
    hit = _cache_read("tags.json").get(_tag_key(name, tag))
    if not isinstance(hit, dict) or not isinstance(hit.get("file"), str) or not isinstance(hit.get("preprocess"),
                                                                                           dict):
        return None
    try:
        st = Path(hit["file"]).stat()
        geometry = FrameGeometry.from_preprocess_cfg(hit["preprocess"], 224)  # a damaged entry is a miss
    except (OSError, TypeError, ValueError):
        return None
    if len(geometry.mean) != 3 or len(geometry.std) != 3 or not all(v > 0 for v in geometry.std):
        return None
    return hit if [st.st_size, st.st_mtime_ns] == hit.get("stat") else None


def _remember_tag(name: str, tag: str, path: Path, preprocess: dict[str, Any]) -> None:
    st = path.stat()
    known = _cache_read("tags.json")
    known[_tag_key(name, tag)] = {"file": str(path.resolve()), "stat": [st.st_size, st.st_mtime_ns],
                                  "preprocess": {k: list(v) if isinstance(v, tuple) else v
                                                 for k, v in preprocess.items()}}
    _cache_write("tags.json", known)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _resolve_model_name(name: str) -> str:
    """An open_clip name, an `hf-hub:` id, or a path to an open_clip JSON config (its file's stem), checked against
    open_clip's bundled configs without importing open_clip."""
    if name.startswith("hf-hub:"):
        return name
    p = Path(name)
    if p.suffix == ".json":
        if not p.exists():
            raise ModelError(f"model config {p} not found.")
        return p.stem
    if builtin_config(name) is None:
        known = builtin_names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelError(
            f"unknown model '{name}'.{hint} Use an open_clip name (python -c 'import open_clip; "
            f"print(open_clip.list_models())'), an hf-hub:ORG/REPO id, or a JSON config file."
        )
    return name


def _model_config(model: str) -> dict[str, Any] | None:
    """The open_clip model config behind --model (a bundled name or a JSON file; None for hf-hub ids)."""
    if model.startswith("hf-hub:"):
        return None
    return read_config(Path(model)) if Path(model).suffix == ".json" else builtin_config(model)


def _open_clip(model: str) -> Any:
    """open_clip, imported (~3 s), with --model's JSON config registered when it names one."""
    import open_clip

    if Path(model).suffix == ".json" and Path(model).exists():
        open_clip.add_model_config(Path(model))
    return open_clip


def check_config(config: EncoderConfig) -> tuple[str, str | None]:
    """Validate an encoder configuration without loading weights: device, dtype, the model name, the pretrained
    tag, the checkpoint file.  → (open_clip model name, what to pass as `pretrained`)."""
    pick_dtype(pick_device(config.device), config.dtype)
    # the default model, or an hf-hub id, on a machine without network and with nothing cached: decided before the
    # heavy imports (other names and tags are checked against open_clip's registry first, for a precise message)
    known = config.model.startswith("hf-hub:") or (config.model, config.pretrained) == (DEFAULT_MODEL,
                                                                                         DEFAULT_PRETRAINED)
    if config.checkpoint is None and known and _weights_cache_empty() and not _hub_reachable():
        raise _fetch_error(None, config.model, config.pretrained, offline=True)
    name = _resolve_model_name(config.model)
    if config.checkpoint is not None:
        ckpt = Path(config.checkpoint)
        if not ckpt.is_file():
            raise ModelError(f"checkpoint {ckpt} not found (or not a file).")
        return name, str(ckpt)
    if name.startswith("hf-hub:") or (config.pretrained and cached_tag(name, config.pretrained)):
        return name, None if name.startswith("hf-hub:") else config.pretrained
    open_clip = _open_clip(config.model)
    pretrained = config.pretrained
    if pretrained and pretrained not in open_clip.list_pretrained_tags_by_model(name):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise ModelError(
            f"model '{name}' has no pretrained tag '{pretrained}'. Its tags: {', '.join(tags) or '(none)'}; "
            f"or pass --checkpoint PATH to a local weights file."
        )
    return name, pretrained


def load_open_clip(config: EncoderConfig, *, text: bool = True) -> tuple[Any, str]:
    """Create the model (weights from --checkpoint, a pretrained tag, or an hf-hub id).

    With `text=False` (no --query) and weights in a local checkpoint or behind a pretrained tag (its file in the
    cache, or fetched), only the vision tower is materialised: built on the meta device (no random initialisation)
    and assigned from the memory-mapped checkpoint (no second copy of the weights, no text tower). A CLIP ViT
    checkpoint is built by `vtc.io.clip_vit` without importing open_clip at all. Anything else, or a file that is
    not a plain state dict of the model (OpenAI's TorchScript archives), goes through open_clip's own loader."""
    name, pretrained = check_config(config)
    if config.checkpoint is not None and not text:
        model = _vision_only(config.model, name, Path(config.checkpoint))
        if model is not None:
            return model, name
    hit = cached_tag(name, pretrained) if config.checkpoint is None and pretrained and not text else None
    if hit is not None:  # weights this tag resolved to before: no open_clip import, no hub round trip
        model = _vision_only(config.model, name, Path(hit["file"]))
        if model is not None:
            model.visual.preprocess_cfg = {**hit["preprocess"], "size": model.visual.image_size}
            return model, name
    open_clip = _open_clip(config.model)
    needs_hub = config.checkpoint is None and (name.startswith("hf-hub:") or bool(pretrained))
    offline = needs_hub and not _hub_reachable()
    if offline:
        _hub_offline()  # use the local cache only: fail in a second instead of minutes of retries
    if config.checkpoint is None and pretrained and not text and not name.startswith("hf-hub:"):
        path = _tag_file(name, pretrained)
        model = _vision_only(config.model, name, path) if path is not None else None
        if model is not None and path is not None:
            model.visual.preprocess_cfg = _tag_preprocess(name, pretrained, model.visual.image_size)
            _remember_tag(name, pretrained, path, model.visual.preprocess_cfg)
            return model, name
    try:
        with _quiet_logs():
            model = open_clip.create_model(name, pretrained=pretrained, load_weights=True)
    except Exception as e:
        if config.checkpoint is None:
            raise _fetch_error(e, name, pretrained, offline) from None
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ModelError(
            f"checkpoint {config.checkpoint} does not fit model '{name}' or cannot be read ({first}). "
            f"Pass the --model the weights were trained with."
        ) from None
    return model, name


def _tag_file(name: str, tag: str) -> Path | None:
    """The local file of open_clip's weights for `name`/`tag` (from the cache, or fetched as open_clip itself would),
    or None when it cannot be had (open_clip's loader then reports why)."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    try:
        with _quiet_logs():
            cfg = get_pretrained_cfg(name, tag)
            path = download_pretrained(cfg) if cfg else None
    except Exception:
        return None
    return Path(path) if path and Path(path).is_file() else None


def _tag_preprocess(name: str, tag: str, size: Any) -> dict[str, Any]:
    """open_clip's preprocessing of weights `name`/`tag`: its defaults overlaid with the tag's, at the tower's size."""
    from open_clip.pretrained import get_pretrained_cfg
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    cfg = merge_preprocess_dict(PreprocessCfg(), get_pretrained_cfg(name, tag) or {})
    cfg["size"] = size
    return cfg


def _read_visual(path: Path) -> dict[str, Tensor] | None:
    """The `visual.*` tensors of a checkpoint, keys without the `visual.` prefix, or None when the file is not a
    plain state dict. A .safetensors file is opened lazily and only those tensors are read; any other file is
    memory-mapped by `torch.load(mmap=True)` (its tensors are assigned, not copied, into the tower)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                keys = [k for k in f.keys() if k.startswith(("visual.", "module.visual."))]  # noqa: SIM118
                state = {k: f.get_tensor(k) for k in keys}
        else:
            state = torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except Exception:
        return None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        return None
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    return {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}


def _vision_only(model: str, name: str, path: Path) -> Any | None:
    """A model with only its vision tower, assigned from the checkpoint's `visual.*` tensors, or None when the
    checkpoint is not a plain state dict of this model (open_clip's own loader then handles it).

    CLIP ViTs are built by `vtc.io.clip_vit` (no open_clip import); other towers by open_clip on the meta device,
    its text tower dropped."""
    visual = _read_visual(path)
    if visual is None:
        return None
    cfg = _model_config(model)
    with torch.device("meta"):
        tower = vision_transformer(cfg) if cfg is not None else None
    if tower is not None:
        wrong = _assign(tower, visual)
        if wrong:  # a plain state dict of another architecture: say so before open_clip allocates the config's sizes
            raise ModelError(f"checkpoint {path} does not fit model '{name}' ({wrong}). Pass the --model the weights "
                             f"were trained with.")
        tower.preprocess_cfg = {**DEFAULT_PREPROCESS, "size": tower.image_size}
        return VisionOnly(tower)
    open_clip = _open_clip(model)
    try:
        with _quiet_logs(), torch.device("meta"):
            full = open_clip.create_model(name, pretrained=None, device="meta")
    except Exception:
        return None
    if _assign(full.visual, visual):
        return None
    for attr in ("transformer", "token_embedding", "ln_final", "text", "text_projection", "positional_embedding",
                 "attn_mask", "logit_scale", "logit_bias"):
        if hasattr(full, attr):  # the text tower: never used without --query
            setattr(full, attr, None)
    if any(t.is_meta for t in [*full.parameters(), *full.buffers()]):
        return None
    full.vision_only = True
    return full


def _assign(module: torch.nn.Module, state: dict[str, Tensor]) -> str | None:
    """Assign `state` to a module built on the meta device when names and shapes match exactly; else what differs
    (one phrase) and nothing is assigned."""
    own = module.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        return f"it has no visual.{missing[0]}" if missing else f"unexpected visual.{extra[0]}"
    for k in own:
        if tuple(own[k].shape) != tuple(state[k].shape):
            return f"visual.{k} is {list(state[k].shape)}, the model needs {list(own[k].shape)}"
    module.load_state_dict(state, strict=True, assign=True)
    return "tensors left unassigned" if any(t.is_meta for t in [*module.parameters(), *module.buffers()]) else None


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Can the model hub's name be resolved and its port reached?"""
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        return False
    try:
        with socket.create_connection((os.environ.get("VTC_HUB_HOST", host), 443), timeout=timeout):
            return True
    except OSError:
        return False


def _weights_cache_empty() -> bool:
    """No model at all in the caches open_clip loads from (the Hugging Face hub cache, open_clip's own): on a fresh
    machine without network nothing can load, and that is known without importing open_clip."""
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    hub = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub"))
    legacy = Path(os.path.expanduser("~")) / ".cache" / "clip"
    return not (hub.is_dir() and any(hub.glob("models--*"))) and not (legacy.is_dir() and any(legacy.iterdir()))


def _hub_offline() -> None:
    """Use the local caches only, from now on in this process (huggingface_hub and transformers)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hc

        hc.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover
        pass


def _hub_tokenizer(name: str) -> bool:
    """Whether open_clip's tokenizer for model `name` comes from the Hugging Face hub (SigLIP's and others')."""
    import open_clip

    if name.startswith("hf-hub:"):
        return True
    try:
        cfg = open_clip.get_model_config(name) or {}
    except Exception:  # an unknown name: open_clip says so itself
        return False
    return bool((cfg.get("text_cfg") or {}).get("hf_tokenizer_name"))


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    """open_clip and huggingface_hub log through the root logger; vtc reports errors itself."""
    names = ["", "root", "huggingface_hub", "huggingface_hub.utils._http"]
    old = [logging.getLogger(n).level for n in names]
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for n, lvl in zip(names, old, strict=False):
            logging.getLogger(n).setLevel(lvl)


def _weights_name(name: str, pretrained: str | None) -> str:
    """'ViT-B-16/openai'; an hf-hub id alone (the repository is the weights: a tag means nothing there)."""
    return name if name.startswith("hf-hub:") or not pretrained else f"{name}/{pretrained}"


def _fetch_error(e: Exception | None, name: str, pretrained: str | None, offline: bool = False) -> ModelError:
    if offline:
        return ModelError(
            f"cannot fetch weights for {_weights_name(name, pretrained)}: the model hub is unreachable "
            f"(offline?) and they "
            f"are not in the local cache. Run once with network access (weights are cached under "
            f"~/.cache/huggingface), or pass --checkpoint PATH to a local weights file for this architecture."
        )
    if isinstance(e, (RuntimeError, KeyError, ValueError)) and "download" not in str(e).lower():
        return ModelError(f"cannot create model '{name}': {str(e).splitlines()[0][:300] if str(e) else e!r}")
    return ModelError(
        f"cannot fetch weights for {_weights_name(name, pretrained)} ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:200] if str(e) else 'no network?'}). Run once with network access "
        f"(weights are cached under ~/.cache/huggingface), or pass --checkpoint PATH to a local weights file "
        f"for this architecture."
    )


def geometry_for(config: EncoderConfig) -> FrameGeometry:
    """The frame geometry of `config`'s model, from its configuration files only (no weights are loaded).

    The same sources as open_clip's own: the model config's image size, then the preprocessing of the pretrained
    tag or of the hf-hub config (a small JSON, from the local cache when offline).
    """
    name = _resolve_model_name(config.model)
    preprocess: dict[str, Any] = {}
    if name.startswith("hf-hub:"):
        from open_clip.factory import _get_hf_config

        if not _hub_reachable():
            _hub_offline()
        try:
            with _quiet_logs():
                hf = _get_hf_config(name[len("hf-hub:"):])
        except Exception as e:
            raise _fetch_error(e, name, None, offline=True) from None
        model_cfg, preprocess = hf.get("model_cfg", {}), hf.get("preprocess_cfg", {})
    else:
        model_cfg = _model_config(config.model) or {}
        if config.checkpoint is None and config.pretrained:
            hit = cached_tag(name, config.pretrained)
            if hit is not None:
                preprocess = hit["preprocess"]
            else:
                from open_clip.pretrained import get_pretrained_cfg

                preprocess = get_pretrained_cfg(name, config.pretrained)
    size = (model_cfg.get("vision_cfg") or {}).get("image_size", 224)
    return FrameGeometry.from_preprocess_cfg(preprocess, size)


class FrameGrid(ABC):
    """What every encoder says about its input pictures and its token grid (`geometry`, `grid`)."""

    geometry: FrameGeometry
    grid: tuple[int, int]

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.geometry.image_size

    @property
    def resize_mode(self) -> str:
        return self.geometry.resize_mode

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) frames should be decoded to, before the crop/pad (or resize) done on tensors."""
        return self.geometry.decode_size(width, height)

    @torch.inference_mode()
    def encode(self, frames: np.ndarray | Tensor, want: set[str] | frozenset[str] = frozenset()) -> dict[str, Tensor]:
        """Encode a batch of frames.

        frames: uint8 [B, H, W, 3] at `input_size`. Returns float32 CPU tensors: `patches` [B, N, D] and,
        for each name in `want`: attn [B, N], pooled [B, D'], cls_attn [B, N], cls_token [B, D], keys [B, N+1, d].
        """
        return self.encode_pixels(self.geometry.preprocess(frames), want)

    @abstractmethod
    def encode_pixels(self, pixels: Tensor, want: set[str] | frozenset[str] = frozenset()) -> dict[str, Tensor]:
        """Normalised pixels [B, 3, h, w] → float32 CPU `patches` and the wanted signals."""


class Encoder(FrameGrid):
    """An open_clip model wrapped for vtc: geometry, device/dtype, the tower adapter, the text tower."""

    def __init__(self, config: EncoderConfig | None = None, model: Any | None = None, name: str = "", *,
                 text: bool = True) -> None:
        self.config = config or EncoderConfig()
        if model is None:
            model, name = load_open_clip(self.config, text=text)
        self.model = model
        self.name = name or self.config.model
        self.device = pick_device(self.config.device)
        self.dtype = pick_dtype(self.device, self.config.dtype)
        self.model.eval().to(device=self.device, dtype=self.dtype)
        self.tower: Tower = make_tower(self.model.visual, self.name)
        self.kind = self.tower.kind
        self.grid = self.tower.grid
        self.num_layers = self.tower.num_layers
        self.width = self.tower.width
        layer = self.config.layer
        self.layer_index = layer if layer >= 0 else self.num_layers + layer
        if not 0 <= self.layer_index < self.num_layers:
            raise UsageError(
                f"--layer {layer} is outside this model's {self.num_layers} blocks "
                f"(use -{self.num_layers}..-1 or 0..{self.num_layers - 1})."
            )
        visual = self.model.visual
        pp = dict(getattr(visual, "preprocess_cfg", {}) or {})
        self.geometry = FrameGeometry.from_preprocess_cfg(pp, pp.get("size", visual.image_size))
        self.checkpoint_sha256 = file_sha256(self.config.checkpoint) if self.config.checkpoint else ""

    # ------------------------------------------------------------------ forward
    @torch.inference_mode()
    def encode_pixels(self, pixels: Tensor, want: set[str] | frozenset[str] = frozenset()) -> dict[str, Tensor]:
        """Like `encode`, from normalised pixels [B, 3, h, w] (the output of `geometry.preprocess`)."""
        unknown = set(want) - ENCODER_SIGNALS
        if unknown:
            raise UsageError(f"the encoder cannot provide {', '.join(sorted(unknown))}.")
        out = self.tower.forward(pixels.to(self.device, self.dtype), frozenset(want), self.layer_index)
        return {k: v.float().cpu() for k, v in out.items()}

    @torch.inference_mode()
    def encode_merging(self, pixels: Tensor, merger: Any) -> dict[str, Tensor]:
        """Encode with `merger` (a `vtc.stages.in_encoder.BlockMerger`) merging tokens between the blocks up to the
        read-out block.  pixels [B, 3, h, w] → float32 CPU `patches` [B, K, D], `source` [B, K, N], `size` [B, K]."""
        out = self.tower.forward_merging(pixels.to(self.device, self.dtype), merger, self.layer_index)
        return {k: v.float().cpu() for k, v in out.items()}

    @torch.inference_mode()
    def encode_gated(self, pixels: Tensor, want: frozenset[str], keep: Tensor, previous: list[Tensor | None]
                     ) -> tuple[dict[str, Tensor], Tensor]:
        """`encode_pixels` with GRT's gated patch embeddings (see `Tower.forward_gated`).  → (float32 CPU outputs,
        the gated patch embeddings [B, N, D] on the device)."""
        out, emb = self.tower.forward_gated(pixels.to(self.device, self.dtype), frozenset(want), self.layer_index,
                                            keep, previous)
        return {k: v.float().cpu() for k, v in out.items()}, emb

    @torch.inference_mode()
    def encode_patches(self, pixels: Tensor, keep: Tensor) -> Tensor:
        """Patch tokens of only the `keep` [N] patches of one frame [1, 3, h, w]: the other patches are left out
        of the sequence (each kept one keeps its position embedding). Out of distribution for CLIP/SigLIP, which
        never saw partial token sets; used by RLT's opt-in `encode_changed_only`.  → [n_keep, D]."""
        return self.tower.forward_subset(pixels.to(self.device, self.dtype), keep, self.layer_index).float().cpu()

    @torch.inference_mode()
    def encode_text(self, text: str) -> Tensor:
        """The text tower's embedding of `text`, L2-normalised: [D'] float32 CPU (same space as `pooled`)."""
        import open_clip

        if _hub_tokenizer(self.name) and not _hub_reachable():
            _hub_offline()  # decided once: the local cache or a one-line error in seconds, never minutes of retries
        try:
            with _quiet_logs():
                tokenizer = open_clip.get_tokenizer(self.name)
            tokens = tokenizer([text]).to(self.device)
        except ModuleNotFoundError as e:
            raise MissingDependencyError(
                f"the tokenizer of {self.name} needs the '{e.name}' package for --query: pip install {e.name}"
            ) from None
        except Exception as e:
            raise ModelError(f"cannot load the tokenizer of {self.name} for --query ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:150] if str(e) else ''}); it may need network access "
                             f"once.") from None
        if getattr(self.model, "vision_only", False):
            raise UsageError("this encoder was loaded without its text tower (no --query); load it with text=True.")
        emb = self.model.encode_text(tokens).float()[0]
        return torch.nn.functional.normalize(emb, dim=-1).cpu()

    def space(self) -> dict[str, Any]:
        """The `space` metadata of a token file: the encoder's own token space."""
        return {"kind": "encoder", "model": self.name, "dim": self.width}

    #: frames per token frame (Qwen targets pair frames; open_clip towers do not)
    temporal_patch = 1

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid of a picture (fixed for open_clip towers)."""
        return self.grid

    def file_extras(self, positions: Tensor, rep: Tensor, grid: tuple[int, int], num_frames: int,
                    frame_times: list[float], info: Any, picture: tuple[int, int]) -> tuple[dict[str, Any],
                                                                                              dict[str, Tensor]]:
        """The `space` and `newline` metadata of a file (encoder space: no extra tensors)."""
        return {"space": self.space(), "newline": {"layout": "none"}}, {}

    def describe(self) -> dict[str, Any]:
        """Metadata recorded in token files."""
        return {
            "model": self.name,
            "pretrained": "" if self.config.checkpoint else (self.config.pretrained or ""),
            "checkpoint": str(self.config.checkpoint or ""),
            "checkpoint_sha256": self.checkpoint_sha256,
            "tower": self.kind,
            "layer": self.config.layer,
            "image_size": list(self.image_size),
            "resize_mode": self.resize_mode,
            "geometry": self.geometry.as_dict(),
            "grid": list(self.grid),
            "dim": self.width,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    def signal_sources(self) -> dict[str, str]:
        """Where each signal comes from, in words (recorded in the file's metadata)."""
        return self.tower.signal_sources(self.config.layer)
