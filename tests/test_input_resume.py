"""Text input that resumes from a saved state without replay, per-host file shares, the
numpy LM packing against SeqIO's, and the per-host sharding check on meshes."""
import collections
import json
import shutil
import types

import apache_beam as beam
import numpy as np
import pytest
import seqio
import tensorflow as tf

from model import dataset_config
from pipelines import preprocess_text
from tasks import lm_packing, record_files, resumable, seqio_input, text

TASK = "tapestry_text_resume_test"
KW = dict(shuffle_buffer_size=7, cycle_length=2)  # small blocks: many block and epoch boundaries


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A 4-shard text cache built by the real text job (~330 examples, ~320 packed rows of 32)."""
    root = tmp_path_factory.mktemp("resume")
    (root / "docs.jsonl").write_text("".join(json.dumps(
        {"id": f"d{i}", "text": f"Document {i}: " + " ".join(f"w{i * 7 + j}" for j in range(5 + i % 40))}) + "\n"
        for i in range(80)))
    options = beam.options.pipeline_options.PipelineOptions(
        ["--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner"])
    with beam.Pipeline(options=options) as p:
        preprocess_text.build(p, [str(root / "docs.jsonl")], str(root / "cache"), TASK, max_chars=120, num_shards=4)
    text.register_text_task(TASK)
    seqio.add_global_cache_dirs([str(root / "cache")])
    return root / "cache" / TASK


def _cfg(**kw):
    base = dict(mixture_or_task_name=TASK, task_feature_lengths={"targets": 32}, split="train", batch_size=4,
                shuffle=True, seed=1, use_cached=True, pack=True)
    return types.SimpleNamespace(**{**base, **kw})


def _equal(a, b):
    return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def _run(it, n):
    """n batches and the (JSON round-tripped) state after each."""
    batches, states = [], []
    for _ in range(n):
        batches.append(next(it))
        states.append(json.loads(json.dumps(it.get_state())))
    return batches, states


def test_lm_packing_matches_seqio():
    rng = np.random.default_rng(0)
    examples = [rng.integers(2, 500, rng.integers(1, 17)).astype(np.int32) for _ in range(70)]
    ds = tf.data.Dataset.from_tensor_slices({"targets": tf.ragged.constant(examples)})
    ds = ds.map(lambda ex: {"targets": ex["targets"]})
    for pack in (True, False):
        want = list(seqio.LMFeatureConverter(pack=pack)(ds, {"targets": 16}).as_numpy_iterator())
        rows = [lm_packing.pack_window(examples[i:i + 16], 16) for i in range(0, 70, 16)] if pack else \
            [(lm_packing.pad_rows(examples, 16), None)]
        tokens = np.concatenate([t for t, _ in rows])
        got = lm_packing.lm_features(tokens, np.concatenate([p for _, p in rows]) if pack else None)
        assert set(got) == set(want[0]) and len(tokens) == len(want)
        for k in got:
            np.testing.assert_array_equal(got[k], np.stack([w[k] for w in want]), err_msg=f"{k} pack={pack}")


def test_pieces_match_the_task_preprocessors(cache):
    lengths = {"targets": 32}
    stream = resumable.mixture_stream(TASK, "train", lengths, shard_id=0, num_shards=1, seed=0, shuffle=False,
                                      num_epochs=1)
    ours = collections.Counter(tuple(ex["targets"].tolist()) for ex in stream)
    ds = seqio.get_mixture_or_task(TASK).get_dataset(lengths, split="train", use_cached=True, shuffle=False)
    theirs = collections.Counter(tuple(ex["targets"].tolist()) for ex in ds.as_numpy_iterator())
    assert ours == theirs and sum(ours.values()) > 150


@pytest.mark.parametrize("pack", [True, False])
def test_resume_from_state_gives_the_uninterrupted_batches(cache, pack):
    cfg = _cfg(pack=pack)
    batches, states = _run(seqio_input.get_dataset(cfg, **KW), 90)
    assert states[-1]["input"]["window"]["tasks"][TASK]["cursor"]["epoch"] >= 1  # crossed an epoch
    assert max(len(json.dumps(s)) for s in states) < 4096
    for k in (0, 6, 37, 70):
        resumed = seqio_input.get_dataset(cfg, start_batch=k + 1, state=states[k], **KW)
        again, again_states = _run(resumed, 12)
        assert all(_equal(a, b) for a, b in zip(again, batches[k + 1:k + 13])), k
        assert again_states == states[k + 1:k + 13]


def test_replay_without_state_and_seed_in_state(cache):
    batches, states = _run(seqio_input.get_dataset(_cfg(), **KW), 12)
    replayed = seqio_input.get_dataset(_cfg(), start_batch=9, **KW)
    assert all(_equal(a, b) for a, b in zip(_run(replayed, 3)[0], batches[9:]))
    other = seqio_input.get_dataset(_cfg(seed=2), **KW)
    assert not _equal(next(other), batches[0])
    # An unseeded run draws a seed, which its state keeps.
    unseeded = seqio_input.get_dataset(_cfg(seed=None), **KW)
    first, first_states = _run(unseeded, 4)
    resumed = seqio_input.get_dataset(_cfg(seed=None), start_batch=2, state=first_states[1], **KW)
    assert all(_equal(a, b) for a, b in zip(_run(resumed, 2)[0], first[2:]))


def test_two_hosts_read_disjoint_files_that_cover_the_cache(cache):
    files = record_files.cache_files(str(cache), "train")
    shares = [record_files.host_files(files, i, 2, "job") for i in range(2)]
    assert not set(shares[0]) & set(shares[1]) and sorted(shares[0] + shares[1]) == files

    def examples(shard_id, num_shards):
        stream = resumable.mixture_stream(TASK, "train", {"targets": 32}, shard_id=shard_id, num_shards=num_shards,
                                          seed=5, shuffle=True, num_epochs=1, block_size=7)
        return collections.Counter(tuple(ex["targets"].tolist()) for ex in stream)

    assert examples(0, 2) + examples(1, 2) == examples(0, 1)
    rows = [next(seqio_input.get_dataset(_cfg(), i, 2, **KW))["decoder_target_tokens"] for i in range(2)]
    assert rows[0].shape == (2, 32) and not np.array_equal(rows[0], rows[1])


def test_too_few_shards_is_a_clear_error(cache):
    with pytest.raises(ValueError, match=r"4 TFRecord shard\(s\).*5 hosts.*preprocess_text.*--num_shards"):
        seqio_input.get_dataset(_cfg(batch_size=5), 0, 5)


def test_a_corrupt_record_names_the_file(cache, tmp_path):
    path = str(tmp_path / "bad.tfrecord")
    shutil.copy(record_files.cache_files(str(cache), "train")[0], path)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    reader = record_files.RecordReader(path)
    with pytest.raises(record_files.CorruptRecordError, match="bad.tfrecord.*CRC"):
        while reader.read() is not None:
            pass


class _Mesh:
    """The two attributes of a jax Mesh the check reads, for meshes over several hosts."""

    def __init__(self, shape, hosts, names=("data", "expert", "model")):
        n = int(np.prod(shape))
        self.axis_names = names
        self.devices = np.empty(n, dtype=object)
        self.devices[:] = [types.SimpleNamespace(process_index=i * hosts // n) for i in range(n)]
        self.devices = self.devices.reshape(shape)


def test_host_data_sharding_check():
    import jax  # pylint: disable=import-outside-toplevel
    dataset_config.check_host_data_sharding(jax.make_mesh((2, 2, 2), ("data", "expert", "model")))
    for shape in [(8, 1, 1), (2, 2, 2), (2, 1, 4), (4, 2, 1)]:  # 2 hosts x 4 devices, host-major
        dataset_config.check_host_data_sharding(_Mesh(shape, hosts=2))
    with pytest.raises(ValueError, match="'model' .*spans several hosts"):
        dataset_config.check_host_data_sharding(_Mesh((1, 1, 8), hosts=2))
    with pytest.raises(ValueError, match="'model' .*spans several hosts"):
        dataset_config.check_host_data_sharding(_Mesh((1, 2, 4), hosts=4))


def test_a_state_from_another_host_count_starts_the_share_afresh(cache, caplog):
    two_hosts = seqio_input.get_dataset(_cfg(), 0, 2, **KW)
    next(two_hosts)
    with caplog.at_level("WARNING", logger="tapestry.input"):
        one_host = seqio_input.get_dataset(_cfg(), 0, 1, start_batch=1, state=two_hosts.get_state(), **KW)
    assert "host 0 of 2" in caplog.text and "starts from its beginning" in caplog.text
    assert _equal(next(one_host), next(seqio_input.get_dataset(_cfg(), 0, 1, **KW)))
