"""Reserved token ids shared by every stage. They never move.

The SentencePiece model is trained with these pieces as user-defined symbols, so
they get exactly these ids (pad/eos/unk first, as SeqIO expects, then the
symbols in this order, then 256 byte-fallback pieces, then learned pieces).
`tests/test_tokenizer.py` checks the committed vocabulary against this table.

Each media item in a token stream is
    BEGIN_<M>  <M> <M> ... <M> (K placeholders)  END_<M>
where K is the number of embedding slots the modality's encoder produces for
that item. This module is pure Python: pipelines/ and tasks/ import it, and
model/ mirrors the ids in its config (checked by a test).
"""

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2

# Order matters: user-defined symbol i gets id 3 + i.
USER_DEFINED_SYMBOLS = (
    "<image>", "<begin_image>", "<end_image>",
    "<audio>", "<begin_audio>", "<end_audio>",
    "<video>", "<begin_video>", "<end_video>",
    # Reserved for later modalities/markers, so ids of learned pieces never shift.
    "<reserved_0>", "<reserved_1>", "<reserved_2>", "<reserved_3>",
    "<reserved_4>", "<reserved_5>", "<reserved_6>",
    # A real newline piece: books, code and MMLU prompts are full of them.
    "\n",
)
SYMBOL_IDS = {s: 3 + i for i, s in enumerate(USER_DEFINED_SYMBOLS)}

IMAGE_ID = SYMBOL_IDS["<image>"]
BEGIN_IMAGE_ID = SYMBOL_IDS["<begin_image>"]
END_IMAGE_ID = SYMBOL_IDS["<end_image>"]
AUDIO_ID = SYMBOL_IDS["<audio>"]
BEGIN_AUDIO_ID = SYMBOL_IDS["<begin_audio>"]
END_AUDIO_ID = SYMBOL_IDS["<end_audio>"]
VIDEO_ID = SYMBOL_IDS["<video>"]
BEGIN_VIDEO_ID = SYMBOL_IDS["<begin_video>"]
END_VIDEO_ID = SYMBOL_IDS["<end_video>"]

# modality -> (placeholder, begin, end)
MODALITY_IDS = {
    "image": (IMAGE_ID, BEGIN_IMAGE_ID, END_IMAGE_ID),
    "audio": (AUDIO_ID, BEGIN_AUDIO_ID, END_AUDIO_ID),
    "video": (VIDEO_ID, BEGIN_VIDEO_ID, END_VIDEO_ID),
}
NEWLINE_ID = SYMBOL_IDS["\n"]
FIRST_BYTE_ID = 3 + len(USER_DEFINED_SYMBOLS)  # <0x00>
NUM_RESERVED = FIRST_BYTE_ID + 256  # ids below this are never learned pieces
_SYMBOL_ID_SET = frozenset(range(3, NEWLINE_ID))  # the symbols escape_reserved_ids replaces


def escape_reserved_ids(ids: list[int]) -> list[int]:
    """Replaces reserved symbols that came from raw text by their UTF-8 bytes.

    SentencePiece matches user-defined symbols anywhere in its input, so a text
    that literally contains "<image>" would otherwise yield a placeholder id.
    Text is always encoded through this; only the interleaver emits real
    placeholder and marker ids. Decoding the result gives the text back.
    """
    if _SYMBOL_ID_SET.isdisjoint(ids):
        return ids
    out = []
    for i in ids:
        if 3 <= i < NEWLINE_ID:
            out.extend(FIRST_BYTE_ID + b for b in USER_DEFINED_SYMBOLS[i - 3].encode("utf-8"))
        else:
            out.append(i)
    return out
