"""vtc's vLLM plugin: the `vllm.general_plugins` entry point (`vtc = vtc.serving.vllm_plugin:register`).

Installed (`pip install 'vtc[vllm]'` into vLLM's environment), vLLM calls `register()` in every process it starts;
it replaces the stock Qwen2.5-VL and Qwen3-VL classes by vtc's subclasses (`vtc.serving.vllm_models`), which accept a
`video_retention_mask` over the full grid inside `multi_modal_data["video"]` and otherwise behave exactly as the
stock model (raw frames and complete `video_embeds` take the stock path). The checkpoint and the engine's arguments
stay unchanged: `LLM(model=DIR)`.

The classes are registered lazily (`module:Class`), so loading the plugin imports nothing from vLLM's model code.
"""

from __future__ import annotations

#: stock architecture name → vtc's class that serves vtc files for it
MODELS = {
    "Qwen2_5_VLForConditionalGeneration": "vtc.serving.vllm_models:VtcQwen2_5_VLForConditionalGeneration",
    "Qwen3VLForConditionalGeneration": "vtc.serving.vllm_models:VtcQwen3VLForConditionalGeneration",
}


def register() -> None:
    """Register vtc's model classes under the stock architecture names (idempotent; vLLM calls it per process)."""
    from vllm import ModelRegistry

    for arch, cls in MODELS.items():
        ModelRegistry.register_model(arch, cls)
