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
    docs = {d["id"]: d["text"] for f in ("a.txt", "b.jsonl")
            for d in text_io.range_documents(text_io.ReadRange(str(root / f)))}
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


def _ranges_with_line_numbers(path: str, range_bytes: int) -> list[text_io.ReadRange]:
    """What ReadRanges does in Beam, in a loop: plan from the size, count each range's lines, number them."""
    import os

    planned = list(text_io.plan_ranges((path, os.path.getsize(path)), text_io.is_jsonl, range_bytes))
    counts = [text_io.count_range_lines(r) for r in planned if r.first_line is None]
    firsts = text_io.first_lines(counts[::-1])  # any order in
    return [text_io.numbered(r, firsts) for r in planned]


@pytest.mark.parametrize("trailing_newline", [True, False])
def test_ranges_split_jsonl_at_lines_and_keep_line_numbers(tmp_path, trailing_newline):
    lines = [json.dumps({"text": f"line {i} " + "x" * (i % 37)}) if i % 5 else "" for i in range(1, 80)]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(lines) + ("\n" if trailing_newline else ""))
    whole = list(text_io.read_range_lines(text_io.ReadRange(str(path))))
    assert whole == [(i + 1, l.encode()) for i, l in enumerate(lines)]
    for range_bytes in (1, 7, 64, 10_000):
        ranges = _ranges_with_line_numbers(str(path), range_bytes)
        assert [r.start for r in ranges[1:]] == [r.end for r in ranges[:-1]]
        assert ranges[0].start == 0 and ranges[-1].end in (None, path.stat().st_size)
        assert [x for r in ranges for x in text_io.read_range_lines(r)] == whole, range_bytes
    docs = [d for r in _ranges_with_line_numbers(str(path), 64) for d in text_io.range_documents(r)]
    assert docs[0] == {"id": "docs.jsonl:1", "text": json.loads(lines[0])["text"]} and len(docs) == len(whole) - 15


def test_plain_text_and_compressed_files_are_one_range(tmp_path):
    import gzip

    (tmp_path / "book.txt").write_text("a\n" * 100)
    with gzip.open(tmp_path / "poem.txt.gz", "wt") as f:
        f.write("zipped\n" * 100)
    with gzip.open(tmp_path / "docs.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"text": f"t{i}"}) + "\n" for i in range(50)))
    for name in ("book.txt", "poem.txt.gz", "docs.jsonl.gz"):
        path = str(tmp_path / name)
        assert list(text_io.plan_ranges((path, 200), text_io.is_jsonl, range_bytes=8)) == [text_io.ReadRange(path)]
    assert list(text_io.range_documents(text_io.ReadRange(str(tmp_path / "poem.txt.gz")))) == [
        {"id": "poem.txt.gz", "text": "zipped\n" * 100}]
    docs = list(text_io.range_documents(text_io.ReadRange(str(tmp_path / "docs.jsonl.gz"))))
    assert docs[49] == {"id": "docs.jsonl.gz:50", "text": "t49"}  # streamed through Beam's gzip handling


def _write_cache(examples, root, num_shards, workers):
    import apache_beam as beam

    from pipelines import beam_options, seqio_cache

    with beam.Pipeline(options=beam_options.pipeline_options([], num_workers=workers)) as p:
        _ = (p | beam.Create(examples).with_output_types(dict)
             | seqio_cache.WriteSeqioCache(str(root), "t", "validation", preprocess_text.TEXT_FEATURES,
                                           num_shards=num_shards))
    return {f.name: f.read_bytes() for f in (root / "t").iterdir() if ".tfrecord-" in f.name}


def test_cache_shards_are_deterministic_and_replace_the_old_ones(tmp_path):
    examples = [{"targets": [i, i + 1], "targets_pretokenized": f"t{i}", "source_id": f"d{i}#0",
                 "source_path": "x"} for i in range(40)]
    first = _write_cache(examples, tmp_path / "a", num_shards=5, workers=1)
    assert sorted(first) == [f"validation.tfrecord-{i:05d}-of-00005" for i in range(5)]
    assert _write_cache(examples[::-1], tmp_path / "b", num_shards=5, workers=2) == first  # same bytes
    # Rewriting with another shard count leaves no stale shard for SeqIO's glob to pick up.
    task_dir = tmp_path / "a" / "t"
    (task_dir / "validation.tfrecord-00013-of-00014").write_bytes(b"stale")
    again = _write_cache(examples[:3], tmp_path / "a", num_shards=2, workers=2)
    assert sorted(again) == ["validation.tfrecord-00000-of-00002", "validation.tfrecord-00001-of-00002"]
    assert json.loads((task_dir / "stats.validation.json").read_text())["examples"] == 3
    assert not [p for p in task_dir.iterdir() if p.name.startswith(".tmp")]


def test_an_empty_split_still_gets_every_shard_info_stats_and_completed(tmp_path):
    shards = _write_cache([], tmp_path, num_shards=3, workers=1)
    assert shards == {f"validation.tfrecord-{i:05d}-of-00003": b"" for i in range(3)}
    task_dir = tmp_path / "t"
    assert json.loads((task_dir / "stats.validation.json").read_text()) == {"examples": 0}
    assert json.loads((task_dir / "info.validation.json").read_text())["num_shards"] == 3
    assert (task_dir / "COMPLETED").exists()
