"""Helpers to build tiny models and synthetic clips (used by the tests, the example and the benchmarks).

Tiny models have random weights saved to a local file and are loaded through the same `--checkpoint` path a
real checkpoint takes. Clips are synthesised with PyAV.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

TINY_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}


def tiny_clip_config(path: Path, image_size: int = 48, patch: int = 8, width: int = 32, layers: int = 3) -> Path:
    """Write an open_clip JSON config of a tiny CLIP-style model (own ViT, CLS token)."""
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": image_size, "layers": layers, "width": width, "patch_size": patch,
                          "head_width": 16},
           "text_cfg": TINY_TEXT}
    path.write_text(json.dumps(cfg))
    return path


def register_tiny_siglip_timm() -> str:
    """Register a tiny SigLIP-like timm ViT (no CLS, MAP attention-pool head); returns its timm name."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    name = "vit_vtc_tiny_siglip"
    if name in timm.list_models(name):
        return name

    def vit_vtc_tiny_siglip(pretrained: bool = False, **kwargs: object) -> VisionTransformer:
        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(k, None)
        args = dict(img_size=48, patch_size=8, embed_dim=32, depth=3, num_heads=2, class_token=False,
                    global_pool="map", fc_norm=False)
        args.update(kwargs)  # type: ignore[arg-type]
        return VisionTransformer(**args)  # type: ignore[arg-type]

    vit_vtc_tiny_siglip.__module__ = "timm.models.vision_transformer"
    register_model(vit_vtc_tiny_siglip)
    return name


def tiny_siglip_config(path: Path) -> Path:
    """Write an open_clip JSON config of a tiny SigLIP-style model (timm trunk with attention pooling)."""
    name = register_tiny_siglip_timm()
    cfg = {"embed_dim": 32, "init_logit_bias": -10,
           "vision_cfg": {"image_size": 48, "timm_model_name": name, "timm_model_pretrained": False,
                          "timm_pool": "map", "timm_proj": "none"},
           "text_cfg": TINY_TEXT}
    path.write_text(json.dumps(cfg))
    return path


def save_random_checkpoint(config: Path | str, out: Path, seed: int = 0) -> Path:
    """Build the model of `config` (an open_clip JSON config file, or the name of one of open_clip's architectures,
    e.g. ViT-B-16) with random weights (seeded) and save its state dict to `out`: a checkpoint for offline trials
    (`--model NAME --checkpoint OUT`)."""
    import logging

    import open_clip
    import torch

    name = str(config)
    if Path(config).is_file():
        open_clip.add_model_config(Path(config))
        name = Path(config).stem
    torch.manual_seed(seed)
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # "no pretrained weights loaded" is the point here
    try:
        model = open_clip.create_model(name, pretrained=None)
    finally:
        root.setLevel(level)
    torch.save(model.state_dict(), out)
    return out


def _mux(container: av.container.OutputContainer, stream: av.stream.Stream, frame: object | None) -> None:
    """Encode one frame (None flushes the encoder) and mux the packets."""
    for p in stream.encode(frame):
        container.mux(p)


def _video_frame(img: np.ndarray, index: int, fps: int) -> av.VideoFrame:
    fr = av.VideoFrame.from_ndarray(img, format="rgb24")
    fr.pts, fr.time_base = index, Fraction(1, fps)
    return fr


