"""The text job writes a SeqIO cache that SeqIO reads back with the same tokens."""
import dataclasses
import json

import numpy as np
import pytest
import seqio
import sentencepiece as spm

from pipelines import preprocess_text, special_tokens, text_io
from tasks import seqio_input, text, vocabulary


@dataclasses.dataclass
class DatasetConfig:
    mixture_or_task_name: str = "tapestry_text_test"
    task_feature_lengths: dict = dataclasses.field(default_factory=lambda: {"targets": 64})
    split: str = "train"
    batch_size: int = 2
    shuffle: bool = False
    seed: int = 0
    use_cached: bool = True
    pack: bool = True


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    (root / "a.txt").write_text("The cat sat on the mat.\n\nIt was <image> warm.\n" * 40)
    (root / "b.jsonl").write_text("\n".join(json.dumps({"id": f"b{i}", "text": f"Doc {i}: dogs bark {i} times."})
                                            for i in range(30)))
    cache_dir = root / "cache"
    preprocess_text.main([f"--input={root}/a.txt", f"--input={root}/b.jsonl", f"--cache_dir={cache_dir}",
                          "--task=tapestry_text_test", "--max_chars=300", "--validation_fraction=0.2",
                          "--num_shards=2", "--direct_num_workers=2"])
    text.register_text_task("tapestry_text_test")
    seqio.add_global_cache_dirs([str(cache_dir)])
    return root, cache_dir / "tapestry_text_test"


def test_cache_layout_and_stats(cache):
    _, task_dir = cache
    names = {p.name for p in task_dir.iterdir()}
    assert {"COMPLETED", "info.train.json", "stats.train.json", "info.validation.json"} <= names
    assert "train.tfrecord-00000-of-00002" in names
    train = json.loads((task_dir / "stats.train.json").read_text())
    val = json.loads((task_dir / "stats.validation.json").read_text())
    assert train["examples"] > 0 and val["examples"] > 0


def test_seqio_reads_back_the_same_tokens(cache):
    root, _ = cache
    sp = spm.SentencePieceProcessor(model_file=vocabulary.DEFAULT_VOCAB_PATH)
    task = seqio.get_mixture_or_task("tapestry_text_test")
    got = {}
    for split in ("train", "validation"):
        for ex in task.get_dataset(
                None, split=split, use_cached=True, shuffle=False).as_numpy_iterator():
            assert ex["targets"][-1] == special_tokens.EOS_ID
            got[ex["source_id"].decode()] = (ex["targets_pretokenized"].decode(), ex["targets"][:-1].tolist())
    docs = dict(text_io.read_documents_from_file("b.jsonl", (root / "b.jsonl").read_bytes()))
    docs.update(text_io.read_documents_from_file("a.txt", (root / "a.txt").read_bytes()))
    rebuilt = {}
    for source_id, (chunk, ids) in got.items():
        assert ids == special_tokens.escape_reserved_ids(sp.encode(chunk))
        assert sp.decode(ids) == chunk
        doc, index = source_id.rsplit("#", 1)
        rebuilt.setdefault(doc, {})[int(index)] = chunk
    for doc, chunks in rebuilt.items():
        assert "".join(chunks[i] for i in sorted(chunks)) == docs[doc]
    assert set(rebuilt) == set(docs)


def test_batches_follow_the_model_contract_and_resume(cache):
    cfg = DatasetConfig()
    first = list(zip(range(3), seqio_input.get_dataset(cfg)))
    batch = first[0][1]
    assert set(batch) == {"decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                          "decoder_segment_ids", "decoder_positions"}
    assert all(v.shape == (2, 64) and v.dtype == np.int32 for v in batch.values())
    resumed = next(seqio_input.get_dataset(cfg, start_batch=2))
    np.testing.assert_array_equal(resumed["decoder_target_tokens"], first[2][1]["decoder_target_tokens"])


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        preprocess_text.main([f"--input={tmp_path}/missing.txt", f"--cache_dir={tmp_path}/c"])
    assert "no input files match" in capsys.readouterr().err


def test_unknown_task_names_the_nearest(cache):
    with pytest.raises(ValueError, match="did you mean.*tapestry_text_test"):
        next(seqio_input.get_dataset(DatasetConfig(mixture_or_task_name="tapestry_text_tset")))


def test_ranges_split_jsonl_at_lines_and_keep_line_numbers(tmp_path):
    lines = [json.dumps({"text": f"line {i} " + "x" * (i % 7)}) if i % 5 else "" for i in range(1, 60)]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(lines))  # no newline after the last line
    whole = list(text_io.read_documents_from_file(str(path), path.read_bytes()))
    ranges = list(text_io.plan_ranges(str(path), range_bytes=64))
    assert len(ranges) > 5
    assert [r.start for r in ranges[1:]] == [r.end for r in ranges[:-1]]
    assert ranges[0].start == 0 and ranges[-1].end == path.stat().st_size
    assert all(path.read_bytes()[r.end - 1:r.end] == b"\n" for r in ranges[:-1])
    assert [d for r in ranges for d in text_io.read_range_documents(r)] == whole
    assert whole[0] == ("docs.jsonl:1", json.loads(lines[0])["text"])


def test_plain_text_and_compressed_files_are_one_range(tmp_path):
    import gzip

    (tmp_path / "book.txt").write_text("a\n" * 100)
    with gzip.open(tmp_path / "poem.txt.gz", "wt") as f:
        f.write("zipped\n" * 100)
    assert list(text_io.plan_ranges(str(tmp_path / "book.txt"), range_bytes=8)) == [
        text_io.ReadRange(str(tmp_path / "book.txt"))]
    [r] = text_io.plan_ranges(str(tmp_path / "poem.txt.gz"), range_bytes=8)
    assert list(text_io.read_range_documents(r)) == [("poem.txt.gz", "zipped\n" * 100)]


def test_an_empty_split_still_gets_info_stats_and_completed(tmp_path):
    import apache_beam as beam

    from pipelines import seqio_cache

    options = beam.options.pipeline_options.PipelineOptions(
        ["--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner"])
    with beam.Pipeline(options=options) as p:
        _ = (p | beam.Create([]).with_output_types(dict)
             | seqio_cache.WriteSeqioCache(str(tmp_path), "empty", "validation", preprocess_text.TEXT_FEATURES,
                                           num_shards=0))
    task_dir = tmp_path / "empty"
    assert json.loads((task_dir / "stats.validation.json").read_text()) == {"examples": 0}
    assert json.loads((task_dir / "info.validation.json").read_text())["num_shards"] == 1
    assert (task_dir / "COMPLETED").exists()
