"""Multimodal SeqIO tasks (one per source), a Mixture with rates, and the trainer's input.

Each task reads the offline cache that `pipelines.preprocess_multimodal --kind=<kind>`
writes (`<cache_dir>/tapestry_mm_<kind>/`); an example (see pipelines/interleave.py):

    {"targets": int32 [N]  (text ids with BEGIN, K placeholders, END per media item; no EOS),
     "prompt_length": int32 [], "answer": string [],
     "image_bytes": string [I], "audio_bytes": string [A], "audio_frames": int32 [A],
     "video_bytes": string [V], "video_frames": int32 [V],
     "image_size", "video_frame_size", "n_mels": int32 [],
     "source_id", "source": string [], "source_paths": string [P]}

Registered: `tapestry_mm_<kind>` for every reader kind (interleaved, captions, coco,
librispeech, speech_manifest, activitynet_qa, nextqa, text), `tapestry_mm_text_lm`
(the text task's cache, `tapestry_text`, with empty media features so it can be mixed),
and the Mixture `tapestry_mm` (rates in DEFAULT_RATES). `register_mixture` adds others.

The trainer's input (gin):

    import tasks.multimodal
    train.get_dataset_fn = @multimodal.get_dataset
    multimodal.get_dataset.cache_dirs = [%CACHE_DIR]
    multimodal.get_dataset.max_images = 2      # per-row budgets; see tasks/packing.py

Each host reads its own whole files of every task's cache; `get_state()` of the
returned iterator resumes without replay (tasks/resumable_input.py).
"""
from typing import Any, Iterator, Mapping, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from tasks import packing, resumable, resumable_input, seqio_input, text, vocabulary

KINDS = ("interleaved", "captions", "coco", "librispeech", "speech_manifest", "activitynet_qa", "nextqa", "text")
TEXT_LM_TASK = "tapestry_mm_text_lm"
MIXTURE = "tapestry_mm"
# Rates of the default mixture (proportional): the sources the demo generates.
DEFAULT_RATES = {TEXT_LM_TASK: 0.4, "tapestry_mm_captions": 0.2, "tapestry_mm_speech_manifest": 0.2,
                 "tapestry_mm_interleaved": 0.2}

tf.config.set_visible_devices([], "GPU")


def task_name(kind: str) -> str:
    return f"tapestry_mm_{kind}"


def _pass(dtype: tf.DType, rank: int) -> seqio.Feature:
    return seqio.Feature(seqio.PassThroughVocabulary(1), add_eos=False, required=True, dtype=dtype, rank=rank)


def output_features() -> dict[str, seqio.Feature]:
    return {
        "targets": seqio.Feature(vocabulary.get_vocabulary(), add_eos=False, dtype=tf.int32),
        "prompt_length": _pass(tf.int32, 0), "answer": _pass(tf.string, 0),
        "image_bytes": _pass(tf.string, 1),
        "audio_bytes": _pass(tf.string, 1), "audio_frames": _pass(tf.int32, 1),
        "video_bytes": _pass(tf.string, 1), "video_frames": _pass(tf.int32, 1),
        "image_size": _pass(tf.int32, 0), "video_frame_size": _pass(tf.int32, 0), "n_mels": _pass(tf.int32, 0),
        "source_id": _pass(tf.string, 0), "source": _pass(tf.string, 0), "source_paths": _pass(tf.string, 1),
    }


def _not_cached(split: str, shuffle_files: bool, seed=None):
    del shuffle_files, seed
    raise FileNotFoundError(
        f"split {split!r} of this task is only available from its offline cache; build it with "
        "`python -m pipelines.preprocess_multimodal --kind=KIND --input=... --cache_dir=DIR` and pass DIR "
        "as a cache dir")


