"""The SentencePiece vocabulary: one default, loaded from bytes wherever it lives.

    --vocab=package:tasks/vocab/tapestry_8k.model   the copy inside the installed package (default)
    --vocab=gs://bucket/vocab/my.model               any `pipelines.fs` path or URI
    --vocab=/data/my.model

Workers load the model with `SentencePieceProcessor(model_proto=read_bytes(vocab))` in
`DoFn.setup`, so nothing refers to the launcher's file system: the default resolves to
the copy shipped in the wheel (`importlib.resources`) on whichever machine reads it,
and a bucket path is read through Beam's FileSystems. `tasks/vocabulary.py` builds the
SeqIO vocabulary from the same bytes. `pipelines.train_tokenizer` writes new models.
"""
from __future__ import annotations

import functools
import importlib.resources

from pipelines import fs

PACKAGE_PREFIX = "package:"
DEFAULT_VOCAB = PACKAGE_PREFIX + "tasks/vocab/tapestry_8k.model"


def packaged_file(spec: str = DEFAULT_VOCAB):
    """`package:<pkg>/<resource>` -> an importlib.resources Traversable."""
    pkg, _, resource = spec[len(PACKAGE_PREFIX):].partition("/")
    if not pkg or not resource:
        raise ValueError(f"vocab {spec!r}: write package:<package>/<file>, "
                         f"e.g. {DEFAULT_VOCAB}")
    return importlib.resources.files(pkg).joinpath(resource)


@functools.lru_cache(maxsize=8)
def read_bytes(vocab: str | None = None) -> bytes:
    """The serialized SentencePiece model named by `vocab` (None: the default)."""
    vocab = vocab or DEFAULT_VOCAB
    if vocab.startswith(PACKAGE_PREFIX):
        return packaged_file(vocab).read_bytes()
    return fs.read_bytes(vocab)


def load(vocab: str | None = None):
    """A SentencePieceProcessor for `vocab` (see `read_bytes`)."""
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    return spm.SentencePieceProcessor(model_proto=read_bytes(vocab))


def check(vocab: str, flag: str = "--vocab") -> None:
    """Raises ValueError naming `flag` unless `vocab` reads as a SentencePiece model."""
    try:
        sp = load(vocab)
    except FileNotFoundError as e:
        raise ValueError(f"{flag}={vocab}: not found ({e})") from None
    except (OSError, RuntimeError, ValueError, ModuleNotFoundError) as e:
        raise ValueError(f"{flag}={vocab}: not a readable SentencePiece model "
                         f"({type(e).__name__}: {e})") from None
    if sp.get_piece_size() == 0:
        raise ValueError(f"{flag}={vocab}: an empty SentencePiece model")