def write_video(path: Path, frames: list[np.ndarray], fps: int, *, lossless: bool = False,
                gop: int | None = None) -> Path:
    """Encode RGB uint8 frames [H, W, 3] to H.264 (yuv444p lossless, or yuv420p crf 23) with exact pts;
    `gop` forces a keyframe every `gop` frames."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height = w, h
        s.pix_fmt = "yuv444p" if lossless else "yuv420p"
        s.options = {"crf": "0" if lossless else "23", "preset": "ultrafast"}
        if gop:
            s.options = {**s.options, "g": str(gop), "keyint_min": str(gop)}
        for i, img in enumerate(frames):
            _mux(c, s, _video_frame(img, i, fps))
        _mux(c, s, None)
    return path


def long_video(path: Path, *, minutes: float = 60.0, fps: int = 15, size: tuple[int, int] = (128, 72),
               scene_every: float = 20.0, gop: int = 150) -> Path:
    """A long H.264 clip made quickly: a square moving over a textured background that changes every
    `scene_every` seconds (a scene cut), a keyframe every `gop` frames. No audio."""
    w, h = size
    n = int(round(minutes * 60 * fps))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": "28", "preset": "ultrafast", "g": str(gop), "keyint_min": str(gop)}
        s.thread_type = "AUTO"
        scene = -1
        for i in range(n):
            if int(i / fps // scene_every) != scene:
                scene = int(i / fps // scene_every)
                fx, fy, phase = rng.uniform(0.05, 0.3, 2).tolist() + [rng.uniform(0, 6.28)]
                base = (127 + 60 * np.sin(fx * xx + phase) + 60 * np.cos(fy * yy))[..., None] * \
                    rng.uniform(0.3, 1.0, 3)
                base = base.clip(0, 255).astype(np.uint8)
            img = base.copy()
            x0 = int((i * 2) % max(w - 16, 1))
            y0 = int((h - 16) / 2 * (1 + math.sin(i / fps)))
            img[y0 : y0 + 16, x0 : x0 + 16] = 255
            _mux(c, s, _video_frame(img, i, fps))
        _mux(c, s, None)
    return path


def synth_clip(
    path: Path,
    *,
    seconds: float = 2.0,
    fps: int = 12,
    size: tuple[int, int] = (96, 64),
    cut_at: float | None = 1.0,
    audio: bool = True,
    loud: list[tuple[float, float]] | None = None,
    codec: str = "libx264",
) -> Path:
    """A clip of a white square moving over a gradient, with an optional scene cut and an audio tone.

    `loud` lists (start, end) seconds where the 440 Hz tone plays; elsewhere the audio is silent.
    """
    w, h = size
    n = int(round(seconds * fps))
    with av.open(str(path), "w") as c:
        vs = c.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            vs.options = {"preset": "ultrafast", "crf": "23"}
        ast = None
        if audio:
            ast = c.add_stream("aac", rate=16000)
            ast.layout = "mono"
        yy, xx = np.mgrid[0:h, 0:w]
        for i in range(n):
            t = i / fps
            scene = 0 if cut_at is None or t < cut_at else 1
            img = np.zeros((h, w, 3), np.uint8)
            img[..., 0] = (xx * 255 // max(w - 1, 1)).astype(np.uint8)
            img[..., 1] = (yy * 255 // max(h - 1, 1)).astype(np.uint8) if scene == 0 else 40
            img[..., 2] = 60 if scene == 0 else 200
            s = max(4, h // 4)
            x0 = int((w - s) * (0.5 + 0.5 * math.sin(2 * math.pi * t / seconds)))
            y0 = (h - s) // 2
            img[y0 : y0 + s, x0 : x0 + s] = 255
            _mux(c, vs, _video_frame(img, i, fps))
        _mux(c, vs, None)
        if ast is not None:
            rate, chunk = 16000, 1024
            total = int(seconds * rate)
            tt = np.arange(total) / rate
            spans = loud if loud is not None else [(0.0, seconds)]
            gate = np.zeros(total, np.float32)
            for a, b in spans:
                gate[(tt >= a) & (tt < b)] = 1.0
            wave = (0.5 * np.sin(2 * np.pi * 440 * tt) * gate).astype(np.float32)
            for k in range(0, total, chunk):
                block = wave[k : k + chunk]
                af = av.AudioFrame.from_ndarray(block[None, :], format="flt", layout="mono")
                af.sample_rate = rate
                af.pts = k
                af.time_base = Fraction(1, rate)
                _mux(c, ast, af)
            _mux(c, ast, None)
    return path


#: token ids of the tiny LLaVA-OneVision model's vocabulary that the tests use
TINY_LLAVA_VIDEO_TOKEN = 291
TINY_LLAVA_IMAGE_TOKEN = 290


def tiny_llava_onevision(out: Path, *, seed: int = 0, head: bool = False, image_size: int = 84,
                         text_hidden: int = 48, text_layers: int = 2, vocab: int = 300,
                         shard_size: str | None = None) -> Path:
    """Save a tiny random-weight LLaVA-OneVision checkpoint (transformers `save_pretrained`) with its video
    processor config, as a real one is laid out: SigLIP vision tower (patch 14 → 6×6 at 84 px; no attention-pool
    head unless `head`), 2-layer projector, image_newline, Qwen2 language model.  → the directory."""
    import torch
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_llava_onevision import LlavaOnevisionImageProcessor
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    torch.manual_seed(seed)
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, image_size=image_size, patch_size=14, vision_use_head=head)
    text = dict(model_type="qwen2", hidden_size=text_hidden, intermediate_size=2 * text_hidden,
                num_hidden_layers=text_layers, num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                max_position_embeddings=4096)
    cfg = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_index=TINY_LLAVA_IMAGE_TOKEN,
                               video_token_index=TINY_LLAVA_VIDEO_TOKEN, vision_feature_layer=-1,
                               vision_feature_select_strategy="full")
    model = LlavaOnevisionForConditionalGeneration(cfg).eval()
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(out, **kwargs)
    video = LlavaOnevisionVideoProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                                         image_std=[0.5] * 3)
    image = LlavaOnevisionImageProcessor(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                                         image_std=[0.5] * 3)
    LlavaOnevisionProcessor(image_processor=image, tokenizer=tiny_tokenizer(LLAVA_SPECIALS), video_processor=video,
                            num_image_tokens=(image_size // 14) ** 2, vision_feature_select_strategy="full"
                            ).save_pretrained(out)
    return out


#: the special tokens of the tiny Qwen checkpoints' tokenizer (ids as in their configs)
QWEN_SPECIALS = {"<|image_pad|>": 290, "<|video_pad|>": 291, "<|vision_start|>": 292, "<|vision_end|>": 293}
#: the special tokens of the tiny LLaVA checkpoints' tokenizer
LLAVA_SPECIALS = {"<image>": 290, "<video>": 291}


def tiny_tokenizer(specials: dict[str, int] | None = None, vocab_size: int = 300) -> Any:
    """A small real tokenizer (transformers `PreTrainedTokenizerFast` over a `tokenizers` WordLevel model): one id
    per printable ASCII character (ids 3–97) and the family's special tokens (`QWEN_SPECIALS` by default) — what
    the tiny checkpoints' processors need to expand a prompt as the real ones do."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = dict(QWEN_SPECIALS if specials is None else specials)
    vocab = {"<unk>": 0, "<|endoftext|>": 1, "<|im_end|>": 2}
    vocab.update({chr(c): 3 + i for i, c in enumerate(range(32, 127))})
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), vocab_size) if i not in specials.values()})
    vocab.update(specials)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", additional_special_tokens=list(specials))


