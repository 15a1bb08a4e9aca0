"""Test-set decontamination: documents sharing a 13-gram with an evaluation set we score.

    index = NgramIndex.build({"mmlu": mmlu_items("../shared/data/mmlu"), ...})
    index.find(text)        # [(eval set, start char, end char), ...] of every matching n-gram
    decontaminate(text, index, mode="drop" | "cut")   # (text or None, matches, first set matched)

An evaluation item (an MMLU question followed by its four choices, bare and with
their letters as prompts show them; a held-out text
document; a video-QA question with its options) is normalised to words (lower case,
DataTrove's punctuation set -> spaces, split on whitespace: `ngram_words`). Its
n-grams are every run of 13 words; an item shorter than 13 words contributes itself
whole when it has at least `min_words` (8) words, so "What is the capital of France?"
alone never matches. A document matches when any of its runs of the same lengths is
in the index. `drop` removes the document; `cut` removes the characters of every
matching run (overlaps merged) and drops the document only if nothing but whitespace
is left.

N-grams are compared by a 64-bit polynomial hash over xxh64 word hashes (numpy), so
the index of all MMLU splits (~15k questions, ~1M n-grams) is a sorted uint64 array
of a few MB that Beam hands every worker as one side input.

Evaluation sets (`read_eval_items`): `mmlu` (a directory or file of MMLU CSVs: question,
A, B, C, D, answer; no header), `text` (plain text or JSONL {"text"} files: each document
one item), `video_qa` (NExT-QA CSV with a header: question + a0..a4; ActivityNet-QA
`*_q.json`: question).
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Iterable, Iterator, Mapping

import numpy as np
import xxhash

from pipelines import text_io
from pipelines.curation import words as words_lib

NGRAM = 13
MIN_WORDS = 8
EVAL_KINDS = ("mmlu", "text", "video_qa")
_WORD = re.compile(r"\S+")
_MULT = np.uint64(0x9E3779B97F4A7C15)


def ngram_words(text: str) -> list[tuple[int, int, str]]:
    """(start, end, lower-cased word) of each word once punctuation is blanked (offsets into `text`)."""
    blanked = text.translate(words_lib.PUNCT_TRANS)  # one character for one: offsets survive
    return [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(blanked)]


def _word_hashes(words: Iterable[str]) -> np.ndarray:
    return np.array([xxhash.xxh64_intdigest(w.encode("utf-8")) for w in words], dtype=np.uint64)


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """uint64 [len - n + 1]: a polynomial hash of each run of n words."""
    if len(word_hashes) < n:
        return np.zeros(0, dtype=np.uint64)
    h = word_hashes[: len(word_hashes) - n + 1].copy()
    with np.errstate(over="ignore"):
        for k in range(1, n):
            h = h * _MULT + word_hashes[k: len(word_hashes) - n + 1 + k]
    return h


class NgramIndex:
    """Per evaluation set and n-gram length, a sorted uint64 array of n-gram hashes."""

    def __init__(self, tables: Mapping[str, Mapping[int, np.ndarray]], ngram: int = NGRAM):
        self.tables = {name: dict(t) for name, t in tables.items()}
        self.ngram = ngram

    @classmethod
    def build(cls, items_by_set: Mapping[str, Iterable[str]], ngram: int = NGRAM, min_words: int = MIN_WORDS
              ) -> "NgramIndex":
        if not 1 <= min_words <= ngram:
            raise ValueError(f"decontamination needs 1 <= min_words <= ngram, got {min_words} and {ngram}")
        tables = {}
        for name, items in items_by_set.items():
            by_len: dict[int, list[np.ndarray]] = {}
            for item in items:
                wh = _word_hashes(w for _, _, w in ngram_words(item))
                if len(wh) >= min_words:
                    n = min(ngram, len(wh))
                    by_len.setdefault(n, []).append(ngram_hashes(wh, n))
            tables[name] = {n: np.unique(np.concatenate(arrs)) for n, arrs in by_len.items()}
        return cls(tables, ngram)

    def size(self) -> int:
        return sum(len(a) for t in self.tables.values() for a in t.values())

    def find(self, text: str) -> list[tuple[str, int, int]]:
        """(set, start char, end char) of each run of words in `text` that is in the index."""
        words = ngram_words(text)
        wh = _word_hashes(w for _, _, w in words)
        found, cache = [], {}
        for name, table in self.tables.items():
            for n, keys in table.items():
                if n not in cache:
                    cache[n] = ngram_hashes(wh, n)
                h = cache[n]
                if not len(h) or not len(keys):
                    continue
                pos = np.searchsorted(keys, h)
                hit = np.flatnonzero(keys[np.minimum(pos, len(keys) - 1)] == h)
                found.extend((name, words[i][0], words[i + n - 1][1]) for i in hit.tolist())
        return found


def cut_spans(text: str, spans: Iterable[tuple[int, int]]) -> str:
    """`text` without the characters of `spans` (overlapping spans merged)."""
    out, last = [], 0
    for start, end in sorted(spans):
        if start > last:
            out.append(text[last:start])
        last = max(last, end)
    out.append(text[last:])
    return "".join(out)


def decontaminate(text: str, index: NgramIndex, mode: str = "drop") -> tuple[str | None, int, str | None]:
    """(text to keep or None to drop, number of matching n-grams, first evaluation set matched)."""
    if mode not in ("drop", "cut"):
        raise ValueError(f"decontamination mode must be 'drop' or 'cut', got {mode!r}")
    found = index.find(text)
    if not found:
        return text, 0, None
    first = min(found, key=lambda f: f[1])[0]
    if mode == "drop":
        return None, len(found), first
    kept = cut_spans(text, ((s, e) for _, s, e in found))
    return (kept if kept.strip() else None), len(found), first


# --- evaluation sets ------------------------------------------------------------------------------------------

def _read_text(path: str) -> str:
    return text_io.read_whole(path).decode("utf-8-sig")


def _mmlu_items(text: str) -> Iterator[str]:
    for row in csv.reader(io.StringIO(text)):
        if len(row) >= 6:  # question + choices A-D, bare and lettered as in prompts (the answer is no text)
            yield " ".join(row[:5])
            yield " ".join([row[0]] + [f"{letter} {choice}" for letter, choice in zip("ABCD", row[1:5])])


def _video_qa_items(path: str, text: str) -> Iterator[str]:
    if path.lower().endswith(".json"):
        for q in json.loads(text):
            if isinstance(q, dict) and q.get("question"):
                yield str(q["question"])
        return
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("question"):
            yield " ".join([row["question"]] + [row[k] for k in ("a0", "a1", "a2", "a3", "a4") if row.get(k)])


def _text_items(path: str, text: str) -> Iterator[str]:
    if not text_io.is_jsonl(path):
        yield text
        return
    for line in text.splitlines():
        if line.strip():
            record = json.loads(line)
            if isinstance(record, dict) and isinstance(record.get("text"), str):
                yield record["text"]


def read_eval_items(kind: str, pattern: str) -> Iterator[str]:
    """The items of one evaluation set: `kind` in EVAL_KINDS, `pattern` a file, directory or glob."""
    if kind not in EVAL_KINDS:
        raise ValueError(f"unknown evaluation set kind {kind!r}; expected one of {EVAL_KINDS}")
    paths = text_io.expand_patterns([pattern])
    for path in paths:
        name = path.lower()
        if kind == "mmlu" and name.endswith(".csv"):
            yield from _mmlu_items(_read_text(path))
        elif kind == "video_qa" and (name.endswith(".csv") or name.endswith("_q.json")):
            yield from _video_qa_items(path, _read_text(path))
        elif kind == "text" and not name.endswith((".md", "license")):
            yield from _text_items(path, _read_text(path))


def parse_eval_set(spec: str) -> tuple[str, str, str]:
    """'name=kind:pattern' or 'kind:pattern' (name = kind) -> (name, kind, pattern); ValueError naming the spec."""
    name, _, rest = spec.rpartition("=") if "=" in spec.split(":", 1)[0] else ("", "", spec)
    kind, sep, pattern = rest.partition(":")
    if not sep or not pattern or kind not in EVAL_KINDS:
        raise ValueError(f"--eval_set {spec!r}: expected [name=]kind:path with kind one of {EVAL_KINDS}, "
                         f"e.g. mmlu:../shared/data/mmlu")
    return name or kind, kind, pattern


def build_index(specs: Iterable[str], ngram: int = NGRAM, min_words: int = MIN_WORDS) -> NgramIndex:
    """An index of every evaluation set named by `specs` (see parse_eval_set)."""
    items: dict[str, list[str]] = {}
    for spec in specs:
        name, kind, pattern = parse_eval_set(spec)
        items.setdefault(name, []).extend(read_eval_items(kind, pattern))
    return NgramIndex.build(items, ngram, min_words)
