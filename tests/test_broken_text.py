"""The text job on a broken corpus: every bad record is a dead letter with its reason, id and line.

One Beam pipeline (local runner, 2 workers) over JSONL (plain, compressed, with a
byte-order mark, CRLF) and plain-text files; tiny byte ranges so that line numbers
come from the range-counting pass.
"""
import glob
import gzip
import json

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter

from pipelines import beam_options, job_summary, preprocess_text

GOOD = [{"id": "good-1", "text": "A fine first document."}, {"text": "No id: named by its line."}]


def _write_corpus(d) -> dict[str, tuple[str, str]]:
    """Writes the corpus; returns {expected dead-letter id: (reason, "<file>:<line>" or file)}."""
    lines = [
        b"\xef\xbb\xbf" + json.dumps(GOOD[0]).encode(),          # 1 BOM: dropped, not an error
        json.dumps(GOOD[1]).encode(),                             # 2
        b"",                                                      # 3 blank: skipped, not a document
        b"{not json",                                             # 4
        b'{"id": "broken-id", "text": "unterminated',             # 5 bad JSON that still names its id
        json.dumps({"id": "no-text"}).encode(),                   # 6
        json.dumps({"id": "number", "text": 5}).encode(),         # 7
        b"[1, 2]",                                                # 8 not an object
        b'{"id": "latin-1", "text": "caf\xe9"}',                  # 9 not UTF-8, with an id
        b'{"text": "caf\xe9 au lait"}',                           # 10 not UTF-8, no id
        json.dumps({"id": "blank", "text": " \n "}).encode(),     # 11
        json.dumps({"id": "empty", "text": ""}).encode(),         # 12
        json.dumps({"id": "crlf", "text": "windows line"}).encode() + b"\r",  # 13 CRLF ending
    ]
    (d / "docs.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    with gzip.open(d / "more.jsonl.gz", "wb") as f:
        f.write(json.dumps({"id": "zipped", "text": "compressed but fine"}).encode() + b"\n{oops\n")
    (d / "book.txt").write_bytes(b"\xef\xbb\xbfA book with a byte-order mark.\n\nSecond paragraph.\n")
    (d / "blank.txt").write_bytes(b"  \n\n")
    (d / "binary.txt").write_bytes(b"\xff\xfe\x00garbage")
    return {
        "docs.jsonl:4": ("bad_record", "docs.jsonl:4: not valid JSON"),
        "broken-id": ("bad_record", "docs.jsonl:5: not valid JSON"),
        "no-text": ("bad_record", "docs.jsonl:6: no 'text' field"),
        "number": ("bad_record", "docs.jsonl:7: 'text' is a int"),
        "docs.jsonl:8": ("bad_record", "docs.jsonl:8: a line must hold a JSON object"),
        "latin-1": ("bad_record", "docs.jsonl:9: not UTF-8"),
        "docs.jsonl:10": ("bad_record", "docs.jsonl:10: not UTF-8"),
        "blank": ("empty", "docs.jsonl:11: blank 'text'"),
        "empty": ("empty", "docs.jsonl:12: blank 'text'"),
        "more.jsonl.gz:2": ("bad_record", "more.jsonl.gz:2: not valid JSON"),
        "blank.txt": ("empty", "blank.txt: no text"),
        "binary.txt": ("bad_record", "binary.txt: not UTF-8"),
    }


def _read_examples(task_dir: str) -> dict[str, str]:
    import tensorflow as tf

    out = {}
    for record in tf.data.TFRecordDataset(sorted(glob.glob(f"{task_dir}/train.tfrecord-*"))):
        ex = tf.train.Example.FromString(record.numpy()).features.feature
        out[ex["source_id"].bytes_list.value[0].decode()] = ex["targets_pretokenized"].bytes_list.value[0].decode()
    return out


@pytest.mark.slow
def test_every_bad_record_is_a_dead_letter_with_its_reason(tmp_path):
    expected = _write_corpus(tmp_path)
    cache = str(tmp_path / "cache")
    pipeline = beam.Pipeline(options=beam_options.pipeline_options([], num_workers=2))
    _ = pipeline | preprocess_text.PreprocessText([str(tmp_path / "*.*")], cache, "broken_text", num_shards=2,
                                                  max_chars=200, range_bytes=64)
    result = pipeline.run()
    result.wait_until_finish()

    summary = job_summary.read_summary(cache, "broken_text", "train")
    letters = {l["id"]: l for l in job_summary.read_dead_letters(cache, "broken_text", "train")}
    assert {i: l["reason"] for i, l in letters.items()} == {i: reason for i, (reason, _) in expected.items()}
    for doc_id, (_, where) in expected.items():
        assert where in letters[doc_id]["detail"] and letters[doc_id]["source"] == "text", letters[doc_id]
    good = {"good-1", "docs.jsonl:2", "crlf", "zipped", "book.txt"}
    assert summary["documents_in"] == len(expected) + len(good)
    assert (summary["documents_out"], summary["dead_lettered"], summary["balanced"]) == (len(good), len(expected), True)
    assert summary["dead_letter_reasons"] == {"bad_record": 9, "empty": 3}
    assert summary["examples_out"] == summary["examples_written"] == summary["cache_stats"]["examples"]

    examples = _read_examples(f"{cache}/broken_text")
    assert {s.rsplit("#", 1)[0] for s in examples} == good
    assert examples["good-1#0"] == GOOD[0]["text"] and examples["crlf#0"] == "windows line"
    assert examples["book.txt#0"].startswith("A book")  # the mark is gone from the text

    counters = {r.key.metric.name: r.committed for r in
                result.metrics().query(MetricsFilter().with_namespace(preprocess_text.NAMESPACE))["counters"]}
    assert counters["documents_in"] == summary["documents_in"] and counters["documents_out"] == len(good)
    assert counters["dead_letter_bad_record"] == 9 and counters["dead_letter_empty"] == 3


def test_settings_that_would_hang_or_mislabel_are_refused():
    for kwargs, message in (({"max_chars": 0}, "--max_chars must be >= 1"),
                            ({"validation_fraction": 1.0}, r"--validation_fraction must be in \[0, 1\)"),
                            ({"validation_fraction": -0.1}, "--validation_fraction"),
                            ({"split": "validation", "validation_fraction": 0.1}, "write one split twice")):
        args = {"max_chars": 100, "validation_fraction": 0.0, "split": "train", **kwargs}
        with pytest.raises(ValueError, match=message):
            preprocess_text.check_settings(**args)
