"""KV-cached decoding reproduces the full forward pass; sampling filters behave."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import model_config
from model.decoding import generate, sample_logits
from model.models import DecoderOnlyModel

SMALL = {"vocab_size": 512, "num_layers": 2, "image": None, "video": None, "audio": None}


def _full_logits(model, params, seqs, width=12):
    """Full-forward logits of each sequence (right-padded to one shape: one compile)."""
    tokens = np.zeros((len(seqs), width), np.int32)
    segments = np.zeros_like(tokens)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)], segments[i, :len(s)] = s, 1
    batch = {"decoder_input_tokens": tokens, "decoder_segment_ids": segments,
             "decoder_positions": np.tile(np.arange(width, dtype=np.int32), (len(seqs), 1))}
    return np.asarray(model.logits(params, batch)[0])


@pytest.mark.parametrize("preset,over", [
    ("tiny", {}),
    ("tiny", {"attention_backend": "blockwise", "block_q": 8, "block_kv": 8,
              "num_kv_heads": 1}),
    # MoE with ample eval capacity (no drops), so step and full pass route alike.
    ("tiny_moe", {"moe.capacity_factor_eval": 2.0, "moe.num_experts": 4, "moe.top_k": 2}),
])
def test_cached_decoding_matches_full_forward(preset, over):
    model = DecoderOnlyModel(model_config(preset, {**SMALL, **over}))
    prompts = np.array([[0, 11, 12, 13, 14, 15], [0, 21, 22, 0, 0, 0]], np.int32)
    lengths = np.array([6, 3], np.int32)
    params = model.init(jax.random.PRNGKey(0), {"decoder_input_tokens": prompts})
    toks, logits = generate(model, params, {"decoder_input_tokens": prompts,
                                            "prompt_lengths": lengths},
                            max_new_tokens=5, return_logits=True, eos_id=-1)
    toks, logits = np.asarray(toks), np.asarray(logits)
    assert toks.shape == (2, 5) and logits.shape == (2, 5, 512)
    full = _full_logits(model, params, [np.concatenate([prompts[r, :lengths[r]], toks[r]])
                                        for r in range(2)])
    for row in range(2):
        want = full[row, lengths[row] - 1: lengths[row] - 1 + 5]
        np.testing.assert_allclose(logits[row], want, atol=2e-4, rtol=1e-4)
        np.testing.assert_array_equal(toks[row], want.argmax(-1))


def test_eos_pads_the_rest():
    model = DecoderOnlyModel(model_config("tiny", SMALL))
    prompts = np.array([[0, 5, 6]], np.int32)
    params = model.init(jax.random.PRNGKey(0), {"decoder_input_tokens": prompts})
    first = np.asarray(generate(model, params, {"decoder_input_tokens": prompts}, 4))
    again = np.asarray(generate(model, params, {"decoder_input_tokens": prompts}, 4,
                                eos_id=int(first[0, 1])))
    assert again[0, 1] == first[0, 1] and (again[0, 2:] == 0).all()


def test_sampling_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.PRNGKey(0), 400)
    draw = lambda **kw: np.array([int(sample_logits(logits, k, **kw)[0]) for k in keys[:200]])
    assert set(draw(temperature=1.0, top_k=2, top_p=1.0)) <= {0, 1}
    assert set(draw(temperature=1.0, top_k=0, top_p=0.6)) <= {0, 1}  # 0.5 < 0.6 -> keep 2
    assert set(draw(temperature=1.0, top_k=0, top_p=0.4)) == {0}
    assert len(set(draw(temperature=1.0, top_k=0, top_p=1.0))) >= 3
    assert int(sample_logits(logits, keys[0], temperature=0.0, top_k=0, top_p=1.0)[0]) == 0
    with pytest.raises(ValueError, match="rng"):
        generate(DecoderOnlyModel(model_config("tiny", SMALL)), {},
                 {"decoder_input_tokens": np.zeros((1, 2), np.int32)}, 2, temperature=1.0)
