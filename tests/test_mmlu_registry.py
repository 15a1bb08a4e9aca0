"""MMLU tasks and mixtures: subjects without a file for a split are skipped by the
mixture on that split; the data dir is read when used, not at import."""
import csv

import pytest

from tasks import eval_inputs, mmlu

ROW = ["What is 1 + 1?", "1", "2", "3", "4", "B"]


def _layout(root, files):
    """files: {split: [subjects]} -> <root>/mmlu/<split>/<subject>_<split>.csv, 5 rows each."""
    for split, subjects in files.items():
        (root / "mmlu" / split).mkdir(parents=True, exist_ok=True)
        for subject in subjects:
            with open(root / "mmlu" / split / f"{subject}_{split}.csv", "w", newline="") as f:
                csv.writer(f).writerows([ROW] * 5)
    return root / "mmlu"


def _mixture_subjects(name, split, n=40):
    """Subjects named in the prompt headers of the mixture's first `n` examples."""
    import seqio
    mixture = seqio.get_mixture_or_task(name)
    ds = mixture.get_dataset(sequence_length=None, split=split, shuffle=False)
    vocab = mixture.output_features["inputs"].vocabulary
    heads = {vocab.decode(ex["inputs"].tolist()).split(" about ", 1)[1].split(".\n", 1)[0]
             for ex in ds.take(n).as_numpy_iterator()}
    return sorted(h.replace(" ", "_") for h in heads)


def test_mixture_reads_only_subjects_with_the_split(tmp_path):
    # astronomy has dev shots but no test file (as in the shared data).
    d = _layout(tmp_path, {"dev": ["anatomy", "astronomy"], "test": ["anatomy"]})
    names = mmlu.register(str(d), num_shots=(0,))
    assert names == ("mmlu_0shot_anatomy", "mmlu_0shot_astronomy")
    assert _mixture_subjects("mmlu_0shot", "test") == ["anatomy"]
    assert _mixture_subjects("mmlu_0shot", "dev") == ["anatomy", "astronomy"]
    import seqio
    assert seqio.get_mixture_or_task("mmlu_0shot_astronomy").splits == ("dev",)


def test_data_dir_is_read_when_used_not_at_import(tmp_path, monkeypatch):
    d = _layout(tmp_path, {"dev": ["anatomy"], "test": ["anatomy"]})
    monkeypatch.setenv("TAPESTRY_DATA_DIR", str(tmp_path))
    assert mmlu.default_data_dir() == str(d)
    assert mmlu.DEFAULT_DATA_DIR == str(d)
    records = eval_inputs.mmlu_inputs(num_shots=1)  # no data_dir: the env var's
    assert [r["sample_id"] for r in records] == [f"anatomy/{i}" for i in range(5)]
    monkeypatch.setenv("TAPESTRY_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match="elsewhere"):
        eval_inputs.mmlu_inputs()


@pytest.mark.real_data
def test_zero_shot_mixture_loads_on_the_shared_test_split(data_dir):
    d = data_dir / "mmlu"
    mmlu.register(str(d), num_shots=(0,))
    with_test = set(mmlu.subjects(d, "test"))
    assert with_test < set(mmlu.subjects(d, "dev"))  # some subjects lack a test file
    got = _mixture_subjects("mmlu_0shot", "test", n=2)  # raised before the fix
    assert got and set(got) <= with_test
