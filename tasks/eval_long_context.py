"""Long-context eval inputs: needle-in-a-haystack prompts over books."""
from __future__ import annotations

from typing import Any, Sequence

import gin

from pipelines import fs
from tasks.eval_tokens import _vocab, tokenizer


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
