"""Gopher repetition filter (Rae et al. 2021, appendix A.1.1, table A1).

    signals = repetition_signals(text)              # fractions below, one word split
    repetition_verdict(signals, RepetitionConfig())   # None (keep) or ("top_2_gram", 0.31)

    rule                       signal (a fraction)                                          drop when >
    dup_para_frac              duplicate paragraphs ("\\n\\n"-separated) / paragraphs         0.30
    dup_para_char_frac         characters in duplicate paragraphs / characters                0.20
    dup_line_frac              duplicate lines / lines                                        0.30
    dup_line_char_frac         characters in duplicate lines / characters                     0.20
    top_{2,3,4}_gram           characters of the most frequent n-gram x its count / chars     0.20 / 0.18 / 0.16
    duplicated_{5..10}_n_grams characters in repeated n-grams (scanned left to right, a       0.15 ... 0.10
                               repeat skips its n words) / characters

A "duplicate" is every occurrence after the first. Definitions, order and names are
DataTrove 0.10.1's `GopherRepetitionFilter` (n-gram characters: words joined by a
space for the top n-grams, without one for the repeated n-grams), over spaCy's words
(words.py). N-grams are compared by a 64-bit hash of their word ids (numpy), not
as joined strings: two different n-grams whose words concatenate to the same string
("ab"+"c" and "a"+"bc") count as repeats in DataTrove's joined-string keys, not here.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np

from pipelines.curation import words as words_lib

_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the rolling n-gram hash


@dataclasses.dataclass(frozen=True)
class RepetitionConfig:
    dup_para_frac: float | None = 0.3
    dup_para_char_frac: float | None = 0.2
    dup_line_frac: float | None = 0.3
    dup_line_char_frac: float | None = 0.2
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.20), (3, 0.18), (4, 0.16))
    dup_n_grams: tuple[tuple[int, float], ...] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))


def _duplicates(parts: Sequence[str]) -> tuple[int, int]:
    """(occurrences after the first, their characters)."""
    seen, n, chars = set(), 0, 0
    for p in parts:
        if p in seen:
            n += 1
            chars += len(p)
        else:
            seen.add(p)
    return n, chars


def _ngram_hashes(ids: np.ndarray, n: int, prev: np.ndarray | None) -> np.ndarray:
    """uint64 [len - n + 1] hash of each n-gram, from the (n-1)-gram hashes."""
    if prev is None:  # n == 1
        return ids.copy()
    with np.errstate(over="ignore"):
        return prev[: len(ids) - n + 1] * _MULT + ids[n - 1:] + np.uint64(n)


def _top_ngram_chars(h: np.ndarray, chars: np.ndarray) -> int:
    """len(most frequent n-gram) x its count; ties go to the n-gram seen first (Counter.most_common)."""
    _, first, counts = np.unique(h, return_index=True, return_counts=True)
    best = first[counts == counts.max()].min()
    return int(chars[best]) * int(counts.max())


def _repeated_ngram_chars(h: np.ndarray, chars: np.ndarray, n: int) -> int:
    """Characters in n-grams equal to an earlier one, scanning left to right and jumping n words
    past each repeat. Only hashes that occur twice can repeat, so only their positions are visited."""
    _, inverse, counts = np.unique(h, return_inverse=True, return_counts=True)
    candidates = np.flatnonzero(counts[inverse] > 1)
    if not len(candidates):
        return 0
    seen, resume, total = set(), 0, 0
    hashes, lengths = h.tolist(), chars.tolist()
    for pos in candidates.tolist():
        if pos < resume:
            continue
        if hashes[pos] in seen:
            total += lengths[pos]
            resume = pos + n
        else:
            seen.add(hashes[pos])
    return total


def repetition_signals(text: str, words: Sequence[str] | None = None,
                       cfg: "RepetitionConfig | None" = None) -> dict[str, float]:
    """Every fraction of the module table, for the n-gram sizes of `cfg` (default: the paper's)."""
    cfg = cfg or RepetitionConfig()
    n_chars = max(len(text), 1)
    paragraphs = _PARAGRAPHS.split(text.strip())
    para_dups, para_chars = _duplicates(paragraphs)
    lines = _LINES.split(text)
    line_dups, line_chars = _duplicates(lines)
    s = {"dup_para_frac": para_dups / len(paragraphs), "dup_para_char_frac": para_chars / n_chars,
         "dup_line_frac": line_dups / len(lines), "dup_line_char_frac": line_chars / n_chars}
    words = words_lib.split_words(text) if words is None else words
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words), start=1)}
    ids = np.array(list(map(vocab.__getitem__, words)), dtype=np.uint64)
    lens = np.array(list(map(len, words)), dtype=np.int64)
    csum = np.concatenate([[0], np.cumsum(lens)])
    sizes = sorted({n for n, _ in cfg.top_n_grams} | {n for n, _ in cfg.dup_n_grams})
    hashes, prev = {}, None
    for n in range(1, (sizes[-1] if sizes else 0) + 1):
        if len(words) < n:
            break
        prev = hashes[n] = _ngram_hashes(ids, n, prev)
    for n, _ in cfg.top_n_grams:
        if n in hashes:
            chars = csum[n:] - csum[:-n] + (n - 1)  # words joined by single spaces
            s[f"top_{n}_gram"] = _top_ngram_chars(hashes[n], chars) / n_chars
        else:
            s[f"top_{n}_gram"] = 0.0
    for n, _ in cfg.dup_n_grams:
        if n in hashes:
            s[f"duplicated_{n}_n_grams"] = _repeated_ngram_chars(hashes[n], csum[n:] - csum[:-n], n) / n_chars
        else:
            s[f"duplicated_{n}_n_grams"] = 0.0
    return s


def repetition_verdict(s: dict[str, float], cfg: RepetitionConfig) -> tuple[str, float] | None:
    """The first rule the signals fail, as (reason, value), or None to keep (DataTrove's order and names)."""
    rules = [("dup_para_frac", cfg.dup_para_frac), ("dup_para_char_frac", cfg.dup_para_char_frac),
             ("dup_line_frac", cfg.dup_line_frac), ("dup_line_char_frac", cfg.dup_line_char_frac)]
    rules += [(f"top_{n}_gram", t) for n, t in cfg.top_n_grams]
    rules += [(f"duplicated_{n}_n_grams", t) for n, t in cfg.dup_n_grams]
    for name, threshold in rules:
        if threshold and s[name] > threshold:
            return name, s[name]
    return None