def tiny_llava_next_video(out: Path, *, seed: int = 0, image_size: int = 56, text_hidden: int = 48) -> Path:
    """Save a tiny random-weight LLaVA-NeXT-Video checkpoint with its full processor (`LlavaNextVideoProcessor`,
    `tiny_tokenizer`): CLIP vision tower (patch 14, CLS; 4×4 patches at 56 px), 2×2 average pooler, projector,
    Qwen2 language model; the video processor resizes the short side to `image_size` and centre-crops.
    → the directory."""
    import torch
    from transformers import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration, LlavaNextVideoProcessor
    from transformers.models.llava_next.image_processing_llava_next import LlavaNextImageProcessor
    from transformers.models.llava_next_video.video_processing_llava_next_video import LlavaNextVideoVideoProcessor

    torch.manual_seed(seed)
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                  num_attention_heads=4, image_size=image_size, patch_size=14, projection_dim=32)
    text = dict(model_type="qwen2", hidden_size=text_hidden, intermediate_size=2 * text_hidden,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
                max_position_embeddings=4096)
    cfg = LlavaNextVideoConfig(vision_config=vision, text_config=text, image_token_index=TINY_LLAVA_IMAGE_TOKEN,
                               video_token_index=TINY_LLAVA_VIDEO_TOKEN, vision_feature_layer=-2,
                               vision_feature_select_strategy="default", spatial_pool_mode="average",
                               spatial_pool_stride=2, image_grid_pinpoints=[[image_size, image_size]])
    LlavaNextVideoForConditionalGeneration(cfg).eval().save_pretrained(out)
    size, crop = {"shortest_edge": image_size}, {"height": image_size, "width": image_size}
    LlavaNextVideoProcessor(video_processor=LlavaNextVideoVideoProcessor(size=size, crop_size=crop),
                            image_processor=LlavaNextImageProcessor(size=size, crop_size=crop),
                            tokenizer=tiny_tokenizer(LLAVA_SPECIALS), patch_size=14,
                            vision_feature_select_strategy="default", num_additional_image_tokens=1
                            ).save_pretrained(out)
    return out


