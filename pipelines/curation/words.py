"""Word splitting that counts what spaCy's English tokenizer counts, without spaCy.

    split_words("Don't panic... (it's 3.5 km).")
    -> ['Do', "n't", 'panic', '...', '(', 'it', "'s", '3.5', 'km', ')', '.']

The Gopher rules count words, word lengths, symbol-only words, words with a letter
and stop words, so a reference implementation's numbers depend on how it splits:
DataTrove 0.10.1 uses `spacy.blank("en")`'s tokenizer and drops whitespace tokens.
This module runs spaCy's tokenizer algorithm (spacy/tokenizer.pyx: split on
whitespace; per piece, special cases, then prefixes and suffixes peeled off one at
a time with special cases re-checked, URLs kept whole, infixes split inside) over
spaCy's own English tables (spacy_en_rules.py, exported by
benchmarks/export_spacy_rules.py), with each distinct piece cached: text repeats
its words, so after warm-up a document costs one `str.split` and dict lookups.

spaCy's post-pass that re-matches special cases across split tokens (emoticons
such as "):" glued to a word) is approximated inside each piece (`_merge_specials`).
On real text the two agree on tokens (benchmarks/curation.py prints the agreement).

Also here: DataTrove's punctuation set (what a "symbol word" is made of) and its
`simplify_text` (MinHash's normalisation), so the filters' numbers match theirs.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from typing import Callable

from pipelines.curation import spacy_en_rules as _rules

# As in DataTrove 0.10.1 (datatrove/utils/text.py, Apache-2.0): PUNCTUATION, and
# PUNCTUATION_SET = PUNCTUATION plus TERMINAL_PUNCTUATION (sentence ends in many scripts).
PUNCTUATION = '!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„\';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_."}►»\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\r\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f\x7f\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95\x96\x97\x98\x99\x9a\x9b\x9c\x9d\x9e\x9f'
SYMBOL_CHARS = frozenset('\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\r\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~\x7f\x80\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95\x96\x97\x98\x99\x9a\x9b\x9c\x9d\x9e\x9f«´»։؝؞؟۔܀܁܂߹࠷࠹࠽࠾।॥၊။።፧፨᙮᜵᜶។៕៖៙៚᠃᠉᥄᥅᪨᪩᪪᪫᭚᭛᭞᭟᭽᭾᰻᰼᱾᱿–—’“”„…‼‽⁇⁈⁉∶━►⸮⸼⹓⹔、。〈〉《》「」【】꓿꘎꘏꛳꛷꡶꡷꣎꣏꤯꧈꧉꩝꩞꩟꫰꫱꯫﹒﹖﹗！％（），．１：；？～｡𐩖𐩗𐽕𐽖𐽗𐽘𐽙𐾆𐾇𐾈𐾉𑁇𑁈𑂾𑂿𑃀𑃁𑅁𑅂𑅃𑇅𑇆𑇍𑇞𑇟𑈸𑈹𑈻𑈼𑊩𑑋𑑌𑗂𑗃𑗉𑗊𑗋𑗌𑗍𑗎𑗏𑗐𑗑𑗒𑗓𑗔𑗕𑗖𑗗𑙁𑙂𑜼𑜽𑜾𑥄𑥆𑩂𑩃𑪛𑪜𑱁𑱂𑻷𑻸\U00011f43\U00011f44𖩮𖩯𖫵𖬷𖬸𖭄𖺘𛲟𝪈')

PUNCT_TRANS = str.maketrans(PUNCTUATION, " " * len(PUNCTUATION))
_NUMBERS = re.compile(r"\d+(?:[.,\u060c\u066b\u2396\u2397\u2398]\d+)?")  # \d is Unicode Nd in `re`
_WHITESPACE = re.compile(r"\s+")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")

_PREFIX = re.compile(_rules.PREFIX).search
_SUFFIX = re.compile(_rules.SUFFIX).search
_INFIX = re.compile(_rules.INFIX).finditer
_URL = re.compile(_rules.URL).match
_SPECIALS: dict[str, tuple[str, ...]] = _rules.SPECIALS


def _split_affixes(piece: str) -> tuple[list[str], str, list[str]]:
    """spaCy's Tokenizer._split_affixes: (prefixes, middle, suffixes in reverse order)."""
    prefixes, suffixes = [], []
    last = -1
    while piece and len(piece) != last:
        if piece in _SPECIALS:
            break
        last = len(piece)
        m = _PREFIX(piece)
        pre_len = m.end() if m else 0
        if pre_len:
            prefix, minus_pre = piece[:pre_len], piece[pre_len:]
            if minus_pre and minus_pre in _SPECIALS:
                prefixes.append(prefix)
                piece = minus_pre
                break
        m = _SUFFIX(piece[pre_len:])
        suf_len = m.end() - m.start() if m else 0
        if suf_len:
            suffix, minus_suf = piece[-suf_len:], piece[:-suf_len]
            if minus_suf and minus_suf in _SPECIALS:
                suffixes.append(suffix)
                piece = minus_suf
                break
        if pre_len and suf_len and pre_len + suf_len <= len(piece):
            prefixes.append(prefix)
            suffixes.append(suffix)
            piece = piece[pre_len:-suf_len]
        elif pre_len:
            prefixes.append(prefix)
            piece = minus_pre
        elif suf_len:
            suffixes.append(suffix)
            piece = minus_suf
        if piece in _SPECIALS:
            break
    return prefixes, piece, suffixes


