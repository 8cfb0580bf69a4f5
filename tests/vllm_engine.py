"""Run a real vLLM engine on vtc exports; executed by tests/test_vllm.py with the vLLM virtualenv's python.

    python tests/vllm_engine.py JOB.json

JOB: {"model": DIR, "out": FILE, "vocab_size": V, "requests": [{"prompt_token_ids": [...], "export": FILE.pt} or
{"prompt_embeds": FILE.pt}, ...]}.  Writes to
`out` (torch.save) one entry per request: the prompt length the engine used and the first generated token's
log-probabilities over the whole vocabulary (vLLM's raw logprobs, float32).  vtc's plugin comes in through the
`vllm.general_plugins` entry point (installed, or a dist-info on PYTHONPATH); the engine's worker is spawned, hence
the main guard."""

from __future__ import annotations

import json
import sys

import torch


def main(job_path: str) -> None:
    from vllm import LLM, SamplingParams

    job = json.loads(open(job_path).read())
    vocab = int(job["vocab_size"])
    llm = LLM(model=job["model"], dtype="float32", max_model_len=1024, max_num_seqs=2, enforce_eager=True,
              max_logprobs=vocab, seed=0, **job.get("engine_args", {}))
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=vocab)
    prompts = []
    for req in job["requests"]:
        if "prompt_embeds" in req:
            prompts.append({"prompt_embeds": torch.load(req["prompt_embeds"])})
            continue
        data = torch.load(req["export"])
        prompts.append({"prompt_token_ids": req["prompt_token_ids"], "multi_modal_data": data["multi_modal_data"]})
    results = []
    for out in llm.generate(prompts, params):
        first = out.outputs[0].logprobs[0]
        lp = torch.full((vocab,), float("-inf"))
        for tok, item in first.items():
            lp[tok] = item.logprob
        ids = out.prompt_token_ids
        results.append({"prompt_len": None if ids is None else len(ids), "logprobs": lp})
    torch.save(results, job["out"])


if __name__ == "__main__":
    main(sys.argv[1])
