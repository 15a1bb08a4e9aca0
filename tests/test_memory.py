"""Long-range memory (model/nn/memory.py): Transformer-XL recurrence equals a full-context
forward, compressive memory with c = 1 equals plain memory, no gradient into memories,
reset at document boundaries, memory in chosen layers only."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import model_config
from model.models import DecoderOnlyModel
from model.nn.memory import empty_memory
from model.nn.memory_config import MemoryConfig

T = 8  # segment length
N_SEG = 4
SMALL = {"d_model": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 8,
         "d_ff": 64, "vocab_size": 97, "image": None, "video": None, "audio": None,
         "attention_backend": "xla"}


def _model(**memory) -> DecoderOnlyModel:
    overrides = dict(SMALL, **{f"memory.{k}": v for k, v in memory.items()})
    return DecoderOnlyModel(model_config("tiny", overrides))


def _batch(seed: int = 0) -> dict[str, np.ndarray]:
    """Two rows of N_SEG * T tokens: row 0 one document (id 7); row 1 document 3 for 12
    tokens, then document 4 (positions restart): a boundary inside a segment."""
    n = T * N_SEG
    toks = np.random.RandomState(seed).randint(2, 97, (2, n)).astype(np.int32)
    seg = np.full((2, n), 7, np.int32)
    pos = np.tile(np.arange(n, dtype=np.int32), (2, 1))
    seg[1, :12], seg[1, 12:] = 3, 4
    pos[1, 12:] = np.arange(n - 12)
    return {"decoder_input_tokens": toks, "decoder_target_tokens": np.roll(toks, -1, 1),
            "decoder_segment_ids": seg, "decoder_positions": pos}


def _segment(batch, i):
    return {k: v[:, i * T:(i + 1) * T] for k, v in batch.items()}


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, batch, memory):
    """-> (logits [B,T,V], advanced memory)."""
    (logits, _), state = model._forward(model.module(), params, batch, memory)
    return logits, state["memory"]


def _init(model, batch, seed=0):
    return jax.jit(lambda k: nn.meta.unbox(model.init(k, batch)))(jax.random.PRNGKey(seed))


def _recurrent_logits(model, params, batch, memory=None):
    """Reads the batch segment by segment, carrying the memory; logits [B, N_SEG*T, V]."""
    outs = []
    if memory is None:
        memory = empty_memory(model, params, _segment(batch, 0))
    for i in range(N_SEG):
        logits, memory = _forward(model, params, _segment(batch, i), memory)
        outs.append(logits)
    return jnp.concatenate(outs, axis=1), memory


@pytest.fixture(scope="module")
def plain_and_params():
    plain = DecoderOnlyModel(model_config("tiny", SMALL))
    return plain, _init(plain, _segment(_batch(), 0))


def test_recurrent_equals_full_context(plain_and_params):
    plain, params = plain_and_params
    batch = _batch()
    full, _ = jax.jit(plain.logits)(params, batch)
    xl = _model(mem_len=(N_SEG - 1) * T)
    # Same parameters as the plain decoder: memory adds none.
    assert jax.tree.structure(jax.eval_shape(lambda: nn.meta.unbox(xl.init(jax.random.PRNGKey(0),
                                                                 _segment(batch, 0))))) == \
        jax.tree.structure(params)
    recurrent, memory = _recurrent_logits(xl, params, batch)
    np.testing.assert_allclose(recurrent, full, atol=1e-5, rtol=1e-5)
    # The FIFO holds the last mem_len states with their documents and positions.
    mem = memory["layer_0"]
    np.testing.assert_array_equal(mem["mem_seg"], batch["decoder_segment_ids"][:, T:])
    np.testing.assert_array_equal(mem["mem_pos"], batch["decoder_positions"][:, T:])
    # A short memory reaches less far back: the last segment differs from full context.
    short, _ = _recurrent_logits(_model(mem_len=T), params, batch)
    assert not np.allclose(short[0, -T:], full[0, -T:], atol=1e-3)
    np.testing.assert_allclose(short[:, :2 * T], full[:, :2 * T], atol=1e-5, rtol=1e-5)


def test_compressive_rate_one_identity_equals_plain_memory(plain_and_params):
    _, params = plain_and_params
    batch = _batch(1)
    xl, _ = _recurrent_logits(_model(mem_len=2 * T), params, batch)
    comp_model = _model(mem_len=T, cmem_len=T, compression_rate=1, compressor="identity")
    comp, memory = _recurrent_logits(comp_model, params, batch)
    np.testing.assert_allclose(comp, xl, atol=1e-5, rtol=1e-5)
    assert set(memory["layer_0"]) == {"mem", "mem_seg", "mem_pos", "cmem", "cmem_seg",
                                      "cmem_pos"}


@pytest.mark.parametrize("kind", ["max_pool", "mean_pool", "most_used", "conv"])
def test_compressors_fill_compressed_memory(plain_and_params, kind):
    _, params = plain_and_params
    c = 2
    model = _model(mem_len=T, cmem_len=T, compression_rate=c, compressor=kind)
    batch = _batch(2)
    if kind == "conv":  # the compressor has parameters of its own
        params = _init(model, _segment(batch, 0), 1)
        assert "memory_compressor" in params["layer_0"]
    memory = empty_memory(model, params, _segment(batch, 0))
    states = []
    for i in range(3):
        _, memory = _forward(model, params, _segment(batch, i), memory)
        states.append(memory)
    # After 3 segments: segment 0 left mem (compressed to T/c), then segment 1.
    layer = memory["layer_1"]
    assert layer["cmem"].shape == (2, T, 32)
    leaving = states[1]["layer_1"]["mem"]  # segment 1's states, which left at step 3
    comp = np.asarray(layer["cmem"][:, T - T // c:])
    grouped = np.asarray(leaving).reshape(2, T // c, c, 32)
    if kind == "max_pool":
        np.testing.assert_allclose(comp, grouped.max(2), atol=1e-6)
    elif kind == "mean_pool":
        np.testing.assert_allclose(comp, grouped.mean(2), atol=1e-6)
    elif kind == "most_used":  # c of every c*... states kept, in order, from segment 1
        rows = [[any(np.allclose(x, y) for y in np.asarray(leaving)[r]) for x in comp[r]]
                for r in range(2)]
        assert np.all(rows)
    # Compressed slots keep the document (row 1: documents 3 and 4) and last position.
    np.testing.assert_array_equal(layer["cmem_pos"][0, T - T // c:],
                                  np.arange(T, 2 * T).reshape(-1, c)[:, -1]
                                  if kind != "most_used" else layer["cmem_pos"][0, T - T // c:])
    assert set(np.asarray(layer["cmem_seg"][1]).tolist()) <= {0, 3, 4}


def test_conv_reconstruction_loss_trains_only_the_compressor():
    model = _model(mem_len=T, cmem_len=T, compression_rate=2, compressor="conv")
    batch = _batch(3)
    params = _init(model, _segment(batch, 0))
    memory = empty_memory(model, params, _segment(batch, 0))
    for i in range(2):  # memory full of states
        _, memory = _forward(model, params, _segment(batch, i), memory)

    def recon(p):
        return model.loss_and_memory(p, _segment(batch, 2), memory)[1][
            "memory_reconstruction_loss"]

    value, grads = jax.jit(jax.value_and_grad(recon))(params)
    assert float(value) > 0
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    for path, g in flat:
        name = jax.tree_util.keystr(path)
        if "memory_compressor" in name:
            assert float(jnp.abs(g).max()) > 0, name
        else:
            assert float(jnp.abs(g).max()) == 0, name


def test_no_gradient_flows_into_memory(plain_and_params):
    _, params = plain_and_params
    model = _model(mem_len=2 * T)
    batch = _batch(4)
    _, memory = _recurrent_logits(model, params, batch)
    grad_mem, grad_params = jax.jit(jax.grad(
        lambda m, p: model.loss_and_memory(p, _segment(batch, 1), m)[0], argnums=(0, 1),
        allow_int=True))(memory, params)
    for g in jax.tree.leaves(grad_mem):
        if jnp.issubdtype(g.dtype, jnp.floating):
            assert float(jnp.abs(g).max()) == 0
    assert float(jnp.abs(grad_params["layer_0"]["attention"]["key"]["kernel"]).max()) > 0


def test_memory_reset_at_document_boundaries(plain_and_params):
    """A row that starts a new document reads none of the previous document's memory."""
    _, params = plain_and_params
    model = _model(mem_len=2 * T)
    batch = _batch(5)
    empty = empty_memory(model, params, _segment(batch, 0))
    _, memory = _forward(model, params, _segment(batch, 0), empty)
    other = {k: v.copy() for k, v in _segment(batch, 1).items()}
    other["decoder_segment_ids"][:] = 9  # a new document (book) in both rows
    other["decoder_positions"][:] = np.arange(T)
    with_old, _ = _forward(model, params, other, memory)
    fresh, _ = _forward(model, params, other, empty)
    np.testing.assert_allclose(with_old, fresh, atol=1e-6)
    # ...while a continuing document does read it.
    cont, _ = _forward(model, params, _segment(batch, 1), memory)
    alone, _ = _forward(model, params, _segment(batch, 1), empty)
    assert not np.allclose(cont, alone, atol=1e-3)


