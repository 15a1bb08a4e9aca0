"""One independent random stream per example, from (seed, split, kind, index).

Held-out splits use disjoint seeds: the split's number is part of the
`SeedSequence` spawn key, so train, validation and test never share a stream
for the same base seed, and no example depends on which worker made it or in
what order.
"""
import numpy as np

SPLITS = ("train", "validation", "test")
KINDS = ("image", "speech", "video", "interleaved", "text")


def example_rng(seed: int, split: str, kind: str, index: int) -> np.random.Generator:
    """The generator for example `index` of `kind` in `split`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; use one of {KINDS}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed ({seed}) and index ({index}) must be >= 0")
    key = (SPLITS.index(split), KINDS.index(kind), index)
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))
