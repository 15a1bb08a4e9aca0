"""Held-out text eval inputs: cached text-task documents and plain-text files."""
from __future__ import annotations

from typing import Any, Sequence

import gin

from pipelines import fs
from tasks.eval_tokens import tokenizer


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

    if any(cache_dirs):
        seqio.add_global_cache_dirs([d for d in cache_dirs if d])
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
        text = fs.read_text(path)  # local or gs:// / s3://
        start, k = 0, 0
        while start < len(text):
            end = min(len(text), start + chunk_chars)
            nl = text.rfind("\n", start + chunk_chars // 2, end) if end < len(text) else -1
            end = nl + 1 if nl > 0 else end
            piece = text[start:end]
            if piece.strip():
                out.append({"sample_id": f"{fs.basename(path)}#{k}", "text": piece,
                            "token_ids": encode(piece)})
                k += 1
            start = end
    out = out[skip_documents:]
    return out[:max_documents] if max_documents else out
