"""Deterministic synthetic batches in the model-batch contract, needing only numpy.

Lets the trainer, its tests and its benchmarks run on a host with only JAX: bind

    train.get_dataset_fn = @model.synthetic_data.synthetic_dataset_fn
    synthetic_dataset_fn.vocab_size = 8192

Each row packs documents (`cfg.pack`) or holds one. A document is a random motif of
2..`max_motif` text ids repeated to the document's length, then EOS, so a model can
learn it (loss falls from ln(vocab) towards the motif entropy). Example row, L=12:

    decoder_target_tokens  [ 40 77 40 77 40  1 | 91 23 55 91 23  1 ]  (then 0 padding)
    decoder_input_tokens   [  0 40 77 40 77 40 |  0 91 23 55 91 23 ]
    decoder_segment_ids    [  1  1  1  1  1  1 |  2  2  2  2  2  2 ]
    decoder_positions      [  0  1  2  3  4  5 |  0  1  2  3  4  5 ]
    decoder_loss_weights   [  1  1  1  1  1  1 |  1  1  1  1  1  1 ]

Row r of global batch b depends only on (seed, split, b, r), so the global batch is
the same for any number of shards, and `start_batch` (or a saved `get_state()`)
resumes in O(1).

Media (optional, for multimodal models): with `model_cfg` (the model's
TransformerConfig) and `media_per_row={'image': 1, 'audio': 1, 'video': 1}`, each row
starts with those items, each as BEGIN, K placeholders, END (K from the model's
encoder config, as the packer computes it; loss weight 0 on all of them), and the
batch carries `images`/`image_mask`, `audio`/`audio_lengths`, `videos`/`video_lengths`
with random pixels / log-mels.
"""
from __future__ import annotations

import zlib
from typing import Any, Mapping

import gin
import numpy as np

from model import config as model_config_lib
from model.dataset_config import Batch, DatasetConfig, target_length

EOS_ID = model_config_lib.EOS_ID
FIRST_TEXT_ID = 19  # reserved ids 0..18 (pipelines/special_tokens.py); text from here
MARKERS = {  # modality -> (begin, placeholder, end)
    "image": (model_config_lib.BEGIN_IMAGE_ID, model_config_lib.IMAGE_ID,
              model_config_lib.END_IMAGE_ID),
    "audio": (model_config_lib.BEGIN_AUDIO_ID, model_config_lib.AUDIO_ID,
              model_config_lib.END_AUDIO_ID),
    "video": (model_config_lib.BEGIN_VIDEO_ID, model_config_lib.VIDEO_ID,
              model_config_lib.END_VIDEO_ID),
}
MEDIA_IDS = frozenset(i for ids in MARKERS.values() for i in ids)


