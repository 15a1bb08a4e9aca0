"""MinHash signatures and LSH band keys (Broder 1997; the scheme of DataTrove's MinhashDedupSignature).

    sig = MinHasher(MinHashConfig()).signature(text)   # uint64 [bands * rows], or None (< n words)
    band_keys(sig, rows=8)                             # 14 keys: b"<band>:<8 hashes>"

Shingles are the word n-grams (default 5) of the normalised text (words.simplify_text:
lower case, digits -> 0, no punctuation or diacritics), each hashed with xxh64 of the
words joined by spaces; hash k of the signature is min over shingles of
(a_k * shingle + b_k) mod (2^61 - 1), with (a, b) drawn from numpy's RandomState(seed)
and uint64 wrap-around in the product, exactly as DataTrove 0.10.1 computes them: the
same text gives DataTrove's signature bit for bit.

Two documents are LSH candidates when any band (`rows` consecutive hashes) is equal.
For shingle-set Jaccard similarity s, P(candidate) = 1 - (1 - s^rows)^bands
(`candidate_probability`): with 14 bands x 8 rows, 0.5 -> 5%, 0.8 -> 92%.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import xxhash

from pipelines.curation import words as words_lib

MERSENNE_PRIME = np.uint64((1 << 61) - 1)


@dataclasses.dataclass(frozen=True)
class MinHashConfig:
    n_grams: int = 5
    bands: int = 14
    rows: int = 8
    seed: int = 1

    def __post_init__(self):
        for name in ("n_grams", "bands", "rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"MinHashConfig.{name} must be >= 1, got {getattr(self, name)}")


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """The LSH S-curve: P(two documents share a band) at Jaccard similarity s."""
    return 1.0 - (1.0 - s ** rows) ** bands


def shingle_words(text: str) -> list[str]:
    """The words MinHash shingles: spaCy tokens of the normalised text."""
    return words_lib.split_words(words_lib.simplify_text(text))


class MinHasher:
    """Signatures for one MinHashConfig (permutation parameters drawn once)."""

    def __init__(self, cfg: MinHashConfig):
        self.cfg = cfg
        gen = np.random.RandomState(cfg.seed)
        n = cfg.bands * cfg.rows
        self._a = gen.randint(1, MERSENNE_PRIME, dtype=np.uint64, size=(1, n))
        self._b = gen.randint(0, MERSENNE_PRIME, dtype=np.uint64, size=(1, n))

    def shingles(self, text: str) -> np.ndarray:
        """uint64 [N] hashes of the distinct word n-grams (N = 0 for fewer than n words)."""
        w, n = shingle_words(text), self.cfg.n_grams
        grams = set(map(" ".join, zip(*(w[i:] for i in range(n)))))
        return np.fromiter(map(xxhash.xxh64_intdigest, map(str.encode, grams)), dtype=np.uint64, count=len(grams))

    def signature(self, text: str) -> np.ndarray | None:
        """uint64 [bands * rows], or None when the text has fewer than n_grams words."""
        sh = self.shingles(text)
        return self.signature_of(sh) if len(sh) else None

    def signature_of(self, sh: np.ndarray) -> np.ndarray:
        """uint64 [bands * rows] of a non-empty uint64 [N] array of shingle hashes."""
        sig = np.full(self._a.shape[1], np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for chunk in range(0, len(sh), 4096):  # bounded memory: [chunk, bands * rows]
                np.minimum(sig, _mod_mersenne(sh[chunk:chunk + 4096, None] * self._a + self._b).min(axis=0), out=sig)
        return sig


def _mod_mersenne(x: np.ndarray) -> np.ndarray:
    """x % (2^61 - 1) for uint64 x, with shifts and masks instead of a division (same values)."""
    r = (x & MERSENNE_PRIME) + (x >> np.uint64(61))
    r -= MERSENNE_PRIME * (r >= MERSENNE_PRIME)
    return r


def band_keys(sig: np.ndarray, rows: int) -> list[bytes]:
    """One key per band: the band index and its `rows` hashes (equal key = LSH candidates)."""
    return [i.to_bytes(2, "little") + sig[i * rows:(i + 1) * rows].tobytes() for i in range(len(sig) // rows)]
