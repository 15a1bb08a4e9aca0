"""Memory across train steps (model/nn/memory_train.py), whole-book rows
(tasks/long_books.py) and the whole-book eval (model/nn/memory_eval.py)."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from model.config import model_config
from model.models import DecoderOnlyModel
from model.nn.memory_eval import book_segments, evaluate_books
from model.nn.memory_train import MemoryCarryingStep
from model.partitioning import Partitioner
from model.trainer import Trainer, adamw
from tasks.long_books import book_rows, segment_batches

T = 8
SMALL = {"d_model": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 8,
         "d_ff": 64, "vocab_size": 97, "image": None, "video": None, "audio": None,
         "attention_backend": "xla"}


def _books(seed=0):
    rs = np.random.RandomState(seed)
    return [rs.randint(2, 97, n).astype(np.int32) for n in (30, 13, 21, 9)]


def test_book_rows_continue_across_batches():
    books = _books()
    batches = list(segment_batches(books, num_rows=2, segment_len=T))
    layout = book_rows(books, 2)
    assert sorted(i for r in layout for i in r) == [0, 1, 2, 3]
    for r in range(2):  # a row, read across batches, is its books in order, each whole
        ids = np.concatenate([b["decoder_segment_ids"][r] for b in batches])
        tgt = np.concatenate([b["decoder_target_tokens"][r] for b in batches])
        inp = np.concatenate([b["decoder_input_tokens"][r] for b in batches])
        pos = np.concatenate([b["decoder_positions"][r] for b in batches])
        for i in layout[r]:
            sel = ids == i + 1
            np.testing.assert_array_equal(tgt[sel], np.append(books[i], 1))
            np.testing.assert_array_equal(inp[sel], np.append(0, books[i]))
            np.testing.assert_array_equal(pos[sel], np.arange(len(books[i]) + 1))
    # Fewer books than rows: contiguous pieces, every row busy.
    one = next(segment_batches(books[:1], 2, T))
    np.testing.assert_array_equal(one["decoder_target_tokens"][1, :T], books[0][15:15 + T])
    # A second epoch gives the same books new ids (memory never spans epochs).
    two = list(segment_batches(books, 2, T, epochs=2))
    assert np.max(np.concatenate([b["decoder_segment_ids"] for b in two])) > 4


@pytest.fixture(scope="module")
def trained():
    model = DecoderOnlyModel(model_config("tiny", dict(SMALL, **{"memory.mem_len": 2 * T})))
    books = [np.tile(b, 3) for b in _books(1)] * 2  # 8 rows over 8 fake devices
    batches = list(segment_batches(books, num_rows=8, segment_len=T))[:3]
    tr = Trainer(model, adamw(learning_rate=1e-2), Partitioner((-1, 1, 1)))
    state = tr.init_state(jax.random.PRNGKey(0), batches[0])
    step = tr.jit_train_step(batches[0])
    return model, tr, state, step, batches


def test_train_step_carries_memory(trained):
    model, tr, state, step, batches = trained
    assert isinstance(step, MemoryCarryingStep)
    state, m0 = step(state, batches[0])
    mem0 = jax.device_get(step.memory)
    np.testing.assert_array_equal(mem0["layer_0"]["mem_seg"][:, T:],
                                  batches[0]["decoder_segment_ids"])
    params1 = jax.device_get(state.params)
    state, m1 = step(state, batches[1])
    # The step read the previous batch's memory: its loss is the loss with that memory.
    loss, _, mem1 = jax.jit(model.loss_and_memory)(params1, batches[1], mem0)
    np.testing.assert_allclose(float(m1["loss"]), float(loss), rtol=1e-5)
    np.testing.assert_allclose(jax.device_get(step.memory)["layer_1"]["mem"], mem1["layer_1"]["mem"],
                               atol=1e-5)
    no_mem, _, _ = jax.jit(model.loss_and_memory)(params1, batches[1], None)
    assert abs(float(no_mem) - float(loss)) > 1e-4
    with pytest.raises(ValueError, match="num_microbatches=1"):
        Trainer(model, adamw(learning_rate=1e-2), tr.partitioner,
                num_microbatches=2).jit_train_step(batches[0])


def test_whole_book_eval_with_memory_equals_full_context():
    books = _books(2)[:2]
    plain = DecoderOnlyModel(model_config("tiny", SMALL))
    params = jax.jit(lambda k: nn.meta.unbox(plain.init(k, next(book_segments(books, T)))))(
        jax.random.PRNGKey(3))
    full = evaluate_books(plain, params, books, 32, [100, 50], [20, 10])
    xl = DecoderOnlyModel(model_config("tiny", dict(SMALL, **{"memory.mem_len": 24})))
    rec = evaluate_books(xl, params, books, T, [100, 50], [20, 10])
    cut = evaluate_books(xl, params, books, T, [100, 50], [20, 10], memory=False)
    for a, b in zip(rec.nll, full.nll):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert rec.num_tokens == 31 + 14
    np.testing.assert_allclose(rec.bpb, rec.total_nll / np.log(2) / 150)
    np.testing.assert_allclose(rec.word_perplexity, np.exp(rec.total_nll / 30), rtol=1e-6)
    assert cut.total_nll != pytest.approx(rec.total_nll)
    np.testing.assert_allclose(cut.nll_by_position([0, T])[0], rec.nll_by_position([0, T])[0],
                               rtol=1e-5)
    assert len(list(book_segments(books, T))) == 4
