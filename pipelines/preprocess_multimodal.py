"""Multimodal Beam job: documents of one input kind -> a SeqIO cache + dead letters.

    python -m pipelines.preprocess_multimodal --kind=captions \
        --input=../shared/data/images/captions.jsonl --cache_dir=/tmp/cache [--task=...] \
        [--image_size=224 --video_fps=1 ... media options] [Beam PipelineOptions]

Kinds and their inputs: see pipelines/mm_readers.py. Steps (each a named PTransform):

    ReadMultimodalDocuments  patterns -> files (matched by the runner) -> documents, record by record
                             (line-oriented inputs in byte ranges) -> Reshuffle
    EncodeDocuments          decode/normalise media, tokenize, interleave (DoFn.setup loads the
                             tokenizer); main output examples, tagged output dead letters
    WriteSeqioCache          <cache_dir>/<task>/{<split>.tfrecord-NNNNN-of-00032, info/stats.<split>.json,
                             COMPLETED}: fixed shard count, deterministic order, old shards replaced
    WriteDeadLetters         <cache_dir>/<task>/dead_letter.<split>-NNNNN-of-00008.jsonl
                             {"id", "source", "reason", "detail"}
    WriteSummary             <cache_dir>/<task>/summary.<split>.json  documents in / out / dead-lettered

Every unreadable, corrupt, truncated, empty, oversize or unsupported item is
counted in Beam metrics (namespace `preprocess_multimodal`, counter
`dead_letter_<reason>`) and dead-lettered with its document id and reason; the
job always finishes, and in == out + dead_lettered (counted independently, and
checked: pipelines/job_summary.py; if it does not hold, the job exits non-zero). A bad
record of a manifest (a JSONL line, a CSV row, a COCO annotation, a transcript line)
is one dead letter under its own id, or `<file>:<line>`. A document with one bad part is dead-lettered whole unless
--drop_bad_parts (then each dropped part is a dead letter with "document_kept").
The local default is the FnApiRunner in multi_processing mode
(pipelines/beam_options.py, offline); any other runner is chosen with standard
PipelineOptions (see README, "Preprocessing").
"""
import argparse
import dataclasses
import functools
import logging
import os
import sys
import time
from typing import Sequence

import apache_beam as beam

from pipelines import beam_options, interleave, job_summary, mm_readers, seqio_cache, text_io, vocab as vocab_lib
from pipelines.media_config import REASONS, MediaConfig, clean_detail

NAMESPACE = "preprocess_multimodal"
DEFAULT_VOCAB = vocab_lib.DEFAULT_VOCAB  # the copy inside the installed package (pipelines/vocab.py)


class ReadMultimodalDocuments(beam.PTransform):
    """Input patterns of one kind -> documents (or error records), rebalanced.

    Files are matched by the runner; line-oriented inputs are read in byte ranges
    (text_io.ReadRanges), other manifests whole, record by record.
    """

    def __init__(self, kind: str, inputs: Sequence[str], opts: mm_readers.ReaderOptions):
        super().__init__()
        self._kind, self._opts = kind, opts
        self._ranges = text_io.ReadRanges(mm_readers.resolve_inputs(kind, list(inputs)),
                                          functools.partial(mm_readers.is_line_file, kind))

    def expand(self, pipeline):
        return (pipeline
                | "Ranges" >> self._ranges
                | "Parse" >> beam.FlatMap(mm_readers.range_documents, self._kind, self._opts)
                | "Reshuffle" >> beam.Reshuffle())


