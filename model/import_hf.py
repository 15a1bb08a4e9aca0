"""HF transformers model directory -> Tapestry checkpoint + gin model file.

    python -m model.import_hf --hf_dir=/models/llama --out=/tmp/llama [--scan_layers]

reads config.json (Llama, Gemma, Mixtral or Qwen2-MoE; fields we cannot express, e.g.
rope scaling or biases, are refused by name: model/hf_mapping.py), then the weights
with the `safetensors` numpy API (no torch), one tensor at a time from memory-mapped
local shards (a remote shard is read whole, one shard at a time), so the HF weights are
never all in memory beside ours. Writes to --out:
  checkpoints/<step>/{state, data}   params only (restore_params / fine-tuning read it)
  model.gin                          the model config as preset + overrides
Fine-tune or evaluate it with the gin file:
    python -m model.train --gin_file=/tmp/llama/model.gin --gin_file=gin/runs/finetune.gin \
        --gin.INITIAL_CHECKPOINT_PATH=/tmp/llama --gin.MODEL_DIR=/tmp/llama_ft ...
    python -m model.eval --gin_file=/tmp/llama/model.gin --gin_file=gin/runs/eval.gin \
        --gin.CHECKPOINT_PATH=/tmp/llama ...
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Callable, Sequence

import numpy as np

from model import fs, hf_mapping
from model.config import PRESETS, TransformerConfig

BASE_PRESET = "tiny"  # the gin file overrides every field that differs from it


class SafetensorsReader:
    """name -> numpy array over a single file or a sharded (index.json) checkpoint."""

    def __init__(self, hf_dir: str):
        self.hf_dir = hf_dir
        index = fs.join(hf_dir, "model.safetensors.index.json")
        if fs.exists(index):
            self.weight_map = json.loads(fs.read_text(index))["weight_map"]
        elif fs.exists(fs.join(hf_dir, "model.safetensors")):
            self.weight_map = None
        else:
            raise FileNotFoundError(f"{hf_dir}: no model.safetensors or "
                                    "model.safetensors.index.json (only safetensors weights "
                                    "are read; convert .bin files first)")
        self._open: tuple[str, Any] | None = None  # the one shard held open

    def _shard(self, file: str) -> Any:
        if self._open is None or self._open[0] != file:
            path = fs.join(self.hf_dir, file)
            if fs.is_remote(path):
                from safetensors.numpy import load
                handle = _DictHandle(load(fs.read_bytes(path)))
            else:
                from safetensors import safe_open
                handle = safe_open(str(fs.path(path)), framework="np")
            self._open = (file, handle)
        return self._open[1]

    def __call__(self, name: str) -> np.ndarray:
        file = "model.safetensors" if self.weight_map is None else self.weight_map.get(name)
        if file is None:
            raise KeyError(f"{self.hf_dir}: tensor {name!r} not in the weight map")
        handle = self._shard(file)
        if name not in handle.keys():
            raise KeyError(f"{self.hf_dir}/{file}: no tensor {name!r}")
        return handle.get_tensor(name)


@dataclasses.dataclass
class _DictHandle:
    tensors: dict[str, np.ndarray]

    def keys(self):
        return self.tensors.keys()

    def get_tensor(self, name: str) -> np.ndarray:
        return self.tensors[name]


def read_config(hf_dir: str, scan_layers: bool = False) -> tuple[TransformerConfig, str]:
    """(our config, HF model_type) from `hf_dir`/config.json."""
    hf = json.loads(fs.read_text(fs.join(hf_dir, "config.json")))
    cfg = hf_mapping.config_from_hf(hf)
    if scan_layers:
        cfg = dataclasses.replace(cfg, scan_layers=True)
    return cfg, hf["model_type"]


def load_params(hf_dir: str, cfg: TransformerConfig, arch: str,
                read: Callable[[str], np.ndarray] | None = None) -> dict[str, Any]:
    """Our params (numpy, cfg.param_dtype, layout by cfg.scan_layers), checked against
    the model's parameter tree."""
    from model.export_hf import check_params
    read = read or SafetensorsReader(hf_dir)
    dtype = np.dtype(cfg.param_dtype) if cfg.param_dtype != "bfloat16" else None
    cast = (lambda x: x.astype(dtype, copy=False)) if dtype else _to_bfloat16
    params = hf_mapping.from_hf(lambda n: cast(read(n)), cfg, arch,
                                getattr(cfg, "scan_layers", False))
    check_params(params, cfg)
    return params


def _to_bfloat16(x: np.ndarray) -> np.ndarray:
    import ml_dtypes
    return x.astype(ml_dtypes.bfloat16)


def gin_text(cfg: TransformerConfig, source: str) -> str:
    """A gin model file selecting `cfg`: BASE_PRESET plus every differing field."""
    base = PRESETS[BASE_PRESET]
    overrides: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value, default = getattr(cfg, f.name), getattr(base, f.name)
        if dataclasses.is_dataclass(value):
            overrides.update({f"{f.name}.{g.name}": getattr(value, g.name)
                              for g in dataclasses.fields(value)})
        elif value != default:
            overrides[f.name] = value
    body = ",\n".join(f"    {k!r}: {v!r}" for k, v in overrides.items())
    return (f"# Model imported from {source} by model.import_hf.\n"
            "# Use: --gin_file=<this file> with gin/runs/finetune.gin "
            "(INITIAL_CHECKPOINT_PATH = this directory)\n"
            "# or gin/runs/eval.gin (CHECKPOINT_PATH = this directory).\n"
            "DecoderOnlyModel.config = @model_config()\n"
            f"model_config.preset = {BASE_PRESET!r}\n"
            f"model_config.overrides = {{\n{body},\n}}\n")


@dataclasses.dataclass
class _ParamsOnly:
    params: Any

    def as_dict(self) -> dict[str, Any]:
        return {"params": self.params}


def import_hf(hf_dir: str, out: str, *, scan_layers: bool = False, step: int = 0
              ) -> dict[str, Any]:
    """Writes `out`/checkpoints/<step> and `out`/model.gin; returns a summary."""
    from model.checkpointing import CheckpointConfig, Checkpointer
    cfg, arch = read_config(hf_dir, scan_layers)
    params = load_params(hf_dir, cfg, arch)
    ckpt = Checkpointer(out, CheckpointConfig(async_save=False, save_on_sigterm=False))
    try:
        ckpt.save(step, _ParamsOnly(params), {"imported_from": str(hf_dir)})
    finally:
        ckpt.close()
    gin_path = fs.join(out, "model.gin")
    fs.write_text(gin_path, gin_text(cfg, f"{arch} ({hf_dir})"))
    return {"architecture": arch, "checkpoint": fs.join(out, "checkpoints", str(step)),
            "gin_file": gin_path, "tensors": len(hf_mapping.rules(cfg, arch))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hf_dir", required=True)
    parser.add_argument("--out", required=True, help="new MODEL_DIR for the checkpoint")
    parser.add_argument("--scan_layers", action="store_true",
                        help="write the stacked (scan_layers=True) parameter layout")
    parser.add_argument("--step", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        summary = import_hf(args.hf_dir, args.out, scan_layers=args.scan_layers,
                            step=args.step)
    except (hf_mapping.UnsupportedForHF, ValueError, FileNotFoundError, KeyError) as e:
        print(f"import_hf: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
