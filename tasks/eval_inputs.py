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

import dataclasses
import os
from typing import Any, Callable, Sequence

import gin
import numpy as np

from pipelines import fs
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


_MEDIA_KEYS = ("images", "image_mask", "audio", "audio_lengths", "videos", "video_lengths")


@gin.configurable(module="eval_inputs")
def multimodal_prompts(task_name: str = gin.REQUIRED, split: str = "validation",
                       cache_dirs: Sequence[str] = (), max_examples: int | None = None,
                       max_images: int = 0, image_size: int = 224, max_audio: int = 0,
                       audio_frames: int = 3001, n_mels: int = 80, max_videos: int = 0,
                       video_frames: int = 16, video_frame_size: int = 112,
                       num_choices: int = 5, vocab_path: str | None = None) -> list[dict[str, Any]]:
    """Prompts of a cached multimodal task (`tasks/multimodal.py`) for decoding suites.

    Each example's `targets[:prompt_length]` (text, media markers and placeholders) is
    the prompt, its `answer` the reference; the media of the example become one row's
    `features` with the same per-row budgets and slot shapes as training
    (`multimodal.get_dataset`), so prompts batch together. For multiple choice, `meta`
    holds the options parsed from the prompt text ("(a) ... (b) ...") and the label
    parsed from the answer ("(b) ..."), by the same rules as the scorer.
    """
    import seqio

    from tasks import multimodal, packing

    if cache_dirs:
        seqio.add_global_cache_dirs(list(cache_dirs))
    multimodal.register_tasks()
    cfg = packing.PackingConfig(
        batch_size=1, length=1, pack=False, max_images=max_images, image_size=image_size,
        max_audio=max_audio, audio_frames=audio_frames, n_mels=n_mels, max_videos=max_videos,
        video_frames=video_frames, video_frame_size=video_frame_size)
    decode = detokenizer(vocab_path)
    out = []
    for i, ex in enumerate(multimodal.examples(task_name, split)):
        if max_examples is not None and i >= max_examples:
            break
        n = int(ex["prompt_length"])
        prompt = [int(t) for t in ex["targets"][:n]]
        packer = packing.MultimodalPacker(dataclasses.replace(cfg, length=n + 1))
        batches = list(packer([{**ex, "targets": np.asarray(prompt, np.int32)}]))
        if not batches or packer.counts["segments"] == 0:
            raise ValueError(f"{task_name}/{i}: its media do not fit the budgets "
                             f"{cfg} ({packer.counts}); raise max_* / *_frames")
        features = {k: batches[0][k][0] for k in _MEDIA_KEYS if k in batches[0]}
        answer = ex["answer"].decode("utf-8")
        text = decode([t for t in prompt if t >= 19])  # text pieces only (no media ids)
        shown = readable_prompt(prompt, decode)
        meta = {"source": ex["source"].decode("utf-8")}
        options, label = parse_choices(text, answer)
        if options:
            meta["options"], meta["label"] = options[:num_choices], label
        out.append({"sample_id": ex["source_id"].decode("utf-8"), "prompt_ids": prompt,
                    "features": features, "answer": answer, "prompt_text": shown, "meta": meta})
    return out


def readable_prompt(ids: Sequence[int], decode: Callable[[Sequence[int]], str]) -> str:
    """Prompt text with each media run shown as `<image x16>` (for samples files)."""
    from pipelines import special_tokens as st

    names = {ids_[0]: m for m, ids_ in st.MODALITY_IDS.items()}
    markers = {i for ids_ in st.MODALITY_IDS.values() for i in ids_[1:]}
    out, text, i = [], [], 0
    while i < len(ids):
        t = int(ids[i])
        if t in names:
            j = i
            while j < len(ids) and int(ids[j]) == t:
                j += 1
            if text:
                out.append(decode(text))
                text = []
            out.append(f"<{names[t]} x{j - i}>")
            i = j
            continue
        if t not in markers:
            text.append(t)
        i += 1
    if text:
        out.append(decode(text))
    return "".join(out)


