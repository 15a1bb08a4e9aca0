"""Multimodal Beam job: documents of one input kind -> a SeqIO cache + dead letters.

    python -m pipelines.preprocess_multimodal --kind=captions \
        --input=../shared/data/images/captions.jsonl --cache_dir=/tmp/cache [--task=...] \
        [--image_size=224 --video_fps=1 ... media options] [Beam PipelineOptions]

Kinds and their inputs: see pipelines/mm_readers.py. Steps (each a named PTransform):

    ReadMultimodalDocuments  files -> documents (JSONL kinds read line by line) -> Reshuffle
    EncodeDocuments          decode/normalise media, tokenize, interleave (DoFn.setup loads the
                             tokenizer); main output examples, tagged output dead letters
    WriteSeqioCache          <cache_dir>/<task>/{<split>.tfrecord-*, info/stats.<split>.json, COMPLETED}
    WriteDeadLetters         <cache_dir>/<task>/dead_letter.<split>.jsonl  {"id", "source", "reason", "detail"}
    WriteSummary             <cache_dir>/<task>/summary.<split>.json  documents in / out / dead-lettered

Every unreadable, corrupt, truncated, empty, oversize or unsupported item is
counted in Beam metrics (namespace `preprocess_multimodal`, counter
`dead_letter_<reason>`) and dead-lettered with its document id and reason; the
job always finishes, and in == out + dead_lettered (counted independently, and
checked). A document with one bad part is dead-lettered whole unless
--drop_bad_parts (then each dropped part is a dead letter with "document_kept").
The local default is the FnApiRunner in multi_processing mode
(pipelines/beam_options.py, offline); any other runner is chosen with standard
PipelineOptions (see README, "Preprocessing").
"""
import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Sequence

import apache_beam as beam

from pipelines import beam_options, interleave, mm_readers, seqio_cache
from pipelines.media_config import REASONS, MediaConfig, clean_detail

NAMESPACE = "preprocess_multimodal"
DEFAULT_VOCAB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "tasks", "vocab", "tapestry_8k.model")


class ReadMultimodalDocuments(beam.PTransform):
    """Input files of one kind -> documents (or error records), rebalanced."""

    def __init__(self, kind: str, inputs: Sequence[str], opts: mm_readers.ReaderOptions):
        super().__init__()
        self._kind, self._opts = kind, opts
        self._files = sorted({f for pattern in inputs for f in mm_readers.expand_input(kind, pattern)})

    def expand(self, pipeline):
        kind = self._kind
        # JSONL inputs are read line by line (split across workers); other files whole.
        line_kind = kind if kind in mm_readers.LINE_PARSERS else ("text_jsonl" if kind == "text" else None)
        by_line = [f for f in self._files if line_kind and (kind != "text" or mm_readers.is_jsonl(f))]
        whole = [f for f in self._files if f not in by_line]
        parts = []
        if by_line:
            parts.append(
                pipeline
                | "LineFiles" >> beam.Create(by_line)
                | "Lines" >> beam.io.ReadAllFromText(with_filename=True, coder=beam.coders.BytesCoder())
                | "Parse" >> beam.Map(lambda fl: mm_readers.parse_line(line_kind, fl[0], fl[1]))
                | "DropBlank" >> beam.Filter(lambda d: d is not None)
                | "SetSource" >> beam.Map(lambda d: {**d, "source": kind}))
        if whole:
            parts.append(
                pipeline
                | "WholeFiles" >> beam.Create(whole)
                | "ReadFiles" >> beam.FlatMap(mm_readers.read_file_or_error, kind, self._opts))
        docs = parts[0] if len(parts) == 1 else tuple(parts) | "Both" >> beam.Flatten()
        return docs | "Reshuffle" >> beam.Reshuffle()


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


def is_document_dead_letter(record: dict) -> bool:
    """A whole dead-lettered document (not a dropped part of a kept or dead document)."""
    return "part" not in record


class WriteDeadLetters(beam.PTransform):
    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, dead):
        return (dead
                | "ToJson" >> beam.Map(lambda r: json.dumps(r, sort_keys=True, ensure_ascii=False))
                | "Write" >> beam.io.WriteToText(self._path, num_shards=1, shard_name_template=""))


