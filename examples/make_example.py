"""Make the bundled example: a synthetic clip and a tiny demo encoder (random weights, fixed seed).

    python examples/make_example.py

The clip (`examples/example.mp4`, committed) is a square moving over a gradient with a scene cut at 4 s and a
440 Hz tone that is loud for the first half. The demo encoder (`examples/demo-encoder/`, generated, not
committed) is a small CLIP-style ViT with random weights: it exercises the whole pipeline offline. For real
tokens use a pretrained model (`--model ViT-B-16 --pretrained openai`, or `--preset llava-onevision`).
"""

from __future__ import annotations

from pathlib import Path

from vtc.testing import save_random_checkpoint, synth_clip, tiny_clip_config

HERE = Path(__file__).resolve().parent


def main() -> None:
    clip = HERE / "example.mp4"
    if not clip.exists():
        synth_clip(clip, seconds=8.0, fps=24, size=(320, 180), cut_at=4.0, loud=[(0.0, 4.0)])
    enc = HERE / "demo-encoder"
    enc.mkdir(exist_ok=True)
    cfg = tiny_clip_config(enc / "vtc-demo-vit.json", image_size=224, patch=16, width=64, layers=4)
    ckpt = enc / "vtc-demo-vit.pt"
    if not ckpt.exists():
        save_random_checkpoint(cfg, ckpt, seed=0)
    print(f"example clip: {clip}\ndemo encoder: {cfg} + {ckpt.name}")


if __name__ == "__main__":
    main()
