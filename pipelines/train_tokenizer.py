r"""Beam job: sample paragraphs and train the SentencePiece model with reserved ids.

    python -m pipelines.train_tokenizer \
        --input=../shared/data/text --output=tasks/vocab/tapestry_8k \
        --vocab_size=8192

rebuilds the committed default vocabulary `tasks/vocab/tapestry_8k.model`
(Gutenberg books and Tiny Shakespeare). Beam reads and samples the text
(deterministically, by a hash of each paragraph) in parallel; one worker then
trains SentencePiece on the sample and writes `<output>.model` and `.vocab`.

The model reserves, at fixed ids (pipelines/special_tokens.py): pad 0, eos 1,
unk 2, the modality placeholders and begin/end markers and a newline piece as
user-defined symbols, then 256 byte-fallback pieces, so any UTF-8 text round-trips exactly
(identity normalisation, no dummy prefix). Digits are split into single
pieces, which keeps spoken-digit transcripts and arithmetic regular.

Multiple-choice answer letters are single pieces, with and without the leading space
(`SINGLE_PIECES`: "▁A".."▁D", "A".."D"): unigram training kept "▁B"/"▁C" but not
"▁A"/"▁D", so " A" and " D" were two tokens and a weak model's summed log-likelihoods
leaned to B/C. After training, `ensure_single_pieces` gives each missing one the id of
the lowest-scoring learned multi-character piece (a rare word; it still encodes, in
smaller pieces), so no reserved or other id moves. The committed model was patched so:

    python -m pipelines.train_tokenizer --patch=tasks/vocab/tapestry_8k
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import sys
from typing import Iterable, Sequence

import apache_beam as beam

from pipelines import beam_options, fs, special_tokens, text_io


SINGLE_PIECES = ("▁A", "▁B", "▁C", "▁D", "A", "B", "C", "D")
# A new piece scores this much above the pieces it joins, so exactly the segmentations
# that used them merge into it and nothing else changes (barring near-ties).
_JOIN_MARGIN = 0.01


def ensure_single_pieces(model_proto: bytes, pieces=SINGLE_PIECES) -> bytes:
    """`model_proto` with every string of `pieces` a single normal piece.

    A missing piece replaces the lowest-scoring learned multi-character piece (ids
    below `special_tokens.NUM_RESERVED`, single characters and `pieces` themselves
    are never replaced) and scores `_JOIN_MARGIN` above its best split into the model's
    other pieces, so it is what that text encodes to. Idempotent.
    """
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    normal = model_pb2.ModelProto.SentencePiece.NORMAL
    have = {p.piece for p in proto.pieces}
    missing = [p for p in pieces if p not in have]
    if not missing:
        return model_proto
    victims = sorted((p.score, i) for i, p in enumerate(proto.pieces)
                     if i >= special_tokens.NUM_RESERVED and p.type == normal
                     and len(p.piece) > 1 and p.piece not in pieces)
    if len(victims) < len(missing):
        raise ValueError(f"no learned pieces left to make {missing} single pieces")
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    for piece, (_, i) in zip(missing, victims):
        ids = sp.encode(piece.replace("▁", " "))
        split_score = sum(sp.get_score(t) for t in ids)
        proto.pieces[i].piece = piece
        proto.pieces[i].score = split_score + _JOIN_MARGIN
    out = proto.SerializeToString()
    check = spm.SentencePieceProcessor(model_proto=out)
    wrong = [p for p in pieces if len(check.encode(p.replace("▁", " "))) != 1]
    if wrong:
        raise RuntimeError(f"pieces {wrong} still encode to several tokens")
    return out


def write_model(model_proto: bytes, output_prefix: str) -> str:
    """Writes `<output_prefix>.model` and the `.vocab` listing (piece, score per line)."""
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top

    processor = spm.SentencePieceProcessor(model_proto=model_proto)
    fs.write_bytes(output_prefix + ".model", model_proto)
    vocab = "".join(f"{processor.id_to_piece(i)}\t{processor.get_score(i)}\n"
                    for i in range(processor.get_piece_size()))
    fs.write_text(output_prefix + ".vocab", vocab)
    return output_prefix + ".model"


def sentencepiece_trainer_args(vocab_size: int) -> dict:
    """Trainer settings that fix the reserved ids; shared with tests."""
    return dict(
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=special_tokens.PAD_ID,
        eos_id=special_tokens.EOS_ID,
        unk_id=special_tokens.UNK_ID,
        bos_id=-1,
        user_defined_symbols=list(special_tokens.USER_DEFINED_SYMBOLS),
        byte_fallback=True,
        character_coverage=0.9995,
        # Printable ASCII always gets pieces, however rare in the sample (digits in novels).
        required_chars="".join(chr(c) for c in range(33, 127)),
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        split_digits=True,
        max_sentence_length=16384,
        num_threads=1,
        minloglevel=2,
    )


def keep_paragraph(line: str, sample_rate: float, seed: int) -> bool:
    """Deterministic Bernoulli(sample_rate) by hash, independent of the runner."""
    if not line.strip():
        return False
    digest = hashlib.blake2b(f"{seed}:{line}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") < sample_rate * 2**64


def train_sentencepiece(lines: Iterable[str], output_prefix: str, vocab_size: int) -> str:
    """Trains on `lines` and writes `<output_prefix>.model/.vocab` (any `pipelines.fs` path)."""
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sorted(lines)),  # Sorted: same model for any runner order.
        model_writer=model,
        **sentencepiece_trainer_args(vocab_size),
    )
    proto = ensure_single_pieces(model.getvalue())
    processor = spm.SentencePieceProcessor(model_proto=proto)
    for piece, expected in special_tokens.SYMBOL_IDS.items():
        if processor.piece_to_id(piece) != expected:
            raise RuntimeError(f"reserved piece {piece} got id {processor.piece_to_id(piece)}, not {expected}")
    return write_model(proto, output_prefix)


def build(pipeline: beam.Pipeline, inputs: Sequence[str], output: str, vocab_size: int, sample_rate: float, seed: int):
    return (
        pipeline
        | "Read" >> text_io.ReadDocuments(inputs)
        | "Paragraphs" >> beam.FlatMap(lambda doc: doc[1].split("\n\n"))
        | "Sample" >> beam.Filter(keep_paragraph, sample_rate, seed)
        | "Gather" >> beam.combiners.ToList()
        | "Train" >> beam.Map(train_sentencepiece, output, vocab_size)
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patch", metavar="PREFIX",
                        help="no training: make SINGLE_PIECES single pieces in <PREFIX>.model "
                             "(and rewrite <PREFIX>.vocab); ids of all other pieces kept")
    parser.add_argument("--input", action="append", help="file, directory or glob; repeatable")
    parser.add_argument("--output", help="output prefix: writes <output>.model and <output>.vocab")
    parser.add_argument("--vocab_size", type=int, default=8192)
    parser.add_argument("--sample_rate", type=float, default=1.0, help="fraction of paragraphs to train on")
    parser.add_argument("--seed", type=int, default=0)
    args, beam_args = parser.parse_known_args(argv)
    if args.patch:
        before = fs.read_bytes(args.patch + ".model")
        after = ensure_single_pieces(before)
        write_model(after, args.patch)
        print(f"{args.patch}.model: {'already had' if after == before else 'now has'} "
              f"single pieces {', '.join(SINGLE_PIECES)}")
        return
    if not args.input or not args.output:
        parser.error("--input and --output are required (or --patch=PREFIX)")
    if args.vocab_size <= special_tokens.NUM_RESERVED:
        parser.error(f"--vocab_size must exceed the {special_tokens.NUM_RESERVED} reserved ids")
    try:
        inputs = text_io.expand_patterns(args.input)
    except FileNotFoundError as e:
        parser.error(str(e))
    options = beam_options.pipeline_options(beam_args)
    with beam.Pipeline(options=options) as p:
        build(p, inputs, args.output, args.vocab_size, args.sample_rate, args.seed)
    print(f"wrote {args.output}.model ({args.vocab_size} pieces)")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(sys.argv[1:])