def _middle_tokens(piece: str) -> list[str]:
    """spaCy's Tokenizer._attach_tokens for what remains after the affixes."""
    if not piece:
        return []
    if piece in _SPECIALS:
        return list(_SPECIALS[piece])
    if _URL(piece):
        return [piece]
    tokens, start = [], 0
    for m in _INFIX(piece):
        if m.start() == 0:
            continue
        tokens.append(piece[start:m.start()])
        if m.start() != m.end():
            tokens.append(piece[m.start():m.end()])
        start = m.end()
    tail = piece[start:]
    if tail:
        tokens.append(tail)
    return tokens


def tokenize_piece(piece: str) -> tuple[str, ...]:
    """One whitespace-free piece of text -> its spaCy tokens (uncached)."""
    if piece in _SPECIALS:
        return _SPECIALS[piece]
    if piece.isalpha():  # no English prefix, suffix, infix or URL rule matches letters alone
        return (piece,)
    prefixes, middle, suffixes = _split_affixes(piece)
    tokens = [t for t in prefixes + _middle_tokens(middle) + suffixes[::-1] if t.strip()]
    return tuple(_merge_specials(tokens))


def _merge_specials(tokens: list[str]) -> list[str]:
    """spaCy's special-case post-pass: runs of 2-3 split tokens that spell a special case
    (e.g. the emoticon "):" after a word) become that special case's tokens."""
    if len(tokens) < 2:
        return tokens
    out, i = [], 0
    while i < len(tokens):
        for n in (3, 2):
            joined = "".join(tokens[i:i + n])
            if i + n <= len(tokens) and joined in _SPECIALS:
                out.extend(_SPECIALS[joined])
                i += n
                break
        else:
            out.append(tokens[i])
            i += 1
    return out


class WordSplitter:
    """`split(text) -> list of words`, with a cache of pieces (bounded: cleared when full)."""

    def __init__(self, max_cache: int = 1 << 20):
        self._cache: dict[str, tuple[str, ...]] = {}
        self._max_cache = max_cache

    def piece(self, piece: str) -> tuple[str, ...]:
        tokens = self._cache.get(piece)
        if tokens is None:
            if len(self._cache) >= self._max_cache:
                self._cache.clear()
            tokens = self._cache[piece] = tokenize_piece(piece)
        return tokens

    def split(self, text: str) -> list[str]:
        pieces = text.split()
        tokens = list(map(self._cache.get, pieces))
        if None in tokens:  # first sightings: tokenize and cache them
            tokens = [t if t is not None else self.piece(p) for p, t in zip(pieces, tokens)]
        return list(itertools.chain.from_iterable(tokens))


_DEFAULT = WordSplitter()
split_words: Callable[[str], list[str]] = _DEFAULT.split


def is_symbol_word(word: str) -> bool:
    """Every character is punctuation (DataTrove's PUNCTUATION_SET): not counted as a word by length rules."""
    return all(ch in SYMBOL_CHARS for ch in word)


def simplify_text(text: str) -> str:
    """DataTrove's simplify_text with its defaults: lower case, numbers -> "0", punctuation -> space,
    whitespace runs -> one space, diacritics dropped (NFD, combining marks removed)."""
    text = _NUMBERS.sub("0", text.lower())
    text = _WHITESPACE.sub(" ", text.translate(PUNCT_TRANS).strip())
    if not text.isascii():
        text = _NON_ASCII.sub(_drop_marks, unicodedata.normalize("NFD", text))
    return text.strip()


def _drop_marks(m: re.Match) -> str:
    return "".join(c for c in m.group() if unicodedata.category(c) != "Mn")
