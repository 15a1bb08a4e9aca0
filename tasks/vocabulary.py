"""The project's SentencePiece vocabulary as a SeqIO vocabulary, loaded from bytes.

The model is read through `pipelines.vocab` (one default for every stage: the copy of
`tasks/vocab/tapestry_8k.model` inside the installed package; or any local path or
`gs://`/`s3://` URI), so a trainer or eval host needs neither the checkout nor a local
copy. `pipelines.train_tokenizer` builds the model (its docstring has the command);
reserved ids are in pipelines/special_tokens.py.
"""

from __future__ import annotations

import functools

import seqio
from seqio import vocabularies

from pipelines import vocab as vocab_lib

DEFAULT_VOCAB = vocab_lib.DEFAULT_VOCAB
# A plain file path to the packaged model, for tools that only take a file name.
DEFAULT_VOCAB_PATH = str(vocab_lib.packaged_file(DEFAULT_VOCAB))


class BytesSentencePieceVocabulary(seqio.SentencePieceVocabulary):
    """seqio's SentencePieceVocabulary, with the model bytes read by `pipelines.vocab`
    instead of `tf.io.gfile` (which knows neither the packaged copy nor every URI).

    `sentencepiece_model_file` keeps the spec (e.g. `package:tasks/vocab/...`), so two
    vocabularies are equal when they name the same model; pickling drops the loaded model
    and the receiver reads the bytes again.
    """

    def __init__(self, vocab: str = DEFAULT_VOCAB):
        super().__init__(vocab)

    def _model_context(self) -> vocabularies._ModelContext:  # pylint: disable=protected-access
        if self._model is None:
            sp_model = vocab_lib.read_bytes(self._sentencepiece_model_file)
            self._model = vocabularies._ModelContext(  # pylint: disable=protected-access
                tokenizer=vocab_lib.load(self._sentencepiece_model_file), sp_model=sp_model)
        return self._model


@functools.cache
def get_vocabulary(vocab: str = DEFAULT_VOCAB) -> seqio.SentencePieceVocabulary:
    """The SeqIO vocabulary for `vocab` (a path, URI or `package:` spec; cached)."""
    return BytesSentencePieceVocabulary(vocab)
