"""model.import_hf on randomly initialised HF models (built from configs by transformers
in the side venv, saved as several safetensors shards): HF -> Tapestry checkpoint ->
HF gives the same tensors, and the gin file it writes selects the imported config.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from model import export_hf, import_hf
from model.checkpointing import restore_params
from tests import hf_reference

COMMON = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-6)
MODELS = {
    "llama": dict(COMMON, num_key_value_heads=2, intermediate_size=96),  # GQA
    "mixtral": dict(COMMON, num_key_value_heads=2, intermediate_size=32,
                    num_local_experts=8, num_experts_per_tok=2),
    "gemma": dict(COMMON, num_key_value_heads=1, intermediate_size=96,  # tied, MQA
                  hidden_activation="silu"),
}


def hf_tensors(directory) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(directory.glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


@pytest.fixture(scope="module")
def hf_models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    hf_reference.run_jobs([{"random": arch, "config": cfg, "out": str(tmp / arch),
                            "max_shard_size": "100KB", "seed": i}
                           for i, (arch, cfg) in enumerate(MODELS.items())], str(tmp))
    return tmp


@pytest.mark.skipif(not hf_reference.available(), reason=hf_reference.SKIP_REASON)
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_hf_to_tapestry_to_hf(arch, hf_models, tmp_path):
    src = hf_models / arch
    assert (src / "model.safetensors.index.json").exists()  # a sharded checkpoint
    assert len(list(src.glob("*.safetensors"))) > 2
    summary = import_hf.import_hf(str(src), str(tmp_path / "ours"))
    assert summary["architecture"] == arch

    import gin
    from model.config import model_config
    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config_file(summary["gin_file"])
        cfg = model_config()
        gin.clear_config()
    assert cfg == import_hf.read_config(str(src))[0]
    assert (cfg.num_kv_heads, cfg.tie_embeddings) == (
        MODELS[arch]["num_key_value_heads"], arch == "gemma")
    if arch == "mixtral":
        assert (cfg.moe.num_experts, cfg.moe.top_k, cfg.layer_pattern) == (8, 2, "m")

    params, _ = restore_params(str(tmp_path / "ours"))
    export_hf.export(params, cfg, str(tmp_path / "back"), max_shard_mb=0.1)
    want, got = hf_tensors(src), hf_tensors(tmp_path / "back")
    assert set(got) == set(want)
    for name in want:
        if arch == "gemma" and name.endswith("norm.weight"):
            # Gemma stores w with y = x_normed * (1 + w); we hold 1 + w: one float32
            # rounding at 1 (<= 2^-24) each way.
            np.testing.assert_allclose(got[name], want[name], atol=2 ** -23, rtol=0)
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    config = json.loads((tmp_path / "back" / "config.json").read_text())
    assert config["model_type"] == arch


def test_import_refuses_a_gated_shared_expert(tmp_path):
    """Qwen2-MoE's shared expert gate must be zero (our shared experts are ungated)."""
    from model import hf_mapping
    cfg = hf_mapping.config_from_hf(dict(
        model_type="qwen2_moe", vocab_size=64, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32, num_experts=2, num_experts_per_tok=1,
        moe_intermediate_size=8, shared_expert_intermediate_size=8, norm_topk_prob=True))
    tensors = dict(hf_mapping.to_hf(_zeros(cfg), cfg, "qwen2_moe"))
    tensors["model.layers.0.mlp.shared_expert_gate.weight"] = np.ones((1, 16), np.float32)
    with pytest.raises(hf_mapping.UnsupportedForHF, match="shared_expert_gate"):
        hf_mapping.from_hf(tensors.__getitem__, cfg, "qwen2_moe")


def _zeros(cfg):
    params: dict = {}
    for path, shape in export_hf.expected_shapes(cfg).items():
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.zeros(shape, np.float32)
    return params
