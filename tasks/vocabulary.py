"""The project's SentencePiece vocabulary as a SeqIO vocabulary.

`tasks/vocab/tapestry_8k.model` is built by `pipelines.train_tokenizer` (its
docstring has the command); reserved ids are in pipelines/special_tokens.py.
"""

from __future__ import annotations

import functools
import os

import seqio

DEFAULT_VOCAB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vocab", "tapestry_8k.model")


@functools.cache
def get_vocabulary(path: str = DEFAULT_VOCAB_PATH) -> seqio.SentencePieceVocabulary:
    return seqio.SentencePieceVocabulary(path)
