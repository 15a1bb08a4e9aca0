"""The committed vocabulary keeps the reserved ids; the trainer job reproduces them."""
import pathlib
import random
import string

import pytest
import sentencepiece as spm

from pipelines import special_tokens, train_tokenizer

VOCAB = pathlib.Path(__file__).resolve().parents[1] / "tasks" / "vocab" / "tapestry_8k.model"


@pytest.fixture(scope="module")
def sp():
    return spm.SentencePieceProcessor(model_file=str(VOCAB))


def test_reserved_ids_never_move(sp):
    assert sp.get_piece_size() == 8192
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    expected = {
        "<image>": 3, "<begin_image>": 4, "<end_image>": 5,
        "<audio>": 6, "<begin_audio>": 7, "<end_audio>": 8,
        "<video>": 9, "<begin_video>": 10, "<end_video>": 11, "\n": 19,
    }
    for piece, i in expected.items():
        assert special_tokens.SYMBOL_IDS[piece] == i
        assert sp.piece_to_id(piece) == i
    assert sp.id_to_piece(special_tokens.FIRST_BYTE_ID) == "<0x00>"
    assert sp.id_to_piece(special_tokens.FIRST_BYTE_ID + 255) == "<0xFF>"


def test_text_round_trips_and_cannot_forge_placeholders(sp):
    text = "Alice said: <image> is not an image.\n\n12 naïve “quotes” 日本 \t end"
    ids = special_tokens.escape_reserved_ids(sp.encode(text))
    assert sp.decode(ids) == text
    assert not any(3 <= i < special_tokens.NEWLINE_ID for i in ids)
    assert special_tokens.NEWLINE_ID in ids
    assert [sp.id_to_piece(i) for i in sp.encode("2024")] == ["2", "0", "2", "4"]


def test_tokenizer_job_puts_reserved_symbols_at_fixed_ids(tmp_path):
    corpus = tmp_path / "corpus.txt"
    rng = random.Random(0)
    words = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 8))) for _ in range(400)]
    corpus.write_text("\n\n".join(" ".join(rng.choices(words, k=30)) + string.punctuation for _ in range(400)))
    prefix = str(tmp_path / "vocab")
    train_tokenizer.main([f"--input={corpus}", f"--output={prefix}", "--vocab_size=500",
                          "--direct_num_workers=1"])
    trained = spm.SentencePieceProcessor(model_file=prefix + ".model")
    assert trained.get_piece_size() == 500
    for piece, i in special_tokens.SYMBOL_IDS.items():
        assert trained.piece_to_id(piece) == i


def test_tokenizer_job_rejects_missing_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_tokenizer.main([f"--input={tmp_path}/nope*.txt", f"--output={tmp_path}/v"])
    assert "no input files match" in capsys.readouterr().err
