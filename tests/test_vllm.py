"""A real vLLM CPU engine serves vtc files through vtc's plugin (`vtc.serving`), agreeing with transformers.

The engine runs in its own virtualenv (`VTC_VLLM_PYTHON=/work/vllm-venv/bin/python`, made by
scripts/make_vllm_venv.sh) as a subprocess (tests/vllm_engine.py); the test is skipped when that variable is unset
or its python has no vLLM.  The plugin comes in through the `vllm.general_plugins` entry point: a dist-info on
the engine's PYTHONPATH declares vtc's (as `pip install 'vtc[vllm]'` does), so the stock architecture name and
`LLM(model=DIR)` on the unchanged checkpoint serve it.

Reference: transformers' own forward of the same checkpoint on `vtc.hf.video_inputs` (kept tokens at their
original M-RoPE positions, text after the full grid).  Both run in float32; the first generated token's log-
probabilities over the whole vocabulary must agree within 1e-5 (float32 rounding through two layers of different
kernels, ~1e-6), and a wrong mask (same K, the kept set shifted by one) must not.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

pytest.importorskip("transformers")
tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11

from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

import vtc  # noqa: E402
import vtc.hf  # noqa: E402
from vtc.export import export  # noqa: E402
from vtc.testing import (  # noqa: E402
    TINY_QWEN_VISION_END,
    TINY_QWEN_VISION_START,
    tiny_llava_onevision,
    tiny_qwen2_5_vl,
    tiny_qwen3_vl,
)

VLLM_PYTHON = os.environ.get("VTC_VLLM_PYTHON", "")
ROOT = Path(__file__).resolve().parents[1]
FRAMES = 6
TOL = 1e-5


def _has_vllm() -> bool:
    if not VLLM_PYTHON or not Path(VLLM_PYTHON).exists():
        return False
    r = subprocess.run([VLLM_PYTHON, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') "
                        "is None)"], capture_output=True)
    return r.returncode == 0


pytestmark = pytest.mark.skipif(not _has_vllm(), reason="set VTC_VLLM_PYTHON to a python with vLLM "
                                "(scripts/make_vllm_venv.sh); about 3 min")


def _entry_point(where: Path) -> Path:
    """A dist-info declaring vtc's `vllm.general_plugins` entry point (what installing vtc writes)."""
    info = where / "vtc_serving_probe-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vtc-serving-probe\nVersion: 0\n")
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["vllm.general_plugins"]
    (info / "entry_points.txt").write_text("[vllm.general_plugins]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    return where


MM_ARGS = {"enable_mm_embeds": True, "limit_mm_per_prompt": {"video": 1, "image": 0}, "skip_mm_profiling": True}


def _run_engine(tmp: Path, model: Path, requests: list[dict], vocab: int, engine_args: dict = MM_ARGS
                ) -> list[dict]:
    job = tmp / "job.json"
    out = tmp / "engine_out.pt"
    job.write_text(json.dumps({"model": str(model), "out": str(out), "requests": requests, "vocab_size": vocab,
                               "engine_args": engine_args}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.update(PYTHONPATH=f"{_entry_point(tmp / 'ep')}{os.pathsep}{ROOT}", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_TARGET_DEVICE="cpu", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
               VLLM_LOGGING_LEVEL="WARNING")
    r = subprocess.run([VLLM_PYTHON, str(ROOT / "tests" / "vllm_engine.py"), str(job)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return torch.load(out)


def _reference(file: Path, model: Any, ids: list[int], tokenizer: Any) -> tuple[torch.Tensor, int]:
    """transformers' own first-token log-probabilities on `vtc.hf.video_inputs`, and the sequence's length."""
    inputs = vtc.hf.video_inputs(file, model, ids, tokenizer=tokenizer)
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].float()
    seq = inputs["input_ids"] if "input_ids" in inputs else inputs["inputs_embeds"]
    return logits.log_softmax(-1), int(seq.shape[1])


FAMILIES = {"qwen2.5-vl": (tiny_qwen2_5_vl, "qwen2.5-vl"), "qwen3-vl": (tiny_qwen3_vl, "qwen3-vl")}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_vllm_serves_pruned_files(tmp_path: Path, clip_path: Path, family: str) -> None:
    make, target = FAMILIES[family]
    ckpt = make(tmp_path / "ckpt", head_dim=32)
    model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32).eval()
    tokenizer = AutoProcessor.from_pretrained(ckpt).tokenizer
    vocab = int(model.config.text_config.vocab_size)
    ids = [5, 6, TINY_QWEN_VISION_START, model.config.video_token_id, TINY_QWEN_VISION_END, 7, 8, 9]
    cases = {"none": ("none", None), "evs": ("evs", 0.5), "fastvid": ("fastvid", 0.25)}
    requests, refs, lengths, ks = [], [], [], []
    for name, (method, ratio) in cases.items():
        res = vtc.compress(clip_path, output=tmp_path / f"{name}.safetensors", method=method, ratio=ratio,
                           frames=FRAMES, target=target, target_model=str(ckpt), dtype_out="float32")
        out = export(res.output, "vllm", tmp_path / f"{name}.vllm.pt")
        requests.append({"prompt_token_ids": ids, "export": str(out)})
        ref, length = _reference(res.output, model, ids, tokenizer)
        refs.append(ref)
        lengths.append(length)
        ks.append(int(vtc.load(res.output).tokens.shape[0]))
    # the control: the pruned file's kept set moved by one place on the grid (same K, same embeddings)
    wrong = torch.load(tmp_path / "evs.vllm.pt")
    video = wrong["multi_modal_data"]["video"]
    video["video_retention_mask"] = video["video_retention_mask"].roll(1)
    torch.save(wrong, tmp_path / "wrong.vllm.pt")
    requests.append({"prompt_token_ids": ids, "export": str(tmp_path / "wrong.vllm.pt")})

    got = _run_engine(tmp_path, ckpt, requests, vocab)

    assert ks[2] < ks[1] < ks[0]
    for (name, _), k, ref, length, g in zip(cases.items(), ks, refs, lengths, got, strict=False):
        assert g["prompt_len"] == length == lengths[0] - (ks[0] - k), name  # text + K
        diff = (g["logprobs"] - ref).abs().max().item()
        print(f"vllm {family} {name}: K={k} prompt_len={g['prompt_len']} max|Δ logprob|={diff:.2e}")
        assert diff < TOL, (name, diff)
    control = (got[3]["logprobs"] - refs[1]).abs().max().item()
    print(f"vllm {family} wrong mask: max|Δ logprob|={control:.2e}")
    assert got[3]["prompt_len"] == lengths[1]
    assert control > 100 * TOL, control


def test_vllm_serves_llava_onevision_through_prompt_embeds(tmp_path: Path, clip_path: Path) -> None:
    """vLLM rejects LLaVA `video_embeds`; `prompt_embeds` built by `vtc.hf.video_inputs` (contiguous positions, as
    vLLM numbers a prompt) serve any K."""
    ckpt = tiny_llava_onevision(tmp_path / "ckpt", text_hidden=128)
    model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32).eval()
    vocab = int(model.config.text_config.vocab_size)
    ids = [5, 6, model.config.video_token_id, 7, 8, 9]
    requests, refs, lengths = [], [], []
    for name, (method, ratio) in {"none": ("none", None), "fastvid": ("fastvid", 0.25)}.items():
        res = vtc.compress(clip_path, output=tmp_path / f"{name}.safetensors", method=method, ratio=ratio,
                           frames=4, target="llava-onevision", target_model=str(ckpt), dtype_out="float32")
        inputs = vtc.hf.video_inputs(res.output, model, ids)
        with torch.no_grad():
            refs.append(model(**inputs).logits[0, -1].float().log_softmax(-1))
        torch.save(inputs["inputs_embeds"][0].detach().clone(), tmp_path / f"{name}.embeds.pt")
        requests.append({"prompt_embeds": str(tmp_path / f"{name}.embeds.pt")})
        lengths.append(int(inputs["inputs_embeds"].shape[1]))
    # released llava-hf checkpoints name the tower `vision_tower.vision_model.*`, which vLLM 0.32 loads; transformers
    # 5's save_pretrained writes `vision_tower.*`: give the engine the released layout (the tower is not run)
    weights = load_file(ckpt / "model.safetensors")
    save_file({k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in weights.items()},
              ckpt / "model.safetensors", metadata={"format": "pt"})
    got = _run_engine(tmp_path, ckpt, requests, vocab, {"enable_prompt_embeds": True})
    assert lengths[1] < lengths[0]
    for ref, length, g in zip(refs, lengths, got, strict=True):
        assert g["prompt_len"] in (None, length)
        diff = (g["logprobs"] - ref).abs().max().item()
        print(f"vllm llava-onevision: L={length} max|Δ logprob|={diff:.2e}")
        assert diff < TOL, diff
