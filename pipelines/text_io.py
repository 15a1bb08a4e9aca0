"""Reading text documents in Beam: plain-text files or JSONL with a `text` field.

A plain-text file (any extension but .jsonl/.json) is one document whose id is
the file name. A JSONL file holds one document per line:

    {"id": "doc-17", "text": "It was a bright cold day in April..."}

(`id` is optional; the default is `<file name>:<line number>`). Every pattern
must match at least one file: a missing input is a clear `FileNotFoundError`
before the pipeline starts, not a traceback from inside Beam.

A large uncompressed JSONL file is read in line-aligned byte ranges
(`plan_ranges`), so that workers share one big file without its text passing
through a shuffle; a plain-text or compressed file is one range.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

JSONL_SUFFIXES = (".jsonl", ".json")
RANGE_BYTES = 1 << 20  # Splits 20 MB into 20 ranges: enough to balance a few workers.


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


def read_documents_from_file(path: str, data: bytes, first_line: int = 1) -> Iterator[tuple[str, str]]:
    """All (doc_id, text) pairs of one file's bytes (or of a range of its lines starting at `first_line`)."""
    text = data.decode("utf-8")
    if not is_jsonl(path):
        yield os.path.basename(path), text
        return
    for i, line in enumerate(text.split("\n"), start=first_line):
        parsed = parse_jsonl_line(path, i, line)
        if parsed is not None:
            yield parsed


@dataclasses.dataclass(frozen=True)
class ReadRange:
    """Bytes [start, end) of `path`: whole lines, the first of them line number `first_line`."""

    path: str
    start: int = 0
    end: int | None = None  # None: to the end of the file (decompressed)
    first_line: int = 1


def plan_ranges(path: str, range_bytes: int = RANGE_BYTES) -> Iterator[ReadRange]:
    """Line-aligned ranges of about `range_bytes` for an uncompressed JSONL file (one
    pass counts its lines, for the default ids); the whole file for any other."""
    splittable = is_jsonl(path) and CompressionTypes.detect_compression_type(path) == CompressionTypes.UNCOMPRESSED
    if not splittable:
        yield ReadRange(path)
        return
    start, first_line, carry = 0, 1, b""
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        while True:
            block = f.read(range_bytes)
            data = carry + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            if cut:
                yield ReadRange(path, start, start + cut, first_line)
                start, first_line = start + cut, first_line + data.count(b"\n", 0, cut)
            carry = data[cut:]
            if not block:
                return


def read_range(r: ReadRange) -> bytes:
    if r.end is None:
        with FileSystems.open(r.path) as f:  # decompresses by the file's extension
            return f.read()
    with FileSystems.open(r.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.seek(r.start)
        return f.read(r.end - r.start)


def read_range_documents(r: ReadRange) -> Iterator[tuple[str, str]]:
    """The (doc_id, text) pairs of one range."""
    return read_documents_from_file(r.path, read_range(r), r.first_line)


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
