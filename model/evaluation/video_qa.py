"""Video QA scoring: multiple choice (NExT-QA style) and open-ended (ActivityNet-QA).

Multiple choice: options are lettered A, B, C, ...; the chosen option is parsed from
the model output by fixed rules (`parse_choice`: a lone letter, a letter after
"answer is", or an option's exact text), and an output with no parseable choice is
wrong (never a random guess). Open-ended: exact match after
`normalize_answer` (lower-case, punctuation and articles dropped, whitespace
collapsed), reported overall and per question type.

Example:
    parse_choice(" (B) the dog", num_choices=5) == 1
    parse_choice("the answer is b", num_choices=5) == 1
    parse_choice("A dog is running", num_choices=5) is None   # the article, not choice A
    parse_choice("I am not sure", num_choices=5) is None
"""
from __future__ import annotations

import re
import string
from typing import Any, Iterable, Mapping

import numpy as np

from model.evaluation import stats

LETTERS = string.ascii_uppercase

# NExT-QA `type` codes: C* causal, T* temporal, D* descriptive.
NEXTQA_TYPE_GROUPS = {"C": "causal", "T": "temporal", "D": "descriptive"}
# ActivityNet-QA answer `type` codes (dataset README).
ACTIVITYNET_TYPES = {
    0: "motion", 1: "spatial_relation", 2: "temporal_relation", 3: "yes_no",
    4: "color", 5: "object", 6: "location", 7: "number", 8: "other",
}
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def letter_choices_prompt(question: str, options: list[str]) -> str:
    """`question\\nA. opt\\nB. opt...\\nAnswer:` (the prompt the MC loaders send)."""
    lines = [question] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\nAnswer:"


# "answer is", "answer:", "the correct option is", "choice", ... : a letter may follow.
_ANSWER_PHRASE = re.compile(
    r"\b(?:answer|option|choice)s?(?:\s+(?:is|would be|should be|must be|=))?\s*[:\-]?\s*",
    re.IGNORECASE)
_ONE_LETTER_WORDS = frozenset("ai")  # "a dog", "I think": words, not choice letters
_AFTER_LETTER = ".):,;!?"


def _letter_at(text: str, pos: int, valid: str, sentence_start: bool) -> int | None:
    """The choice letter standing alone at `text[pos:]`, or None.

    A letter stands alone when parenthesised (`(b)`), or followed by the end, by one of
    `.):,;!?`, or by a space. Before a space, "a"/"i" (either case at a sentence start,
    lower-case elsewhere) are the English words, not choices: "A dog runs", "a cat".
    """
    rest = text[pos:]
    m = re.match(r"\(([A-Za-z])\)", rest)
    if m:
        letter = m.group(1).upper()
        return valid.index(letter) if letter in valid else None
    m = re.match(r"([A-Za-z])(?=$|[\s" + re.escape(_AFTER_LETTER) + "])", rest)
    if not m or m.group(1).upper() not in valid:
        return None
    letter = m.group(1)
    followed_by_word = re.match(r"\s+\w", rest[1:]) is not None
    if followed_by_word and letter.lower() in _ONE_LETTER_WORDS and (
            sentence_start or letter.islower()):
        return None
    return valid.index(letter.upper())


def parse_choice(output: str, num_choices: int, options: list[str] | None = None) -> int | None:
    """Index of the chosen option in a free-text `output`, or None when none can be parsed.

    Rules, first match wins (letters of either case, `_letter_at` decides when a letter
    stands alone):
    (1) the output starts with a lone letter: `"(b) dog"` (pipelines/mm_readers.read_nextqa's
        format), `"B"`, `"b."`, `"C) dog"`, `"D: none"`; but `"A dog is running"` and
        `"a cat"` start with the article, not choice A;
    (2) a letter right after "answer is" / "answer:" / "option" / "choice" anywhere:
        `"the answer is b"`, `"I think the correct answer is (C)."`;
    (3) the output equals exactly one option's text after `normalize_answer`
        (`"A dog is running"` for the option "a dog is running").
    Surrounding quotes, asterisks and backticks are ignored.
    """
    valid = LETTERS[:num_choices]
    text = output.strip().strip("*_`\"'").strip()
    idx = _letter_at(text, 0, valid, sentence_start=True)
    if idx is not None:
        return idx
    for m in _ANSWER_PHRASE.finditer(text):
        idx = _letter_at(text, m.end(), valid, sentence_start=False)
        if idx is not None:
            return idx
    if options:
        norm = normalize_answer(text)
        hits = [i for i, o in enumerate(options) if normalize_answer(o) == norm]
        if len(hits) == 1:
            return hits[0]
    return None


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and articles, collapse whitespace."""
    text = _PUNCT.sub(" ", text.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _accuracy_table(groups: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    return {k: {"acc": float(np.mean(v)), "acc_stderr": stats.mean_stderr(v), "n": len(v)}
            for k, v in sorted(groups.items())}


def score_multiple_choice(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """records: {"output", "label" (int), "options" (list), "type" (e.g. "CW")}.

    Returns overall accuracy, unparseable fraction, per type and per type group,
    and `per_sample` [{"prediction", "correct"}] in input order.
    """
    per_sample, by_type, by_group, correct_all = [], {}, {}, []
    for r in records:
        pred = parse_choice(r["output"], len(r["options"]), r["options"])
        ok = float(pred is not None and pred == int(r["label"]))
        per_sample.append({"prediction": pred, "correct": ok})
        correct_all.append(ok)
        qtype = str(r.get("type", ""))
        by_type.setdefault(qtype, []).append(ok)
        by_group.setdefault(NEXTQA_TYPE_GROUPS.get(qtype[:1], "other"), []).append(ok)
    if not correct_all:
        raise ValueError("no multiple-choice records to score")
    return {
        "acc": float(np.mean(correct_all)), "acc_stderr": stats.mean_stderr(correct_all),
        "n": len(correct_all),
        "unparseable": float(np.mean([p["prediction"] is None for p in per_sample])),
        "per_type": _accuracy_table(by_type), "per_type_group": _accuracy_table(by_group),
        "per_sample": per_sample,
    }


def score_open_ended(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """records: {"output", "answer", "type" (ActivityNet code or name)} -> exact match."""
    per_sample, by_type, correct_all = [], {}, []
    for r in records:
        ok = float(normalize_answer(r["output"]) == normalize_answer(r["answer"]))
        per_sample.append({"correct": ok})
        correct_all.append(ok)
        t = r.get("type", "")
        name = ACTIVITYNET_TYPES.get(t, str(t)) if isinstance(t, int) else str(t)
        by_type.setdefault(name, []).append(ok)
    if not correct_all:
        raise ValueError("no open-ended records to score")
    return {
        "exact_match": float(np.mean(correct_all)),
        "exact_match_stderr": stats.mean_stderr(correct_all), "n": len(correct_all),
        "per_type": {k: {"exact_match": v["acc"], "exact_match_stderr": v["acc_stderr"],
                         "n": v["n"]} for k, v in _accuracy_table(by_type).items()},
        "per_sample": per_sample,
    }
