"""The failure contract both Beam jobs share: dead letters, a summary that balances, an exit code.

    <cache_dir>/<task>/dead_letter.<split>-00000-of-00008.jsonl  {"id", "source", "reason", "detail", ...}
    <cache_dir>/<task>/summary.<split>.json

A summary (one per job and split):

    {"documents_in": 40, "documents_out": 37, "dead_lettered": 3, "examples_out": 212,
     "examples_written": 212, "balanced": true, "dead_letter_reasons": {"bad_record": 2, "empty": 1},
     "cache_stats": {...}}

`documents_in` is counted where documents are read, `documents_out` and
`examples_out` where they are encoded, `dead_lettered` from the dead-letter
records themselves and `examples_written` from the cache's own stats; the job
balances when in = out + dead and every example out was written. A summary that
does not balance means a document was lost or duplicated: the launcher exits
non-zero (`exit_if_unbalanced`). Dead letters are sharded like the cache
(shard_writer.py: by a hash of the id, old shards replaced).
"""

from __future__ import annotations

import json
from typing import Mapping

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipelines import seqio_cache, shard_writer

DEAD_LETTER_SHARDS = 8


def dead_letter_prefix(cache_dir: str, task: str, split: str) -> str:
    return FileSystems.join(seqio_cache.task_cache_dir(cache_dir, task), f"dead_letter.{split}")


def summary_path(cache_dir: str, task: str, split: str) -> str:
    return FileSystems.join(seqio_cache.task_cache_dir(cache_dir, task), f"summary.{split}.json")


def read_summary(cache_dir: str, task: str, split: str) -> dict:
    with FileSystems.open(summary_path(cache_dir, task, split)) as f:
        return json.loads(f.read())


def read_dead_letters(cache_dir: str, task: str, split: str) -> list[dict]:
    """Every dead letter of a job's split, in shard order."""
    pattern = shard_writer.stale_patterns(dead_letter_prefix(cache_dir, task, split), ".jsonl")[0]
    letters = []
    for path in sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list):
        with FileSystems.open(path) as f:
            letters.extend(json.loads(line) for line in f.read().decode("utf-8").splitlines() if line)
    return letters


def is_document_dead_letter(record: dict) -> bool:
    """A whole dead-lettered document (not a dropped part of a kept or dead document)."""
    return "part" not in record


class WriteDeadLetters(beam.PTransform):
    """PCollection[dead letter dict] -> sharded JSONL beside the cache."""

    def __init__(self, prefix: str, num_shards: int = DEAD_LETTER_SHARDS):
        super().__init__()
        self._write = shard_writer.WriteShards(prefix, num_shards, suffix=".jsonl", fmt="lines")

    def expand(self, dead):
        def keyed(r):
            line = json.dumps(r, sort_keys=True, ensure_ascii=False)
            return str(r.get("id", "")), line.encode("utf-8")

        return dead | "ToJson" >> beam.Map(keyed) | "Write" >> self._write


class _SumDicts(beam.CombineFn):
    def create_accumulator(self):
        return {}

    def add_input(self, acc, counts):
        for k, v in counts.items():
            acc[k] = acc.get(k, 0) + v
        return acc

    def merge_accumulators(self, accs):
        merged = {}
        for acc in accs:
            self.add_input(merged, acc)
        return merged

    def extract_output(self, acc):
        return acc


def check_balanced(summary: Mapping) -> list[str]:
    """What is wrong with a summary's accounting (empty: it balances)."""
    problems = []
    n_in, n_out, n_dead = (summary.get(k, 0) for k in ("documents_in", "documents_out", "dead_lettered"))
    if n_in != n_out + n_dead:
        problems.append(f"{n_in} documents in != {n_out} out + {n_dead} dead-lettered")
    if summary.get("examples_written", 0) != summary.get("examples_out", 0):
        problems.append(f"{summary.get('examples_out', 0)} examples out but "
                        f"{summary.get('examples_written', 0)} written to the cache")
    return problems


def exit_if_unbalanced(summaries: Mapping[str, Mapping]) -> None:
    """SystemExit (status 1, naming each job and what is off) if any summary does not balance."""
    bad = {name: p for name, s in summaries.items() if (p := check_balanced(s))}
    if bad:
        raise SystemExit("documents lost or duplicated (summary does not balance): "
                         + "; ".join(f"{name}: {', '.join(p)}" for name, p in bad.items()))


class WriteSummary(beam.PTransform):
    """(tallies, dead letters, {split: cache stats}) -> summary JSON; yields the summary dict.

    `tallies` is a PCollection of count dicts (summed), e.g. {"documents_in": 1};
    dead letters are counted by reason (whole documents only: see
    is_document_dead_letter). Runs after every cache split is finalised.
    """

    def __init__(self, path: str):
        super().__init__()
        self._path = path

    def expand(self, pcolls):
        tallies, dead, stats = pcolls
        totals = tallies | "Sum" >> beam.CombineGlobally(_SumDicts())
        reasons = (dead
                   | "DocLetters" >> beam.Filter(is_document_dead_letter)
                   | "Reason" >> beam.Map(lambda r: r["reason"])
                   | "CountReasons" >> beam.combiners.Count.PerElement()
                   | "ToDict" >> beam.combiners.ToDict())
        path, splits = self._path, sorted(stats)

        def write(totals, reasons, **split_stats):
            split_stats = {s: split_stats[f"stats_{i}"] for i, s in enumerate(splits)}
            summary = {"documents_in": 0, "documents_out": 0, "examples_out": 0, **totals,
                       "dead_lettered": sum(reasons.values()),
                       "examples_written": sum(s.get("examples", 0) for s in split_stats.values()),
                       "dead_letter_reasons": dict(sorted(reasons.items())),
                       "cache_stats": split_stats[splits[0]] if len(splits) == 1 else split_stats}
            summary["balanced"] = not check_balanced(summary)
            with FileSystems.create(path) as f:
                f.write(json.dumps(summary, indent=2).encode("utf-8"))
            return summary

        side = {f"stats_{i}": beam.pvalue.AsSingleton(stats[s]) for i, s in enumerate(splits)}
        return totals | "Write" >> beam.Map(write, reasons=beam.pvalue.AsSingleton(reasons), **side)
