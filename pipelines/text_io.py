"""Reading input files in Beam: matching, line-aligned byte ranges, and the one JSONL parser.

Both jobs read their inputs here. Patterns are checked on the launcher with one
listing call each (`resolve_patterns`: a directory means its files, a pattern that
matches nothing is a clear error before the pipeline starts) and matched in the
pipeline (`ReadRanges`: `fileio.MatchAll`, so a glob of a million files is listed
by the runner, not collected into the launcher's graph).

Line-oriented files (JSONL, LibriSpeech `*.trans.txt`) larger than `range_bytes`
are cut into byte ranges from their sizes alone; a range owns the lines that
start inside it. Ranges are spread over workers, which count each range's lines
in parallel; the counts come back as one side input giving each range its first
line number (for `file:line` ids): no file is read serially before the work is spread. Compressed files (by extension, through
Beam's compression handling) are streamed line by line as one range; other files
(plain text, CSV or JSON manifests) are one range each.

A JSONL line is one record (`parse_jsonl_line`):

    {"id": "doc-17", "text": "It was a bright cold day in April..."}

Its id is its `"id"` when it has one (even when the rest of the line is broken),
else `<file name>:<line>`. Blank lines are skipped; a UTF-8 byte-order mark is
dropped; a line that is not UTF-8, not JSON or not an object becomes an error
record `{"id", "error": "bad_record", "detail": "<path>:<line>: ..."}`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
from typing import Callable, Iterable, Iterator, Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

JSONL_SUFFIXES = (".jsonl", ".json")
RANGE_BYTES = 1 << 20  # Splits 20 MB into 20 ranges: enough to balance a few workers.
BOM = b"\xef\xbb\xbf"
_ID_IN_BROKEN_LINE = re.compile(rb'"id"\s*:\s*"((?:[^"\\]|\\.){1,200})"')


# --- files -----------------------------------------------------------------------------------------------------

def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def is_compressed(path: str) -> bool:
    return CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED


def is_jsonl(path: str) -> bool:
    """A JSONL file (one record per line), also when compressed: docs.jsonl, docs.jsonl.gz, docs.json."""
    name = path.lower()
    if is_compressed(name):
        name = name.rsplit(".", 1)[0]
    return name.endswith(JSONL_SUFFIXES)


def _has_scheme(path: str) -> bool:
    return "://" in path


def _matches_any(pattern: str) -> bool:
    return bool(FileSystems.match([pattern], limits=[1])[0].metadata_list)


def resolve_patterns(patterns: Sequence[str], default_glob: str = "**") -> list[str]:
    """Each pattern as the runner should match it: a directory means `<dir>/<default_glob>`.

    One listing call per pattern (at most one file each); raises FileNotFoundError
    naming every pattern that matches nothing.
    """
    resolved, missing = [], []
    for pattern in patterns:
        if not _has_scheme(pattern):  # workers may run elsewhere than the launcher's directory
            pattern = os.path.abspath(pattern)
        is_local_dir = not _has_scheme(pattern) and os.path.isdir(pattern)
        candidates = [pattern] if not is_local_dir else []
        candidates.append(FileSystems.join(pattern.rstrip("/"), default_glob))
        found = next((c for c in candidates if _matches_any(c)), None)
        (resolved if found else missing).append(found or pattern)
    if missing:
        raise FileNotFoundError(f"no input files match {missing}; check the --input paths")
    return resolved


def expand_patterns(patterns: Sequence[str]) -> list[str]:
    """Every file matching `patterns`, listed here (for small launcher-side jobs such as the tokenizer's)."""
    return sorted({m.path for r in FileSystems.match(resolve_patterns(patterns)) for m in r.metadata_list})


# --- ranges ----------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ReadRange:
    """Bytes [start, end) of `path`: the lines that start inside them, the first numbered `first_line`
    (None until counted). `end=None`: the whole file, decompressed by its extension."""

    path: str
    start: int = 0
    end: int | None = None
    first_line: int | None = 1


def plan_ranges(file: tuple[str, int], by_lines: Callable[[str], bool], range_bytes: int = RANGE_BYTES
                ) -> Iterator[ReadRange]:
    """(path, size) -> ranges of about `range_bytes`, from the size alone (no reading)."""
    path, size = file
    if not by_lines(path) or is_compressed(path) or size <= range_bytes:
        yield ReadRange(path)
        return
    for start in range(0, size, range_bytes):
        yield ReadRange(path, start, min(start + range_bytes, size), None)


def _open_raw(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def count_range_lines(r: ReadRange) -> tuple[str, int, int]:
    """(path, start, how many lines start inside the range): newlines in [start-1, end-1), plus the first line."""
    begin = max(r.start - 1, 0)
    with _open_raw(r.path) as f:
        f.seek(begin)
        data = f.read(r.end - 1 - begin)
    return r.path, r.start, data.count(b"\n") + (r.start == 0)


def first_lines(counts: Iterable[tuple[str, int, int]]) -> dict[tuple[str, int], int]:
    """{(path, start): number of the range's first line} from every range's line count."""
    firsts, by_path = {}, {}
    for path, start, n in counts:
        by_path.setdefault(path, []).append((start, n))
    for path, ranges in by_path.items():
        first = 1
        for start, n in sorted(ranges):
            firsts[path, start] = first
            first += n
    return firsts


def numbered(r: ReadRange, firsts: dict[tuple[str, int], int]) -> ReadRange:
    return r if r.first_line is not None else dataclasses.replace(r, first_line=firsts[r.path, r.start])


def _strip_eol(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


def read_range_lines(r: ReadRange) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes without the line end) of every line the range owns."""
    if r.end is None:
        with FileSystems.open(r.path) as f:  # decompresses by the file's extension
            if not is_compressed(r.path):
                lines = f.read().split(b"\n")
                if lines and not lines[-1]:
                    lines.pop()
                yield from ((r.first_line + i, _strip_eol(line)) for i, line in enumerate(lines))
                return
            n = r.first_line
            while line := f.readline():
                yield n, _strip_eol(line[:-1] if line.endswith(b"\n") else line)
                n += 1
        return
    with _open_raw(r.path) as f:
        begin = max(r.start - 1, 0)
        f.seek(begin)
        data = f.read(r.end - begin)
        if r.start > 0:  # skip the line that started before the range (owned by the previous one)
            cut = data.find(b"\n")
            data = data[cut + 1:] if cut >= 0 else b""
        if data and not data.endswith(b"\n"):  # the last line runs past the range: finish it
            data += f.readline()
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    yield from ((r.first_line + i, _strip_eol(line)) for i, line in enumerate(lines))


def open_input(path: str):
    """A binary file object over the whole file, decompressed by its extension."""
    f = FileSystems.open(path)
    return f if isinstance(f, io.IOBase) else io.BytesIO(_read_and_close(f))


def _read_and_close(f) -> bytes:
    with f:
        return f.read()


def read_whole(path: str) -> bytes:
    """A whole file, decompressed by its extension (Beam's compression handling)."""
    with FileSystems.open(path) as f:
        return f.read()


class ReadRanges(beam.PTransform):
    """PBegin -> PCollection[ReadRange] with line numbers, for the files matching `patterns`, rebalanced.

    `by_lines(path)` says which files are line-oriented (split into ranges); a file
    matched by two patterns is read once.
    """

    def __init__(self, patterns: Sequence[str], by_lines: Callable[[str], bool] = is_jsonl, *,
                 range_bytes: int = RANGE_BYTES, default_glob: str = "**"):
        super().__init__()
        if range_bytes < 1:
            raise ValueError(f"range_bytes must be >= 1, got {range_bytes}")
        self._patterns = resolve_patterns(patterns, default_glob)
        self._by_lines, self._range_bytes = by_lines, range_bytes

    def expand(self, pbegin):
        files = (pbegin
                 | "Patterns" >> beam.Create(self._patterns)
                 | "Match" >> fileio.MatchAll()
                 | "PathSize" >> beam.Map(lambda m: (m.path, m.size_in_bytes)))
        if len(set(self._patterns)) > 1:  # one glob never lists a file twice; several may
            files = files | "Distinct" >> beam.Distinct()
        ranges = (files
                  | "Plan" >> beam.FlatMap(plan_ranges, self._by_lines, self._range_bytes)
                  | "Spread" >> beam.Reshuffle())
        # Ranges of split files are counted where they landed; the counts come back as one small side input.
        firsts = (ranges
                  | "ToCount" >> beam.Filter(lambda r: r.first_line is None)
                  | "CountLines" >> beam.Map(count_range_lines)
                  | "AllCounts" >> beam.combiners.ToList()
                  | "FirstLines" >> beam.Map(first_lines))
        return ranges | "Number" >> beam.Map(numbered, beam.pvalue.AsSingleton(firsts))


# --- records ---------------------------------------------------------------------------------------------------

def _bad(doc_id: str, where: str, detail: str) -> dict:
    return {"id": doc_id, "error": "bad_record", "detail": f"{where}: {detail}"}


def parse_jsonl_line(path: str, line_number: int, line: bytes | str) -> dict | None:
    """One JSONL line -> {"id", "record": dict} or an error record; None for a blank line (see module doc)."""
    where, fallback = f"{path}:{line_number}", f"{basename(path)}:{line_number}"
    if isinstance(line, bytes):
        line = line.removeprefix(BOM)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            found = _ID_IN_BROKEN_LINE.search(line)
            doc_id = found.group(1).decode("utf-8", "replace") if found else fallback
            return _bad(doc_id, where, f"not UTF-8 (byte {e.start}: {line[e.start:e.start + 4]!r})")
    else:
        text = line.removeprefix("\ufeff")
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        found = _ID_IN_BROKEN_LINE.search(text.encode("utf-8", "replace"))
        return _bad(found.group(1).decode("utf-8", "replace") if found else fallback, where, f"not valid JSON ({e})")
    if not isinstance(record, dict):
        return _bad(fallback, where, f"a line must hold a JSON object, got {type(record).__name__}")
    doc_id = record.get("id")
    doc_id = str(doc_id) if doc_id not in (None, "") else fallback
    return {"id": doc_id, "record": record, "where": where}


def text_document(parsed: dict) -> dict:
    """A parsed JSONL record -> {"id", "text"}, or an error record (no string `text`: bad_record; blank: empty)."""
    if "error" in parsed:
        return parsed
    text = parsed["record"].get("text")
    if not isinstance(text, str):
        got = "no 'text' field" if text is None else f"'text' is a {type(text).__name__}, not a string"
        return _bad(parsed["id"], parsed["where"], got)
    if not text.strip():
        return {"id": parsed["id"], "error": "empty", "detail": f"{parsed['where']}: blank 'text'"}
    return {"id": parsed["id"], "text": text}


def plain_text_document(path: str, data: bytes) -> dict:
    """A whole plain-text file -> one {"id": file name, "text"}, or an error record."""
    doc_id = basename(path)
    try:
        text = data.removeprefix(BOM).decode("utf-8")
    except UnicodeDecodeError as e:
        return {"id": doc_id, "error": "bad_record", "detail": f"{path}: not UTF-8 (byte {e.start})"}
    if not text.strip():
        return {"id": doc_id, "error": "empty", "detail": f"{path}: no text"}
    return {"id": doc_id, "text": text}


def file_error(path: str, e: Exception) -> dict:
    """A file that vanished or cannot be read after matching -> one error record."""
    reason = "missing_file" if isinstance(e, FileNotFoundError) else "unreadable"
    return {"id": basename(path), "error": reason, "detail": f"{path}: {type(e).__name__}: {e}"}


def range_documents(r: ReadRange) -> Iterator[dict]:
    """The text documents of one range: {"id", "text"} or error records (see module doc)."""
    try:
        if not is_jsonl(r.path):
            yield plain_text_document(r.path, read_whole(r.path))
            return
        for n, line in read_range_lines(r):
            parsed = parse_jsonl_line(r.path, n, line)
            if parsed is not None:
                yield text_document(parsed)
    except OSError as e:
        yield file_error(r.path, e)


class ReadDocuments(beam.PTransform):
    """PBegin -> PCollection[(doc_id, text)] from files matching `patterns` (bad records skipped)."""

    def __init__(self, patterns: Sequence[str]):
        super().__init__()
        self._ranges = ReadRanges(patterns)

    def expand(self, pbegin):
        return (pbegin
                | "Ranges" >> self._ranges
                | "Documents" >> beam.FlatMap(range_documents)
                | "Good" >> beam.Filter(lambda d: "error" not in d)
                | "Pairs" >> beam.Map(lambda d: (d["id"], d["text"])))


def split_into_chunks(text: str, max_chars: int) -> Iterable[str]:
    """Splits a long document at paragraph (then line) boundaries into pieces of
    at most about `max_chars` characters; concatenating the pieces gives `text` back.

    Books are far longer than a training row; chunking keeps all of a book
    instead of the first row's worth after trimming.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be >= 1, got {max_chars}")
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
