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
  {"tensors": HF_DIR, "out": NPZ}
      every tensor of the saved model's state dict, as loaded by transformers
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


def _tensors(job):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(job["tensors"], dtype=torch.float32)
    np.savez(job["out"], **{k: v.float().numpy() for k, v in model.state_dict().items()})


def main(spec: str) -> None:
    with open(spec) as f:
        jobs = json.load(f)
    for job in jobs:
        if "logits" in job:
            _logits(job)
        elif "random" in job:
            _random(job)
        else:
            _tensors(job)


if __name__ == "__main__":
    main(sys.argv[1])
