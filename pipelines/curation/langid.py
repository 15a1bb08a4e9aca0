"""Language identification with a model that ships inside its PyPI package (nothing downloaded).

    LanguageIdentifier().identify(text)   # ("en", 0.99)

py3langid 0.4.0 (a maintained fork of langid.py, Lui & Baldwin 2012) carries its
naive Bayes model over byte n-grams for 97 languages in the wheel. Documents are
judged on their first `max_chars` characters (long books cost the same as a page);
the probability is the normalised posterior of the best language. A document is
kept when its language is in the configured list (default: English) and, when set,
its probability reaches `min_probability`.
"""

from __future__ import annotations

import dataclasses

MAX_CHARS = 4000


@dataclasses.dataclass(frozen=True)
class LangIdConfig:
    languages: tuple[str, ...] = ("en",)
    min_probability: float = 0.0
    max_chars: int = MAX_CHARS


class LanguageIdentifier:
    """Loads py3langid's packaged model on first use (in a Beam DoFn: setup)."""

    def __init__(self):
        self._model = None

    def identify(self, text: str, max_chars: int = MAX_CHARS) -> tuple[str, float]:
        if self._model is None:
            from py3langid.langid import MODEL_FILE, LanguageIdentifier as _Model  # noqa: PLC0415 (heavy: lazily)
            self._model = _Model.from_model_file(MODEL_FILE, norm_probs=True)
        lang, prob = self._model.classify(text[:max_chars])
        return lang, float(prob)


def language_verdict(lang: str, prob: float, cfg: LangIdConfig) -> tuple[str, float] | None:
    """("language_<lang>", probability) when the document is not in a kept language, else None."""
    if lang not in cfg.languages:
        return f"language_{lang}", prob
    if prob < cfg.min_probability:
        return "language_low_confidence", prob
    return None
