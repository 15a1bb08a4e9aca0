"""model.export_hf: tiny Tapestry models -> HF directories that transformers runs the same.

The HF side (torch CPU, transformers) runs in the side venv (tests/hf_env.sh) through
tests/hf_reference.py; the round trip and refusal tests need only our venv.
"""
from __future__ import annotations

import dataclasses
import logging
import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from model import export_hf, hf_mapping, import_hf
from model.config import MoEConfig, TransformerConfig
from model.models import DecoderOnlyModel
from tests import hf_reference

# Tiny text decoders, one per HF architecture (float32, xla attention).
BASE = dict(vocab_size=512, d_model=64, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=16, d_ff=96, max_len=64, attention_backend="xla", rope_base=500.0,
            norm_eps=1e-6)
CONFIGS = {
    "llama": TransformerConfig(**BASE),
    "gemma": TransformerConfig(**dict(BASE, num_kv_heads=1, tie_embeddings=True,
                                      scale_embeddings=True)),
    # capacity_factor_eval = E/k: capacity = tokens per row, nothing drops (as in HF).
    # d_ff is unused when every layer is MoE: set to the experts' width, as HF has it.
    "mixtral": TransformerConfig(**dict(BASE, d_ff=32), layer_pattern="m", moe=MoEConfig(
        num_experts=4, top_k=2, expert_hidden=32, capacity_factor_eval=2.0)),
    "qwen2_moe": TransformerConfig(**BASE, layer_pattern="dm", moe=MoEConfig(
        num_experts=4, top_k=2, expert_hidden=32, num_shared_experts=1, shared_hidden=48,
        capacity_factor_eval=2.0)),
}
TOKENS = np.array([[0, 17, 423, 300, 5, 99, 134, 7, 300, 42, 11, 60],
                   [0, 511, 2, 2, 2, 51, 77, 409, 300, 12, 1, 65]], np.int32)


def random_params(cfg: TransformerConfig, seed: int = 0) -> dict:
    """Random params in the model's own tree (jax.eval_shape of its init; no compute):
    weights ~ N(0, 0.1^2), norm scales ~ 1 + N(0, 0.1^2), so a wrong mapping shows."""
    rng = np.random.default_rng(seed)
    params: dict = {}
    for path, shape in sorted(export_hf.expected_shapes(cfg).items()):
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        noise = rng.normal(size=shape).astype(np.float32)
        node[path[-1]] = 1.0 + 0.1 * noise if path[-1] == "scale" else 0.1 * noise
    return params


def our_logits(cfg: TransformerConfig, params) -> np.ndarray:
    batch = {"decoder_input_tokens": TOKENS,
             "decoder_segment_ids": np.ones_like(TOKENS),
             "decoder_positions": np.broadcast_to(np.arange(TOKENS.shape[1]), TOKENS.shape)}
    model = DecoderOnlyModel(cfg)
    return np.asarray(jax.jit(lambda p, b: model.logits(p, b)[0])(params, batch))


def flat(tree, prefix=()):
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flat(v, prefix + (k,)))
        return out
    return {prefix: np.asarray(tree)}


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_export_import_round_trip_is_exact(arch, tmp_path):
    cfg = CONFIGS[arch]
    params = random_params(cfg)
    summary = export_hf.export(params, cfg, str(tmp_path / "hf"), max_shard_mb=0.1)
    assert summary["architecture"] == hf_mapping.ARCHITECTURES[arch]
    assert len(summary["files"]) > 1  # 100 KiB shards: an index and several files
    back_cfg, back_arch = import_hf.read_config(str(tmp_path / "hf"))
    assert back_arch == arch
    for field in dataclasses.fields(cfg):  # everything HF holds comes back
        if field.name not in ("moe", "attention_backend", "max_len"):
            assert getattr(back_cfg, field.name) == getattr(cfg, field.name), field.name
    back = import_hf.load_params(str(tmp_path / "hf"), back_cfg, back_arch)
    want, got = flat(params), flat(back)
    assert set(want) == set(got)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg="/".join(key))


def test_scanned_layout_exports_the_same_tensors(tmp_path):
    if "scan_layers" not in {f.name for f in dataclasses.fields(TransformerConfig)}:
        pytest.skip("TransformerConfig has no scan_layers in this checkout")
    cfg = CONFIGS["qwen2_moe"]
    params = random_params(cfg)
    scanned_cfg = dataclasses.replace(cfg, scan_layers=True)
    stacked = hf_mapping.from_hf(dict(hf_mapping.to_hf(params, cfg, "qwen2_moe")).__getitem__,
                                 cfg, "qwen2_moe", scan_layers=True)
    export_hf.check_params(stacked, scanned_cfg)  # the model's own scanned tree
    assert "layers" in stacked and "layer_0" not in stacked
    export_hf.export(params, cfg, str(tmp_path / "a"))
    export_hf.export(stacked, scanned_cfg, str(tmp_path / "b"))
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_refuses_parallel_block_and_drops_encoders(tmp_path, caplog):
    cfg = dataclasses.replace(CONFIGS["llama"], parallel_block=True)
    with pytest.raises(hf_mapping.UnsupportedForHF, match="parallel_block"):
        export_hf.export(random_params(cfg), cfg, str(tmp_path / "x"))
    from model.config import PRESETS
    cfg = dataclasses.replace(PRESETS["tiny"], attention_backend="xla")  # with media encoders
    params = random_params(cfg)
    assert "encoders" in params
    with caplog.at_level(logging.WARNING, logger="tapestry.export_hf"):  # whatever the root has
        summary = export_hf.export(params, cfg, str(tmp_path / "tiny"))
    assert summary["architecture"] == "LlamaForCausalLM"
    assert "image, video, audio encoder(s)" in caplog.text
    assert not [k for k in load_file(str(tmp_path / "tiny" / "model.safetensors"))
                if "encoder" in k]


