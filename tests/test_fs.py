"""The two filesystem layers (pipelines/fs.py over Beam, model/fs.py over etils.epath)
and the vocabulary loader, on local paths and on gs:// against a local GCS emulator."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from model import fs as mfs
from pipelines import fs as pfs
from pipelines import vocab
from tests import gcs_emulator

BUCKET = "tapestry-fs-test"


@pytest.fixture(scope="module")
def gcs():
    with gcs_emulator.running(BUCKET) as env:
        yield env


def test_pipelines_fs_local(tmp_path):
    base = str(tmp_path)
    path = pfs.join(base, "a", "b.txt")
    pfs.write_text(path, "hello")
    assert pfs.read_text(path) == "hello" and pfs.is_file(path) and pfs.is_dir(pfs.join(base, "a"))
    assert pfs.glob(pfs.join(base, "**", "*.txt")) == [path]
    assert pfs.basename(path) == "b.txt" and pfs.dirname(path) == os.path.join(base, "a")
    with pytest.raises(FileNotFoundError):
        pfs.read_bytes(pfs.join(base, "missing"))
    pfs.delete([pfs.join(base, "a")])
    assert not pfs.exists(path)


def test_pipelines_fs_gcs(gcs, tmp_path):
    root = f"gs://{BUCKET}/pfs"
    assert pfs.join(root, "x", "y.txt") == f"{root}/x/y.txt"  # never gs:/ (pathlib's bug)
    assert pfs.dirname(f"{root}/x/y.txt") == f"{root}/x"
    pfs.write_text(f"{root}/x/y.txt", "über")
    pfs.write_bytes(f"{root}/x/z/w.bin", b"\x00\x01")
    assert pfs.read_text(f"{root}/x/y.txt") == "über"
    assert pfs.glob(f"{root}/x/*.txt") == [f"{root}/x/y.txt"]
    assert pfs.is_dir(f"{root}/x") and not pfs.is_dir(f"{root}/nothing")
    with pytest.raises(FileNotFoundError, match="nothing"):
        pfs.read_bytes(f"{root}/nothing")
    copied = pfs.copy_tree(f"{root}/x", str(tmp_path / "copy"))
    assert sorted(os.path.relpath(p, tmp_path / "copy") for p in copied) == ["y.txt", "z/w.bin"]
    assert (tmp_path / "copy" / "z" / "w.bin").read_bytes() == b"\x00\x01"


def test_model_fs_paths_are_absolute_or_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(mfs.path("run")) == str(tmp_path / "run")
    assert str(mfs.path("gs://b/run") / "checkpoints") == "gs://b/run/checkpoints"
    assert mfs.join("s3://b/run", "metrics.jsonl") == "s3://b/run/metrics.jsonl"


def test_model_fs_gcs_write_append_rename(gcs):
    run = mfs.path(f"gs://{BUCKET}/model")
    mfs.write_text(run / "results.json", json.dumps({"a": 1}))
    assert json.loads(mfs.read_text(run / "results.json")) == {"a": 1}
    with mfs.Appender(run / "metrics.jsonl", flush_secs=3600) as log:
        log.write("1\n")
        log.write("2\n")
        assert not (run / "metrics.jsonl").exists()  # held until flush/close (no append on GCS)
    with mfs.Appender(run / "metrics.jsonl", flush_secs=0) as log:  # reopen: keeps old lines
        log.write("3\n")
        assert mfs.read_text(run / "metrics.jsonl") == "1\n2\n3\n"
    mfs.write_text(run / "checkpoints" / "7" / "state" / "x", "s")
    mfs.rename(run / "checkpoints" / "7", run / "corrupt_checkpoints" / "7.1")
    assert not (run / "checkpoints" / "7" / "state" / "x").exists()
    assert mfs.read_text(run / "corrupt_checkpoints" / "7.1" / "state" / "x") == "s"


def test_model_fs_appender_uploads_at_exit(gcs):
    target = f"gs://{BUCKET}/exit/samples.jsonl"
    code = ("from model import fs; a = fs.Appender(%r, flush_secs=3600); a.write('kept\\n')"
            % target)
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert mfs.read_text(target) == "kept\n"


def test_model_fs_does_not_import_tensorflow():
    code = ("import sys; from model import fs; p = fs.path('gs://b/x') / 'y'; "
            "assert 'tensorflow' not in sys.modules, 'model.fs imported TF'; print(p)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()), timeout=120)
    assert out.stdout.strip() == "gs://b/x/y"


def test_vocab_default_is_the_packaged_copy_and_bytes_from_anywhere(gcs, tmp_path):
    packaged = vocab.read_bytes()
    assert packaged == vocab.read_bytes(vocab.DEFAULT_VOCAB) and len(packaged) > 1000
    pfs.write_bytes(f"gs://{BUCKET}/vocab/v.model", packaged)
    remote = vocab.load(f"gs://{BUCKET}/vocab/v.model")
    assert remote.encode("hello world") == vocab.load().encode("hello world")
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="--vocab=.*bad.model"):
        vocab.check(str(tmp_path / "bad.model"))
    with pytest.raises(ValueError, match="not found"):
        vocab.check(f"gs://{BUCKET}/vocab/missing.model")
    with pytest.raises(ValueError, match="package:<package>/<file>"):
        vocab.read_bytes("package:tasks")


def test_seqio_vocabulary_from_bytes(gcs):
    import pickle

    from tasks import vocabulary
    remote = f"gs://{BUCKET}/vocab/seqio.model"
    pfs.write_bytes(remote, vocab.read_bytes())
    packaged, from_bucket = vocabulary.get_vocabulary(), vocabulary.get_vocabulary(remote)
    text = "A red square.\nTwo 3s"
    assert list(from_bucket.encode(text)) == list(packaged.encode(text)) == vocab.load().encode(text)
    assert packaged.decode(packaged.encode(text)) == text
    clone = pickle.loads(pickle.dumps(from_bucket))  # Beam/tf.data ship vocabularies pickled
    assert clone == from_bucket and clone != packaged and list(clone.encode(text)) == list(packaged.encode(text))
