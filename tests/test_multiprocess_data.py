"""Two processes training on data from SeqIO caches built by the real jobs (text, and
multimodal captions packed with their images): losses equal a 1-process 8-device run
fed the same global batches (each host reads only its own files of the cache, so the
reference concatenates both hosts' batches: `train_testlib.union_dataset_fn`)."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from tests import train_testlib

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    jax.device_count() < 8, reason="the 1-process reference needs 8 devices (XLA_FLAGS)")]

STEPS = 8


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory):
    """A 4-shard cache of `tapestry_text` (~80 short documents) by the real text job."""
    import apache_beam as beam
    from pipelines import preprocess_text
    root = tmp_path_factory.mktemp("text")
    (root / "docs.jsonl").write_text("".join(json.dumps(
        {"id": f"d{i}", "text": f"Document {i}: " + " ".join(
            f"w{i * 7 + j}" for j in range(5 + i % 40))}) + "\n" for i in range(80)))
    options = beam.options.pipeline_options.PipelineOptions(
        ["--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner"])
    with beam.Pipeline(options=options) as p:
        preprocess_text.build(p, [str(root / "docs.jsonl")], str(root / "cache"),
                              "tapestry_text", max_chars=120, num_shards=4)
    return root / "cache"


def _args(model_dir, cache, extra=(), gin_file="gin/runs/pretrain.gin", task="tapestry_text",
          length=32, overrides=None):
    bindings = [b for b in train_testlib.TINY_BINDINGS if not b.startswith("model_config.overrides")]
    bindings += [overrides or train_testlib.overrides_binding(vocab_size=8192),
                 "warmup_cosine_schedule.decay_steps = 100", "train.log_every = 1",
                 "train.eval_every = 0", "CheckpointConfig.save_every = 100",
                 "Partitioner.mesh_shape = (8, 1, 1)",
                 "seqio_input.get_dataset.shuffle_buffer_size = 7", *extra]
    return [f"--gin_file={gin_file}", f"--gin.MODEL_DIR={model_dir}",
            f"--gin.TRAIN_STEPS={STEPS}", "--gin.BATCH_SIZE=8",
            f"--gin.TASK_FEATURE_LENGTHS={{'targets': {length}}}",
            f"--gin.MIXTURE_OR_TASK_NAME='{task}'", f"--gin.CACHE_DIR={cache}",
            *[f"--gin_bindings={b}" for b in bindings]]


def _two_processes_equal_one(tmp_path, inner, **kw):
    cluster = train_testlib.launch(_args(tmp_path / "multi", **kw), 2, 4, tmp_path / "multi.log")
    codes = cluster.wait(timeout=1200)
    assert codes == [0, 0], (codes, (tmp_path / "multi.log").read_text()[-4000:])
    multi = train_testlib.losses(tmp_path / "multi")
    data = (tmp_path / "multi" / "checkpoints" / str(STEPS) / "data" / "metadata").read_text()
    assert len(json.loads(data)["iterator_states"]) == 2  # each host's input state

    extra = [*kw.pop("extra", ()), "train.get_dataset_fn = @union_dataset_fn",
             "union_dataset_fn.hosts = 2", f"union_dataset_fn.inner = @{inner}"]
    train_testlib.train_in_process(_args(tmp_path / "single", extra=extra, **kw))
    single = train_testlib.losses(tmp_path / "single")
    steps = list(range(1, STEPS + 1))
    assert sorted(multi) == steps == sorted(single)
    np.testing.assert_allclose([multi[s] for s in steps], [single[s] for s in steps],
                               rtol=0, atol=2e-5)


def test_text_from_a_seqio_cache_on_two_processes(tmp_path, text_cache):
    _two_processes_equal_one(tmp_path, "seqio_input.get_dataset", cache=text_cache)


@pytest.fixture(scope="module")
def captions_cache(tmp_path_factory):
    """24 captioned images, 2 shards, by the real multimodal job (16 image slots each)."""
    import apache_beam as beam
    from PIL import Image
    from pipelines import preprocess_multimodal
    from pipelines.media_config import MediaConfig
    from tasks import multimodal
    root = tmp_path_factory.mktemp("captions")
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), np.uint8)).save(root / f"img{i}.png")
    (root / "captions.jsonl").write_text("".join(json.dumps(
        {"image": f"img{i}.png", "caption": f"picture number {i}"}) + "\n" for i in range(24)))
    options = beam.options.pipeline_options.PipelineOptions(
        ["--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner"])
    with beam.Pipeline(options=options) as p:
        _ = p | preprocess_multimodal.PreprocessMultimodal(
            "captions", [str(root / "captions.jsonl")], str(root / "cache"),
            multimodal.task_name("captions"), MediaConfig(image_size=32, image_patch_size=8),
            num_shards=2)
    return root / "cache"


def test_multimodal_packed_captions_on_two_processes(tmp_path, captions_cache):
    overrides = ("model_config.overrides = {'d_model': 32, 'num_layers': 1, 'num_heads': 2, "
                 "'num_kv_heads': 1, 'head_dim': 16, 'd_ff': 64, 'vocab_size': 8192, "
                 "'max_len': 64, 'video': None, 'audio': None}")
    extra = ["import tasks.multimodal", "multimodal.get_dataset.cache_dirs = [%CACHE_DIR]",
             "multimodal.get_dataset.max_images = 1", "multimodal.get_dataset.image_size = 32",
             "multimodal.get_dataset.shuffle_buffer_size = 5",
             "train.get_dataset_fn = @multimodal.get_dataset"]
    _two_processes_equal_one(tmp_path, "multimodal.get_dataset", cache=captions_cache,
                             task="tapestry_mm_captions", length=64, overrides=overrides,
                             extra=extra)
