"""Answer letters are single pieces in the vocabulary (with and without the leading
space), every reserved id stays where it was, and a random model's MMLU picks are no
longer confined to the letters that used to be one token (B and C)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece as spm
from flax import linen as nn

from pipelines import special_tokens, train_tokenizer, vocab
from tasks import mmlu

LETTER_TEXTS = (" A", " B", " C", " D", "A", "B", "C", "D")


@pytest.fixture(scope="module")
def sp():
    return vocab.load()


def test_answer_letters_are_one_token_each(sp):
    for text in LETTER_TEXTS:
        assert len(sp.encode(text)) == 1, (text, sp.encode(text, out_type=str))
    # The rest of the vocabulary is untouched: reserved ids and byte pieces in place.
    for piece, i in special_tokens.SYMBOL_IDS.items():
        assert sp.piece_to_id(piece) == i
    assert [sp.id_to_piece(special_tokens.FIRST_BYTE_ID + b) for b in (0, 65, 255)] == \
        ["<0x00>", "<0x41>", "<0xFF>"]
    # What the letters replaced: the two least likely learned words, still encodable.
    assert sp.decode(sp.encode(" creditors preach")) == " creditors preach"


def test_trained_models_get_the_letters_too(tmp_path):
    rng = np.random.default_rng(0)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "be", "do"]
    lines = [" ".join("".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(12))
             for _ in range(2000)]
    path = train_tokenizer.train_sentencepiece(lines, str(tmp_path / "v"), 450)
    trained = spm.SentencePieceProcessor(model_file=path)
    assert all(len(trained.encode(t)) == 1 for t in LETTER_TEXTS)
    for piece, i in special_tokens.SYMBOL_IDS.items():
        assert trained.piece_to_id(piece) == i
    proto = open(path, "rb").read()
    assert train_tokenizer.ensure_single_pieces(proto) == proto  # idempotent
    assert trained.get_piece_size() == 450 and "\n▁A\t" in (tmp_path / "v.vocab").read_text()


def _prompts(n):
    rows = [{"question": f"Which number is {i} times {i + 1}?", "A": str(i), "B": str(i + 1),
             "C": str(i * (i + 1)), "D": "none of these", "answer": "C"} for i in range(n)]
    return [mmlu.format_prompt("elementary_mathematics", r, rows[:2]) for r in rows]


def test_random_models_pick_every_letter(sp):
    """Argmax of the letter log-likelihoods after each prompt, over random inits: every
    letter is picked. With " A" and " D" two tokens (the old vocabulary), their summed
    log-likelihood (about 2 x -log V) never beats a one-token letter: shown here too."""
    from model.config import TransformerConfig
    from model.evaluation import scoring
    from model.models import DecoderOnlyModel

    model = DecoderOnlyModel(TransformerConfig(
        vocab_size=8192, d_model=32, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
        d_ff=64, max_len=256, attention_backend="xla"))
    prompts = [sp.encode(p) for p in _prompts(12)]
    length = max(len(p) for p in prompts) + 2
    letters = [sp.encode(t)[0] for t in (" A", " B", " C", " D")]
    space, bare = sp.piece_to_id("▁"), [sp.piece_to_id(c) for c in "ABCD"]
    # Rows: each prompt followed by "▁", so position p-1 predicts the one-token letters and
    # position p predicts the bare letter after "▁" (the old two-token " A" / " D").
    rows = [([0] + p + [space], [0] + p + [space], 0) for p in prompts]
    batch = scoring.build_batch(rows, length, len(rows))
    at = jnp.asarray([[len(p), len(p) + 1] for p in prompts], jnp.int32)  # input positions
    init = jax.jit(lambda rng: nn.meta.unbox(model.init(rng, batch)))
    logp = jax.jit(lambda params: jax.nn.log_softmax(
        model.logits_at(params, batch, at), axis=-1))
    picks, old_picks = set(), set()
    for seed in range(6):
        lp = np.asarray(logp(init(jax.random.PRNGKey(seed))))  # [B, 2, V]
        one_token = lp[:, 0, letters]  # [B, 4]
        picks.update("ABCD"[i] for i in one_token.argmax(axis=1))
        two = lp[:, 0, space][:, None] + lp[:, 1, bare]  # "▁" then the letter
        old = np.stack([two[:, 0], one_token[:, 1], one_token[:, 2], two[:, 3]], axis=1)
        old_picks.update("ABCD"[i] for i in old.argmax(axis=1))
    assert picks == set("ABCD")
    assert old_picks <= {"B", "C"}
