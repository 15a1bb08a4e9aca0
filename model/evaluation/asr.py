"""Speech recognition scoring: WER (and CER) with jiwer on Whisper-normalised text.

Both reference and hypothesis go through whisper_normalizer's `EnglishTextNormalizer`
(the maintained port of Whisper's normaliser: lower-case, spelled-out numbers to
digits, British to American spelling, punctuation dropped) for English, or its
`BasicTextNormalizer` for other languages. Corpus WER is total edits over total
reference words (jiwer over the whole list, not a mean of per-utterance WERs).
CER (`unit="char"`) is the option for languages written without spaces.

Example:
    score_corpus(["He said ten."], ["he said 10"])["wer"] == 0.0
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jiwer


@functools.cache
def normalizer(language: str = "en") -> Callable[[str], str]:
    """Whisper's English normaliser for "en", its basic (language-neutral) one otherwise
    (e.g. "basic": lower-case, punctuation dropped, numbers left as written)."""
    if language == "en":
        from whisper_normalizer.english import EnglishTextNormalizer
        return EnglishTextNormalizer()
    from whisper_normalizer.basic import BasicTextNormalizer
    return BasicTextNormalizer()


def _process(references: Sequence[str] | str, hypotheses: Sequence[str] | str, unit: str):
    if unit == "word":
        return jiwer.process_words(references, hypotheses)
    if unit == "char":
        return jiwer.process_characters(references, hypotheses)
    raise ValueError(f"unit must be 'word' (WER) or 'char' (CER), got {unit!r}")


def score_corpus(references: Sequence[str], hypotheses: Sequence[str], *,
                 language: str = "en", unit: str = "word") -> dict[str, Any]:
    """Corpus-level error rate with S/D/I counts, plus per-utterance results.

    Returns {"wer" (or "cer"), "substitutions", "deletions", "insertions", "hits",
    "reference_units", "n", "per_utterance": [{"reference_norm", "hypothesis_norm",
    "wer"/"cer", "substitutions", "deletions", "insertions", "reference_units"}]}.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no utterances to score")
    norm = normalizer(language)
    refs = [norm(r).strip() for r in references]
    hyps = [norm(h).strip() for h in hypotheses]
    key = "wer" if unit == "word" else "cer"
    total = _process(refs, hyps, unit)
    per_utt = []
    for r, h in zip(refs, hyps):
        o = _process(r, h, unit)
        n_ref = o.hits + o.substitutions + o.deletions
        per_utt.append({
            "reference_norm": r, "hypothesis_norm": h,
            key: (o.substitutions + o.deletions + o.insertions) / n_ref if n_ref else None,
            "substitutions": o.substitutions, "deletions": o.deletions,
            "insertions": o.insertions, "reference_units": n_ref,
        })
    n_ref_total = total.hits + total.substitutions + total.deletions
    return {
        key: getattr(total, key),
        "substitutions": total.substitutions, "deletions": total.deletions,
        "insertions": total.insertions, "hits": total.hits,
        "reference_units": n_ref_total, "n": len(refs),
        "per_utterance": per_utt,
    }
