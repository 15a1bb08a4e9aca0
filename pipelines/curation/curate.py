r"""Beam job: text / JSONL documents -> curated JSONL shards + rejects + summary + report.

    python -m pipelines.curation.curate \
        --input='../shared/data/text/*/*.txt' --input='gs://bucket/crawl/*.jsonl.gz' \
        --output_dir=/tmp/curated --eval_set=mmlu:../shared/data/mmlu --num_shards=8

Inputs are read as `preprocess_text` reads them (pipelines/text_io.py: a plain-text
file is one document, a JSONL line {"id"?, "text"} one document). Steps: ReadRanges
-> Documents -> Curate (transforms.py: language, Gopher quality, Gopher repetition,
decontamination, exact dedup, MinHash near dedup) -> WriteKept + WriteRejects ->
WriteSummary (+ report). Outputs in --output_dir:

    documents-NNNNN-of-MMMMM.jsonl  {"id", "text"}: what `preprocess_text --input=<dir>` tokenizes
    rejects-NNNNN-of-MMMMM.jsonl    {"id", "stage", "reason", "value", "detail"}, one per dropped
                                    document (unreadable records: stage "read", their dead-letter reason)
    summary.json                    {"documents_in", "kept", "dropped", "dropped_by_rule",
                                     "dropped_by_stage", "balanced"}
    report.md, report.html          rule table, bar chart of removals, a histogram per signal

Shards are deterministic (by a hash of the id, ordered inside) and replaced as a whole.
The job exits non-zero if documents in != kept + dropped. Counters: `curation:*`.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import beam_options, shard_writer, text_io
from pipelines.curation import report, transforms

DEFAULT_NUM_SHARDS = 8


def kept_pattern(output_dir: str) -> str:
    """The glob of the kept documents (what the text job reads)."""
    return FileSystems.join(output_dir, "documents-*-of-*.jsonl")


def read_rejects(output_dir: str) -> list[dict]:
    return _read_jsonl(FileSystems.join(output_dir, "rejects-*-of-*.jsonl"))


def read_kept(output_dir: str) -> list[dict]:
    return _read_jsonl(kept_pattern(output_dir))


def _read_jsonl(pattern: str) -> list[dict]:
    records = []
    for path in sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list):
        with FileSystems.open(path) as f:
            records.extend(json.loads(line) for line in f.read().decode("utf-8").splitlines() if line)
    return records


def read_summary(output_dir: str) -> dict:
    with FileSystems.open(FileSystems.join(output_dir, "summary.json")) as f:
        return json.loads(f.read())


def _read_reject(doc: dict) -> dict:
    return transforms.reject(doc["id"], "read", doc["error"], 1, doc["detail"])


def _jsonl(record: dict) -> tuple[str, bytes]:
    return record["id"], json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8")


def summarise(n_kept: int, rejects: list[dict]) -> dict:
    by_rule, by_stage = {}, {}
    for r in rejects:
        by_rule[r["reason"]] = by_rule.get(r["reason"], 0) + 1
        stage = by_stage.setdefault(r["stage"], {})
        stage[r["reason"]] = stage.get(r["reason"], 0) + 1
    return {"kept": n_kept, "dropped": len(rejects), "dropped_by_rule": dict(sorted(by_rule.items())),
            "dropped_by_stage": by_stage}


class CurateFiles(beam.PTransform):
    """PBegin -> curated shards, rejects, summary and report in `output_dir`; yields the summary dict."""

    def __init__(self, inputs: Sequence[str], output_dir: str, cfg: transforms.CurationConfig,
                 num_shards: int = DEFAULT_NUM_SHARDS):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"--num_shards must be >= 1, got {num_shards}")
        self._read = text_io.ReadRanges(inputs, text_io.is_jsonl)
        self._output_dir, self._cfg, self._num_shards = output_dir, cfg, num_shards

    def expand(self, pbegin):
        out_dir, n = self._output_dir, self._num_shards
        all_docs = pbegin | "ReadRanges" >> self._read | "Documents" >> beam.FlatMap(text_io.range_documents)
        n_in = all_docs | "CountIn" >> beam.combiners.Count.Globally()
        docs = all_docs | "Readable" >> beam.Partition(lambda d, _: int("error" in d), 2)
        curated = docs[0] | "Curate" >> transforms.Curate(self._cfg)
        rejects = ((curated["rejects"], docs[1] | "ReadRejects" >> beam.Map(_read_reject))
                   | "AllRejects" >> beam.Flatten())
        kept_files = (curated["kept"]
                      | "KeptJson" >> beam.Map(lambda d: _jsonl({"id": d["id"], "text": d["text"]}))
                      | "WriteKept" >> shard_writer.WriteShards(
                          FileSystems.join(out_dir, "documents"), n, suffix=".jsonl", fmt="lines"))
        reject_files = (rejects
                        | "RejectJson" >> beam.Map(_jsonl)
                        | "WriteRejects" >> shard_writer.WriteShards(
                            FileSystems.join(out_dir, "rejects"), n, suffix=".jsonl", fmt="lines"))
        n_kept = curated["kept"] | "CountKept" >> beam.combiners.Count.Globally()
        slim = rejects | "Slim" >> beam.Map(lambda r: {"stage": r["stage"], "reason": r["reason"]})

        def write(n_in, n_kept, rejects, histograms, _kept_files, _reject_files):
            summary = {"documents_in": n_in, **summarise(n_kept, rejects)}
            summary["balanced"] = n_in == summary["kept"] + summary["dropped"]
            with FileSystems.create(FileSystems.join(out_dir, "summary.json")) as f:
                f.write(json.dumps(summary, indent=2).encode("utf-8"))
            report.write_report(out_dir, summary, histograms)
            return summary

        return (n_in | "WriteSummary" >> beam.Map(
            write, beam.pvalue.AsSingleton(n_kept), beam.pvalue.AsList(slim), beam.pvalue.AsSingleton(curated["histograms"]),
            beam.pvalue.AsSingleton(kept_files), beam.pvalue.AsSingleton(reject_files)))


def make_parser():
    parser = beam_options.make_parser(__doc__)
    parser.add_argument("--input", action="append", required=True,
                        help="file, directory or glob (any FileSystems URI); repeatable")
    parser.add_argument("--output_dir", required=True, help="where the curated shards, rejects and report go")
    parser.add_argument("--num_shards", type=int, default=DEFAULT_NUM_SHARDS, help="shards of kept and rejects")
    transforms.add_flags(parser)
    return parser


def run(inputs: Sequence[str], output_dir: str, cfg: transforms.CurationConfig, options,
        num_shards: int = DEFAULT_NUM_SHARDS) -> dict:
    """Runs the curation pipeline; returns the summary (SystemExit if it does not balance)."""
    return run_many([(inputs, output_dir)], cfg, options, num_shards)[output_dir]


def run_many(jobs: Sequence[tuple[Sequence[str], str]], cfg: transforms.CurationConfig, options,
             num_shards: int = DEFAULT_NUM_SHARDS) -> dict[str, dict]:
    """Curates each (inputs, output_dir) separately, in one pipeline; {output_dir: summary}."""
    with beam.Pipeline(options=options) as p:
        for i, (inputs, output_dir) in enumerate(jobs):
            _ = p | f"CurateFiles_{i}" >> CurateFiles(inputs, output_dir, cfg, num_shards)
    summaries = {out: read_summary(out) for _, out in jobs}
    bad = [f"{out}: {s['documents_in']} in != {s['kept']} kept + {s['dropped']} dropped"
           for out, s in summaries.items() if not s["balanced"]]
    if bad:
        raise SystemExit("curation summary does not balance: " + "; ".join(bad))
    return summaries


def describe(summary: dict) -> str:
    return (f"{summary['documents_in']} documents in, {summary['kept']} kept, {summary['dropped']} dropped "
            f"{summary['dropped_by_rule']}")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = make_parser()
    args, options = beam_options.parse(parser, argv)
    try:
        cfg = transforms.config_from_flags(args)
        text_io.resolve_patterns(args.input)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    start = time.time()
    summary = run(args.input, args.output_dir, cfg, options, args.num_shards)
    print(f"[curate] {describe(summary)} in {time.time() - start:.1f}s -> {args.output_dir}")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