def parse_choices(prompt_text: str, answer: str) -> tuple[list[str], int]:
    """Options and answer index of a multiple-choice prompt in the format of
    `pipelines.mm_readers.read_nextqa`: "...options: (a) x (b) y ...\nanswer:" with the
    answer "(b) y". Returns ([], -1) when the prompt lists no options."""
    import re

    line = next((l for l in prompt_text.split("\n") if l.startswith("options: ")), "")
    parts = re.split(r"(?:^options: | )\(([a-z])\) ", line)
    letters, options = parts[1::2], parts[2::2]
    if not options or letters != [chr(ord("a") + i) for i in range(len(letters))]:
        return [], -1
    m = re.match(r"\s*\(([a-z])\)", answer)
    label = letters.index(m.group(1)) if m and m.group(1) in letters else -1
    return options, label


@gin.configurable(module="eval_inputs")
def niah_prompts(haystack_paths: Sequence[str] = gin.REQUIRED,
                 context_lengths: Sequence[int] = (128, 256, 512),
                 depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
                 trials: int = 1, seed: int = 0,
                 needle: str = " The special magic number is {answer}.",
                 question: str = "\nWhat is the special magic number? The special magic number is",
                 vocab_path: str | None = None) -> list[dict[str, Any]]:
    """Needle-in-a-haystack prompts over public-domain books, one per (length, depth, trial).

    The haystack is the books' text (concatenated) tokenized; for a cell of context
    length L the prompt is the first L - len(needle) - len(question) haystack tokens
    with the needle sentence (a seeded 7-digit number) inserted at `depth`, moved back
    to just after a sentence end, then the question. The answer is the number.
    """
    import random

    encode = tokenizer(vocab_path)
    text = "\n".join(fs.read_text(p) for p in haystack_paths)
    # Tokenize only what the longest context can use (~4 chars/token; more if short).
    hay = encode(text[: max(context_lengths) * 8])
    if len(hay) < max(context_lengths):
        hay = encode(text)
    sp = _vocab(vocab_path).tokenizer
    boundaries = [i for i in range(sp.get_piece_size()) if sp.id_to_piece(i).rstrip("▁") in (".", "!", "?")]
    q_ids = encode(question)
    rng = random.Random(seed)
    out = []
    for length in context_lengths:
        for depth in depths:
            for t in range(trials):
                answer = str(rng.randrange(1_000_000, 10_000_000))
                n_ids = encode(needle.format(answer=answer))
                budget = length - len(n_ids) - len(q_ids)
                if budget <= 0 or budget > len(hay):
                    raise ValueError(f"context length {length} does not fit needle+question "
                                     f"({len(n_ids) + len(q_ids)} tokens) and the haystack "
                                     f"({len(hay)} tokens)")
                prompt = insert_needle(hay[:budget], n_ids, depth, boundaries) + q_ids
                out.append({"sample_id": f"L{length}_d{depth:g}_t{t}", "prompt_ids": prompt,
                            "answer": answer, "prompt_text": f"<{budget} haystack tokens>"
                            f"{needle.format(answer=answer)} at depth {depth:g}{question}",
                            "doc": {"haystack": [str(p) for p in haystack_paths],
                                    "length": length, "depth": depth, "answer": answer},
                            "meta": {"context_length": length, "depth": depth}})
    return out


def insert_needle(haystack: Sequence[int], needle: Sequence[int], depth: float,
                  boundary_ids: Sequence[int] = ()) -> list[int]:
    """Inserts `needle` at `depth` in [0, 1] of `haystack`; with `boundary_ids` (ids of
    sentence-final pieces) the point moves back to just after the nearest one before it.

        insert_needle([1, 2, 3, 4], [9], depth=0.5) == [1, 2, 9, 3, 4]
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    pos = int(round(depth * len(haystack)))
    bounds = set(boundary_ids)
    if bounds and 0 < pos < len(haystack):
        back = pos
        while back > 0 and haystack[back - 1] not in bounds:
            back -= 1
        pos = back if back > 0 else pos
    return list(haystack[:pos]) + list(needle) + list(haystack[pos:])


@gin.configurable(module="eval_inputs")
def caption_slot_vocab() -> dict[str, list[str]]:
    """Colour and shape words of the generated shapes corpus (pipelines/synthetic/shapes.py),
    for `GenerationSuite(metric='slots')`: caption colour+shape exact match."""
    from pipelines.synthetic import shapes
    return {"colour": sorted(shapes.COLOURS), "shape": list(shapes.SHAPES)}
