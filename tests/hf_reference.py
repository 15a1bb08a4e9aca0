"""The HF side of the interop tests; runs in the side venv (tests/hf_env.sh), not ours.

    $TAPESTRY_HF_VENV/bin/python tests/hf_reference.py jobs.json

jobs.json is a list; each job is one of
  {"logits": HF_DIR, "tokens": [[...], ...], "out": NPZ, "generate": N}
      float32 logits [B, T, V] of `tokens` (rows of equal length, start token 0 first)
      under AutoModelForCausalLM (eager attention), and, with N > 0, N greedy tokens
      after each row -> NPZ {logits, generated}
  {"random": "llama"|"gemma"|"mixtral"|"qwen2_moe", "config": {...}, "out": HF_DIR,
   "max_shard_size": "200KB", "seed": 0}
      a randomly initialised HF model from that config, saved as safetensors (sharded
      when larger than max_shard_size)
  {"lm_eval": HF_DIR, "tasks": [...], "include_path": DIR, "num_fewshot": K, "out": JSON}
      lm-eval's `hf` backend (float32, BOS from the tokenizer) on local task configs ->
      JSON {task: {"acc": ..., "samples": [{"doc_id", "arguments", "loglikelihoods"}]}}
Tests call `run_jobs` (below) from our venv, which starts this script once.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

VENV = os.environ.get("TAPESTRY_HF_VENV", str(pathlib.Path.home() / ".cache/tapestry/hf-env"))
PYTHON = os.path.join(VENV, "bin", "python")


def available() -> bool:
    return os.path.exists(os.path.join(VENV, ".installed"))


SKIP_REASON = (f"no HF side environment at {VENV} (build it with `bash tests/hf_env.sh`; "
               "TAPESTRY_HF_VENV overrides the path)")


def run_jobs(jobs: list[dict], tmp: str, timeout: int = 300) -> None:
    """Runs `jobs` in one subprocess of the side venv; raises with its stderr on failure."""
    spec = os.path.join(tmp, "hf_jobs.json")
    with open(spec, "w") as f:
        json.dump(jobs, f)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([PYTHON, __file__, spec], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode:
        raise RuntimeError(f"HF reference failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


# ------------------------------------------------------------ side-venv code
def _logits(job):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(job["logits"], dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    tokens = torch.tensor(job["tokens"], dtype=torch.long)
    out = {}
    with torch.no_grad():
        out["logits"] = model(input_ids=tokens).logits.float().numpy()
        if job.get("generate"):
            gen = model.generate(input_ids=tokens, attention_mask=torch.ones_like(tokens),
                                 max_new_tokens=job["generate"], do_sample=False,
                                 eos_token_id=None, pad_token_id=0)
            out["generated"] = gen[:, tokens.shape[1]:].numpy()
    np.savez(job["out"], **out)


def _random(job):
    import torch
    import transformers
    classes = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
               "gemma": ("GemmaConfig", "GemmaForCausalLM"),
               "mixtral": ("MixtralConfig", "MixtralForCausalLM"),
               "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM")}
    config_cls, model_cls = (getattr(transformers, c) for c in classes[job["random"]])
    torch.manual_seed(job.get("seed", 0))
    model = model_cls(config_cls(**job["config"])).float()
    with torch.no_grad():  # norms away from 1, so a wrong norm mapping shows
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(job["out"], max_shard_size=job.get("max_shard_size", "5GB"))


def _lm_eval(job):
    import lm_eval
    from lm_eval.tasks import TaskManager
    results = lm_eval.simple_evaluate(
        model="hf", model_args={"pretrained": job["lm_eval"], "dtype": "float32",
                                "add_bos_token": True, "device": "cpu"},
        tasks=job["tasks"], num_fewshot=job["num_fewshot"], batch_size=4, log_samples=True,
        task_manager=TaskManager(include_path=job["include_path"], include_defaults=False))
    out = {}
    for task in job["tasks"]:
        out[task] = {"acc": results["results"][task]["acc,none"], "samples": [
            {"doc_id": s["doc_id"], "arguments": [list(a[:2]) for a in s["arguments"]],
             "loglikelihoods": [float(r[0][0]) for r in s["resps"]]}
            for s in results["samples"][task]]}
    with open(job["out"], "w") as f:
        json.dump(out, f)


def main(spec: str) -> None:
    with open(spec) as f:
        jobs = json.load(f)
    for job in jobs:
        if "logits" in job:
            _logits(job)
        elif "random" in job:
            _random(job)
        else:
            _lm_eval(job)


if __name__ == "__main__":
    main(sys.argv[1])
