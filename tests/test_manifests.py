"""Whole-file manifests are read row by row: one bad row is one error record, every other row comes out.

Each manifest below has ten good rows and one broken one (a byte that is not UTF-8,
or a row that does not parse); the reader must yield ten documents and one error
record naming that row, both on the plain path and through the Beam job's reading step.
"""
import csv
import io
import json

import apache_beam as beam
import pytest

from pipelines import beam_options, mm_readers, preprocess_multimodal

N_GOOD = 10
NEXTQA_HEADER = ["video", "frame_count", "width", "height", "question", "answer", "qid", "type",
                 "a0", "a1", "a2", "a3", "a4"]


def _nextqa(d) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(NEXTQA_HEADER)
    for i in range(N_GOOD + 1):
        w.writerow([f"v{i}", 10, 1, 1, f"what happens {i}", i % 5, i, "CW", "a", "b", "c", "d", "e"])
    data = out.getvalue().encode().replace(b"what happens 4", b"what happ\xe9ns 4")  # row 6 of the file
    (d / "val.csv").write_bytes(data)
    return str(d / "val.csv")


def _nextqa_bad_column(d) -> str:
    path = _nextqa(d)
    with open(path, "ab") as f:
        f.write(b"v99,10,1,1,what,seven,99,CW,a,b,c,d,e\n")  # answer is not a number
    return path


def _coco(d) -> str:
    images = [{"id": i, "file_name": f"{i:03d}.jpg"} for i in range(N_GOOD + 1)]
    annotations = [{"id": 100 + i, "image_id": i, "caption": f"caption number {i}"} for i in range(N_GOOD + 1)]
    data = json.dumps({"images": images, "annotations": annotations}).encode()
    (d / "captions.json").write_bytes(data.replace(b"caption number 7", b"caption n\xfamber 7"))
    return str(d / "captions.json")


def _librispeech(d) -> str:
    chapter = d / "libri" / "test-clean" / "19" / "198"
    chapter.mkdir(parents=True)
    lines = [f"19-198-{i:04d} TRANSCRIPT NUMBER {i}".encode() for i in range(N_GOOD + 1)]
    lines[3] = b"19-198-0003 CAF\xc9 AU LAIT"
    (chapter / "19-198.trans.txt").write_bytes(b"\n".join(lines) + b"\n")
    return str(d / "libri")


def _activitynet(d) -> str:
    qs = [{"video_name": f"vid{i}", "question": f"is it {i}", "question_id": f"vid{i}_{i}"} for i in range(N_GOOD + 1)]
    answers = [{"answer": "yes", "question_id": f"vid{i}_{i}", "type": 0} for i in range(N_GOOD + 1)]
    (d / "test_q.json").write_bytes(json.dumps(qs).encode().replace(b"is it 2", b"is it \xff2"))
    (d / "test_a.json").write_text(json.dumps(answers))
    return str(d / "test_q.json")


CASES = {  # kind: (writer, id of the broken row, where its detail points)
    "nextqa": (_nextqa, "nextqa:v4:4", "val.csv:6"),
    "coco": (_coco, "coco:107", "annotation 7"),
    "librispeech": (_librispeech, "19-198-0003", "19-198.trans.txt:4"),
    "activitynet_qa": (_activitynet, "vid2_2", "question 2"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_one_bad_row_loses_exactly_that_row(tmp_path, kind):
    write, bad_id, where = CASES[kind]
    docs = list(mm_readers.read_documents(kind, write(tmp_path)))
    errors = [d for d in docs if "error" in d]
    assert len(docs) == N_GOOD + 1 and len(errors) == 1, errors
    (error,) = errors
    assert (error["id"], error["error"], error["source"]) == (bad_id, "bad_record", kind)
    assert where in error["detail"] and "UTF-8" in error["detail"]
    assert len({d["id"] for d in docs}) == N_GOOD + 1


def test_a_csv_row_that_does_not_parse_is_its_own_error(tmp_path):
    docs = list(mm_readers.read_documents("nextqa", _nextqa_bad_column(tmp_path)))
    errors = {d["id"]: d["detail"] for d in docs if "error" in d}
    assert len(docs) == N_GOOD + 2 and set(errors) == {"nextqa:v4:4", "nextqa:v99:99"}
    assert "val.csv:13: invalid literal" in errors["nextqa:v99:99"]


def test_a_json_manifest_that_does_not_parse_is_one_error_for_the_file(tmp_path):
    (tmp_path / "captions.json").write_text('{"images": [], "annotations": [')
    (doc,) = mm_readers.read_documents("coco", str(tmp_path / "captions.json"))
    assert (doc["id"], doc["error"]) == ("captions.json", "bad_record")


@pytest.mark.slow
def test_the_beam_reading_step_reads_the_same_rows(tmp_path):
    inputs = {}
    for kind, (write, _, _) in CASES.items():
        (tmp_path / kind).mkdir()
        inputs[kind] = write(tmp_path / kind)
    out = tmp_path / "ids"
    with beam.Pipeline(options=beam_options.pipeline_options([], num_workers=2)) as p:
        for kind, path in inputs.items():
            _ = (p | f"Read_{kind}" >> preprocess_multimodal.ReadMultimodalDocuments(
                     kind, [path], mm_readers.ReaderOptions())
                 | f"Id_{kind}" >> beam.Map(lambda d, k=kind: f"{k}\t{d['id']}\t{d.get('error', '')}")
                 | f"Write_{kind}" >> beam.io.WriteToText(str(out / kind), num_shards=1, shard_name_template=""))
    for kind, path in inputs.items():
        got = sorted((out / kind).read_text().splitlines())
        plain = sorted(f"{kind}\t{d['id']}\t{d.get('error', '')}" for d in mm_readers.read_documents(kind, path))
        assert got == plain and len(got) == N_GOOD + 1, kind
