"""Text documents for language modelling: generated, or cut from books.

Generated documents (used when no books are given, so a fresh clone with no
data directory still has text) are 3-8 templated sentences about the same
small world as the media -- coloured shapes, directions, digits, counting and
sums -- e.g.

    "The green square is on the right. Three plus four is seven. After five
     comes six. The blue circle moves up."

`book_documents` instead cuts Project Gutenberg-style books into documents of
whole paragraphs and assigns every document to exactly one split by its
position (18 of 20 to train, 1 to validation, 1 to test), so held-out text
never appears in training.
"""
import re

import numpy as np

from pipelines.synthetic import motion_video, shapes, speech

NUMBER_WORDS = speech.DIGIT_WORDS + ("ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen",
                                     "sixteen", "seventeen", "eighteen")
SPLIT_OF_CHUNK = ("train",) * 18 + ("validation", "test")


def _shape_phrase(rng: np.random.Generator) -> str:
    return f"{rng.choice(list(shapes.COLOURS))} {rng.choice(shapes.SHAPES)}"


def sentence(rng: np.random.Generator) -> str:
    """One random sentence about shapes, motion, digits or sums."""
    kind = int(rng.integers(0, 6))
    if kind == 0:
        phrase = shapes.POSITIONS[str(rng.choice(list(shapes.POSITIONS)))][0]
        return f"The {_shape_phrase(rng)} is {phrase}."
    if kind == 1:
        return f"The {_shape_phrase(rng)} moves {rng.choice(list(motion_video.DIRECTIONS))}."
    if kind == 2:
        a, b = (int(x) for x in rng.integers(0, 10, size=2))
        return f"{NUMBER_WORDS[a].capitalize()} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}."
    if kind == 3:
        n = int(rng.integers(0, 9))
        return f"After {NUMBER_WORDS[n]} comes {NUMBER_WORDS[n + 1]}."
    if kind == 4:
        start = int(rng.integers(0, 6))
        count = ", ".join(speech.DIGIT_WORDS[start:start + int(rng.integers(3, 5))])
        return f"Counting up: {count}."
    left, right = _shape_phrase(rng), _shape_phrase(rng)
    return f"A {left} is to the left of a {right}."


def generated_document(rng: np.random.Generator, num_sentences: tuple[int, int] = (3, 8)) -> str:
    """A document of `num_sentences` (inclusive range) random sentences."""
    lo, hi = num_sentences
    return " ".join(sentence(rng) for _ in range(int(rng.integers(lo, hi + 1))))


_GUTENBERG_START = re.compile(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n")
_GUTENBERG_END = re.compile(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG")


def strip_gutenberg(text: str) -> str:
    """The body of a Project Gutenberg file (licence header/footer removed when present)."""
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return text


def book_documents(text: str, split: str, chunk_chars: int = 2000) -> list[str]:
    """The documents of `split` from one book: whole paragraphs, about `chunk_chars` each."""
    if split not in SPLIT_OF_CHUNK:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(set(SPLIT_OF_CHUNK))}")
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", strip_gutenberg(text))]
    chunks, current = [], []
    for paragraph in filter(None, paragraphs):
        current.append(paragraph)
        if sum(len(p) for p in current) >= chunk_chars:
            chunks.append("\n".join(current))
            current = []
    if current:
        chunks.append("\n".join(current))
    return [c for i, c in enumerate(chunks) if SPLIT_OF_CHUNK[i % len(SPLIT_OF_CHUNK)] == split]
