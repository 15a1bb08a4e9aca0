r"""Beam job: plain text / JSONL documents -> tokenized SeqIO cache + dead letters + summary.

    python -m pipelines.preprocess_text \
        --input=../shared/data/text/gutenberg/11-0.txt --input='gs://bucket/docs/*.jsonl.gz' \
        --cache_dir=/tmp/cache --task=tapestry_text --validation_fraction=0.02

Inputs (pipelines/text_io.py): a plain-text file is one document (id: its file
name); a JSONL file (also compressed) one document per line, {"id"?, "text"}
(id: its "id", else `<file>:<line>`). Each document is cut at paragraph
boundaries into chunks of at most `--max_chars` characters, one example each; a
hash of (document id, chunk index) sends `--validation_fraction` of the chunks to
`validation`, the rest to `--split`. Examples, per DESIGN.md's example contract:

    targets               int32 [T]  SentencePiece ids (reserved symbols escaped), no EOS
    targets_pretokenized  string     the chunk's exact text (bits-per-byte needs its bytes)
    source_id             string     "<document id>#<chunk index>"
    source_path           string     the file it came from

Steps: ReadRanges (match the inputs, cut line-aligned byte ranges, number their
lines, rebalance: text_io.py) -> Encode (read, parse, chunk and tokenize a range in
one step, so no text passes through a shuffle; tokenizer loaded in setup) ->
WriteSeqioCache per split (fixed shard count, deterministic order, old shards
replaced) + WriteDeadLetters + WriteSummary:

    <cache_dir>/<task>/dead_letter.<split>-NNNNN-of-00008.jsonl  {"id", "source", "reason", "detail"}
    <cache_dir>/<task>/summary.<split>.json                      documents in / out / dead, examples

With `--curate`, a curation pipeline runs first (pipelines/curation/curate.py, its
flags here too: `--eval_set`, `--languages`, `--no-near_dedup`, ...) and writes
`<cache_dir>/<task>/curated.<split>/` (kept shards, rejects, summary, report); the
kept shards are then what this job tokenizes.

Failure contract (as the multimodal job's, pipelines/job_summary.py): a line that
is not UTF-8, not JSON, not an object or has no string "text" is dead-lettered as
`bad_record`, a blank text as `empty`, a file that vanished as `missing_file`, each
with its id and `<path>:<line>` in the detail; a leading byte-order mark is
dropped. Beam counters `preprocess_text:{documents_in, documents_out,
examples_out, tokens, dead_letter_<reason>}`. The job always finishes; if
documents in != out + dead-lettered it exits non-zero.
"""

from __future__ import annotations

import hashlib
import sys
import time
from typing import Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import beam_options, job_summary, seqio_cache, special_tokens, text_io, vocab

DEFAULT_VOCAB = vocab.DEFAULT_VOCAB  # the copy inside the installed package (pipelines/vocab.py)

NAMESPACE = "preprocess_text"
TEXT_FEATURES = {
    "targets": seqio_cache.FeatureSpec("int32", [None]),
    "targets_pretokenized": seqio_cache.FeatureSpec("string", []),
    "source_id": seqio_cache.FeatureSpec("string", []),
    "source_path": seqio_cache.FeatureSpec("string", []),
}


def assign_split(source_id: str, validation_fraction: float, train_split: str) -> str:
    digest = hashlib.blake2b(source_id.encode("utf-8"), digest_size=8).digest()
    return "validation" if int.from_bytes(digest, "little") < validation_fraction * 2**64 else train_split


def check_settings(max_chars: int, validation_fraction: float, split: str) -> None:
    """ValueError naming the setting, for values that would hang or mislabel the job."""
    if max_chars < 1:
        raise ValueError(f"--max_chars must be >= 1 (characters per chunk), got {max_chars}")
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"--validation_fraction must be in [0, 1), got {validation_fraction}")
    if validation_fraction > 0 and split == "validation":
        raise ValueError("--split=validation with --validation_fraction > 0 would write one split twice")