#: token ids of the tiny Qwen2.5-VL model's vocabulary that the tests use
TINY_QWEN_VIDEO_TOKEN = 291
TINY_QWEN_VISION_START = 292
TINY_QWEN_VISION_END = 293


def tiny_qwen2_5_vl(out: Path, *, seed: int = 0, min_pixels: int = 56 * 56, max_pixels: int = 112 * 140,
                    tokens_per_second: int = 2, shard_size: str | None = None,
                    cap_pixels_per_frame: bool = False, max_video_tokens: int = 128000) -> Path:
    """Save a tiny random-weight Qwen2.5-VL checkpoint (transformers `save_pretrained`) with a video processor
    config: vision transformer (patch 14, 2×2 merge, frame pairs, window attention with one full-attention block),
    Qwen2 language model with M-RoPE; the full processor (`Qwen2_5_VLProcessor` with `tiny_tokenizer`) is saved
    along, so `AutoProcessor.from_pretrained` gives the model's own.  → the directory."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    torch.manual_seed(seed)
    vision = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=48, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[2],
                  tokens_per_second=tokens_per_second, in_channels=3)
    text = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=300, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2]},
                bos_token_id=1, eos_token_id=2)
    cfg = Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=290,
                           video_token_id=TINY_QWEN_VIDEO_TOKEN, vision_start_token_id=TINY_QWEN_VISION_START,
                           vision_end_token_id=TINY_QWEN_VISION_END)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(out, **kwargs)
    video = Qwen2VLVideoProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
                                  cap_pixels_per_frame=cap_pixels_per_frame, max_video_tokens=max_video_tokens)
    Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tiny_tokenizer(),
                        video_processor=video).save_pretrained(out)
    return out


def tiny_qwen3_vl(out: Path, *, seed: int = 0, min_pixels: int = 64 * 64, max_pixels: int = 64 * 96 * 8,
                  deepstack: tuple[int, ...] = (0, 1), cap_pixels_per_frame: bool = False,
                  max_video_tokens: int = 768, model_type: str = "qwen3_vl") -> Path:
    """Save a tiny random-weight Qwen3-VL-style checkpoint (transformers `save_pretrained`) with its full processor
    (`Qwen3VLProcessor`, `tiny_tokenizer`): vision transformer (patch 16, 2×2 merge, frame pairs, learned position
    grid, DeepStack mergers after blocks `deepstack`), a language model with interleaved M-RoPE. Its processor
    bounds the pixels of all frames together (min_pixels, max_pixels). `model_type`: qwen3_vl, qwen3_vl_moe (MoE
    language model, same vision tower), qwen3_5 or qwen3_5_moe (no DeepStack; gated delta-net + attention
    layers).  → the directory."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    torch.manual_seed(seed)
    vision: dict[str, Any] = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=48,
                                  patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                                  num_position_embeddings=64, in_channels=3)
    text: dict[str, Any] = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=12, vocab_size=300, max_position_embeddings=4096,
                                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                 "mrope_section": [2, 2, 2], "mrope_interleaved": True},
                                bos_token_id=1, eos_token_id=2)
    if model_type.startswith("qwen3_vl"):
        vision["deepstack_visual_indexes"] = list(deepstack)
    if model_type.endswith("_moe"):
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    if model_type.startswith("qwen3_5"):
        text.update(layer_types=["linear_attention", "full_attention", "full_attention"], linear_conv_kernel_dim=2,
                    linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
                    linear_num_value_heads=4, rope_parameters={**text["rope_parameters"], "partial_rotary_factor": 1.0})
        if model_type.endswith("_moe"):
            text.update(shared_expert_intermediate_size=32)
    cfg = AutoConfig.for_model(model_type, vision_config=vision, text_config=text, image_token_id=290,
                               video_token_id=TINY_QWEN_VIDEO_TOKEN, vision_start_token_id=TINY_QWEN_VISION_START,
                               vision_end_token_id=TINY_QWEN_VISION_END)
    model = AutoModelForImageTextToText.from_config(cfg).eval()
    model.save_pretrained(out)
    video = Qwen3VLVideoProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
                                  cap_pixels_per_frame=cap_pixels_per_frame, max_video_tokens=max_video_tokens)
    Qwen3VLProcessor(image_processor=Qwen2VLImageProcessor(patch_size=16), tokenizer=tiny_tokenizer(),
                     video_processor=video).save_pretrained(out)
    return out


