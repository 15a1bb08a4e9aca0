"""What an lm-evaluation-harness (0.4.x) user expects of our report: its results schema,
its per-sample hashes, its `--limit`.

results.json holds, beside our own `meta` and `tasks`, lm-eval's top-level keys, so
`lm_eval.utils.make_table(json.load(...))` and other readers of lm-eval output work:

    "results":          {task or group: {"alias", "name", "sample_len", "acc,none",
                         "acc_stderr,none", "acc_norm,none", ...}}   (metric,filter keys)
    "groups":           {group: same as its "results" entry (with "sample_count")}
    "group_subtasks":   {"mmlu": ["mmlu_stem", ...], "mmlu_stem": ["mmlu_anatomy", ...]}
    "configs":          {task: the task config (template, splits, num_fewshot, metric_list)}
    "versions":         {task: 1.0, group: "2"}          (lm-eval's mmlu task/group versions)
    "n-shot":           {task or group: k}
    "higher_is_better": {task or group: {"acc": true, ...}}
    "n-samples":        {task: {"original": docs in the split, "effective": docs scored}}
    "config":           {"model": "tapestry", "model_args", "batch_size", "limit", ...}

MMLU is reported as lm-eval's `mmlu` group: tasks `<suite>_<subject>` (e.g.
`mmlu_anatomy`), category groups `<suite>_stem` / `_humanities` / `_social_sciences` /
`_other`, size-weighted means with pooled stderrs (lm-eval's `weight_by_size: True`).
Every other suite is one task named after it.

Hashes (lm_eval/evaluator.py, `log_samples`): `doc_hash` = SHA-256 of
`json.dumps(doc, indent=2, default=handle_non_serializable, ensure_ascii=False)`,
`prompt_hash` = SHA-256 of the first request's context string, `target_hash` =
SHA-256 of `str(doc_to_target(doc))`. For MMLU the doc is the CSV row as lm-eval's
CSV task reads it (`{"question", "A", "B", "C", "D", "answer"}` in that order) and
the target its answer letter, so the same document hashes alike in both.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Mapping, Sequence

import numpy as np

FILTER = "none"  # lm-eval's filter name when a task defines no filters
MMLU_TASK_VERSION = 1.0  # lm_eval/tasks/mmlu/default/_default_template_yaml
MMLU_GROUP_VERSION = "2"  # its _mmlu*.yaml groups (lm-eval writes group versions as strings)
MMLU_GROUP_ALIASES = {"stem": "stem", "humanities": "humanities",
                      "social_sciences": "social sciences", "other": "other"}
# The template of lm-eval's mmlu task over the CSV columns (the README's offline config).
MMLU_DOC_TO_TEXT = ("{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\nAnswer:")
TOP_LEVEL_KEYS = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot",
                  "higher_is_better", "n-samples")


# ------------------------------------------------------------------ per-sample hashes
def hash_string(text: str) -> str:
    """lm_eval.utils.hash_string: SHA-256 hex of the UTF-8 text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def handle_non_serializable(o: Any) -> Any:
    """lm_eval.utils.handle_non_serializable (json.dumps `default=`)."""
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, set):
        return list(o)
    return str(o)


def doc_hash(doc: Any) -> str:
    return hash_string(json.dumps(doc, indent=2, default=handle_non_serializable,
                                  ensure_ascii=False))


def sample_hashes(doc: Any, prompt: str, target: Any) -> dict[str, str]:
    """`doc_hash`, `prompt_hash`, `target_hash` exactly as lm-eval's evaluator logs them."""
    return {"doc_hash": doc_hash(doc), "prompt_hash": hash_string(prompt),
            "target_hash": hash_string(str(target))}


# ------------------------------------------------------------------ --limit
def sample_size(num_docs: int, limit: int | float | None) -> int:
    """lm-eval's `get_sample_size`: a limit < 1 is a fraction of the docs (rounded up),
    otherwise a count; None keeps all."""
    if limit is None:
        return num_docs
    if limit <= 0:
        raise ValueError(f"limit must be positive (a count, or a fraction < 1), got {limit}")
    n = int(math.ceil(num_docs * limit)) if limit < 1.0 else int(limit)
    return min(n, num_docs)