def dead_letter(doc: dict) -> dict:
    return {"id": doc["id"], "source": "text", "reason": doc["error"], "detail": doc["detail"]}


class EncodeRangeDoFn(beam.DoFn):
    """A range of a file -> examples (tagged by split), dead letters ("dead_letter") and one tally ("tally")."""

    def __init__(self, vocab_path: str, max_chars: int, validation_fraction: float, train_split: str):
        self._vocab_path, self._max_chars = vocab_path, max_chars
        self._validation_fraction, self._train_split = validation_fraction, train_split

    def setup(self):
        self._sp = vocab.load(self._vocab_path)  # bytes through pipelines.fs: no launcher path
        counter = beam.metrics.Metrics.counter
        self._counters = {n: counter(NAMESPACE, n) for n in ("documents_in", "documents_out", "examples_out", "tokens")}
        self._reasons = {}

    def _count(self, name: str, n: int = 1) -> None:
        if name not in self._counters:
            self._counters[name] = beam.metrics.Metrics.counter(NAMESPACE, name)
        self._counters[name].inc(n)

    def process(self, r: text_io.ReadRange) -> Iterator:
        chunks, docs_in, docs_out = [], 0, 0
        for doc in text_io.range_documents(r):
            docs_in += 1
            if "error" in doc:
                self._count(f"dead_letter_{doc['error']}")
                yield beam.pvalue.TaggedOutput("dead_letter", dead_letter(doc))
                continue
            docs_out += 1
            pieces = [c for c in text_io.split_into_chunks(doc["text"], self._max_chars) if c.strip()]
            chunks.extend((f"{doc['id']}#{i}", c) for i, c in enumerate(pieces))
        n_tokens = 0
        for (source_id, text), ids in zip(chunks, self._sp.encode([c for _, c in chunks])):
            ids = special_tokens.escape_reserved_ids(ids)
            n_tokens += len(ids)
            split = assign_split(source_id, self._validation_fraction, self._train_split)
            yield beam.pvalue.TaggedOutput(split, {
                "targets": ids, "targets_pretokenized": text, "source_id": source_id, "source_path": r.path})
        tally = {"documents_in": docs_in, "documents_out": docs_out, "examples_out": len(chunks)}
        for name, n in (*tally.items(), ("tokens", n_tokens)):
            self._count(name, n)
        yield beam.pvalue.TaggedOutput("tally", tally)


class PreprocessText(beam.PTransform):
    """PBegin -> SeqIO cache of `task`, dead letters and summary; yields the summary dict.

    Several can share one pipeline under distinct labels (and distinct `split`s or tasks).
    """

    def __init__(self, inputs: Sequence[str], cache_dir: str, task: str, vocab: str = DEFAULT_VOCAB, *,
                 split: str = "train", validation_fraction: float = 0.0, max_chars: int = 4000,
                 num_shards: int = seqio_cache.DEFAULT_NUM_SHARDS, range_bytes: int = text_io.RANGE_BYTES):
        super().__init__()
        check_settings(max_chars, validation_fraction, split)
        self._read = text_io.ReadRanges(inputs, text_io.is_jsonl, range_bytes=range_bytes)
        self._cache_dir, self._task, self._vocab = cache_dir, task, vocab
        self._split, self._validation_fraction = split, validation_fraction
        self._max_chars, self._num_shards = max_chars, num_shards

    def expand(self, pbegin):
        split, fraction, cache_dir, task = self._split, self._validation_fraction, self._cache_dir, self._task
        splits = [split] + (["validation"] if fraction > 0 else [])
        out = (pbegin
               | "ReadRanges" >> self._read
               | "Encode" >> beam.ParDo(EncodeRangeDoFn(self._vocab, self._max_chars, fraction, split))
               .with_outputs(*splits, "dead_letter", "tally"))
        stats = {name: out[name] | f"Write_{name}" >> seqio_cache.WriteSeqioCache(
                     cache_dir, task, name, TEXT_FEATURES, num_shards=self._num_shards)
                 for name in splits}
        _ = out.dead_letter | "WriteDeadLetters" >> job_summary.WriteDeadLetters(
            job_summary.dead_letter_prefix(cache_dir, task, split))
        return ((out.tally, out.dead_letter, stats)
                | "WriteSummary" >> job_summary.WriteSummary(job_summary.summary_path(cache_dir, task, split)))


