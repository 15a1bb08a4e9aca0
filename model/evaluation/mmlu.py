"""MMLU scoring and aggregation, as lm-evaluation-harness reports it.

Per question the prediction is the argmax over the choices' summed log-likelihoods
of ` A`..` D` (ties go to the first, like `np.argmax`); `acc_norm` is lm-eval's: the
argmax of each log-likelihood divided by its choice's length in characters (the choice
as `doc_to_choice` gives it, "A", without the target delimiter " "), so for MMLU's
one-letter choices it equals `acc`, and differs where choices differ in length.
Accuracy is reported per
subject, per category (lm-eval's subject -> category mapping below), overall as a
micro-average (weighted by question count, lm-eval's `weight_by_size: true`) and a
macro-average over subjects, each with a standard error (see `stats.py`).

Example per-question record (what `aggregate` takes; `choices` as continuations):
    {"subject": "anatomy", "loglikelihoods": [-1.2, -0.3, -2.0, -1.9], "label": 1,
     "choices": [" A", " B", " C", " D"]}
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from model.evaluation import stats

CHOICE_LETTERS = ("A", "B", "C", "D")

# lm-evaluation-harness lm_eval/tasks/mmlu/_generate_configs.py (SUBJECTS).
SUBJECT_CATEGORIES: dict[str, str] = {
    "abstract_algebra": "stem", "anatomy": "stem", "astronomy": "stem",
    "business_ethics": "other", "clinical_knowledge": "other", "college_biology": "stem",
    "college_chemistry": "stem", "college_computer_science": "stem",
    "college_mathematics": "stem", "college_medicine": "other", "college_physics": "stem",
    "computer_security": "stem", "conceptual_physics": "stem",
    "econometrics": "social_sciences", "electrical_engineering": "stem",
    "elementary_mathematics": "stem", "formal_logic": "humanities", "global_facts": "other",
    "high_school_biology": "stem", "high_school_chemistry": "stem",
    "high_school_computer_science": "stem", "high_school_european_history": "humanities",
    "high_school_geography": "social_sciences",
    "high_school_government_and_politics": "social_sciences",
    "high_school_macroeconomics": "social_sciences", "high_school_mathematics": "stem",
    "high_school_microeconomics": "social_sciences", "high_school_physics": "stem",
    "high_school_psychology": "social_sciences", "high_school_statistics": "stem",
    "high_school_us_history": "humanities", "high_school_world_history": "humanities",
    "human_aging": "other", "human_sexuality": "social_sciences",
    "international_law": "humanities", "jurisprudence": "humanities",
    "logical_fallacies": "humanities", "machine_learning": "stem", "management": "other",
    "marketing": "other", "medical_genetics": "other", "miscellaneous": "other",
    "moral_disputes": "humanities", "moral_scenarios": "humanities", "nutrition": "other",
    "philosophy": "humanities", "prehistory": "humanities",
    "professional_accounting": "other", "professional_law": "humanities",
    "professional_medicine": "other", "professional_psychology": "social_sciences",
    "public_relations": "social_sciences", "security_studies": "social_sciences",
    "sociology": "social_sciences", "us_foreign_policy": "social_sciences",
    "virology": "other", "world_religions": "humanities",
}
CATEGORIES = ("stem", "humanities", "social_sciences", "other")


def category_of(subject: str) -> str:
    """lm-eval category of an MMLU subject; raises with the valid names when unknown."""
    try:
        return SUBJECT_CATEGORIES[subject]
    except KeyError:
        raise KeyError(
            f"unknown MMLU subject {subject!r}; expected one of lm-eval's 57 subjects, "
            f"e.g. {sorted(SUBJECT_CATEGORIES)[:3]}") from None


def predict(loglikelihoods: Sequence[float]) -> int:
    """Index of the most likely choice (first one on ties, as np.argmax)."""
    return int(np.argmax(np.asarray(loglikelihoods, dtype=np.float64)))


def predict_norm(loglikelihoods: Sequence[float], choices: Sequence[str],
                 target_delimiter: str = " ") -> int:
    """lm-eval's `acc_norm` prediction: argmax of log-likelihood / len(choice) in
    characters, the choice without the `target_delimiter` its continuation starts with."""
    lengths = np.array([float(len(c[len(target_delimiter):] if c.startswith(target_delimiter)
                                  else c)) for c in choices])
    return int(np.argmax(np.asarray(loglikelihoods, dtype=np.float64) / lengths))


def _group(name_to_correct: Mapping[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, by_metric in sorted(name_to_correct.items()):
        out[name] = {}
        for metric, c in by_metric.items():
            out[name] |= {metric: float(np.mean(c)), f"{metric}_stderr": stats.mean_stderr(c)}
        out[name]["n"] = len(by_metric["acc"])
    return out


def _pooled(members: list[dict[str, float]]) -> dict[str, float]:
    """Size-weighted mean and pooled stderr of each metric over `members`."""
    sizes = [m["n"] for m in members]
    out = {}
    for metric in ("acc", "acc_norm"):
        if all(metric in m for m in members):
            out[metric] = sum(m[metric] * m["n"] for m in members) / sum(sizes)
            out[f"{metric}_stderr"] = stats.pooled_stderr([m[f"{metric}_stderr"] for m in members],
                                                          sizes)
    return out


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy (and `acc_norm` where records carry `choices`) per subject and category,
    and overall micro/macro averages with stderrs."""
    per_subject: dict[str, dict[str, list[float]]] = {}
    for r in records:
        label = int(r["label"])
        got = per_subject.setdefault(r["subject"], {"acc": [], "acc_norm": []})
        got["acc"].append(float(predict(r["loglikelihoods"]) == label))
        if "choices" in r:
            got["acc_norm"].append(float(predict_norm(r["loglikelihoods"], r["choices"]) == label))
    if not per_subject:
        raise ValueError("no MMLU records to aggregate")
    for got in per_subject.values():
        if len(got["acc_norm"]) != len(got["acc"]):
            del got["acc_norm"]
    subjects = _group(per_subject)
    categories: dict[str, dict[str, float]] = {}
    for cat in CATEGORIES:
        members = [subjects[s] for s in subjects if category_of(s) == cat]
        if not members:
            continue
        categories[cat] = {**_pooled(members), "n": sum(m["n"] for m in members),
                           "num_subjects": len(members)}
    all_members = list(subjects.values())
    overall = {
        **_pooled(all_members),
        "acc_macro": float(np.mean([m["acc"] for m in all_members])),
        "acc_macro_stderr": stats.macro_stderr([m["acc_stderr"] for m in all_members]),
        "n": sum(m["n"] for m in all_members),
        "num_subjects": len(all_members),
    }
    return {"overall": overall, "categories": categories, "subjects": subjects}