def apply_limit(records: Sequence[Mapping[str, Any]], limit: int | float | None,
                task_of: Any = None) -> tuple[list[Mapping[str, Any]], dict[str, dict[str, int]]]:
    """The first `sample_size` records of each task (lm-eval scores a task's first docs),
    and lm-eval's `n-samples` {task: {"original", "effective"}}. `task_of(record)` names
    a record's task (default: one task, "")."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(task_of(r) if task_of else "", []).append(r)
    kept_ids, counts = set(), {}
    for task, rs in groups.items():
        n = sample_size(len(rs), limit)
        kept_ids.update(id(r) for r in rs[:n])
        counts[task] = {"original": len(rs), "effective": n}
    return [r for r in records if id(r) in kept_ids], counts


# ------------------------------------------------------------------ results schema
def _entry(name: str, alias: str, values: Mapping[str, Any], n: int) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "alias": alias, "sample_len": n}
    for metric, value in values.items():
        if metric.endswith("_stderr") and (value is None or value != value):
            value = "N/A"  # lm-eval's mark for a stderr it cannot give (n = 1)
        out[f"{metric},{FILTER}"] = value
    return out


def _metric_list(metrics: Sequence[str]) -> list[dict[str, Any]]:
    return [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in metrics]


def mmlu_document(suite: str, metrics: Mapping[str, Any], num_shots: int,
                  n_samples: Mapping[str, Mapping[str, int]], split: str = "test",
                  categories: Mapping[str, str] | None = None) -> dict[str, Any]:
    """lm-eval's layout of an MMLU run from `model.evaluation.mmlu.aggregate`'s metrics
    (`subjects`, `categories`, `overall`, each with acc/acc_norm and stderrs)."""
    names = ("acc", "acc_norm")
    hib = {m: True for m in names}

    def values(m: Mapping[str, Any]) -> dict[str, Any]:
        return {k: m[k] for n in names for k in (n, f"{n}_stderr") if k in m}

    doc: dict[str, Any] = {k: {} for k in TOP_LEVEL_KEYS}
    by_cat: dict[str, list[str]] = {}
    for subject, m in metrics["subjects"].items():
        task = f"{suite}_{subject}"
        cat = (categories or {}).get(subject, "other")
        by_cat.setdefault(cat, []).append(task)
        doc["results"][task] = _entry(task, subject, values(m), m["n"])
        doc["configs"][task] = {
            "task": task, "task_alias": subject, "tag": f"{suite}_{cat}_tasks",
            "dataset_path": "csv", "test_split": split, "fewshot_split": "dev",
            "fewshot_config": {"sampler": "first_n", "split": "dev"},
            "output_type": "multiple_choice", "doc_to_text": MMLU_DOC_TO_TEXT,
            "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "answer",
            "description": ("The following are multiple choice questions (with answers) "
                            f"about {subject.replace('_', ' ')}.\n\n"),
            "target_delimiter": " ", "fewshot_delimiter": "\n\n", "num_fewshot": num_shots,
            "metric_list": _metric_list(names), "repeats": 1,
            "metadata": {"version": MMLU_TASK_VERSION}}
        doc["versions"][task] = MMLU_TASK_VERSION
        doc["n-shot"][task] = num_shots
        doc["higher_is_better"][task] = hib
        if subject in n_samples:
            doc["n-samples"][task] = dict(n_samples[subject])
    groups = []
    for cat, m in metrics["categories"].items():
        group = f"{suite}_{cat}"
        groups.append(group)
        doc["group_subtasks"][group] = by_cat.get(cat, [])
        doc["results"][group] = _entry(group, MMLU_GROUP_ALIASES.get(cat, cat), values(m), m["n"])
    o = metrics["overall"]
    doc["results"][suite] = _entry(suite, suite, values(o), o["n"])
    doc["group_subtasks"][suite] = groups
    for group in groups + [suite]:
        entry = doc["results"][group]
        entry["sample_count"] = {f"{n},{FILTER}": entry["sample_len"] for n in names
                                 if f"{n},{FILTER}" in entry}
        doc["groups"][group] = entry
        doc["versions"][group] = MMLU_GROUP_VERSION
        doc["n-shot"][group] = num_shots
        doc["higher_is_better"][group] = hib
    return doc


def single_task_document(task: str, values: Mapping[str, Any], n: int, num_shots: int,
                         config: Mapping[str, Any], higher_is_better: Mapping[str, bool],
                         n_samples: Mapping[str, int] | None = None) -> dict[str, Any]:
    """lm-eval's layout of a suite reported as one task (`values`: metric -> value, with
    `<metric>_stderr` beside where there is one)."""
    return {
        "results": {task: _entry(task, task, values, n)},
        "groups": {}, "group_subtasks": {},
        "configs": {task: {"task": task, "num_fewshot": num_shots, **config,
                           "metric_list": [{"metric": m, "higher_is_better": b}
                                           for m, b in higher_is_better.items()],
                           "metadata": {"version": 1.0}}},
        "versions": {task: 1.0}, "n-shot": {task: num_shots},
        "higher_is_better": {task: dict(higher_is_better)},
        "n-samples": {task: dict(n_samples)} if n_samples else {},
    }


def merge(documents: Sequence[Mapping[str, Any]], run_config: Mapping[str, Any]
          ) -> dict[str, Any]:
    """One results dict in lm-eval's schema from the suites' documents, plus `config`."""
    out: dict[str, Any] = {k: {} for k in TOP_LEVEL_KEYS}
    for d in documents:
        for k in TOP_LEVEL_KEYS:
            out[k].update(d.get(k, {}))
    out["config"] = dict(run_config)
    return out
