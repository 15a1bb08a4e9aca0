"""Whole books in consecutive segments, for training and evaluating long-range memory.

The text job (`python -m pipelines.preprocess_text --input=BOOKS_DIR --cache_dir=DIR`)
writes each book as chunks ("<document id>#<chunk index>", split by a hash per chunk).
This module reassembles whole books from both splits in chunk order, holds some books
out whole (PG-19 protocol: evaluation books are never chunks of training books), and
lays books out in rows that continue from batch to batch:

    task 'tapestry_long_books' (SeqIO): one example per book,
        {"targets": [all the book's token ids], "book": "pg/11-0.txt", "text": "..."}
        splits: 'train' (all but the held-out books), 'validation' (the held-out books).
    long_book_batches (gin: train.get_dataset_fn = @long_books.long_book_batches):
        row r of batch i+1 continues row r of batch i; a row reads one book after
        another, each book start to end, with segment ids = the book's id (unique per
        book and epoch, so memory never crosses books: model/nn/memory.py) and
        positions = offsets within the book, e.g. segment length 4, two books:
          decoder_input_tokens  [[0, 81, 12, 9], [44, 3, 0, 17], ...]   (0 = BOS)
          decoder_target_tokens [[81, 12, 9, 44], [3, 1, 17, 5], ...]   (1 = EOS)
          decoder_segment_ids   [[1, 1, 1, 1], [1, 1, 3, 3], ...]
          decoder_positions     [[0, 1, 2, 3], [4, 5, 0, 1], ...]

`held_out` names books by the end of their document id (e.g. '11-0.txt'). With fewer
books than rows, the longest are cut into contiguous pieces first (each then read as a
document of its own), so every row trains.
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from pipelines import special_tokens
from tasks import text, vocabulary

LONG_BOOKS_TASK = "tapestry_long_books"
DEFAULT_HELD_OUT = ("11-0.txt",)  # Alice in Wonderland, the shortest of ../shared/data/text


@dataclasses.dataclass(frozen=True)
class Book:
    name: str          # the document id
    tokens: np.ndarray  # int32 [n], no EOS
    text: str

    @property
    def num_bytes(self) -> int:
        return len(self.text.encode("utf-8"))

    @property
    def num_words(self) -> int:
        return len(self.text.split())


def read_books(cache_dirs: Sequence[str] = (), task: str = text.TEXT_TASK,
               splits: Sequence[str] = ("train", "validation")) -> list[Book]:
    """Every book of a text cache, reassembled from its chunks in order (sorted by name)."""
    if cache_dirs:
        seqio.add_global_cache_dirs(list(cache_dirs))
    text.register_text_task(task)
    chunks: dict[str, list[tuple[int, np.ndarray, str]]] = collections.defaultdict(list)
    task_obj = seqio.get_mixture_or_task(task)
    for split in splits:
        cache_dir = task_obj.cache_dir
        if cache_dir and not tf.io.gfile.exists(f"{cache_dir}/info.{split}.json"):
            continue  # e.g. a cache written with --validation_fraction=0 has no validation
        ds = task_obj.get_dataset(None, split=split, use_cached=True, shuffle=False,
                                  num_epochs=1)
        for ex in ds.as_numpy_iterator():
            doc, _, idx = ex["source_id"].decode().rpartition("#")
            ids = np.asarray(ex["targets"], np.int32)
            if ids.size and ids[-1] == special_tokens.EOS_ID:  # the task's per-chunk EOS
                ids = ids[:-1]
            chunks[doc].append((int(idx), ids, ex["targets_pretokenized"].decode()))
    return [Book(doc, np.concatenate([c[1] for c in sorted(parts, key=lambda c: c[0])]),
                 "".join(c[2] for c in sorted(parts, key=lambda c: c[0])))
            for doc, parts in sorted(chunks.items())]


def split_books(books: Sequence[Book], held_out: Sequence[str] = DEFAULT_HELD_OUT
                ) -> tuple[list[Book], list[Book]]:
    """(train books, held-out books); held_out names match the end of a document id."""
    is_held = lambda b: any(b.name.endswith(h) for h in held_out)
    train, held = [b for b in books if not is_held(b)], [b for b in books if is_held(b)]
    missing = [h for h in held_out if not any(b.name.endswith(h) for b in books)]
    if missing:
        raise ValueError(f"held_out books {missing} are not in the cache; books: "
                         f"{[b.name for b in books]}")
    return train, held


def _books_source(cache_dirs: Sequence[str], held_out: Sequence[str]):
    def dataset_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
        del shuffle_files, seed  # document order is kept
        train, held = split_books(read_books(cache_dirs), held_out)
        books = {"train": train, "validation": held}[split]
        return tf.data.Dataset.from_generator(
            lambda: ({"targets": b.tokens, "book": b.name, "text": b.text} for b in books),
            output_signature={"targets": tf.TensorSpec([None], tf.int32),
                              "book": tf.TensorSpec([], tf.string),
                              "text": tf.TensorSpec([], tf.string)})
    return seqio.FunctionDataSource(dataset_fn, splits=["train", "validation"])


def register_long_books_task(cache_dirs: Sequence[str] = (),
                             held_out: Sequence[str] = DEFAULT_HELD_OUT,
                             name: str = LONG_BOOKS_TASK) -> None:
    """Registers the whole-book task over the text job's cache (replaces an earlier one)."""
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name, source=_books_source(tuple(cache_dirs), tuple(held_out)), preprocessors=[],
        output_features={"targets": seqio.Feature(vocabulary.get_vocabulary(), add_eos=False,
                                                  dtype=tf.int32)})


