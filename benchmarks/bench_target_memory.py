"""Memory of making target-space tokens: vtc reads only the vision weights of a checkpoint.

Builds (once, cached under --dir) a random-weight LLaVA-OneVision checkpoint whose language model is over 1 GB on
disk, with a SigLIP-B-sized vision tower at 384 px (27×27 patches). Then, each in a fresh process, measures the
RSS growth over the process's baseline (python + torch + transformers imported):

- vtc: `TargetEncoder` (vision tower + projector + newline only) encoding 8 frames;
- transformers: `LlavaOnevisionForConditionalGeneration.from_pretrained` + `get_video_features` on the same
  frames (for comparison; transformers 5 maps the shards lazily, so its untouched language-model pages do not show
  in RSS either until a forward pass reads them).

    python benchmarks/bench_target_memory.py [--runs 3] [--dir /tmp/vtc-bench-llava]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import median, repeat

BUILD = r"""
import sys, json, torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration
from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor
out = sys.argv[1]
torch.manual_seed(0)
vision = dict(model_type="siglip_vision_model", hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
              num_attention_heads=12, image_size=384, patch_size=14, vision_use_head=False)
text = dict(model_type="qwen2", hidden_size=2048, intermediate_size=5504, num_hidden_layers=4, num_attention_heads=16,
            num_key_value_heads=16, vocab_size=32000, max_position_embeddings=4096)
cfg = LlavaOnevisionConfig(vision_config=vision, text_config=text, vision_feature_layer=-1,
                           vision_feature_select_strategy="full")
LlavaOnevisionForConditionalGeneration(cfg).save_pretrained(out, max_shard_size="500MB")
LlavaOnevisionVideoProcessor(size={"height": 384, "width": 384}, image_mean=[0.5] * 3,
                             image_std=[0.5] * 3).save_pretrained(out)
print(json.dumps({}))
"""

MEASURE = r"""
import sys, json, resource, time
import numpy as np, torch, transformers  # baseline: the libraries and model code both paths need
from transformers.models.llava_onevision import modeling_llava_onevision
from transformers.models.siglip import modeling_siglip
from transformers.models.qwen2 import modeling_qwen2
import vtc.targets.encoders, vtc.run.config
torch.set_num_threads(2)
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
which, ckpt = sys.argv[1], sys.argv[2]
base = rss_mb()
t0 = time.perf_counter()
if which == "vtc":
    from vtc.targets.encoders import open_encoder
    from vtc.run.config import make_config
    enc = open_encoder(make_config(target="llava-onevision", target_model=ckpt).encoder)
    params = sum(p.numel() * p.element_size() for p in enc.holder.parameters())
    load = time.perf_counter() - t0
    loaded = rss_mb() - base
    frames = np.random.default_rng(0).integers(0, 255, (8, 360, 640, 3), dtype=np.uint8)
    out = enc.encode(frames)
    shape = list(out["patches"].shape)
else:
    from transformers import AutoVideoProcessor, LlavaOnevisionForConditionalGeneration
    m = LlavaOnevisionForConditionalGeneration.from_pretrained(ckpt).eval()
    params = sum(p.numel() * p.element_size() for p in m.model.vision_tower.parameters()) + \
        sum(p.numel() * p.element_size() for p in m.model.multi_modal_projector.parameters())
    load = time.perf_counter() - t0
    loaded = rss_mb() - base
    frames = np.random.default_rng(0).integers(0, 255, (8, 360, 640, 3), dtype=np.uint8)
    px = AutoVideoProcessor.from_pretrained(ckpt)(videos=[frames], return_tensors="pt")["pixel_values_videos"]
    with torch.no_grad():
        shape = list(m.model.get_video_features(px).pooler_output.shape)
print(json.dumps({"base_mb": base, "peak_growth_mb": peak_mb() - base, "load_growth_mb": loaded,
                  "vision_weights_mb": params / 2**20, "load_s": load, "shape": shape}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/vtc-bench-llava"))
    a = ap.parse_args()
    ckpt = a.dir / "ov-1g"
    if not (ckpt / "config.json").exists():
        repeat(BUILD, 1, ckpt)
    sizes = {p.name: p.stat().st_size for p in ckpt.glob("*.safetensors")}
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())["weight_map"]
    lm_bytes = 0
    from safetensors import safe_open

    for f in sizes:
        with safe_open(str(ckpt / f), "pt") as s:
            for k in s.keys():
                if "language_model" in k or "lm_head" in k:
                    sl = s.get_slice(k)
                    n = 1
                    for d in sl.get_shape():
                        n *= d
                    lm_bytes += n * 4
    print(f"checkpoint {ckpt}: {sum(sizes.values()) / 2**30:.2f} GB on disk, language model "
          f"{lm_bytes / 2**30:.2f} GB ({len(index)} tensors, {len(sizes)} shards)")
    for which in ("vtc", "transformers"):
        rows = repeat(MEASURE, a.runs, which, ckpt)
        print(f"{which:12s}: RSS growth after loading {median(rows, 'load_growth_mb'):6.0f} MB, peak while "
              f"encoding 8 frames {median(rows, 'peak_growth_mb'):6.0f} MB (medians of {a.runs}); "
              f"vision+projector weights {median(rows, 'vision_weights_mb'):.0f} MB, "
              f"load {median(rows, 'load_s'):.2f} s, baseline {median(rows, 'base_mb'):.0f} MB")


if __name__ == "__main__":
    main()
