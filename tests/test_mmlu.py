"""MMLU prompts (lm-eval template, character for character) and SeqIO tasks on real data."""
import pytest

from tasks import eval_inputs, mmlu

pytestmark = pytest.mark.real_data

ONE_SHOT = (
    "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\n"
    "A. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
    "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\n"
    "A. 0\nB. 4\nC. 2\nD. 6\nAnswer:")


def test_one_shot_prompt_is_the_lm_eval_template(data_dir):
    ex = next(mmlu.examples(data_dir / "mmlu", "test", "abstract_algebra", num_shots=1))
    assert ex["inputs"] == ONE_SHOT
    assert ex["targets"] == " B" and ex["label"] == 1
    assert ex["choices"] == [" A", " B", " C", " D"]


def test_five_shot_and_zero_shot_prompts(data_dir):
    d = data_dir / "mmlu"
    dev = mmlu.read_rows(d, "dev", "high_school_geography")
    row = mmlu.read_rows(d, "test", "high_school_geography")[3]
    ex5 = list(mmlu.examples(d, "test", "high_school_geography", num_shots=5))[3]
    shots = "".join(
        f"{r['question'].strip()}\nA. {r['A']}\nB. {r['B']}\nC. {r['C']}\nD. {r['D']}"
        f"\nAnswer: {r['answer']}\n\n" for r in dev[:5])
    question = (f"{row['question'].strip()}\nA. {row['A']}\nB. {row['B']}\nC. {row['C']}"
                f"\nD. {row['D']}\nAnswer:")
    head = "The following are multiple choice questions (with answers) about high school geography.\n\n"
    assert ex5["inputs"] == head + shots + question
    assert ex5["inputs"].count("\nAnswer:") == 6
    assert ex5["inputs"].startswith(head + "The rate of natural increase of a population")
    ex0 = list(mmlu.examples(d, "test", "high_school_geography", num_shots=0))[3]
    assert ex0["inputs"] == head + question


def test_question_is_stripped_like_lm_eval(data_dir):
    d = data_dir / "mmlu"
    for subject in mmlu.subjects(d, "test"):
        for row, ex in zip(mmlu.read_rows(d, "test", subject),
                           mmlu.examples(d, "test", subject, num_shots=0)):
            if row["question"] != row["question"].strip():
                assert ex["inputs"].split("\n\n", 1)[1].startswith(row["question"].strip() + "\nA. ")
                return
    pytest.skip("no question with surrounding whitespace in this copy")


def test_layout_and_errors(data_dir, tmp_path):
    d = data_dir / "mmlu"
    assert len(mmlu.subjects(d, "dev")) == 57
    assert len(mmlu.subjects(d, "test")) >= 1
    with pytest.raises(FileNotFoundError, match="original layout"):
        mmlu.read_rows(tmp_path, "test", "anatomy")
    with pytest.raises(ValueError, match="split must be one of"):
        mmlu.read_rows(d, "train", "anatomy")
    bad = tmp_path / "test"
    bad.mkdir()
    (bad / "x_test.csv").write_text("q,a,b,c,d,E\n")
    with pytest.raises(ValueError, match="answer in A-D"):
        mmlu.read_rows(tmp_path, "test", "x")


def test_seqio_task_matches_direct_examples_and_fast_pair_encoding_is_exact(data_dir):
    d = data_dir / "mmlu"
    subjects = ["abstract_algebra", "high_school_european_history"]
    via_seqio = eval_inputs.mmlu_inputs(data_dir=d, subjects=subjects, max_per_subject=15,
                                        via_seqio=True, exact_pairs=True)
    direct = eval_inputs.mmlu_inputs(data_dir=d, subjects=subjects, max_per_subject=15)
    assert len(direct) == 30
    assert via_seqio == direct
    assert "mmlu_5shot_abstract_algebra" in mmlu.register(str(d))


def test_encode_pair_moves_trailing_spaces_like_lm_eval():
    enc = lambda s: [ord(c) for c in s]  # character "tokenizer"
    ctx, cont = eval_inputs.encode_pair(enc, "Answer: ", "B")
    assert ctx == enc("Answer:") and cont == enc(" B")
