"""MMLU scoring and aggregation, as lm-evaluation-harness reports it.

Per question the prediction is the argmax over the choices' summed log-likelihoods
of ` A`..` D` (ties go to the first, like `np.argmax`). Accuracy is reported per
subject, per category (lm-eval's subject -> category mapping below), overall as a
micro-average (weighted by question count, lm-eval's `weight_by_size: true`) and a
macro-average over subjects, each with a standard error (see `stats.py`).

Example per-question record (what `aggregate` takes):
    {"subject": "anatomy", "loglikelihoods": [-1.2, -0.3, -2.0, -1.9], "label": 1}
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


def _group(name_to_correct: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        name: {"acc": float(np.mean(c)), "acc_stderr": stats.mean_stderr(c), "n": len(c)}
        for name, c in sorted(name_to_correct.items())
    }


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy per subject and category, and overall micro/macro averages with stderrs."""
    per_subject: dict[str, list[float]] = {}
    for r in records:
        correct = float(predict(r["loglikelihoods"]) == int(r["label"]))
        per_subject.setdefault(r["subject"], []).append(correct)
    if not per_subject:
        raise ValueError("no MMLU records to aggregate")
    subjects = _group(per_subject)
    categories: dict[str, dict[str, float]] = {}
    for cat in CATEGORIES:
        members = [subjects[s] for s in subjects if category_of(s) == cat]
        if not members:
            continue
        n = sum(m["n"] for m in members)
        categories[cat] = {
            "acc": sum(m["acc"] * m["n"] for m in members) / n,
            "acc_stderr": stats.pooled_stderr([m["acc_stderr"] for m in members],
                                              [m["n"] for m in members]),
            "n": n,
            "num_subjects": len(members),
        }
    all_members = list(subjects.values())
    n_total = sum(m["n"] for m in all_members)
    overall = {
        "acc": sum(m["acc"] * m["n"] for m in all_members) / n_total,
        "acc_stderr": stats.pooled_stderr([m["acc_stderr"] for m in all_members],
                                          [m["n"] for m in all_members]),
        "acc_macro": float(np.mean([m["acc"] for m in all_members])),
        "acc_macro_stderr": stats.macro_stderr([m["acc_stderr"] for m in all_members]),
        "n": n_total,
        "num_subjects": len(all_members),
    }
    return {"overall": overall, "categories": categories, "subjects": subjects}