def tiny_qwen2_vl(out: Path, *, seed: int = 0, min_pixels: int = 56 * 56, max_pixels: int = 112 * 140) -> Path:
    """Save a tiny random-weight Qwen2-VL checkpoint with its full processor (`Qwen2VLProcessor`,
    `tiny_tokenizer`): vision transformer (patch 14, 2×2 merge, frame pairs, full attention), Qwen2 language model
    with M-RoPE (no time scaling).  → the directory."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    torch.manual_seed(seed)
    vision = dict(depth=2, embed_dim=32, hidden_size=48, mlp_ratio=2, num_heads=4, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    text = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=300, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 2]},
                bos_token_id=1, eos_token_id=2)
    cfg = Qwen2VLConfig(vision_config=vision, text_config=text, image_token_id=290,
                        video_token_id=TINY_QWEN_VIDEO_TOKEN, vision_start_token_id=TINY_QWEN_VISION_START,
                        vision_end_token_id=TINY_QWEN_VISION_END)
    Qwen2VLForConditionalGeneration(cfg).eval().save_pretrained(out)
    video = Qwen2VLVideoProcessor(size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
                                  cap_pixels_per_frame=False)
    Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tiny_tokenizer(),
                     video_processor=video).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    """`python -m vtc.testing random-checkpoint MODEL OUT.pt [--seed N]`: random weights for a real architecture
    (or a JSON config), to try vtc offline: `vtc compress clip.mp4 --model MODEL --checkpoint OUT.pt`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vtc.testing", description=main.__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rc = sub.add_parser("random-checkpoint", help="save random weights for an open_clip architecture")
    rc.add_argument("model", help="an open_clip model name (e.g. ViT-B-16) or a JSON config file")
    rc.add_argument("out", type=Path, help="the .pt file to write")
    rc.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import open_clip

    if not Path(args.model).is_file() and args.model not in open_clip.list_models():
        parser.error(f"unknown model '{args.model}' (open_clip.list_models() lists them; or pass a JSON config)")
    if args.out.exists():
        parser.error(f"{args.out} exists; choose another name")
    save_random_checkpoint(args.model, args.out, seed=args.seed)
    print(f"wrote {args.out}: random weights for {args.model}; use --model {args.model} --checkpoint {args.out}")


if __name__ == "__main__":
    main()
