"""The multimodal packer: examples (text-only or with media) -> model batches.

SeqIO cannot pack pass-through features, so this is ours. Input: examples as
written by `pipelines.preprocess_multimodal` (media keys optional, so text-only
examples from any task work too), e.g.

    {"targets": [12, 4, 3, 3, 3, 3, 5, 88, 731],      # "a", BEGIN_IMAGE, 4 x <image>, END_IMAGE, "cat ."
     "image_bytes": [<uint8 2x2x3 raw>], "image_size": 2, ...}

Output: batches in the model contract (pipelines/special_tokens.py ids), e.g.
with length 13, one row, pack=True and a second text example [41, 70]:

    decoder_target_tokens [[12,  4,  3,  3,  3,  3,  5, 88, 731, 1, 41, 70,  1]]  (EOS 1 appended)
    decoder_input_tokens  [[ 0, 12,  4,  3,  3,  3,  3,  5, 88, 731, 0, 41, 70]]  (shifted per segment)
    decoder_loss_weights  [[ 1,  0,  0,  0,  0,  0,  0,  1,  1,  1,  1,  1,  1]]  (0 on BEGIN/placeholders/END)
    decoder_segment_ids   [[ 1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  2,  2,  2]]
    decoder_positions     [[ 0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  0,  1,  2]]
    images [1, Mi, 2, 2, 3] uint8 (row's images in token order), image_mask [1, Mi] bool
    audio [B, Ma, T, n_mels] float16, audio_lengths [B, Ma];  videos [B, Mv, F, H, W, 3] uint8, video_lengths

Policy for what does not fit (counted in `MultimodalPacker.counts`, drops logged):
  * a text-only example longer than the row is split into row-sized pieces, each its
    own segment (nothing is lost);
  * an example with media is never split (a media run must stay whole and with its
    payload): it is dropped when its tokens exceed the row length, its items exceed a
    per-row budget (max_images / max_audio / max_videos), or an item is longer than
    the slot (audio frames > audio_frames, video frames > video_frames);
  * packing is greedy first-fit over the rows of the batch being filled; an example
    that fits in no open row flushes the batch (unused row space stays padding).
A modality whose budget is 0 is left out of the batch (no keys).
"""
import dataclasses
import logging
from typing import Any, Iterable, Iterator

import numpy as np

from pipelines import special_tokens

log = logging.getLogger("tapestry.packing")

# The example features the packer reads (the rest of a cached example is not parsed).
INPUT_FEATURES = ("targets", "image_bytes", "image_size", "audio_bytes", "audio_frames", "n_mels",
                  "video_bytes", "video_frames", "video_frame_size")
DROP_REASONS = ("dropped_too_long", "dropped_media_budget", "dropped_media_too_long")
_NO_LOSS_IDS = np.array(sorted(i for ids in special_tokens.MODALITY_IDS.values() for i in ids), dtype=np.int32)
_PLACEHOLDER = {m: ids[0] for m, ids in special_tokens.MODALITY_IDS.items()}