def _text_lm_source(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
    """The text task's cache (wherever SeqIO's global cache dirs have it), as documents."""
    task = seqio.get_mixture_or_task(text.TEXT_TASK)
    return task._get_cached_source(split).get_dataset(split=split, shuffle=shuffle_files, seed=seed)  # pylint: disable=protected-access


@seqio.map_over_dataset
def add_empty_media(example):
    """Text-only example -> the multimodal feature set (no media)."""
    empty_s, empty_i = tf.constant([], tf.string), tf.constant([], tf.int32)
    return {"targets": tf.cast(example["targets"], tf.int32), "prompt_length": tf.size(example["targets"]),
            "answer": tf.constant(""), "image_bytes": empty_s, "audio_bytes": empty_s, "audio_frames": empty_i,
            "video_bytes": empty_s, "video_frames": empty_i, "image_size": tf.constant(0),
            "video_frame_size": tf.constant(0), "n_mels": tf.constant(0),
            "source_id": tf.constant(""), "source": tf.constant("text"), "source_paths": empty_s}


def _as_cached(example, lengths):
    del lengths
    return [example]


def _text_lm(example, lengths):
    del lengths
    return [{"targets": example["targets"]}]  # the packer splits long text itself; no media keys = none


def register_tasks() -> None:
    """Registers every multimodal task (with its resumable source) and the default mixture (idempotent)."""
    names = set(seqio.TaskRegistry.names())
    for kind in KINDS:
        resumable.register_source(task_name(kind), resumable.Source(
            cache_task=task_name(kind), transform=_as_cached, features=packing.INPUT_FEATURES,
            rebuild=f"`python -m pipelines.preprocess_multimodal --kind={kind} --input=... --cache_dir=DIR`"))
    resumable.register_source(TEXT_LM_TASK, resumable.Source(
        cache_task=text.TEXT_TASK, transform=_text_lm, features=("targets",),
        rebuild="`python -m pipelines.preprocess_text --input=... --cache_dir=DIR`"))
    for kind in KINDS:
        if task_name(kind) not in names:
            seqio.TaskRegistry.add(
                task_name(kind),
                source=seqio.FunctionDataSource(_not_cached, splits=["train", "validation", "test"]),
                preprocessors=[seqio.CacheDatasetPlaceholder(required=True)],
                output_features=output_features())
    if TEXT_LM_TASK not in names:
        seqio.TaskRegistry.add(
            TEXT_LM_TASK,
            source=seqio.FunctionDataSource(_text_lm_source, splits=["train", "validation"]),
            preprocessors=[add_empty_media],
            output_features=output_features())
    register_mixture(MIXTURE, DEFAULT_RATES)


def register_mixture(name: str, rates: Mapping[str, float]) -> None:
    """A Mixture of registered tasks with the given (proportional) rates (idempotent)."""
    if name in seqio.MixtureRegistry.names():
        return
    bad = {t: r for t, r in rates.items() if r <= 0}
    if bad:
        raise ValueError(f"mixture {name}: rates must be positive, got {bad}")
    seqio.MixtureRegistry.add(name, [(t, float(r)) for t, r in rates.items()])


def use_cache_dirs(cache_dirs: Sequence[str]) -> None:
    """Makes `cache_dirs` SeqIO's only global cache dirs and forgets where tasks were found.

    SeqIO memoises a task's cache dir on first use; a process that switches caches
    (tests, a notebook) would otherwise keep reading the first one it saw.
    """
    seqio.set_global_cache_dirs(list(cache_dirs))
    for name in [task_name(k) for k in KINDS] + [TEXT_LM_TASK, text.TEXT_TASK]:
        if name in seqio.TaskRegistry.names():
            seqio.get_mixture_or_task(name)._cache_dir = None  # pylint: disable=protected-access


def examples(name: str, split: str, *, shuffle: bool = False, seed: int | None = None, num_epochs: int | None = 1,
             shard_id: int = 0, num_shards: int = 1) -> Iterator[dict[str, Any]]:
    """Numpy examples of a registered multimodal task or mixture, from its cache."""
    ds = seqio.get_mixture_or_task(name).get_dataset(
        sequence_length=None, split=split, use_cached=True, shuffle=shuffle, seed=seed, num_epochs=num_epochs,
        shard_info=seqio.ShardInfo(index=shard_id, num_shards=num_shards))
    return ds.as_numpy_iterator()


@gin.configurable(module="multimodal")
def get_dataset(cfg: Any, shard_id: int = 0, num_shards: int = 1, start_batch: int = 0, *,
                state: Mapping[str, Any] | None = None, cache_dirs: Sequence[str] = (),
                num_epochs: int | None = None,
                max_images: int = 0, image_size: int = 224, max_audio: int = 0, audio_frames: int = 3001,
                n_mels: int = 80, max_videos: int = 0, video_frames: int = 16, video_frame_size: int = 112,
                shuffle_buffer_size: int = 1000, cycle_length: int = 4, log_drops_every: int = 100,
                resumable_input_enabled: bool = True) -> Iterator[dict[str, np.ndarray]]:
    """The trainer's get_dataset_fn: packed multimodal batches of `batch_size // num_shards` rows.

    Deterministic for (cfg.seed, shard). When every task of the mixture has a resumable
    source (all of this module's do), each host reads only its whole cache files and the
    iterator's `get_state()`, passed back as `state=`, resumes in constant time (see
    tasks/resumable_input.py); without a state `start_batch` batches are packed and
    skipped. The iterator's `counts` are the packer's (what was split or dropped; drops
    are also logged every `log_drops_every`).
    """
    seqio_input.check_source(cfg, num_shards, cache_dirs)
    length = dict(cfg.task_feature_lengths)["targets"]
    packing_cfg = packing.PackingConfig(
        batch_size=cfg.batch_size // num_shards, length=length, pack=cfg.pack, max_images=max_images,
        image_size=image_size, max_audio=max_audio, audio_frames=audio_frames, n_mels=n_mels,
        max_videos=max_videos, video_frames=video_frames, video_frame_size=video_frame_size)
    name = cfg.mixture_or_task_name
    if resumable_input_enabled and resumable.task_rates(name) is not None:
        def make(inner, seed):
            stream = resumable.mixture_stream(
                name, cfg.split, dict(cfg.task_feature_lengths), shard_id=shard_id, num_shards=num_shards,
                seed=seed, shuffle=cfg.shuffle, state=inner["at"] if inner else None,
                block_size=shuffle_buffer_size, cycle_length=cycle_length, num_epochs=num_epochs)
            return resumable_input.MultimodalBatches(
                stream, packing.MultimodalPacker(packing_cfg, log_drops_every), resume=inner)

        return resumable_input.ResumableBatches(make, shard_id=shard_id, num_shards=num_shards, seed=cfg.seed,
                                                start_batch=start_batch, state=state)
    return _replayed_batches(cfg, packing.MultimodalPacker(packing_cfg, log_drops_every), shard_id, num_shards,
                             start_batch, num_epochs)


def _replayed_batches(cfg: Any, packer: packing.MultimodalPacker, shard_id: int, num_shards: int,
                      start_batch: int, num_epochs: int | None) -> Iterator[dict[str, np.ndarray]]:
    """SeqIO's mixture through the packer; resuming packs and discards `start_batch` batches."""
    stream = examples(cfg.mixture_or_task_name, cfg.split, shuffle=cfg.shuffle, seed=cfg.seed, num_epochs=num_epochs,
                      shard_id=shard_id, num_shards=num_shards)
    for i, batch in enumerate(packer(stream)):
        if i >= start_batch:
            yield batch


register_tasks()