def _media(rng: np.random.Generator, model_cfg: Any, media_per_row: Mapping[str, int]
           ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(media token prefix, media arrays for one row) per the batch contract."""
    tokens, arrays = [], {}
    for modality in ("image", "audio", "video"):
        n = int(media_per_row.get(modality, 0))
        if not n:
            continue
        enc = getattr(model_cfg, modality)
        if enc is None:
            raise ValueError(f"media_per_row asks for {modality} but the model config has "
                             f"no {modality} encoder; drop it or use a multimodal preset")
        begin, placeholder, end = MARKERS[modality]
        if modality == "image":
            s = enc.image_size
            arrays["images"] = rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)
            arrays["image_mask"] = np.ones(n, bool)
            ks = [enc.slots_per_item] * n
        elif modality == "video":
            s, f = enc.image_size, enc.num_frames
            arrays["videos"] = rng.integers(0, 256, (n, f, s, s, 3), dtype=np.uint8)
            arrays["video_lengths"] = np.full(n, f, np.int32)
            ks = [enc.slots_per_item] * n
        else:
            frames = rng.integers(max(enc.max_frames // 2, 1), enc.max_frames + 1, n)
            mels = rng.standard_normal((n, enc.max_frames, enc.num_mels)).astype(np.float32)
            mels[np.arange(enc.max_frames)[None, :] >= frames[:, None]] = 0.0
            arrays["audio"] = mels
            arrays["audio_lengths"] = frames.astype(np.int32)
            ks = [enc.slots(int(f)) for f in frames]
        for k in ks:
            tokens += [begin] + [placeholder] * k + [end]
    return np.asarray(tokens, np.int32), arrays


def _row(rng: np.random.Generator, length: int, vocab_size: int, pack: bool,
         min_doc: int, max_motif: int, prefix: np.ndarray | None = None
         ) -> dict[str, np.ndarray]:
    targets = np.zeros(length, np.int32)
    inputs = np.zeros(length, np.int32)
    segments = np.zeros(length, np.int32)
    positions = np.zeros(length, np.int32)
    start, seg = 0, 0
    while start < length:
        remaining = length - start
        if pack:
            if remaining < min_doc:
                break
            doc_len = int(rng.integers(min_doc, max(min_doc, length // 2) + 1))
            doc_len = min(doc_len, remaining)
        else:
            doc_len = int(rng.integers(min(min_doc, length), length + 1))
        motif = rng.integers(FIRST_TEXT_ID, vocab_size, size=int(rng.integers(2, max_motif + 1)))
        doc = np.resize(motif, doc_len).astype(np.int32)
        if seg == 0 and prefix is not None and len(prefix):
            if len(prefix) + 2 > doc_len:
                doc_len = min(len(prefix) + min_doc, remaining)
                doc = np.resize(motif, doc_len).astype(np.int32)
            if len(prefix) + 2 > doc_len:
                raise ValueError(f"media take {len(prefix)} tokens but rows have {length}; "
                                 f"raise task_feature_lengths['targets'] or lower media_per_row")
            doc[:len(prefix)] = prefix
        doc[-1] = EOS_ID
        seg += 1
        end = start + doc_len
        targets[start:end] = doc
        inputs[start + 1:end] = doc[:-1]
        segments[start:end] = seg
        positions[start:end] = np.arange(doc_len)
        start = end
        if not pack:
            break
    weights = (segments > 0) & ~np.isin(targets, list(MEDIA_IDS))
    return {"decoder_target_tokens": targets, "decoder_input_tokens": inputs,
            "decoder_segment_ids": segments, "decoder_positions": positions,
            "decoder_loss_weights": weights.astype(np.float32)}


class SyntheticBatches:
    """Iterator over this shard's rows of global batches `index`, `index + 1`, ...

    Batch b is a pure function of (seed, split, b, rows), so any position is reached
    in O(1). `get_state()` is the position after the most recently yielded batch,
    `{'next_batch': b}`; pass it back as `synthetic_dataset_fn(..., state=...)`.
    """

    def __init__(self, cfg: DatasetConfig, shard_id: int, num_shards: int, index: int, *,
                 vocab_size: int, min_doc: int, max_motif: int, num_batches: int | None,
                 model_cfg: Any, media_per_row: Mapping[str, int]):
        self._length = target_length(cfg)
        per_shard = cfg.batch_size // num_shards
        self._rows = range(shard_id * per_shard, (shard_id + 1) * per_shard)
        self._key = [0 if cfg.seed is None else int(cfg.seed), zlib.crc32(cfg.split.encode())]
        self._cfg = cfg
        self._index = index
        self._num_batches = num_batches
        self._row_args = (vocab_size, cfg.pack, min_doc, max_motif)
        self._model_cfg = model_cfg
        self._media_per_row = media_per_row

    def __iter__(self) -> "SyntheticBatches":
        return self

    def __next__(self) -> Batch:
        if self._num_batches is not None and self._index >= self._num_batches:
            raise StopIteration
        rows = []
        for r in self._rows:
            rng = np.random.default_rng([*self._key, self._index, r])
            prefix, media = (_media(rng, self._model_cfg, self._media_per_row)
                             if self._media_per_row else (None, {}))
            rows.append({**_row(rng, self._length, *self._row_args, prefix), **media})
        self._index += 1
        return {k: np.stack([row[k] for row in rows]) for k in rows[0]}

    def get_state(self) -> dict[str, int]:
        return {"next_batch": self._index}


@gin.configurable
def synthetic_dataset_fn(cfg: DatasetConfig, shard_id: int, num_shards: int,
                         start_batch: int, *, state: Mapping[str, Any] | None = None,
                         vocab_size: int = 8192, min_doc: int = 8,
                         max_motif: int = 6, num_batches: int | None = None,
                         model_cfg: Any = None,
                         media_per_row: Mapping[str, int] | None = None) -> SyntheticBatches:
    """This shard's rows of synthetic batch `start_batch`, `start_batch + 1`, ...

    Args:
      cfg: batch_size (global), task_feature_lengths['targets'], seed, split, pack.
      shard_id, num_shards: this host's slice of every global batch.
      start_batch: first global batch index to yield (resume without a state).
      state: a `get_state()` of an earlier iterator: resume right after its last batch
        (takes precedence over `start_batch`).
      vocab_size: ids are drawn from [19, vocab_size).
      num_batches: stop after this many batches in total (None: endless).
      model_cfg: the model's TransformerConfig (encoder shapes and slot counts).
      media_per_row: e.g. {'image': 1, 'audio': 1}: media items at the start of each row.
    """
    media_per_row = {k: v for k, v in (media_per_row or {}).items() if v}
    unknown = set(media_per_row) - set(MARKERS)
    if unknown:
        raise ValueError(f"media_per_row: unknown modality {sorted(unknown)}; "
                         f"use {sorted(MARKERS)}")
    if media_per_row and model_cfg is None:
        raise ValueError("media_per_row needs model_cfg (in gin: "
                         "synthetic_dataset_fn.model_cfg = @model_config())")
    if cfg.batch_size % num_shards:
        raise ValueError(f"batch_size={cfg.batch_size} is not divisible by "
                         f"num_shards={num_shards}")
    if vocab_size <= FIRST_TEXT_ID + 1:
        raise ValueError(f"vocab_size={vocab_size} must exceed {FIRST_TEXT_ID + 1}")
    index = start_batch
    if state is not None:
        if not isinstance(state.get("next_batch"), int) or state["next_batch"] < 0:
            raise ValueError(f"synthetic_dataset_fn: state={dict(state)} is not a state of "
                             f"this dataset (expected {{'next_batch': <int >= 0>}})")
        index = state["next_batch"]
    return SyntheticBatches(cfg, shard_id, num_shards, index, vocab_size=vocab_size,
                            min_doc=min_doc, max_motif=max_motif, num_batches=num_batches,
                            model_cfg=model_cfg, media_per_row=media_per_row)
