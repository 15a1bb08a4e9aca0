"""lm-eval 0.4 as a client: `lm_eval.simple_evaluate` with the `tapestry` model on MMLU
CSVs (5-shot, through a local task config, nothing downloaded) scores every choice as
our own eval does (tasks/mmlu.py prompts, model/evaluation/scoring.py).
"""
from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest

from model import eval as eval_lib
from model.config import TransformerConfig
from model.evaluation import scoring
from model.models import DecoderOnlyModel
from tests import hf_reference

SUBJECTS = ("anatomy", "business_ethics")
ROWS = 3  # test questions per subject

TASK_YAML = """task: tapestry_mmlu_{subject}
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
    aggregation: mean
    higher_is_better: true
"""


def mmlu_dir() -> str:
    root = os.environ.get("TAPESTRY_DATA_DIR", os.path.join(
        os.path.dirname(__file__), "..", "..", "shared", "data"))
    return os.path.join(root, "mmlu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A few real MMLU questions in the original layout, plus lm-eval task configs."""
    src = mmlu_dir()
    if not os.path.isdir(src):
        pytest.skip(f"no MMLU data at {src} (set TAPESTRY_DATA_DIR)")
    out = tmp_path_factory.mktemp("mmlu")
    tasks = out / "tasks"
    for sub in ("dev", "test", "tasks"):
        (out / sub).mkdir()
    for subject in SUBJECTS:
        shutil.copy(os.path.join(src, "dev", f"{subject}_dev.csv"), out / "dev")
        with open(os.path.join(src, "test", f"{subject}_test.csv"), newline="") as f:
            records = list(csv.reader(f))[:ROWS]
        with open(out / "test" / f"{subject}_test.csv", "w", newline="") as f:
            csv.writer(f).writerows(records)
        (tasks / f"{subject}.yaml").write_text(TASK_YAML.format(
            subject=subject, dir=out, spaced=subject.replace("_", " ")))
    return out


@pytest.fixture(scope="module")
def model_and_params():
    cfg = TransformerConfig(vocab_size=8192, d_model=32, num_layers=1, num_heads=2,
                            num_kv_heads=1, head_dim=16, d_ff=64, max_len=2048,
                            attention_backend="xla")
    model = DecoderOnlyModel(cfg)
    params, _ = eval_lib.load_params(model, None, None, init_seed=3, max_length=cfg.max_len)
    return model, params


@pytest.fixture(scope="module")
def adapter_results(data, model_and_params):
    """lm_eval.simple_evaluate with the `tapestry` model: 5-shot, both subjects."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from model.lm_eval_adapter import TapestryLM
    model, params = model_and_params
    lm = TapestryLM(model=model, params=params, batch_size=8)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=[f"tapestry_mmlu_{s}" for s in SUBJECTS], num_fewshot=5,
        task_manager=TaskManager(include_path=str(data / "tasks"), include_defaults=False),
        log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
        fewshot_random_seed=0)
    return lm, results


def test_lm_eval_scores_equal_our_eval(data, model_and_params, adapter_results):
    from tasks import mmlu

    model, params = model_and_params
    lm, results = adapter_results
    sp = lm.sp
    score = scoring.BatchedScorer(eval_lib.make_score_fn(model, params), model.config.max_len,
                                  batch_size=8)
    for subject in SUBJECTS:
        ours = list(mmlu.examples(str(data), "test", subject, num_shots=5))
        samples = sorted(results["samples"][f"tapestry_mmlu_{subject}"],
                         key=lambda s: s["doc_id"])
        assert len(samples) == len(ours) == ROWS
        correct = []
        for ex, sample in zip(ours, samples):
            contexts = {arg[0] for arg in sample["arguments"]}
            assert contexts == {ex["inputs"]}  # the same untruncated 5-shot prompt
            assert [arg[1] for arg in sample["arguments"]] == ex["choices"]
            reqs = [scoring.Request(sp.encode(ex["inputs"]), sp.encode(c))
                    for c in ex["choices"]]
            lls = [s.loglikelihood for s in score.score(reqs)]
            theirs = [r[0][0] for r in sample["resps"]]
            np.testing.assert_allclose(theirs, lls, atol=1e-3, rtol=0)
            correct.append(float(np.argmax(lls) == ex["label"]))
        acc = results["results"][f"tapestry_mmlu_{subject}"]["acc,none"]
        assert acc == pytest.approx(np.mean(correct))


def test_rolling_and_generation(model_and_params):
    from lm_eval.api.instance import Instance

    from model.lm_eval_adapter import TapestryLM
    model, params = model_and_params
    lm = TapestryLM(model=model, params=params, batch_size=4, max_length=16)
    text = "The quick brown fox jumps over the lazy dog. " * 4
    ids = lm.tok_encode(text)
    assert len(ids) > 16  # several windows
    rolling = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    # Every token once, in 16-token windows, as model.eval's scorer scores them.
    scorer = scoring.BatchedScorer(eval_lib.make_score_fn(model, params), 16, batch_size=4)
    windows = scorer.score(scoring.rolling_requests(ids, 16))
    assert sum(w.num_tokens for w in windows) == len(ids)
    assert rolling[0] == pytest.approx(sum(w.loglikelihood for w in windows), abs=1e-3)
    gen = lm.generate_until([Instance("generate_until", {}, ("Answer:", {
        "until": ["\n\n"], "max_gen_toks": 5}), 0)])
    direct = eval_lib.make_generate_fn(model, params)([(lm.tok_encode("Answer:"), None)], 5)[0]
    assert isinstance(gen[0], str)
    want = lm.tok_decode(direct[:direct.index(1)] if 1 in direct else direct)
    assert gen[0] == want.split("\n\n")[0]


@pytest.mark.skipif(not hf_reference.available(), reason=hf_reference.SKIP_REASON)
def test_tapestry_model_equals_hf_backend_on_the_export(data, model_and_params,
                                                        adapter_results, tmp_path):
    """lm-eval's own `hf` backend on the exported model (side venv, torch CPU) gives the
    same prompts, per-choice log-likelihoods (1e-3) and accuracy as the `tapestry` model."""
    from model import export_hf
    model, params = model_and_params
    _, ours = adapter_results
    export_hf.export(params, model.config, str(tmp_path / "hf"))
    tasks = [f"tapestry_mmlu_{s}" for s in SUBJECTS]
    hf_reference.run_jobs([{"lm_eval": str(tmp_path / "hf"), "tasks": tasks,
                            "include_path": str(data / "tasks"), "num_fewshot": 5,
                            "out": str(tmp_path / "hf.json")}], str(tmp_path), timeout=900)
    theirs = json.loads((tmp_path / "hf.json").read_text())
    for task in tasks:
        mine = sorted(ours["samples"][task], key=lambda s: s["doc_id"])
        hf = sorted(theirs[task]["samples"], key=lambda s: s["doc_id"])
        assert len(mine) == len(hf) == ROWS
        for a, b in zip(mine, hf):
            assert [list(x[:2]) for x in a["arguments"]] == b["arguments"]
            np.testing.assert_allclose([r[0][0] for r in a["resps"]], b["loglikelihoods"],
                                       atol=1e-3, rtol=0)
        assert theirs[task]["acc"] == ours["results"][task]["acc,none"]
