"""What the evaluation needs from the data side, as gin-configurable functions.

`model/eval.py` never imports this module (model/ must not import tasks/ or SeqIO);
a gin file does, and binds these functions into the eval suites:

    import tasks.eval_inputs
    MMLUSuite.inputs_fn = @eval_inputs.mmlu_inputs
    eval_inputs.mmlu_inputs.num_shots = 5

Every function returns plain Python / numpy records. Token ids come from the
project vocabulary (`tasks/vocabulary.py`).

Example MMLU record:
    {"sample_id": "anatomy/0", "subject": "anatomy", "label": 1, "doc": "<CSV row json>",
     "prompt": "The following are ...\\nAnswer:", "choices": [" A", " B", " C", " D"],
     "context_ids": [...], "continuation_ids": [[...], [...], [...], [...]]}
"""
from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Sequence

import gin

from tasks import mmlu as mmlu_lib


def _vocab(vocab_path: str | None):
    from tasks import vocabulary
    return vocabulary.get_vocabulary(*([vocab_path] if vocab_path else []))


def encode_pair(encode: Callable[[str], list[int]], context: str,
                continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's `_encode_pair`: trailing spaces of the context move to the
    continuation; the continuation ids are those of (context + continuation) past
    the context's ids, so the split matches how the joined text tokenizes."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = encode(context + continuation)
    ctx = encode(context)
    return ctx, whole[len(ctx):]


@gin.configurable(module="eval_inputs")
def tokenizer(vocab_path: str | None = None) -> Callable[[str], list[int]]:
    """str -> token ids (no EOS) with the project vocabulary."""
    vocab = _vocab(vocab_path)
    return lambda text: list(vocab.encode(text))


@gin.configurable(module="eval_inputs")
def detokenizer(vocab_path: str | None = None) -> Callable[[Sequence[int]], str]:
    """token ids -> str with the project vocabulary (ids after EOS are dropped)."""
    vocab = _vocab(vocab_path)
    return lambda ids: vocab.decode([int(i) for i in ids])


@gin.configurable(module="eval_inputs")
def mmlu_inputs(split: str = "test", num_shots: int = 5,
                data_dir: str | os.PathLike = mmlu_lib.DEFAULT_DATA_DIR,
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
                "num_shots": num_shots,
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


@gin.configurable(module="eval_inputs")
def text_documents(task_name: str = "tapestry_text", split: str = "validation",
                   cache_dirs: Sequence[str] = (), max_documents: int | None = None,
                   vocab_path: str | None = None) -> list[dict[str, Any]]:
    """Held-out documents of a cached text task: {"sample_id", "text", "token_ids"}.

    Reads the task's offline cache as written (before post-cache splitting into
    rows), so each record is one cached document chunk with its exact text; bytes for
    bits-per-byte are counted on that text.
    """
    import seqio

    import tasks.text  # noqa: F401  (registers the text tasks)

    if cache_dirs:
        seqio.add_global_cache_dirs(list(cache_dirs))
    task = seqio.get_mixture_or_task(task_name)
    if not task.cache_dir:
        raise FileNotFoundError(
            f"task {task_name!r} has no cache in {seqio.get_global_cache_dirs()}; build it "
            "with `python -m pipelines.preprocess_text ...` and pass its dir as cache_dirs")
    ds = task._get_cached_source(split).get_dataset(split=split, shuffle=False)  # pylint: disable=protected-access
    if max_documents:
        ds = ds.take(max_documents)
    out = []
    for i, ex in enumerate(ds.as_numpy_iterator()):
        text = ex["targets_pretokenized"].decode("utf-8")
        sid = ex["source_id"].decode("utf-8") if "source_id" in ex else str(i)
        out.append({"sample_id": sid, "text": text,
                    "token_ids": [int(t) for t in ex["targets"]]})
    del vocab_path
    return out


@gin.configurable(module="eval_inputs")
def text_files(paths: Sequence[str] = gin.REQUIRED, chunk_chars: int = 4000,
               max_documents: int | None = None, skip_documents: int = 0,
               vocab_path: str | None = None) -> list[dict[str, Any]]:
    """Plain-text files cut into documents of about `chunk_chars` characters (at a line
    break), tokenized: {"sample_id": "<file>#<k>", "text", "token_ids"}. For long-context
    NLL-by-position and for data without a cache."""
    encode = tokenizer(vocab_path)
    out: list[dict[str, Any]] = []
    for path in paths:
        text = pathlib.Path(path).read_text(encoding="utf-8")
        start, k = 0, 0
        while start < len(text):
            end = min(len(text), start + chunk_chars)
            nl = text.rfind("\n", start + chunk_chars // 2, end) if end < len(text) else -1
            end = nl + 1 if nl > 0 else end
            piece = text[start:end]
            if piece.strip():
                out.append({"sample_id": f"{pathlib.Path(path).name}#{k}", "text": piece,
                            "token_ids": encode(piece)})
                k += 1
            start = end
    out = out[skip_documents:]
    return out[:max_documents] if max_documents else out
