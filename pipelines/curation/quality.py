"""Gopher quality filter (Rae et al. 2021, "Scaling Language Models", appendix A.1.1).

    signals = quality_signals(text)          # every measure below, from one word split
    quality_verdict(signals, QualityConfig())  # None (keep) or ("gopher_short_doc", 12)

A document is kept when (defaults: the paper's thresholds, each configurable; a
threshold of None turns its rule off):

    rule                          signal               keep when
    gopher_short_doc/long_doc     words                50 <= words <= 100,000 (symbol-only words not counted)
    gopher_below/above_avg...     mean_word_length     3 <= mean length of those words <= 10
    gopher_too_many_hashes        hash_ratio           count("#") / all words <= 0.1
    gopher_too_many_ellipsis      ellipsis_ratio       count("..." and "…") / all words <= 0.1
    gopher_too_many_bullets       bullet_lines         lines starting with "•" or "-" <= 90%
    gopher_too_many_end_ellipsis  ellipsis_lines       lines ending with "..." or "…" <= 30%
    gopher_below_alpha_threshold  alpha_words          words with a letter >= 80% of all words
    gopher_enough_stop_words      stop_words           >= 2 distinct of {the, be, to, of, and, that, have, with}

Words are spaCy's English tokens (words.py), so the counts, the order of the rules
(the first failing one names the reason) and the reason names are DataTrove
0.10.1's `GopherQualityFilter`'s: its rejects and ours can be compared line by line.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from pipelines.curation import words as words_lib

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3
    max_mean_word_length: float | None = 10
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines: float | None = 0.9
    max_ellipsis_lines: float | None = 0.3
    min_alpha_words: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: tuple[str, ...] = STOP_WORDS


_WORD_STATS: dict[str, tuple[bool, int, bool]] = {}  # word -> (symbol only, length, has a letter)


def _word_stats(word: str) -> tuple[bool, int, bool]:
    stats = _WORD_STATS.get(word)
    if stats is None:
        if len(_WORD_STATS) > 1 << 20:
            _WORD_STATS.clear()
        stats = _WORD_STATS[word] = (words_lib.is_symbol_word(word), len(word), any(c.isalpha() for c in word))
    return stats


def quality_signals(text: str, words: Sequence[str] | None = None,
                    stop_words: Sequence[str] = STOP_WORDS) -> dict[str, float]:
    """Every measure the rules read (see the module table); `words` defaults to split_words(text)."""
    words = words_lib.split_words(text) if words is None else words
    n_all = len(words)
    n_words = letters = length = 0
    for w in words:
        symbol, n, alpha = _word_stats(w)
        if not symbol:
            n_words += 1
            length += n
        letters += alpha
    lines = text.splitlines()
    n_lines = max(len(lines), 1)
    bullets = sum(s.lstrip().startswith(("•", "-")) for s in lines)
    end_ellipsis = sum(s.rstrip().endswith(("...", "…")) for s in lines)
    return {
        "words": n_words,
        "mean_word_length": length / n_words if n_words else 0.0,
        "hash_ratio": text.count("#") / n_all if n_all else 0.0,
        "ellipsis_ratio": (text.count("...") + text.count("…")) / n_all if n_all else 0.0,
        "bullet_lines": bullets / n_lines,
        "ellipsis_lines": end_ellipsis / n_lines,
        "alpha_words": letters / n_all if n_all else 0.0,
        "stop_words": len(set(stop_words).intersection(words)),
    }


def quality_verdict(s: dict[str, float], cfg: QualityConfig) -> tuple[str, float] | None:
    """The first rule the signals fail, as (reason, value), or None to keep (DataTrove's order and names)."""
    checks = (
        ("gopher_short_doc", "words", cfg.min_words, lambda v, t: v < t),
        ("gopher_long_doc", "words", cfg.max_words, lambda v, t: v > t),
        ("gopher_below_avg_threshold", "mean_word_length", cfg.min_mean_word_length, lambda v, t: v < t),
        ("gopher_above_avg_threshold", "mean_word_length", cfg.max_mean_word_length, lambda v, t: v > t),
        ("gopher_too_many_hashes", "hash_ratio", cfg.max_symbol_word_ratio, lambda v, t: v > t),
        ("gopher_too_many_ellipsis", "ellipsis_ratio", cfg.max_symbol_word_ratio, lambda v, t: v > t),
        ("gopher_too_many_bullets", "bullet_lines", cfg.max_bullet_lines, lambda v, t: v > t),
        ("gopher_too_many_end_ellipsis", "ellipsis_lines", cfg.max_ellipsis_lines, lambda v, t: v > t),
        ("gopher_below_alpha_threshold", "alpha_words", cfg.min_alpha_words, lambda v, t: v < t),
        ("gopher_enough_stop_words", "stop_words", cfg.min_stop_words, lambda v, t: v < t),
    )
    for reason, signal, threshold, fails in checks:
        if threshold and fails(s[signal], threshold):  # 0/None disables a rule, as in DataTrove
            return reason, s[signal]
    return None