def test_memory_in_chosen_layers_only(plain_and_params):
    _, params = plain_and_params
    model = _model(mem_len=3 * T, layers=(-1,), short_mem_len=4)
    _, memory = _recurrent_logits(model, params, _batch(6))
    assert memory["layer_0"]["mem"].shape == (2, 4, 32)
    assert memory["layer_1"]["mem"].shape == (2, 3 * T, 32)
    assert MemoryConfig(mem_len=24, layers=(-1,), short_mem_len=4).effective_context(2) == 28
    assert MemoryConfig(mem_len=8, cmem_len=8, compression_rate=3).effective_context(4) == 128
    with pytest.raises(ValueError, match="out of range"):
        _model(mem_len=8, layers=(5,))
    with pytest.raises(ValueError, match="did you mean 'max_pool'"):
        MemoryConfig(compressor="maxpool")


def test_decoding_with_memory_equals_recurrent_forward(plain_and_params):
    """Greedy KV-cache decoding that reads the memory picks, at every step, the logits of
    the recurrent forward (full mode, same memory) over prompt + generated tokens."""
    from model.nn.memory_decoding import generate_with_memory
    _, params = plain_and_params
    model = _model(mem_len=T, cmem_len=T, compression_rate=2, compressor="mean_pool")
    batch = _batch(7)
    batch["decoder_segment_ids"][1] = 3  # one document per row while decoding
    batch["decoder_positions"][1] = batch["decoder_positions"][0]
    memory = empty_memory(model, params, _segment(batch, 0))
    for i in range(2):
        _, memory = _forward(model, params, _segment(batch, i), memory)
    p, n = 3, T - 3
    nxt = _segment(batch, 2)
    prompt = {"decoder_input_tokens": nxt["decoder_input_tokens"][:, :p],
              "decoder_positions": nxt["decoder_positions"][:, :p]}
    toks, used = generate_with_memory(model, params, memory, prompt, n, eos_id=-1,
                                      return_logits=True)
    seq = dict(nxt, decoder_input_tokens=np.concatenate([prompt["decoder_input_tokens"],
                                                         np.asarray(toks)], axis=1))
    recurrent, _ = _forward(model, params, seq, memory)
    np.testing.assert_allclose(used, recurrent[:, p - 1:p - 1 + n], atol=1e-5, rtol=1e-5)
    # Without the memory the continuation is scored differently.
    alone, _ = _forward(model, params, seq, empty_memory(model, params, seq))
    assert not np.allclose(alone[:, p - 1:], recurrent[:, p - 1:], atol=1e-3)
