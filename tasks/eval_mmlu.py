"""MMLU eval inputs: the `mmlu_{k}shot_{subject}` examples with lm-eval pair encoding.

Example record:
    {"sample_id": "anatomy/0", "subject": "anatomy", "label": 1, "doc": "<CSV row json>",
     "prompt": "The following are ...\\nAnswer:", "choices": [" A", " B", " C", " D"],
     "context_ids": [...], "continuation_ids": [[...], [...], [...], [...]]}
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import gin

from tasks import mmlu as mmlu_lib
from tasks.eval_tokens import _vocab, encode_pair


@gin.configurable(module="eval_inputs")
def mmlu_inputs(split: str = "test", num_shots: int = 5,
                data_dir: str | os.PathLike | None = None,
                subjects: Sequence[str] | None = None, max_per_subject: int | None = None,
                vocab_path: str | None = None, via_seqio: bool = False,
                exact_pairs: bool = False) -> list[dict[str, Any]]:
    """MMLU questions with lm-eval pair encoding of the prompt and each choice.

    The examples are those of the registered SeqIO tasks `mmlu_{k}shot_{subject}`.
    `via_seqio=True` reads them through `task.get_dataset` (and checks the context ids
    equal the task's tokenized `inputs`); the default calls the same generator the
    tasks wrap (`tasks.mmlu.examples`) and skips tf.data, which is ~10x faster for the
    full test split. `tests/test_mmlu.py` checks both give the same records.
    `exact_pairs=True` runs lm-eval's `encode_pair` for every choice (slow: it encodes
    the whole prompt once per choice); otherwise only for each subject's first question.
    """
    data_dir = data_dir if data_dir is not None else mmlu_lib.default_data_dir()
    available = mmlu_lib.subjects(data_dir, split)
    if not available:
        raise FileNotFoundError(f"no MMLU {split} files under {data_dir} "
                                "(expected <data_dir>/<split>/<subject>_<split>.csv)")
    chosen = list(subjects) if subjects else available
    unknown = sorted(set(chosen) - set(available))
    if unknown:
        raise ValueError(f"MMLU subjects {unknown} have no {split} file under {data_dir}; "
                         f"available: {available}")
    sp = _vocab(vocab_path).tokenizer
    records, exact = [], exact_pairs
    for subject in chosen:
        for j, ex in enumerate(_mmlu_examples(data_dir, split, subject, num_shots,
                                              max_per_subject, vocab_path, via_seqio)):
            slow = exact or j == 0 or ex["inputs"] != ex["inputs"].rstrip()
            pairs = [encode_pair(sp.encode_as_ids, ex["inputs"], c) if slow
                     else (None, sp.encode_as_ids(c)) for c in ex["choices"]]
            if slow:
                context_ids = pairs[0][0]
                # Our vocabulary splits at whitespace and adds no dummy prefix, so a
                # continuation starting with a space tokenizes on its own; checked
                # here on each subject's first question (and on many in the tests).
                choice_ids = {c: p[1] for c, p in zip(ex["choices"], pairs)}
                if any(sp.encode_as_ids(c) != choice_ids[c] for c in ex["choices"]):
                    exact = True
            else:
                context_ids = sp.encode_as_ids(ex["inputs"])
            if "inputs_ids" in ex and list(context_ids) != ex["inputs_ids"]:
                raise AssertionError(f"{subject}/{ex['index']}: context ids differ from the "
                                     "SeqIO task's tokenized `inputs`")
            records.append({
                "sample_id": f"{subject}/{ex['index']}",
                "subject": subject, "label": ex["label"], "doc": ex["doc"],
                "prompt": ex["inputs"], "choices": ex["choices"], "target": ex["targets"],
                "context_ids": context_ids, "continuation_ids": [p[1] for p in pairs],
                "num_shots": num_shots, "doc_id": ex["index"], "split": split,
            })
    return records


def _mmlu_examples(data_dir, split, subject, num_shots, limit, vocab_path, via_seqio):
    if not via_seqio:
        for i, ex in enumerate(mmlu_lib.examples(data_dir, split, subject, num_shots)):
            if limit is not None and i >= limit:
                return
            yield ex
        return
    import seqio

    mmlu_lib.register(str(data_dir), vocab_path, (num_shots,))
    task = seqio.get_mixture_or_task(mmlu_lib.task_name(subject, num_shots))
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False,
                          trim_output_features=False)
    if limit is not None:
        ds = ds.take(limit)
    for ex in ds.as_numpy_iterator():
        yield {"inputs": ex["inputs_pretokenized"].decode("utf-8"),
               "targets": ex["targets_pretokenized"].decode("utf-8"),
               "subject": ex["subject"].decode("utf-8"), "label": int(ex["label"]),
               "index": int(ex["index"]), "doc": ex["doc"].decode("utf-8"),
               "choices": [c.decode("utf-8") for c in ex["choices"]],
               "inputs_ids": [int(t) for t in ex["inputs"]]}
