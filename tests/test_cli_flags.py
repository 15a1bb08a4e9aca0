"""Command lines of the Beam jobs: unknown flags fail, --help shows defaults, bad settings and
unbalanced summaries exit non-zero, Beam's INFO chatter stays off."""
import json
import subprocess
import sys

import pytest

from pipelines import beam_options, job_summary, preprocess_corpus, preprocess_multimodal, preprocess_text

JOBS = {"text": preprocess_text.main, "multimodal": preprocess_multimodal.main, "corpus": preprocess_corpus.main}


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "hello world"}) + "\n")
    return str(path)


def _args(job: str, text_file: str, tmp_path) -> list[str]:
    if job == "corpus":
        (tmp_path / "corpus" / "train").mkdir(parents=True)
        (tmp_path / "corpus" / "train" / "corpus_info.json").write_text("{}")
        return [f"--corpus_dir={tmp_path}/corpus", "--splits=train", f"--cache_dir={tmp_path}/c"]
    return [f"--input={text_file}", f"--cache_dir={tmp_path}/c"] + (["--kind=text"] if job == "multimodal" else [])


@pytest.mark.parametrize("job", sorted(JOBS))
def test_unknown_flags_are_an_error_naming_them(job, text_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        JOBS[job](_args(job, text_file, tmp_path) + ["--max_charz=9", "--direct_num_workerz=1", "stray"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "--max_charz=9" in err and "stray" in err
    assert "--direct_num_workerz=1 (did you mean --direct_num_workers?)" in err


def test_beam_pipeline_options_pass():
    assert beam_options.unknown_beam_flags(["--direct_num_workers=1", "--runner=DataflowRunner", "--project=p",
                                            "--temp_location=gs://b/t", "--setup_file=./setup.py"]) == []
    assert beam_options.unknown_beam_flags(["--num_workerss=3"]) == ["--num_workerss=3"]


@pytest.mark.parametrize("job", sorted(JOBS))
def test_help_shows_every_default(job, capsys):
    with pytest.raises(SystemExit) as e:
        JOBS[job](["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    parser = {"text": preprocess_text.make_parser, "multimodal": preprocess_multimodal.make_parser}.get(job)
    if parser is None:
        assert "--image_size IMAGE_SIZE" in out and "(default: 224)" in out
        return
    for action in parser()._actions:
        if action.option_strings and action.dest != "help" and not action.required:
            assert action.help and "(default:" in parser()._get_formatter()._get_help_string(action), action.dest
    if job == "multimodal":
        assert "(default: 224)" in out and "--max_image_pixels" in out and "(default: 64000000)" in out


@pytest.mark.parametrize("flag, message", [("--max_chars=0", "--max_chars must be >= 1"),
                                           ("--max_chars=-5", "--max_chars must be >= 1"),
                                           ("--validation_fraction=1", "--validation_fraction must be in"),
                                           ("--num_shards=0", "--num_shards must be >= 1")])
def test_bad_text_settings_are_errors(flag, message, text_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        preprocess_text.main(_args("text", text_file, tmp_path) + [flag])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_an_unbalanced_summary_exits_non_zero():
    good = {"documents_in": 5, "documents_out": 3, "dead_lettered": 2, "examples_out": 7, "examples_written": 7}
    assert job_summary.check_balanced(good) == []
    job_summary.exit_if_unbalanced({"ok/train": good})  # no exit
    lost = {**good, "documents_out": 2}
    unwritten = {**good, "examples_written": 6}
    assert job_summary.check_balanced(lost) == ["5 documents in != 2 out + 2 dead-lettered"]
    assert job_summary.check_balanced(unwritten) == ["7 examples out but 6 written to the cache"]
    with pytest.raises(SystemExit) as e:
        job_summary.exit_if_unbalanced({"ok/train": good, "lost/train": lost})
    assert e.value.code != 0 and "lost/train: 5 documents in != 2 out + 2 dead-lettered" in str(e.value.code)
    assert "ok/train" not in str(e.value.code)


@pytest.mark.slow
def test_a_run_prints_one_result_line_and_no_beam_info(text_file, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipelines.preprocess_text", f"--input={text_file}",
                           f"--cache_dir={tmp_path}/c", "--direct_num_workers=1", "--num_shards=1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[0].startswith("tapestry_text [train]: 1 documents in, 1 examples out")
    assert len(proc.stdout.splitlines()) == 1
    assert not [l for l in proc.stderr.splitlines() if "INFO" in l], proc.stderr[-3000:]
