"""Reading text documents in Beam: plain-text files or JSONL with a `text` field.

A plain-text file (any extension but .jsonl/.json) is one document whose id is
the file name. A JSONL file holds one document per line:

    {"id": "doc-17", "text": "It was a bright cold day in April..."}

(`id` is optional; the default is `<file name>:<line number>`). Every pattern
must match at least one file: a missing input is a clear `FileNotFoundError`
before the pipeline starts, not a traceback from inside Beam.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

JSONL_SUFFIXES = (".jsonl", ".json")


def expand_patterns(patterns: Sequence[str]) -> list[str]:
    """Returns the sorted files matching `patterns`; a directory means its files.

    Raises FileNotFoundError naming every pattern that matches nothing.
    """
    files, missing = [], []
    for pattern in patterns:
        glob = pattern
        if os.path.isdir(pattern):
            glob = os.path.join(pattern, "**")
        matched = [m.path for m in FileSystems.match([glob])[0].metadata_list]
        matched = [p for p in matched if not os.path.isdir(p)]
        if not matched:
            missing.append(pattern)
        files.extend(matched)
    if missing:
        raise FileNotFoundError(f"no input files match {missing}; check the --input paths")
    return sorted(set(files))


def is_jsonl(path: str) -> bool:
    return path.lower().endswith(JSONL_SUFFIXES)


def parse_jsonl_line(path: str, line_number: int, line: str) -> tuple[str, str] | None:
    """One JSONL line -> (doc_id, text); None for a blank line.

    Raises ValueError with the file and line for malformed JSON or a missing `text`.
    """
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_number}: not valid JSON ({e})") from e
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise ValueError(f"{path}:{line_number}: expected an object with a string 'text' field")
    doc_id = str(record.get("id", f"{os.path.basename(path)}:{line_number}"))
    return doc_id, record["text"]


def read_documents_from_file(path: str, data: bytes) -> Iterator[tuple[str, str]]:
    """All (doc_id, text) pairs of one file's bytes."""
    text = data.decode("utf-8")
    if not is_jsonl(path):
        yield os.path.basename(path), text
        return
    for i, line in enumerate(text.splitlines(), start=1):
        parsed = parse_jsonl_line(path, i, line)
        if parsed is not None:
            yield parsed


class ReadDocuments(beam.PTransform):
    """PBegin -> PCollection[(doc_id, text)] from files matching `patterns`."""

    def __init__(self, patterns: Sequence[str]):
        super().__init__()
        self._files = expand_patterns(patterns)

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self._files)
            | "Match" >> fileio.MatchAll()
            | "Open" >> fileio.ReadMatches()
            | "Reshuffle" >> beam.Reshuffle()
            | "Parse" >> beam.FlatMap(lambda f: read_documents_from_file(f.metadata.path, f.read()))
        )


def split_into_chunks(text: str, max_chars: int) -> Iterable[str]:
    """Splits a long document at paragraph (then line) boundaries into pieces of
    at most about `max_chars` characters; concatenating the pieces gives `text` back.

    Books are far longer than a training row; chunking keeps all of a book
    instead of the first row's worth after trimming.
    """
    if len(text) <= max_chars:
        yield text
        return
    start = 0
    while start < len(text):
        end = min(start + max_chars, len(text))
        if end < len(text):
            cut = text.rfind("\n\n", start, end)
            if cut <= start:
                cut = text.rfind("\n", start, end)
            if cut <= start:
                cut = text.rfind(" ", start, end)
            if cut > start:
                end = cut + 1
        yield text[start:end]
        start = end
