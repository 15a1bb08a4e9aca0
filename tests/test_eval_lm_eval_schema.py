"""Our eval report as an lm-eval user reads it: lm-eval 0.4's results schema (read back
by lm-eval's own `make_table`), its per-sample hashes, its --limit, and the report
saying which prompts were cut."""
import functools
import hashlib
import json

import numpy as np
import pytest

from model import eval as eval_lib
from model.evaluation import lm_eval_schema, scoring, suites

# anatomy_test.csv, first row, as lm-eval's CSV task (README config) reads it.
ANATOMY_0 = {
    "question": "A lesion causing compression of the facial nerve at the stylomastoid "
                "foramen will cause ipsilateral",
    "A": "paralysis of the facial muscles.",
    "B": "paralysis of the facial muscles and loss of taste.",
    "C": "paralysis of the facial muscles, loss of taste and lacrimation.",
    "D": "paralysis of the facial muscles, loss of taste, lacrimation and decreased salivation.",
    "answer": "A",
}
# What lm-eval 0.4.13 logged for that document (simple_evaluate(log_samples=True)):
# sha256(json.dumps(doc, indent=2, ensure_ascii=False)), and sha256("A") for its target.
ANATOMY_0_DOC_HASH = "13564dce49cff1fb828697bea5997e0e966feeb6cc043c03b0ab0087baca53e9"
TARGET_A_HASH = "559aead08264d5795d3909718cdd05abd49572e84fe55590eef31a88a08fdffd"