class EncodeDoFn(beam.DoFn):
    """Document -> example (main output) or dead letter (tagged "dead_letter")."""

    def __init__(self, cfg: MediaConfig, vocab_path: str, progress_every_s: float = 0.0):
        self._cfg, self._vocab, self._progress_every = cfg, vocab_path, progress_every_s

    def setup(self):
        # Parallelism comes from worker processes (one per core); numpy's BLAS/OpenMP
        # pools left at one thread per core each would oversubscribe the cores: 3x
        # slower audio features with 2 workers on 2 cores.
        import threadpoolctl  # pylint: disable=g-import-not-at-top

        threadpoolctl.threadpool_limits(1)
        self._encoder = interleave.DocumentEncoder(self._cfg, self._vocab)
        counter = beam.metrics.Metrics.counter
        self._in, self._out, self._dead = (counter(NAMESPACE, n) for n in ("documents_in", "examples_out", "dead_lettered"))
        self._by_reason = {r: counter(NAMESPACE, f"dead_letter_{r}") for r in REASONS}
        self._dropped = counter(NAMESPACE, "dropped_parts")
        self._media = {m: counter(NAMESPACE, f"{m}_items") for m in interleave.MEDIA_KINDS}
        self._t0, self._last, self._docs, self._items = time.time(), time.time(), 0, 0

    def process(self, doc):
        self._in.inc()
        try:
            result = self._encoder.encode(doc)
        except Exception as e:  # noqa: BLE001 - one document must never kill the job: dead-letter it
            detail = clean_detail(f"{type(e).__name__}: {e}")
            result = interleave.Result(None, interleave.dead_letter(doc, "decoder_error", detail), [])
        kept = result.dead_letter is None
        self._dropped.inc(len(result.dropped_parts))
        for part in result.dropped_parts:
            self._by_reason[part["reason"]].inc()
            yield beam.pvalue.TaggedOutput("dead_letter", {
                **interleave.dead_letter(doc, part["reason"], part["detail"]), "part": part["part"],
                "document_kept": kept})
        if not kept:
            self._dead.inc()
            self._by_reason[result.dead_letter["reason"]].inc()
            yield beam.pvalue.TaggedOutput("dead_letter", result.dead_letter)
            return
        self._out.inc()
        items = 0
        for m in interleave.MEDIA_KINDS:
            n = int(result.example["_stats"][f"{m}_items"])
            self._media[m].inc(n)
            items += n
        self._report(items)
        yield result.example

    def _report(self, items: int) -> None:
        self._docs += 1
        self._items += items
        now = time.time()
        if self._progress_every and now - self._last >= self._progress_every:
            dt = now - self._t0
            logging.warning("[%s pid %d] %d documents (%.1f/s), %d media items (%.1f/s)",
                            NAMESPACE, os.getpid(), self._docs, self._docs / dt, self._items, self._items / dt)
            self._last = now


class EncodeDocuments(beam.PTransform):
    def __init__(self, cfg: MediaConfig, vocab_path: str, progress_every_s: float = 0.0):
        super().__init__()
        self._fn = EncodeDoFn(cfg, vocab_path, progress_every_s)

    def expand(self, docs):
        return docs | "Encode" >> beam.ParDo(self._fn).with_outputs("dead_letter", main="examples")


def summary_path(cache_dir: str, task: str, split: str) -> str:
    return job_summary.summary_path(cache_dir, task, split)


def read_summary(cache_dir: str, task: str, split: str) -> dict:
    return job_summary.read_summary(cache_dir, task, split)


def tallies(docs, examples, dead):
    """Count dicts for job_summary.WriteSummary: documents in (as read), out (as encoded), dropped parts."""
    return ((docs | "TallyIn" >> beam.Map(lambda _: {"documents_in": 1}),
             examples | "TallyOut" >> beam.Map(lambda _: {"documents_out": 1, "examples_out": 1}),
             dead | "KeptDocs" >> beam.Filter(lambda r: r.get("document_kept", False))
             | "TallyDropped" >> beam.Map(lambda _: {"dropped_parts_in_kept_documents": 1}))
            | "Tallies" >> beam.Flatten())


class PreprocessMultimodal(beam.PTransform):
    """The whole job for one (kind, task, split), applied to a pipeline; yields the summary dict.

    Several can share one pipeline (e.g. every source of a corpus) under distinct labels.
    """

    def __init__(self, kind: str, inputs: Sequence[str], cache_dir: str, task: str, cfg: MediaConfig, *,
                 vocab: str = DEFAULT_VOCAB, split: str = "train", num_shards: int = seqio_cache.DEFAULT_NUM_SHARDS,
                 reader_options: mm_readers.ReaderOptions = mm_readers.ReaderOptions(),
                 progress_every_s: float = 0.0):
        super().__init__()
        self._read = ReadMultimodalDocuments(kind, inputs, reader_options)
        self._encode = EncodeDocuments(cfg, vocab, progress_every_s)
        self._write = seqio_cache.WriteSeqioCache(cache_dir, task, split, interleave.mm_features(),
                                                  num_shards=num_shards, extra_stats=interleave.example_stats)
        self._dead_prefix = job_summary.dead_letter_prefix(cache_dir, task, split)
        self._summary_path = job_summary.summary_path(cache_dir, task, split)
        self._split = split

    def expand(self, pipeline):
        docs = pipeline | "Read" >> self._read
        encoded = docs | "EncodeDocuments" >> self._encode
        stats = encoded.examples | "WriteSeqioCache" >> self._write
        _ = encoded.dead_letter | "WriteDeadLetters" >> job_summary.WriteDeadLetters(self._dead_prefix)
        counts = tallies(docs, encoded.examples, encoded.dead_letter)
        return ((counts, encoded.dead_letter, {self._split: stats})
                | "WriteSummary" >> job_summary.WriteSummary(self._summary_path))