def split_for_rows(books: Sequence[np.ndarray], num_rows: int) -> list[np.ndarray]:
    """Fewer books than rows: halve the longest until every row has a piece (each piece
    is then read as a document of its own: its own id, positions from 0)."""
    books = list(books)
    while books and len(books) < num_rows:
        i = int(np.argmax([len(b) for b in books]))
        half = len(books[i]) // 2
        if half < 1:
            break
        books[i:i + 1] = [books[i][:half], books[i][half:]]
    return books


def book_rows(books: Sequence[Sequence[int]], num_rows: int) -> list[list[int]]:
    """Book indices per row: each book goes to the row with the fewest tokens so far."""
    rows: list[list[int]] = [[] for _ in range(num_rows)]
    load = [0] * num_rows
    for i in sorted(range(len(books)), key=lambda i: -len(books[i])):
        r = int(np.argmin(load))
        rows[r].append(i)
        load[r] += len(books[i]) + 1
    for r in rows:
        r.sort()
    return rows


def _row_stream(books: Sequence[np.ndarray], order: list[int], epochs: int | None,
                num_books: int) -> Iterator[tuple[int, int, int, int]]:
    """(input token, target token, book id, position) of a row, book after book."""
    epoch = 0
    while epochs is None or epoch < epochs:
        if not order:
            return
        for i in order:
            toks = np.asarray(books[i], np.int32)
            inputs = np.concatenate([[0], toks])
            targets = np.concatenate([toks, [special_tokens.EOS_ID]])
            book_id = 1 + i + epoch * num_books
            for p in range(len(inputs)):
                yield int(inputs[p]), int(targets[p]), book_id, p
        epoch += 1


def segment_batches(books: Sequence[np.ndarray], num_rows: int, segment_len: int,
                    epochs: int | None = 1, rows: Sequence[int] | None = None
                    ) -> Iterator[dict[str, np.ndarray]]:
    """Batches [len(rows), segment_len] of the row layout above (all rows by default);
    ends when every row has run out (padding: segment id 0, weight 0). With fewer books
    than rows, books are first cut into contiguous pieces (split_for_rows)."""
    books = split_for_rows(books, num_rows)
    layout = book_rows(books, num_rows)
    rows = list(range(num_rows)) if rows is None else list(rows)
    streams = [_row_stream(books, layout[r], epochs, len(books)) for r in rows]
    while True:
        out = np.zeros((4, len(rows), segment_len), np.int32)
        live = False
        for j, stream in enumerate(streams):
            for t in range(segment_len):
                item = next(stream, None)
                if item is None:
                    break
                out[:, j, t] = item
                live = True
        if not live:
            return
        yield {"decoder_input_tokens": out[0], "decoder_target_tokens": out[1],
               "decoder_segment_ids": out[2], "decoder_positions": out[3],
               "decoder_loss_weights": (out[2] != 0).astype(np.int32)}


class _Batches:
    """Iterator with get_state() (batches yielded; resume replays, memory starts empty)."""

    def __init__(self, it: Iterator[dict[str, np.ndarray]], start: int):
        self._it, self.n = it, 0
        for _ in range(start):
            next(self._it)
            self.n += 1

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self._it)
        self.n += 1
        return batch

    def get_state(self) -> dict[str, int]:
        return {"batches": self.n}


@gin.configurable
def long_book_batches(cfg: Any, shard_id: int = 0, num_shards: int = 1, start_batch: int = 0,
                      *, state: Mapping[str, Any] | None = None,
                      cache_dirs: Sequence[str] = (),
                      held_out: Sequence[str] = DEFAULT_HELD_OUT,
                      num_epochs: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """get_dataset_fn (model/dataset_config.py) over whole books: cfg.split 'train' reads
    the training books (repeating, new book ids each epoch), 'validation' the held-out
    books once; this host gets rows shard_id, shard_id + num_shards, ... of the layout."""
    if cfg.batch_size % num_shards:
        raise ValueError(f"batch_size={cfg.batch_size} must divide over {num_shards} hosts")
    train, held = split_books(read_books(cache_dirs), held_out)
    books = train if cfg.split == "train" else held
    epochs = num_epochs if cfg.split == "train" else 1
    start = int(state["batches"]) if state else start_batch
    rows = range(shard_id, cfg.batch_size, num_shards)
    it = segment_batches([b.tokens for b in books], cfg.batch_size,
                         int(cfg.task_feature_lengths["targets"]), epochs, rows)
    return _Batches(it, start)


@gin.configurable
def held_out_books(cache_dirs: Sequence[str] = (), held_out: Sequence[str] = DEFAULT_HELD_OUT
                   ) -> list[dict[str, Any]]:
    """The held-out books for model/nn/memory_eval.py's evaluate_memory (gin: books_fn):
    [{"name", "tokens", "num_bytes", "num_words"}] (bytes and words of the exact text)."""
    _, held = split_books(read_books(cache_dirs), held_out)
    return [{"name": b.name, "tokens": b.tokens, "num_bytes": b.num_bytes,
             "num_words": b.num_words} for b in held]
