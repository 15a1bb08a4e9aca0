"""Multimodal SeqIO tasks, the mixture with the text task, and the trainer's get_dataset."""
import json
import logging
import types

import apache_beam as beam
import numpy as np
import pytest
import seqio
from PIL import Image

from pipelines import preprocess_multimodal as job, preprocess_text, special_tokens as st
from pipelines.media_config import MediaConfig
from tasks import multimodal, resumable
from tests.test_pipelines_interleave import VOCAB
from tests.test_pipelines_media import _wav

pytestmark = pytest.mark.slow  # builds four caches with the real Beam jobs

CFG = MediaConfig(image_size=32, image_patch_size=16, max_audio_seconds=2.0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """Caches of the default mixture's four tasks, built by the real jobs (one in-memory pipeline)."""
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), np.uint8)).save(d / f"img{i}.png")
        (d / f"s{i}.wav").write_bytes(_wav((rng.normal(size=8000 * (i + 1)) * 0.1).astype(np.float32), 16000))
    (d / "captions.jsonl").write_text("".join(
        json.dumps({"image": f"img{i}.png", "caption": f"picture number {i}"}) + "\n" for i in range(4)))
    (d / "speech.jsonl").write_text("".join(
        json.dumps({"audio": f"s{i}.wav", "text": f"utterance {i}"}) + "\n" for i in range(4)))
    (d / "docs.jsonl").write_text("".join(json.dumps({"id": f"d{i}", "parts": [
        {"text": "see"}, {"image": f"img{i}.png"}, {"text": "and hear"}, {"audio": f"s{i}.wav"}]}) + "\n"
        for i in range(4)))
    (d / "book.txt").write_text("It was the best of times, it was the worst of times. " * 40)
    cache = str(d / "cache")
    options = beam.options.pipeline_options.PipelineOptions(
        ["--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner"])
    with beam.Pipeline(options=options) as p:
        for kind, name in (("captions", "captions.jsonl"), ("speech_manifest", "speech.jsonl"),
                           ("interleaved", "docs.jsonl")):
            _ = p | kind >> job.PreprocessMultimodal(kind, [str(d / name)], cache, multimodal.task_name(kind), CFG,
                                                     vocab=VOCAB)
        preprocess_text.build(p, [str(d / "book.txt")], cache, "tapestry_text", VOCAB, max_chars=400)
    multimodal.use_cache_dirs([cache])
    return cache


def _cfg(**kw):
    base = dict(mixture_or_task_name=multimodal.MIXTURE, task_feature_lengths={"targets": 256}, split="train",
                batch_size=4, shuffle=True, seed=3, use_cached=True, pack=True)
    return types.SimpleNamespace(**{**base, **kw})


def test_every_source_kind_has_a_task():
    names = set(seqio.TaskRegistry.names())
    assert {multimodal.task_name(k) for k in multimodal.KINDS} <= names
    assert multimodal.MIXTURE in seqio.MixtureRegistry.names()


def test_tasks_read_back_and_text_gets_empty_media(cache_dir):
    multimodal.use_cache_dirs([cache_dir])
    captions = list(multimodal.examples("tapestry_mm_captions", "train"))
    assert len(captions) == 4 and all(len(e["image_bytes"]) == 1 for e in captions)
    assert sorted(e["answer"].decode() for e in captions) == [f"picture number {i}" for i in range(4)]
    text = list(multimodal.examples(multimodal.TEXT_LM_TASK, "train"))
    assert text and all(len(e["image_bytes"]) == 0 and e["source"] == b"text" for e in text)


