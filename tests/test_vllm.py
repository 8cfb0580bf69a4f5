"""A real vLLM CPU engine serves vtc files through vtc's plugin (`vtc.serving`), agreeing with transformers.

The engine runs in its own virtualenv (`VTC_VLLM_PYTHON`, default /work/vllm-venv/bin/python; made by
scripts/make_vllm_venv.sh) as a subprocess (tests/vllm_engine.py); the test is skipped when that python or its vLLM
is absent.  The plugin comes in through the `vllm.general_plugins` entry point: a dist-info on the engine's
PYTHONPATH declares vtc's (as `pip install 'vtc[vllm]'` does), so the stock architecture name and `LLM(model=DIR)`
on the unchanged checkpoint serve it.

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

import pytest
import torch

pytest.importorskip("transformers")
tomllib = pytest.importorskip("tomllib")  # Python ≥ 3.11

from transformers import Qwen2_5_VLForConditionalGeneration  # noqa: E402

import vtc  # noqa: E402
import vtc.hf  # noqa: E402
from vtc.export import export  # noqa: E402
from vtc.testing import TINY_QWEN_VISION_END, TINY_QWEN_VISION_START, tiny_qwen2_5_vl  # noqa: E402

VLLM_PYTHON = os.environ.get("VTC_VLLM_PYTHON", "/work/vllm-venv/bin/python")
ROOT = Path(__file__).resolve().parents[1]
FRAMES = 6
TOL = 1e-5


def _has_vllm() -> bool:
    if not Path(VLLM_PYTHON).exists():
        return False
    r = subprocess.run([VLLM_PYTHON, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') "
                        "is None)"], capture_output=True)
    return r.returncode == 0


pytestmark = pytest.mark.skipif(not _has_vllm(), reason=f"no vLLM at VTC_VLLM_PYTHON={VLLM_PYTHON}")


def _entry_point(where: Path) -> Path:
    """A dist-info declaring vtc's `vllm.general_plugins` entry point (what installing vtc writes)."""
    info = where / "vtc_serving_probe-0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vtc-serving-probe\nVersion: 0\n")
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["vllm.general_plugins"]
    (info / "entry_points.txt").write_text("[vllm.general_plugins]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()))
    return where


def _run_engine(tmp: Path, model: Path, requests: list[dict], vocab: int) -> list[dict]:
    job = tmp / "job.json"
    out = tmp / "engine_out.pt"
    job.write_text(json.dumps({"model": str(model), "out": str(out), "requests": requests, "vocab_size": vocab}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.update(PYTHONPATH=f"{_entry_point(tmp / 'ep')}{os.pathsep}{ROOT}", VLLM_CPU_KVCACHE_SPACE="1",
               VLLM_TARGET_DEVICE="cpu", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"),
               VLLM_LOGGING_LEVEL="WARNING")
    r = subprocess.run([VLLM_PYTHON, str(ROOT / "tests" / "vllm_engine.py"), str(job)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    return torch.load(out)


def _reference(file: Path, model: Qwen2_5_VLForConditionalGeneration, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(**vtc.hf.video_inputs(file, model, ids)).logits[0, -1].float()
    return logits.log_softmax(-1)


def test_vllm_serves_qwen2_5_vl_files(tmp_path: Path, clip_path: Path) -> None:
    ckpt = tiny_qwen2_5_vl(tmp_path / "q25", head_dim=32)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    vocab = int(model.config.text_config.vocab_size)
    ids = [5, 6, TINY_QWEN_VISION_START, model.config.video_token_id, TINY_QWEN_VISION_END, 7, 8, 9]
    cases = {"none": ("none", None, {}), "evs": ("evs", 0.5, {}), "fastvid": ("fastvid", 0.25, {})}
    requests, refs, ks = [], [], []
    for name, (method, ratio, params) in cases.items():
        res = vtc.compress(clip_path, output=tmp_path / f"{name}.safetensors", method=method, ratio=ratio,
                           params=params, frames=FRAMES, target="qwen2.5-vl", target_model=str(ckpt),
                           dtype_out="float32")
        out = export(res.output, "vllm", tmp_path / f"{name}.vllm.pt")
        requests.append({"prompt_token_ids": ids, "export": str(out)})
        refs.append(_reference(res.output, model, ids))
        ks.append(int(vtc.load(res.output).tokens.shape[0]))
    # the control: the pruned file's kept set moved by one place on the grid (same K, same embeddings)
    wrong = torch.load(tmp_path / "evs.vllm.pt")
    video = wrong["multi_modal_data"]["video"]
    video["video_retention_mask"] = video["video_retention_mask"].roll(1)
    torch.save(wrong, tmp_path / "wrong.vllm.pt")
    requests.append({"prompt_token_ids": ids, "export": str(tmp_path / "wrong.vllm.pt")})

    got = _run_engine(tmp_path, ckpt, requests, vocab)

    full = ks[0]
    assert ks[1] < full and ks[2] < ks[1]
    for (name, _), k, ref, g in zip(cases.items(), ks, refs, got, strict=False):
        assert g["prompt_len"] == len(ids) - 1 + k, name
        diff = (g["logprobs"] - ref).abs().max().item()
        assert diff < TOL, (name, diff)
    control = (got[3]["logprobs"] - refs[1]).abs().max().item()
    assert got[3]["prompt_len"] == len(ids) - 1 + ks[1]
    assert control > 100 * TOL, control
