"""SeqIO's `LMFeatureConverter` layout in numpy, window by window, so packing can resume.

SeqIO packs (`utils.trim_and_pack_dataset`, tf ops) windows of `length` examples at
a time: each window is packed greedily in order (an example that does not fit in the
open row closes it) and nothing carries over to the next window. `pack_window` does
the same on one window, so a resumed input only re-packs the window it stopped in;
`lm_features` then adds the decoder features exactly as `LMFeatureConverter` does
(`tests/test_input_resume.py` checks both against SeqIO). With length 8:

    examples  [41, 7, 1], [93, 12, 5, 1]
    decoder_target_tokens  [[41,  7, 1, 93, 12, 5, 1, 0]]     int32 [R, L]
    decoder_input_tokens   [[ 0, 41, 7,  0, 93, 12, 5, 0]]
    decoder_loss_weights   [[ 1,  1, 1,  1,  1,  1, 1, 0]]
    decoder_segment_ids    [[ 1,  1, 1,  2,  2,  2, 2, 0]]
    decoder_positions      [[ 0,  1, 2,  0,  1,  2, 3, 0]]

Unpacked (`pack=False`), each example is one row (trimmed to L) and only the first
three features exist, as in SeqIO.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def pack_window(examples: Sequence[np.ndarray], length: int) -> tuple[np.ndarray, np.ndarray]:
    """One window of token arrays -> (tokens, positions), both int32 [R, length]."""
    rows: list[tuple[list[np.ndarray], int]] = []
    parts: list[np.ndarray] = []
    used = 0
    for ex in examples:
        ex = np.asarray(ex)[:length]
        ex = ex[:np.count_nonzero(ex)]  # SeqIO drops a padded example's zeros this way
        if used + len(ex) > length:
            rows.append((parts, used))
            parts, used = [], 0
        parts.append(ex)
        used += len(ex)
    rows.append((parts, used))
    tokens = np.zeros([len(rows), length], np.int32)
    positions = np.zeros([len(rows), length], np.int32)
    for r, (row_parts, _) in enumerate(rows):
        pos = 0
        for ex in row_parts:
            n = len(ex)
            tokens[r, pos:pos + n] = ex
            positions[r, pos:pos + n] = np.arange(n)
            pos += n
    return tokens, positions


def pad_rows(examples: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Unpacked rows: each example trimmed to `length` and zero-padded, int32 [R, length]."""
    tokens = np.zeros([len(examples), length], np.int32)
    for r, ex in enumerate(examples):
        ex = np.asarray(ex)[:length]
        tokens[r, :len(ex)] = ex
    return tokens


def _shift_right(x: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x)
    out[:, 1:] = x[:, :-1]
    return out


def lm_features(tokens: np.ndarray, positions: np.ndarray | None) -> dict[str, np.ndarray]:
    """Rows -> LMFeatureConverter's decoder features (positions None: unpacked rows)."""
    out = {"decoder_target_tokens": tokens, "decoder_loss_weights": (tokens != 0).astype(np.int32)}
    inputs = _shift_right(tokens)
    if positions is not None:
        segments = np.cumsum(positions == 0, axis=1, dtype=np.int32) * (tokens != 0)
        inputs = inputs * (segments == _shift_right(segments))
        out["decoder_segment_ids"] = segments.astype(np.int32)
        out["decoder_positions"] = positions
    out["decoder_input_tokens"] = inputs.astype(np.int32)
    return out