@dataclasses.dataclass(frozen=True)
class PackingConfig:
    """Row shape and per-row media budgets."""
    batch_size: int
    length: int
    pack: bool = True
    max_images: int = 0
    image_size: int = 224
    max_audio: int = 0
    audio_frames: int = 3001      # T slot: MediaConfig.max_audio_frames for 30 s at 10 ms hop
    n_mels: int = 80
    max_videos: int = 0
    video_frames: int = 16        # F slot: MediaConfig.max_video_frames
    video_frame_size: int = 112

    def __post_init__(self):
        for name in ("batch_size", "length", "image_size", "audio_frames", "n_mels", "video_frames", "video_frame_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"PackingConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("max_images", "max_audio", "max_videos"):
            if getattr(self, name) < 0:
                raise ValueError(f"PackingConfig.{name} must be >= 0, got {getattr(self, name)}")


@dataclasses.dataclass
class _Unit:
    """One segment to place: tokens (EOS included) and its media, in order."""
    tokens: np.ndarray
    images: list[np.ndarray]
    audio: list[np.ndarray]
    videos: list[np.ndarray]


@dataclasses.dataclass
class _Row:
    units: list[_Unit] = dataclasses.field(default_factory=list)
    tokens: int = 0
    images: int = 0
    audio: int = 0
    videos: int = 0


def _media(example: dict[str, Any], cfg: PackingConfig) -> tuple[list, list, list]:
    """Raw buffers -> arrays, checking the example's shapes against the packing config."""
    images, audio, videos = [], [], []
    if len(example.get("image_bytes", ())):
        s = int(example["image_size"])
        if s != cfg.image_size:
            raise ValueError(f"example images are {s} px but PackingConfig.image_size is {cfg.image_size}; "
                             "set image_size to the preprocessing job's --image_size")
        images = [np.frombuffer(b, np.uint8).reshape(s, s, 3) for b in example["image_bytes"]]
    if len(example.get("audio_bytes", ())):
        n_mels = int(example["n_mels"])
        if n_mels != cfg.n_mels:
            raise ValueError(f"example audio has {n_mels} mel bins but PackingConfig.n_mels is {cfg.n_mels}")
        audio = [np.frombuffer(b, np.float16).reshape(int(t), n_mels)
                 for b, t in zip(example["audio_bytes"], example["audio_frames"])]
    if len(example.get("video_bytes", ())):
        s = int(example["video_frame_size"])
        if s != cfg.video_frame_size:
            raise ValueError(f"example video frames are {s} px but PackingConfig.video_frame_size is "
                             f"{cfg.video_frame_size}")
        videos = [np.frombuffer(b, np.uint8).reshape(int(f), s, s, 3)
                  for b, f in zip(example["video_bytes"], example["video_frames"])]
    return images, audio, videos


class MultimodalPacker:
    """`packer(examples)` yields packed batches; `counts` says what happened to every example.

    Drops (DROP_REASONS) are logged (warning) at the first and every `log_drops_every`-th.
    """

    def __init__(self, cfg: PackingConfig, log_drops_every: int = 100):
        if log_drops_every < 1:
            raise ValueError(f"log_drops_every={log_drops_every} must be >= 1")
        self.cfg, self.log_drops_every = cfg, log_drops_every
        self.pending_unit = 0
        self.counts = {"examples": 0, "split_text": 0, "dropped_too_long": 0, "dropped_media_budget": 0,
                       "dropped_media_too_long": 0, "segments": 0, "batches": 0}

    def _drop(self, reason: str, count: bool) -> list[_Unit]:
        if count:
            self.counts[reason] += 1
            dropped = sum(self.counts[r] for r in DROP_REASONS)
            if dropped == 1 or dropped % self.log_drops_every == 0:
                log.warning("multimodal packer: %d of %d examples dropped so far (%s)", dropped,
                            self.counts["examples"], ", ".join(f"{r}={self.counts[r]}" for r in DROP_REASONS))
        return []

    def _units(self, example: dict[str, Any], count: bool = True) -> list[_Unit]:
        cfg = self.cfg
        tokens = np.append(np.asarray(example["targets"], dtype=np.int32), np.int32(special_tokens.EOS_ID))
        images, audio, videos = _media(example, cfg)
        if not (images or audio or videos):
            if len(tokens) <= cfg.length:
                return [_Unit(tokens, [], [], [])]
            self.counts["split_text"] += count
            return [_Unit(tokens[i:i + cfg.length], [], [], []) for i in range(0, len(tokens), cfg.length)]
        if len(tokens) > cfg.length:
            return self._drop("dropped_too_long", count)
        if len(images) > cfg.max_images or len(audio) > cfg.max_audio or len(videos) > cfg.max_videos:
            return self._drop("dropped_media_budget", count)
        if any(a.shape[0] > cfg.audio_frames for a in audio) or any(v.shape[0] > cfg.video_frames for v in videos):
            return self._drop("dropped_media_too_long", count)
        return [_Unit(tokens, images, audio, videos)]

    def _fits(self, row: _Row, unit: _Unit) -> bool:
        cfg = self.cfg
        if not cfg.pack and row.units:
            return False
        return (row.tokens + len(unit.tokens) <= cfg.length and row.images + len(unit.images) <= cfg.max_images
                and row.audio + len(unit.audio) <= cfg.max_audio and row.videos + len(unit.videos) <= cfg.max_videos)

    def __call__(self, examples: Iterable[dict[str, Any]]) -> Iterator[dict[str, np.ndarray]]:
        return self.pack(examples)

    def pack(self, examples: Iterable[dict[str, Any]], resume_units: int | None = None
             ) -> Iterator[dict[str, np.ndarray]]:
        """Yields packed batches. When a batch is yielded, `pending_unit` is the index of the unit
        (row piece) of the current example that did not fit and opens the next batch.

        To resume after such a batch: start `examples` at that example, pass its `pending_unit`
        as `resume_units` and restore `counts`; the example is not counted again.
        """
        rows: list[_Row] = []
        for i, example in enumerate(examples):
            resuming = i == 0 and resume_units is not None
            self.counts["examples"] += not resuming
            units = self._units(example, count=not resuming)
            for j in range(resume_units if resuming else 0, len(units)):
                unit = units[j]
                row = next((r for r in rows if self._fits(r, unit)), None)
                if row is None and len(rows) == self.cfg.batch_size:
                    self.pending_unit = j
                    yield self._batch(rows)
                    rows = []
                if row is None:
                    row = _Row()
                    rows.append(row)
                row.units.append(unit)
                row.tokens += len(unit.tokens)
                row.images += len(unit.images)
                row.audio += len(unit.audio)
                row.videos += len(unit.videos)
                self.counts["segments"] += 1
        if rows:
            self.pending_unit = 0
            yield self._batch(rows)  # last, partly filled batch (padding rows have segment id 0)

    def _batch(self, rows: list[_Row]) -> dict[str, np.ndarray]:
        cfg = self.cfg
        B, L = cfg.batch_size, cfg.length
        out = {k: np.zeros([B, L], np.int32) for k in (
            "decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
            "decoder_segment_ids", "decoder_positions")}
        if cfg.max_images:
            out["images"] = np.zeros([B, cfg.max_images, cfg.image_size, cfg.image_size, 3], np.uint8)
            out["image_mask"] = np.zeros([B, cfg.max_images], bool)
        if cfg.max_audio:
            out["audio"] = np.zeros([B, cfg.max_audio, cfg.audio_frames, cfg.n_mels], np.float16)
            out["audio_lengths"] = np.zeros([B, cfg.max_audio], np.int32)
        if cfg.max_videos:
            s = cfg.video_frame_size
            out["videos"] = np.zeros([B, cfg.max_videos, cfg.video_frames, s, s, 3], np.uint8)
            out["video_lengths"] = np.zeros([B, cfg.max_videos], np.int32)
        for b, row in enumerate(rows):
            pos, ni, na, nv = 0, 0, 0, 0
            for seg, unit in enumerate(row.units, start=1):
                n = len(unit.tokens)
                span = slice(pos, pos + n)
                out["decoder_target_tokens"][b, span] = unit.tokens
                out["decoder_input_tokens"][b, pos + 1:pos + n] = unit.tokens[:-1]
                out["decoder_loss_weights"][b, span] = ~np.isin(unit.tokens, _NO_LOSS_IDS)
                out["decoder_segment_ids"][b, span] = seg
                out["decoder_positions"][b, span] = np.arange(n)
                pos += n
                for img in unit.images:
                    out["images"][b, ni] = img
                    out["image_mask"][b, ni] = True
                    ni += 1
                for a in unit.audio:
                    out["audio"][b, na, :a.shape[0]] = a
                    out["audio_lengths"][b, na] = a.shape[0]
                    na += 1
                for v in unit.videos:
                    out["videos"][b, nv, :v.shape[0]] = v
                    out["video_lengths"][b, nv] = v.shape[0]
                    nv += 1
        self.counts["batches"] += 1
        return out