def build(pipeline, inputs: Sequence[str], cache_dir: str, task: str, vocab: str = DEFAULT_VOCAB, **kwargs):
    """Adds `PreprocessText` to `pipeline` (labelled by task); returns the summary PCollection."""
    return pipeline | f"PreprocessText_{task}" >> PreprocessText(inputs, cache_dir, task, vocab, **kwargs)


def make_parser():
    parser = beam_options.make_parser(__doc__)
    parser.add_argument("--input", action="append", required=True,
                        help="file, directory or glob (any FileSystems URI); repeatable")
    parser.add_argument("--cache_dir", required=True, help="root of the SeqIO caches (any FileSystems URI)")
    parser.add_argument("--task", default="tapestry_text", help="task name (its cache dir under --cache_dir)")
    parser.add_argument("--vocab", default=DEFAULT_VOCAB,
                        help="SentencePiece model: a path, any FileSystems URI, or package:<pkg>/<file>")
    parser.add_argument("--split", default="train", help="split of the examples not sent to validation")
    parser.add_argument("--validation_fraction", type=float, default=0.0,
                        help="fraction of chunks (by hash) written to the validation split, in [0, 1)")
    parser.add_argument("--max_chars", type=int, default=4000, help="longest chunk of a document, in characters")
    parser.add_argument("--num_shards", type=int, default=seqio_cache.DEFAULT_NUM_SHARDS,
                        help="TFRecord shards per split (fixed, so a rebuilt cache has the same order; "
                             ">= the number of training hosts)")
    parser.add_argument("--curate", action="store_true",
                        help="curate first (pipelines/curation: language, Gopher quality/repetition, decontamination, "
                             "dedup) into <cache_dir>/<task>/curated.<split>/ and tokenize what it keeps")
    # Imported here, not at module level: every worker imports this module for its DoFns.
    from pipelines.curation import transforms as curation_transforms  # pylint: disable=g-import-not-at-top

    curation_transforms.add_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    parser = make_parser()
    args, options = beam_options.parse(parser, argv)
    try:
        check_settings(args.max_chars, args.validation_fraction, args.split)
        if args.num_shards < 1:
            raise ValueError(f"--num_shards must be >= 1, got {args.num_shards}")
        text_io.resolve_patterns(args.input)
        vocab.check(args.vocab)
        from pipelines.curation import curate, transforms as curation_transforms  # pylint: disable=g-import-not-at-top

        cfg = curation_transforms.config_from_flags(args)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    start = time.time()
    if args.curate:  # a pipeline of its own before this one: its kept shards are this job's input
        curated = FileSystems.join(seqio_cache.task_cache_dir(args.cache_dir, args.task), f"curated.{args.split}")
        print(f"[curate] {curate.describe(curate.run(args.input, curated, cfg, options))} -> {curated}")
        args.input = [curate.kept_pattern(curated)]
    with beam.Pipeline(options=options) as p:
        build(p, args.input, args.cache_dir, args.task, args.vocab, split=args.split,
              validation_fraction=args.validation_fraction, max_chars=args.max_chars, num_shards=args.num_shards)
    summary = job_summary.read_summary(args.cache_dir, args.task, args.split)
    print(f"{args.task} [{args.split}]: {summary['documents_in']} documents in, {summary['examples_out']} examples "
          f"out, {summary['dead_lettered']} dead-lettered {summary['dead_letter_reasons']} in "
          f"{time.time() - start:.1f}s -> {seqio_cache.task_cache_dir(args.cache_dir, args.task)}")
    job_summary.exit_if_unbalanced({f"{args.task}/{args.split}": summary})
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
