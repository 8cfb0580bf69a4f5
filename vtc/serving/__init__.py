"""Serving engines' side of vtc files: the vLLM model plugin (`vtc.serving.vllm_plugin`, installed with
`pip install 'vtc[vllm]'` and loaded by vLLM through the `vllm.general_plugins` entry point).

Nothing here is imported by the rest of vtc: the plugin runs inside the engine's process and imports only vLLM and
torch."""