def add_media_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per MediaConfig field, with its default (shown by --help)."""
    group = parser.add_argument_group("media normalisation (MediaConfig; see pipelines/media_config.py)")
    for field in dataclasses.fields(MediaConfig):
        help_text = field.metadata.get("help", f"MediaConfig.{field.name}")
        if isinstance(field.default, bool):
            group.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, default=field.default,
                               help=help_text)
        else:
            group.add_argument(f"--{field.name}", type=type(field.default), default=field.default, help=help_text)


def media_config_from_args(args: argparse.Namespace) -> MediaConfig:
    return MediaConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(MediaConfig)})


def make_parser() -> argparse.ArgumentParser:
    parser = beam_options.make_parser(__doc__)
    parser.add_argument("--kind", required=True, help=f"input kind, one of {mm_readers.KINDS}")
    parser.add_argument("--input", action="append", required=True,
                        help="file, directory or glob (any FileSystems URI); repeatable")
    parser.add_argument("--cache_dir", required=True, help="root of the SeqIO caches (any FileSystems URI)")
    parser.add_argument("--task", default=None, help="task name (None: tapestry_mm_<kind>)")
    parser.add_argument("--split", default="train", help="split name of the cache")
    parser.add_argument("--vocab", default=DEFAULT_VOCAB,
                        help="SentencePiece model: a path, a gs:// or s3:// URI, or package:<pkg>/<file>")
    parser.add_argument("--num_shards", type=int, default=seqio_cache.DEFAULT_NUM_SHARDS,
                        help="TFRecord shards (fixed, so a rebuilt cache has the same order; >= training hosts)")
    parser.add_argument("--video_dir", default=None, help="video-QA kinds: where the videos are (None: beside "
                                                          "the annotations)")
    parser.add_argument("--video_template", default=None,
                        help='video-QA kinds: file name from id, e.g. "v_{video}.mp4" (None: the kind\'s own)')
    parser.add_argument("--progress_every_s", type=float, default=10.0,
                        help="local runner: log documents/s and media/s per worker this often (0: never)")
    add_media_flags(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    parser = make_parser()
    args, options = beam_options.parse(parser, argv)
    try:
        if args.num_shards < 1:
            raise ValueError(f"--num_shards must be >= 1, got {args.num_shards}")
        mm_readers.resolve_inputs(args.kind, args.input)
        cfg = media_config_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    try:
        vocab_lib.check(args.vocab)
    except ValueError as e:
        parser.error(str(e))
    task = args.task or f"tapestry_mm_{args.kind}"
    start = time.time()
    with beam.Pipeline(options=options) as p:
        _ = p | f"Preprocess_{task}_{args.split}" >> PreprocessMultimodal(
            args.kind, args.input, args.cache_dir, task, cfg, vocab=args.vocab, split=args.split,
            num_shards=args.num_shards, reader_options=mm_readers.ReaderOptions(args.video_dir, args.video_template),
            progress_every_s=args.progress_every_s if beam_options.is_local(options) else 0.0)
    summary = read_summary(args.cache_dir, task, args.split)
    print(f"{task} [{args.split}]: {summary['documents_in']} documents in, {summary['examples_out']} examples out, "
          f"{summary['dead_lettered']} dead-lettered {summary['dead_letter_reasons']} "
          f"in {time.time() - start:.1f}s -> {seqio_cache.task_cache_dir(args.cache_dir, task)}")
    job_summary.exit_if_unbalanced({f"{task}/{args.split}": summary})
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