TASK_YAML = """task: {suite}_{subject}
dataset_path: csv
dataset_kwargs:
  data_files:
    test: {dir}/test/{subject}_test.csv
    dev: {dir}/dev/{subject}_dev.csv
  header: null
  column_names: [question, A, B, C, D, answer]
  keep_default_na: false
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about {spaced}.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{A}}}}\\nB. {{{{B}}}}\\nC. {{{{C}}}}\\nD. {{{{D}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def token_stub(batch, positions):
    """log p(target) = -0.01 * target id: a model stub."""
    targets = np.take_along_axis(batch["decoder_target_tokens"], positions, axis=1)
    return -0.01 * targets.astype(np.float32)


def test_hashes_of_a_known_document_are_lm_evals_fixed():
    h = lm_eval_schema.sample_hashes(ANATOMY_0, "Answer:", "A")
    assert h["doc_hash"] == ANATOMY_0_DOC_HASH
    assert h["target_hash"] == TARGET_A_HASH
    assert h["prompt_hash"] == hashlib.sha256(b"Answer:").hexdigest()
    # The formula, spelt out: key order matters (lm-eval does not sort keys).
    assert lm_eval_schema.doc_hash(dict(reversed(ANATOMY_0.items()))) != ANATOMY_0_DOC_HASH


def test_hashes_equal_lm_evals_own_functions():
    utils = pytest.importorskip("lm_eval.utils", reason="lm-eval not installed")
    doc = {**ANATOMY_0, "n": np.int64(3), "s": {1}}  # json.dumps' default= too
    want = utils.hash_string(json.dumps(doc, indent=2, default=utils.handle_non_serializable,
                                        ensure_ascii=False))
    assert lm_eval_schema.doc_hash(doc) == want
    assert lm_eval_schema.sample_hashes(doc, "p", 2)["target_hash"] == utils.hash_string("2")


def test_limit_is_lm_evals():
    assert [lm_eval_schema.sample_size(10, x) for x in (None, 3, 0.25, 1.0, 50)] == [10, 3, 3, 1, 10]
    recs = [{"t": t, "i": i} for t in "ab" for i in range(4 if t == "a" else 2)]
    kept, counts = lm_eval_schema.apply_limit(recs, 0.5, lambda r: r["t"])
    assert [(r["t"], r["i"]) for r in kept] == [("a", 0), ("a", 1), ("b", 0)]
    assert counts == {"a": {"original": 4, "effective": 2}, "b": {"original": 2, "effective": 1}}
    with pytest.raises(ValueError, match="limit must be positive"):
        eval_lib.evaluate(model=None, checkpoint_path=None, output_dir="/nonexistent", suites=[],
                          limit=-1)


def test_limit_flag_is_checked_before_anything_runs(capsys):
    assert eval_lib.main(["--limit=-2", "--gin_file=gin/runs/eval.gin"]) == 2
    assert "limit must be positive" in capsys.readouterr().err


def _records(n_context):
    def rec(subject, i, label):
        return {"sample_id": f"{subject}/{i}", "doc_id": i, "subject": subject, "label": label,
                "doc": json.dumps({"question": f"q{i}", "answer": "ABCD"[label]}),
                "prompt": f"P{i}", "choices": [" A", " B", " C", " D"],
                "target": " " + "ABCD"[label], "context_ids": list(range(3, 3 + n_context)),
                "continuation_ids": [[10], [20], [30], [40]], "num_shots": 0}
    return [rec("anatomy", i, i % 4) for i in range(3)] + [rec("philosophy", 0, 1)]


def test_results_json_reads_back_with_lm_evals_make_table(tmp_path):
    results = eval_lib.evaluate(
        model=None, checkpoint_path=None, output_dir=str(tmp_path), max_length=16,
        batch_size=2, progress=False, score_fn=token_stub, shared_context=False, limit=2,
        suites=[suites.MMLUSuite(inputs_fn=lambda: _records(20))])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(lm_eval_schema.TOP_LEVEL_KEYS) <= set(saved)
    r = saved["results"]
    assert r["mmlu_anatomy"]["acc,none"] == 0.5 and r["mmlu_anatomy"]["sample_len"] == 2
    assert r["mmlu_anatomy"]["acc_norm,none"] == 0.5  # one-letter choices
    assert saved["n-samples"]["mmlu_anatomy"] == {"original": 3, "effective": 2}
    assert saved["group_subtasks"]["mmlu"] == ["mmlu_stem", "mmlu_humanities"]
    assert saved["group_subtasks"]["mmlu_humanities"] == ["mmlu_philosophy"]
    assert saved["groups"]["mmlu"]["acc,none"] == pytest.approx(1 / 3)  # the stub always says A
    assert saved["n-shot"]["mmlu_anatomy"] == 0 and saved["versions"]["mmlu"] == "2"
    assert saved["config"]["limit"] == 2
    table = pytest.importorskip("lm_eval.utils").make_table(saved)
    assert "anatomy" in table and "acc_norm" in table
    assert "stem" in pytest.importorskip("lm_eval.utils").make_table(saved, "groups")
    # Prompts of 20 tokens do not fit 16: the report says so, and by how much.
    (sample,) = [json.loads(l) for l in (tmp_path / "samples_mmlu.jsonl").read_text().splitlines()
                 if '"anatomy/0"' in l]
    assert sample["truncated"] and sample["prompt_tokens_cut"] == 20 + 1 - 16
    assert results["tasks"]["mmlu"]["config"]["truncated_prompts"] == 3
    report = (tmp_path / "report.md").read_text()
    assert "3 of 3 prompts were longer than the model's context of 16 tokens" in report


def test_whole_prompts_are_reported_whole(tmp_path):
    ctx = suites.Context(scoring.BatchedScorer(token_stub, 32, 2), tmp_path, progress=False)
    res = suites.MMLUSuite(inputs_fn=lambda: _records(20)).run(ctx)
    assert res.config["truncated_prompts"] == 0
    assert "Every prompt was scored whole" in res.sections[0].paragraphs[1]


@pytest.mark.real_data
def test_same_documents_same_hashes_as_lm_eval(data_dir, tmp_path):
    """lm-eval's own evaluator (a dummy model, the README's CSV task config) and our MMLU
    suite on the same 2-shot anatomy questions log the same three hashes per document."""
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval not installed")
    from lm_eval.models.dummy import DummyLM
    from lm_eval.tasks import TaskManager

    from tasks import eval_inputs
    d = data_dir / "mmlu"
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "anatomy.yaml").write_text(TASK_YAML.format(
        suite="mmlu", subject="anatomy", spaced="anatomy", dir=d))
    theirs = lm_eval.simple_evaluate(
        model=DummyLM(), tasks=["mmlu_anatomy"], num_fewshot=2, limit=3, log_samples=True,
        task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False))
    inputs = functools.partial(eval_inputs.mmlu_inputs, data_dir=d, subjects=["anatomy"],
                               num_shots=2)
    ours = eval_lib.evaluate(
        model=None, checkpoint_path=None, output_dir=str(tmp_path / "ours"), max_length=2048,
        batch_size=4, progress=False, score_fn=token_stub, shared_context=False, limit=3,
        suites=[suites.MMLUSuite(inputs_fn=inputs)])
    samples = [json.loads(l) for l in
               (tmp_path / "ours" / "samples_mmlu.jsonl").read_text().splitlines()]
    keys = ("doc_id", "doc_hash", "prompt_hash", "target_hash")
    assert [tuple(s[k] for k in keys) for s in samples] == \
        [tuple(s[k] for k in keys) for s in theirs["samples"]["mmlu_anatomy"]]
    assert samples[0]["doc_hash"] == ANATOMY_0_DOC_HASH and samples[0]["doc"] == ANATOMY_0
    assert ours["n-samples"] == theirs["n-samples"]
    assert ours["n-shot"]["mmlu_anatomy"] == theirs["n-shot"]["mmlu_anatomy"] == 2
    assert ours["tasks"]["mmlu"]["config"]["truncated_prompts"] == 0