class WriteSummary(beam.PTransform):
    """Counts documents in / out / dead-lettered (by reason) with Beam itself; writes one JSON."""

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, pcolls):
        docs, examples, dead, cache_stats = pcolls
        in_count = docs | "CountIn" >> beam.combiners.Count.Globally()
        out_count = examples | "CountOut" >> beam.combiners.Count.Globally()
        reasons = (dead
                   | "DocLetters" >> beam.Filter(is_document_dead_letter)
                   | "Reason" >> beam.Map(lambda r: r["reason"])
                   | "CountReasons" >> beam.combiners.Count.PerElement()
                   | "ToDict" >> beam.combiners.ToDict())
        dropped = (dead
                   | "PartLetters" >> beam.Filter(lambda r: r.get("document_kept", False))
                   | "CountDropped" >> beam.combiners.Count.Globally())
        path = self._path

        def write(n_in, n_out, reasons, dropped, stats):
            n_dead = sum(reasons.values())
            if n_in != n_out + n_dead:  # would mean a document was lost or duplicated: say so loudly
                logging.error("%s: %d documents in != %d out + %d dead-lettered", path, n_in, n_out, n_dead)
            summary = {"documents_in": n_in, "examples_out": n_out, "dead_lettered": n_dead,
                       "balanced": n_in == n_out + n_dead,
                       "dead_letter_reasons": dict(sorted(reasons.items())),
                       "dropped_parts_in_kept_documents": dropped, "cache_stats": stats}
            with beam.io.filesystems.FileSystems.create(path) as f:
                f.write(json.dumps(summary, indent=2).encode("utf-8"))
            return summary

        return in_count | "Write" >> beam.Map(
            write, n_out=beam.pvalue.AsSingleton(out_count), reasons=beam.pvalue.AsSingleton(reasons),
            dropped=beam.pvalue.AsSingleton(dropped), stats=beam.pvalue.AsSingleton(cache_stats))


def summary_path(cache_dir: str, task: str, split: str) -> str:
    return os.path.join(seqio_cache.task_cache_dir(cache_dir, task), f"summary.{split}.json")


def read_summary(cache_dir: str, task: str, split: str) -> dict:
    with beam.io.filesystems.FileSystems.open(summary_path(cache_dir, task, split)) as f:
        return json.loads(f.read())


class PreprocessMultimodal(beam.PTransform):
    """The whole job for one (kind, task, split), applied to a pipeline; yields the summary dict.

    Several can share one pipeline (e.g. every source of a corpus) under distinct labels.
    """

    def __init__(self, kind: str, inputs: Sequence[str], cache_dir: str, task: str, cfg: MediaConfig, *,
                 vocab: str = DEFAULT_VOCAB, split: str = "train", num_shards: int = 0,
                 reader_options: mm_readers.ReaderOptions = mm_readers.ReaderOptions(),
                 progress_every_s: float = 0.0):
        super().__init__()
        self._read = ReadMultimodalDocuments(kind, inputs, reader_options)
        self._encode = EncodeDocuments(cfg, vocab, progress_every_s)
        self._write = seqio_cache.WriteSeqioCache(cache_dir, task, split, interleave.mm_features(),
                                                  num_shards=num_shards, extra_stats=interleave.example_stats)
        self._dead_path = os.path.join(seqio_cache.task_cache_dir(cache_dir, task), f"dead_letter.{split}.jsonl")
        self._summary_path = summary_path(cache_dir, task, split)

    def expand(self, pipeline):
        docs = pipeline | "Read" >> self._read
        encoded = docs | "EncodeDocuments" >> self._encode
        stats = encoded.examples | "WriteSeqioCache" >> self._write
        _ = encoded.dead_letter | "WriteDeadLetters" >> WriteDeadLetters(self._dead_path)
        return (docs, encoded.examples, encoded.dead_letter, stats) | "WriteSummary" >> WriteSummary(self._summary_path)


def add_media_flags(parser: argparse.ArgumentParser) -> None:
    """One --flag per MediaConfig field, with its default."""
    group = parser.add_argument_group("media normalisation (MediaConfig)")
    for field in dataclasses.fields(MediaConfig):
        if isinstance(field.default, bool):
            group.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, default=field.default)
        else:
            group.add_argument(f"--{field.name}", type=type(field.default), default=field.default)


def media_config_from_args(args: argparse.Namespace) -> MediaConfig:
    return MediaConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(MediaConfig)})


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", required=True, help=f"input kind, one of {mm_readers.KINDS}")
    parser.add_argument("--input", action="append", required=True, help="file, directory or glob; repeatable")
    parser.add_argument("--cache_dir", required=True)
    parser.add_argument("--task", default=None, help="task name (default tapestry_mm_<kind>)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--vocab", default=DEFAULT_VOCAB, help="SentencePiece model")
    parser.add_argument("--num_shards", type=int, default=0,
                        help="TFRecord shards; 0 (default) lets the runner choose, which avoids shuffling every "
                             "example (media payloads included) before writing")
    parser.add_argument("--video_dir", default=None, help="video-QA kinds: where the videos are")
    parser.add_argument("--video_template", default=None, help='video-QA kinds: file name from id, e.g. "v_{video}.mp4"')
    parser.add_argument("--progress_every_s", type=float, default=10.0,
                        help="local runner: log documents/s and media/s per worker this often (0: never)")
    add_media_flags(parser)
    args, beam_args = parser.parse_known_args(argv)
    try:
        mm_readers.check_kind(args.kind)
        for pattern in args.input:
            mm_readers.expand_input(args.kind, pattern)
        cfg = media_config_from_args(args)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    if not os.path.exists(args.vocab) and "://" not in args.vocab:
        parser.error(f"--vocab {args.vocab} does not exist")
    task = args.task or f"tapestry_mm_{args.kind}"
    options = beam_options.pipeline_options(beam_args)
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
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(sys.argv[1:])
