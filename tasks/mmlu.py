"""MMLU as SeqIO tasks over the original CSV layout, with lm-eval's prompt.

Data layout (hendrycks/test data.tar, unchanged): `<data_dir>/{dev,val,test}/<subject>_<split>.csv`,
no header, columns question, A, B, C, D, answer (a letter). `data_dir` may be a local
directory or a `gs://` / `s3://` prefix (read through pipelines/fs.py).

Prompt (lm-evaluation-harness `mmlu` default template, `first_n` few-shot from dev):

    The following are multiple choice questions (with answers) about {subject with spaces}.\\n\\n
    {shot question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer: {letter}\\n\\n     (k times)
    {question}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:

where each question is `.strip()`ped (lm-eval's `{{question.strip()}}`), and the
continuations scored are " A", " B", " C", " D".

Example record (what the tasks yield before tokenization):
    {"inputs": "The following are ... about anatomy.\\n\\nWhat is ...\\nA. ...\\nAnswer:",
     "targets": " B", "subject": "anatomy", "label": 1, "index": 0,
     "choices": [" A", " B", " C", " D"], "doc": "<json of the CSV row>"}

Task names: `mmlu_{k}shot_{subject}` (k in NUM_SHOTS_REGISTERED), each declaring only
the splits its subject has a file for; mixture `mmlu_{k}shot` over all of them, so
`get_dataset(split=s)` on the mixture reads the subjects that have split s (SeqIO skips
the others). The data dir defaults to `$TAPESTRY_DATA_DIR/mmlu`, read when a function is
called (not at import), so setting TAPESTRY_DATA_DIR later takes effect.
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Iterator, Sequence

from pipelines import fs

LETTERS = ("A", "B", "C", "D")
SPLITS = ("dev", "val", "test")
NUM_SHOTS_REGISTERED = (0, 5)
_BESIDE_CHECKOUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "shared", "data")
# data dir -> the task/mixture names `register` added for it (re-registering another
# dir replaces them: task names are global).
_REGISTERED: dict[str, str] = {}


def default_data_dir() -> str:
    """`$TAPESTRY_DATA_DIR/mmlu` (default `../shared/data/mmlu` beside the checkout), read now."""
    return fs.join(os.environ.get("TAPESTRY_DATA_DIR", _BESIDE_CHECKOUT), "mmlu")


def __getattr__(name: str):
    if name == "DEFAULT_DATA_DIR":  # the old constant, now resolved on each access
        return default_data_dir()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _csv_path(data_dir: str | os.PathLike, split: str, subject: str) -> str:
    return fs.join(os.fspath(data_dir), split, f"{subject}_{split}.csv")


def read_rows(data_dir: str | os.PathLike, split: str, subject: str) -> list[dict[str, str]]:
    """Rows of `<data_dir>/<split>/<subject>_<split>.csv` as dicts (question, A-D, answer)."""
    if split not in SPLITS:
        raise ValueError(f"MMLU split must be one of {SPLITS}, got {split!r}")
    path = _csv_path(data_dir, split, subject)
    if not fs.is_file(path):
        raise FileNotFoundError(
            f"MMLU file {path} not found; expected the original layout "
            f"<data_dir>/{{dev,val,test}}/<subject>_<split>.csv (set TAPESTRY_DATA_DIR)")
    rows = []
    with io.StringIO(fs.read_text(path), newline="") as f:
        for i, rec in enumerate(csv.reader(f)):
            if len(rec) != 6 or rec[5] not in LETTERS:
                raise ValueError(f"{path}:{i + 1}: expected 6 columns with an answer in A-D, "
                                 f"got {rec!r}")
            rows.append(dict(zip(("question", "A", "B", "C", "D", "answer"), rec)))
    return rows


def subjects(data_dir: str | os.PathLike, split: str) -> list[str]:
    """Subjects with a CSV file for `split`, sorted."""
    suffix = f"_{split}.csv"
    files = fs.glob(fs.join(os.fspath(data_dir), split, f"*{suffix}"))
    return sorted(fs.basename(p)[: -len(suffix)] for p in files)


def header(subject: str) -> str:
    return ("The following are multiple choice questions (with answers) about "
            f"{' '.join(subject.split('_'))}.\n\n")


def format_question(row: dict[str, str]) -> str:
    """`{question.strip()}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\nAnswer:`"""
    return (f"{row['question'].strip()}\nA. {row['A']}\nB. {row['B']}\nC. {row['C']}"
            f"\nD. {row['D']}\nAnswer:")


def format_prompt(subject: str, row: dict[str, str], shots: Sequence[dict[str, str]]) -> str:
    """Header, then each shot with ` {letter}\\n\\n`, then the question ending in `Answer:`."""
    parts = [header(subject)]
    parts += [f"{format_question(s)} {s['answer']}\n\n" for s in shots]
    parts.append(format_question(row))
    return "".join(parts)


def examples(data_dir: str | os.PathLike, split: str, subject: str,
             num_shots: int = 5) -> Iterator[dict]:
    """Prompted examples of one subject (shots: the first `num_shots` dev rows)."""
    if num_shots < 0:
        raise ValueError(f"num_shots must be >= 0, got {num_shots}")
    shots = read_rows(data_dir, "dev", subject)[:num_shots] if num_shots else []
    if len(shots) < num_shots:
        raise ValueError(f"{subject}: only {len(shots)} dev rows for {num_shots}-shot")
    for i, row in enumerate(read_rows(data_dir, split, subject)):
        yield {
            "inputs": format_prompt(subject, row, shots),
            "targets": " " + row["answer"],
            "subject": subject,
            "label": LETTERS.index(row["answer"]),
            "index": i,
            "choices": [" " + l for l in LETTERS],
            # The row as lm-eval's CSV task yields it (columns in file order): its
            # `doc_hash` is computed from this (model/evaluation/lm_eval_schema.py).
            "doc": json.dumps(row, ensure_ascii=False),
        }


def task_name(subject: str, num_shots: int) -> str:
    return f"mmlu_{num_shots}shot_{subject}"


def register(data_dir: str | os.PathLike | None = None, vocab_path: str | None = None,
             num_shots: tuple[int, ...] = NUM_SHOTS_REGISTERED) -> tuple[str, ...]:
    """Registers `mmlu_{k}shot_{subject}` tasks and `mmlu_{k}shot` mixtures for the
    subjects found under `data_dir` (default `default_data_dir()`); returns the task
    names. Each task declares the splits its subject has files for, so the mixture
    skips subjects without the requested split. Idempotent for one data dir; another
    data dir replaces the tasks it registers (names are global)."""
    import seqio
    import tensorflow as tf

    from tasks import vocabulary as vocab_lib

    data_dir = os.fspath(data_dir) if data_dir is not None else default_data_dir()
    vocab = vocab_lib.get_vocabulary(*([vocab_path] if vocab_path else []))
    features = {k: seqio.Feature(vocab, add_eos=False, dtype=tf.int32)
                for k in ("inputs", "targets")}
    by_split = {split: set(subjects(data_dir, split)) for split in SPLITS}
    found = sorted(set().union(*by_split.values()))
    key = f"{data_dir}|{vocab_path}"
    names = []
    for k in num_shots:
        task_names = []
        for subject in found:
            name = task_name(subject, k)
            task_names.append(name)
            if _REGISTERED.get(name) == key and name in seqio.TaskRegistry.names():
                continue
            seqio.TaskRegistry.remove(name)  # a task of another data dir (no-op if none)

            def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None,
                           _subject: str = subject, _k: int = k):
                del shuffle_files, seed  # one CSV per split: nothing to shuffle
                sig = {key: tf.TensorSpec([], tf.string) for key in
                       ("inputs", "targets", "subject", "doc")}
                sig |= {"label": tf.TensorSpec([], tf.int32),
                        "index": tf.TensorSpec([], tf.int32),
                        "choices": tf.TensorSpec([4], tf.string)}
                if not fs.is_file(_csv_path(data_dir, split, _subject)):
                    raise FileNotFoundError(f"no {split} file for MMLU subject {_subject!r} "
                                            f"under {data_dir}")
                return tf.data.Dataset.from_generator(
                    lambda: examples(data_dir, split, _subject, _k), output_signature=sig)

            seqio.TaskRegistry.add(
                name,
                source=seqio.FunctionDataSource(
                    dataset_fn, splits=[sp for sp in SPLITS if subject in by_split[sp]]),
                preprocessors=[seqio.preprocessors.tokenize],
                output_features=features,
                metric_fns=[])
            _REGISTERED[name] = key
        mixture = f"mmlu_{k}shot"
        if task_names and (_REGISTERED.get(mixture) != key
                           or mixture not in seqio.MixtureRegistry.names()):
            seqio.MixtureRegistry.remove(mixture)
            seqio.MixtureRegistry.add(mixture, task_names, default_rate=1.0)
            _REGISTERED[mixture] = key
        names += task_names
    return tuple(names)