def test_mixture_batches_in_model_contract(cache_dir):
    multimodal.use_cache_dirs([cache_dir])
    it = multimodal.get_dataset(_cfg(), max_images=2, image_size=32, max_audio=2, audio_frames=201)
    batches = [next(it) for _ in range(6)]
    for b in batches:
        assert b["decoder_target_tokens"].shape == (4, 256)
        assert b["images"].shape == (4, 2, 32, 32, 3) and b["audio"].shape == (4, 2, 201, 80)
        # Each row: placeholders == slots of its valid items (image K=4; audio K=ceil(T/4)).
        for r in range(4):
            ids = b["decoder_input_tokens"][r]
            assert (ids == st.IMAGE_ID).sum() == 4 * b["image_mask"][r].sum()
            assert (ids == st.AUDIO_ID).sum() == sum(-(-int(t) // 4) for t in b["audio_lengths"][r])
        assert not b["decoder_loss_weights"][np.isin(b["decoder_target_tokens"], [3, 4, 5, 6, 7, 8])].any()
    assert any(b["image_mask"].any() for b in batches) and any((b["audio_lengths"] > 0).any() for b in batches)
    assert it.counts["examples"] > 0 and it.counts["dropped_too_long"] == 0


def _run(it, n):
    batches, states = [], []
    for _ in range(n):
        batches.append(next(it))
        states.append(json.loads(json.dumps(it.get_state())))
    return batches, states


def _equal(a, b):
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_resume_from_state_gives_the_uninterrupted_batches(cache_dir):
    multimodal.use_cache_dirs([cache_dir])
    # Short rows and small budgets: many batches per pass, text split over rows, blocks of 3 records.
    cfg = _cfg(task_feature_lengths={"targets": 48}, batch_size=2)
    kw = dict(max_images=1, image_size=32, max_audio=1, audio_frames=201, shuffle_buffer_size=3, cycle_length=2)
    batches, states = _run(multimodal.get_dataset(cfg, **kw), 40)
    assert max(len(json.dumps(s)) for s in states) < 4096
    assert states[-1]["input"]["counts"]["split_text"] > 0
    for k in (0, 3, 17, 31):
        resumed = multimodal.get_dataset(cfg, start_batch=k + 1, state=states[k], **kw)
        again, again_states = _run(resumed, 8)
        assert all(_equal(a, b) for a, b in zip(again, batches[k + 1:k + 9])), k
        assert again_states == states[k + 1:k + 9]
    replayed = multimodal.get_dataset(cfg, start_batch=5, **kw)
    assert all(_equal(a, b) for a, b in zip(_run(replayed, 3)[0], batches[5:8]))


def test_drops_are_counted_and_logged(cache_dir, caplog):
    multimodal.use_cache_dirs([cache_dir])
    # No audio slots: every speech example and every interleaved document (image + audio) is dropped.
    it = multimodal.get_dataset(_cfg(), max_images=2, image_size=32, max_audio=0, log_drops_every=2)
    with caplog.at_level(logging.WARNING, logger="tapestry.packing"):
        for _ in range(4):
            next(it)
    dropped = it.counts["dropped_media_budget"]
    assert dropped > 2 and it.get_state()["input"]["counts"]["dropped_media_budget"] == dropped
    logged = [r.getMessage() for r in caplog.records if "dropped so far" in r.getMessage()]
    assert logged and len(logged) == 1 + dropped // 2 and f"dropped_media_budget={dropped - dropped % 2}" in logged[-1]


def test_resumable_sources_read_what_seqio_reads(cache_dir):
    multimodal.use_cache_dirs([cache_dir])

    def key(e):
        return (tuple(np.asarray(e["targets"]).tolist()), tuple(e.get("image_bytes", ())),
                tuple(e.get("audio_bytes", ())), tuple(np.asarray(e.get("audio_frames", ())).tolist()))

    for name in ("tapestry_mm_interleaved", "tapestry_mm_speech_manifest", multimodal.TEXT_LM_TASK):
        ours = resumable.mixture_stream(name, "train", {"targets": 256}, shard_id=0, num_shards=1, seed=0,
                                        shuffle=False, num_epochs=1)
        assert sorted(map(key, ours)) == sorted(map(key, multimodal.examples(name, "train"))), name


def test_unknown_name_is_a_clear_error(cache_dir):
    with pytest.raises(ValueError, match="did you mean"):
        next(multimodal.get_dataset(_cfg(mixture_or_task_name="tapestry_mm_caption")))
