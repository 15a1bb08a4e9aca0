r"""Beam job: plain text / JSONL documents -> tokenized SeqIO cache.

    python -m pipelines.preprocess_text \
        --input=../shared/data/text/gutenberg/11-0.txt --input=... \
        --cache_dir=/tmp/cache --task=tapestry_text \
        --validation_fraction=0.02

Each document is cut at paragraph boundaries into chunks of at most
`--max_chars` characters (a book is far longer than a training row), each
chunk is one example; a deterministic hash of (document id, chunk index) sends
`--validation_fraction` of the chunks to the `validation` split, the rest to
`--split` (default `train`). Examples, per DESIGN.md's example contract:

    targets               int32 [T]  SentencePiece ids (reserved symbols escaped), no EOS
    targets_pretokenized  string     the chunk's exact text (bits-per-byte needs its bytes)
    source_id             string     "<document id>#<chunk index>"
    source_path           string     the file it came from

The job is three steps: plan line-aligned byte ranges of each file
(text_io.plan_ranges; a large JSONL file becomes many), shuffle the range
descriptions across workers, then read, chunk, tokenize and write each range
in one fused step, so that no text passes through a shuffle. The tokenizer is
loaded once per worker in `DoFn.setup()` and encodes a range's chunks as one
batch. Local runs use the FnApiRunner in parallel processes
(pipelines/beam_options.py); any other runner is chosen by the standard
`--runner` flags.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
import time
from typing import Iterator, Sequence

import apache_beam as beam

from pipelines import beam_options, seqio_cache, special_tokens, text_io

DEFAULT_VOCAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tasks", "vocab", "tapestry_8k.model")

TEXT_FEATURES = {
    "targets": seqio_cache.FeatureSpec("int32", [None]),
    "targets_pretokenized": seqio_cache.FeatureSpec("string", []),
    "source_id": seqio_cache.FeatureSpec("string", []),
    "source_path": seqio_cache.FeatureSpec("string", []),
}


def assign_split(source_id: str, validation_fraction: float, train_split: str) -> str:
    digest = hashlib.blake2b(source_id.encode("utf-8"), digest_size=8).digest()
    return "validation" if int.from_bytes(digest, "little") < validation_fraction * 2**64 else train_split


def chunk_range(r: text_io.ReadRange, max_chars: int) -> Iterator[dict]:
    """One range of a file -> chunk records {source_id, source_path, text}."""
    for doc_id, text in text_io.read_range_documents(r):
        for i, chunk in enumerate(text_io.split_into_chunks(text, max_chars)):
            if chunk.strip():
                yield {"source_id": f"{doc_id}#{i}", "source_path": r.path, "text": chunk}


class EncodeRangeDoFn(beam.DoFn):
    """A range of a file -> examples, each sent to the output named by its split.

    Reading, chunking and tokenizing happen in one step, so only the small range
    descriptions are shuffled; the range's chunks are encoded as one batch.
    """

    def __init__(self, vocab_path: str, max_chars: int, validation_fraction: float, train_split: str):
        self._vocab_path, self._max_chars = vocab_path, max_chars
        self._validation_fraction, self._train_split = validation_fraction, train_split

    def setup(self):
        import sentencepiece as spm  # pylint: disable=g-import-not-at-top

        self._sp = spm.SentencePieceProcessor(model_file=self._vocab_path)
        self._tokens = beam.metrics.Metrics.counter("preprocess_text", "tokens")

    def process(self, r: text_io.ReadRange):
        records = list(chunk_range(r, self._max_chars))
        for record, ids in zip(records, self._sp.encode([rec["text"] for rec in records])):
            ids = special_tokens.escape_reserved_ids(ids)
            self._tokens.inc(len(ids))
            split = assign_split(record["source_id"], self._validation_fraction, self._train_split)
            yield beam.pvalue.TaggedOutput(split, {
                "targets": ids,
                "targets_pretokenized": record["text"],
                "source_id": record["source_id"],
                "source_path": record["source_path"],
            })


class PreprocessText(beam.PTransform):
    """PBegin -> SeqIO cache of `task`; yields {split: stats PCollection}.

    Several can share one pipeline under distinct labels.
    """

    def __init__(self, inputs: Sequence[str], cache_dir: str, task: str, vocab: str = DEFAULT_VOCAB, *,
                 split: str = "train", validation_fraction: float = 0.0, max_chars: int = 4000,
                 num_shards: int = 0, range_bytes: int = text_io.RANGE_BYTES):
        super().__init__()
        self._files = text_io.expand_patterns(inputs)
        self._cache_dir, self._task, self._vocab = cache_dir, task, vocab
        self._split, self._validation_fraction = split, validation_fraction
        self._max_chars, self._num_shards, self._range_bytes = max_chars, num_shards, range_bytes

    def expand(self, pbegin):
        split, fraction = self._split, self._validation_fraction
        splits = [split] + (["validation"] if fraction > 0 else [])
        examples = (
            pbegin
            | "Files" >> beam.Create(self._files)
            | "PlanRanges" >> beam.FlatMap(text_io.plan_ranges, self._range_bytes)
            | "Reshuffle" >> beam.Reshuffle()
            | "Encode" >> beam.ParDo(EncodeRangeDoFn(self._vocab, self._max_chars, fraction, split))
            .with_outputs(*splits)
        )
        return {
            name: examples[name] | f"Write_{name}" >> seqio_cache.WriteSeqioCache(
                self._cache_dir, self._task, name, TEXT_FEATURES, num_shards=self._num_shards)
            for name in splits
        }


def build(pipeline, inputs: Sequence[str], cache_dir: str, task: str, vocab: str = DEFAULT_VOCAB, **kwargs):
    """Adds `PreprocessText` to `pipeline` (labelled by task); returns {split: stats}."""
    return pipeline | f"PreprocessText_{task}" >> PreprocessText(inputs, cache_dir, task, vocab, **kwargs)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", action="append", required=True, help="file, directory or glob; repeatable")
    parser.add_argument("--cache_dir", required=True)
    parser.add_argument("--task", default="tapestry_text", help="task name (its cache dir under --cache_dir)")
    parser.add_argument("--vocab", default=DEFAULT_VOCAB, help="SentencePiece model")
    parser.add_argument("--split", default="train")
    parser.add_argument("--validation_fraction", type=float, default=0.0)
    parser.add_argument("--max_chars", type=int, default=4000, help="longest chunk of a document, in characters")
    parser.add_argument("--num_shards", type=int, default=0,
                        help="TFRecord shards; 0 lets the runner choose (no shuffle of all examples)")
    args, beam_args = parser.parse_known_args(argv)
    try:
        text_io.expand_patterns(args.input)
    except FileNotFoundError as e:
        parser.error(str(e))
    if not os.path.exists(args.vocab) and "://" not in args.vocab:
        parser.error(f"--vocab {args.vocab} does not exist")
    start = time.time()
    with beam.Pipeline(options=beam_options.pipeline_options(beam_args)) as p:
        build(p, args.input, args.cache_dir, args.task, args.vocab, split=args.split,
              validation_fraction=args.validation_fraction, max_chars=args.max_chars, num_shards=args.num_shards)
    task_dir = seqio_cache.task_cache_dir(args.cache_dir, args.task)
    print(f"wrote {task_dir} in {time.time() - start:.1f}s")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(sys.argv[1:])
