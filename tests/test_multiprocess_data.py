"""Two processes training on text from a SeqIO cache built by the real text job:
losses equal a 1-process 8-device run fed the same global batches (each host reads
only its own files of the cache, so the reference concatenates both hosts' batches:
`train_testlib.union_dataset_fn`)."""
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


def _args(model_dir, cache, extra=()):
    bindings = [b for b in train_testlib.TINY_BINDINGS if not b.startswith("model_config.overrides")]
    bindings += [train_testlib.overrides_binding(vocab_size=8192),
                 "warmup_cosine_schedule.decay_steps = 100", "train.log_every = 1",
                 "train.eval_every = 0", "CheckpointConfig.save_every = 100",
                 "Partitioner.mesh_shape = (8, 1, 1)",
                 "seqio_input.get_dataset.shuffle_buffer_size = 7", *extra]
    return ["--gin_file=gin/runs/pretrain.gin", f"--gin.MODEL_DIR={model_dir}",
            f"--gin.TRAIN_STEPS={STEPS}", "--gin.BATCH_SIZE=8",
            "--gin.TASK_FEATURE_LENGTHS={'targets': 32}",
            "--gin.MIXTURE_OR_TASK_NAME='tapestry_text'", f"--gin.CACHE_DIR={cache}",
            *[f"--gin_bindings={b}" for b in bindings]]


def test_text_from_a_seqio_cache_on_two_processes(tmp_path, text_cache):
    cluster = train_testlib.launch(_args(tmp_path / "multi", text_cache), 2, 4,
                                   tmp_path / "multi.log")
    codes = cluster.wait(timeout=600)
    assert codes == [0, 0], (codes, (tmp_path / "multi.log").read_text()[-4000:])
    multi = train_testlib.losses(tmp_path / "multi")
    data = (tmp_path / "multi" / "checkpoints" / str(STEPS) / "data" / "metadata").read_text()
    assert len(json.loads(data)["iterator_states"]) == 2  # each host's text input state

    train_testlib.train_in_process(_args(tmp_path / "single", text_cache, [
        "train.get_dataset_fn = @union_dataset_fn", "union_dataset_fn.hosts = 2",
        "union_dataset_fn.inner = @seqio_input.get_dataset"]))
    single = train_testlib.losses(tmp_path / "single")
    steps = list(range(1, STEPS + 1))
    assert sorted(multi) == steps == sorted(single)
    np.testing.assert_allclose([multi[s] for s in steps], [single[s] for s in steps],
                               rtol=0, atol=2e-5)