def test_import_refuses_what_we_cannot_express(tmp_path):
    hf = hf_mapping.hf_config(CONFIGS["llama"], "llama", "float32")
    for change, name in ((dict(rope_parameters={"rope_type": "llama3", "factor": 8.0}),
                          "rope scaling"), (dict(attention_bias=True), "attention_bias"),
                         (dict(hidden_act="gelu"), "activation 'gelu'")):
        with pytest.raises(hf_mapping.UnsupportedForHF, match=name):
            hf_mapping.config_from_hf(dict(hf, **change))
    with pytest.raises(hf_mapping.UnsupportedForHF, match="model_type='gpt2'"):
        hf_mapping.config_from_hf(dict(hf, model_type="gpt2"))


def test_checkpoint_to_hf_to_checkpoint(tmp_path):
    """The CLI path: a saved Tapestry checkpoint -> export -> import -> the same params."""
    from model.checkpointing import restore_params
    cfg = CONFIGS["mixtral"]
    params = random_params(cfg)
    import_hf_out = tmp_path / "ckpt"
    from model.checkpointing import CheckpointConfig, Checkpointer
    ckpt = Checkpointer(str(import_hf_out), CheckpointConfig(async_save=False,
                                                              save_on_sigterm=False))
    ckpt.save(7, import_hf._ParamsOnly(params), {})
    ckpt.close()
    summary = export_hf.export_checkpoint(str(import_hf_out), cfg, str(tmp_path / "hf"))
    assert summary["step"] == 7
    result = import_hf.import_hf(str(tmp_path / "hf"), str(tmp_path / "back"))
    restored, step = restore_params(str(tmp_path / "back"))
    assert step == 0
    want, got = flat(params), flat(jax.tree.map(np.asarray, restored))
    assert set(want) == set(got)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg="/".join(key))
    # The gin file selects the same model.
    import gin
    from model.config import model_config
    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config_file(result["gin_file"])
        back_cfg = model_config()
        gin.clear_config()
    assert back_cfg == dataclasses.replace(cfg, attention_backend="xla", max_len=64)


GREEDY = ("llama", "mixtral")  # greedy decoding checked on one dense and one MoE model


@pytest.mark.skipif(not hf_reference.available(), reason=hf_reference.SKIP_REASON)
def test_hf_logits_and_greedy_tokens_equal_ours(tmp_path):
    jobs, ours = [], {}
    for arch, cfg in CONFIGS.items():
        params = random_params(cfg, seed=1)
        export_hf.export(params, cfg, str(tmp_path / arch))
        ours[arch] = (our_logits(cfg, params), params)
        jobs.append({"logits": str(tmp_path / arch), "tokens": TOKENS.tolist(),
                     "out": str(tmp_path / f"{arch}.npz"),
                     "generate": 32 if arch in GREEDY else 0})
    hf_reference.run_jobs(jobs, str(tmp_path))
    from model import eval as eval_lib
    for arch, cfg in CONFIGS.items():
        hf = np.load(tmp_path / f"{arch}.npz")
        logits, params = ours[arch]
        np.testing.assert_allclose(hf["logits"], logits, atol=1e-4, rtol=0, err_msg=arch)
        if arch not in GREEDY:
            continue
        generate = eval_lib.make_generate_fn(DecoderOnlyModel(cfg), params)
        greedy = generate([(row[1:].tolist(), None) for row in TOKENS], 32)
        np.testing.assert_array_equal(hf["generated"], np.array(greedy), err_msg=arch)


def test_tokenizer_json_encodes_as_sentencepiece(tmp_path):
    """The exported tokenizer.json (HF `tokenizers`) gives our SentencePiece ids."""
    import sentencepiece as spm
    from tokenizers import Tokenizer

    export_hf.write_tokenizer(str(tmp_path), export_hf.default_vocab())
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    texts = ["The following are multiple choice questions (with answers) about anatomy.\n\n"
             "What is 2 + 2?\nA. 3\nB. 4\nC. 22\nD. None\nAnswer: B\n\n", " A", " D",
             "  two  spaces\ttab 1234567.89", "Ünïcödé 数字 <image><begin_audio>x"]
    for text in texts:
        assert tok.encode(text, add_special_tokens=False).ids == sp.encode(text), text
        assert tok.encode(text).ids == [0] + sp.encode(text)  # our start token as BOS
        assert tok.decode(sp.encode(text)) == text
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["bos_token"] == sp.id_to_piece(0) and config["add_bos_token"] is True
