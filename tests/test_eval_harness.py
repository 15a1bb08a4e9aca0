"""The eval harness with a model stub: batching, suites, report files, resume."""
import hashlib
import json
import math

import numpy as np
import pytest

from model.evaluation import report, scoring, suites


def token_stub(batch, positions):
    """A model stub: log p(target) = -0.01 * target id, independent of position."""
    targets = np.take_along_axis(batch["decoder_target_tokens"], positions, axis=1)
    return -0.01 * targets.astype(np.float32)


def test_make_row_shifts_and_left_truncates():
    inp, tgt, n = scoring.make_row(scoring.Request([5, 6], [7]), 8)
    assert (inp, tgt, n) == ([0, 5, 6], [5, 6, 7], 1)
    inp, tgt, n = scoring.make_row(scoring.Request([1, 2, 3, 4, 5], [6, 7]), 4)
    assert (inp, tgt, n) == ([3, 4, 5, 6], [4, 5, 6, 7], 2)
    b = scoring.build_batch([scoring.make_row(scoring.Request([5, 6], [7]), 8)], 8, 2)
    np.testing.assert_array_equal(b["decoder_loss_weights"][0], [0, 0, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(b["decoder_segment_ids"][1], 0)
    with pytest.raises(ValueError, match="exceeds max_length=2"):
        scoring.make_row(scoring.Request([], [1, 2, 3]), 2)


def test_rolling_windows_score_every_token_once():
    tokens = list(range(1, 24))
    for context in (0, 3):
        reqs = scoring.rolling_requests(tokens, 8, context)
        assert sum((r.continuation for r in reqs), []) == tokens
        for r in reqs:
            assert len(scoring.make_row(r, 8)[1]) <= 8


def test_batched_scores_equal_one_at_a_time_and_bucket():
    rng = np.random.default_rng(0)
    reqs = [scoring.Request(list(rng.integers(3, 100, rng.integers(0, 70))),
                            list(rng.integers(3, 100, rng.integers(1, 4)))) for _ in range(37)]
    shapes = []

    def recording(batch, positions):
        shapes.append(batch["decoder_target_tokens"].shape)
        assert positions.shape[0] == 8 and positions.shape[1] in (1, 2, 4)
        return token_stub(batch, positions)

    batched = scoring.BatchedScorer(recording, 64, 8).score(reqs)
    single = scoring.BatchedScorer(token_stub, 64, 1).score(reqs)
    for r, a, b in zip(reqs, batched, single):
        expected_tokens = scoring.make_row(r, 64)[1][-len(r.continuation):]
        assert a.loglikelihood == pytest.approx(-0.01 * sum(expected_tokens))
        assert a.loglikelihood == pytest.approx(b.loglikelihood)
    assert len(shapes) == 5 and all(s[0] == 8 for s in shapes)
    assert {s[1] for s in shapes} <= set(scoring.default_buckets(64)) == {32, 64}
    assert shapes[0][1] == 64 and shapes[-1][1] == 32  # longest first, short ones bucketed


def candidate_stub(batch, positions, ids):
    """The same stub as `token_stub`, as a next-token candidate scorer."""
    assert positions.shape == ids.shape[:2]
    return -0.01 * ids.astype(np.float32)


def test_covering_prefixes():
    assert scoring.covering_prefixes([[276, 336], [980], [1611], [276, 900]]) == [(276,)]
    assert sorted(scoring.covering_prefixes([[1, 2, 3], [1, 4], [5, 6]])) == [(1, 2), (5,)]


def test_shared_context_scorer_matches_row_per_choice():
    rng = np.random.default_rng(3)
    reqs = []
    for q in range(11):
        ctx = list(rng.integers(3, 100, rng.integers(1, 50)))
        conts = [[7, 8], [9], [10], [7, 11, 12]][: 2 + q % 3]
        reqs += [scoring.Request(ctx, c) for c in conts]
    shared = scoring.SharedContextScorer(candidate_stub, 64, 4)
    assert shared.num_batches(reqs) == 3  # 11 rows, one per question
    got = shared.score(reqs)
    want = scoring.BatchedScorer(token_stub, 64, 4).score(reqs)
    for g, w in zip(got, want):
        assert g.loglikelihood == pytest.approx(w.loglikelihood)
        assert g.num_tokens == w.num_tokens


def _mmlu_records():
    """Two subjects; continuation ids chosen so the stub's argmax is known by hand.

    Stub score of a continuation = -0.01 * sum(ids): the choice with the smallest id
    sum wins. anatomy: q0 label 0 (ids 10 < 20,30,40: correct), q1 label 2 (wrong: 0
    wins). philosophy: q0 label 1 with ids [50],[5],[60],[70] (correct).
    """
    def rec(subject, i, label, conts):
        return {"sample_id": f"{subject}/{i}", "subject": subject, "label": label,
                "doc": json.dumps({"q": i}), "prompt": f"P{i}", "choices": [" A", " B", " C", " D"],
                "target": " " + "ABCD"[label], "context_ids": [3 + i, 4, 5],
                "continuation_ids": conts, "num_shots": 0}
    return [rec("anatomy", 0, 0, [[10], [20], [30], [40]]),
            rec("anatomy", 1, 2, [[10], [20], [30], [40]]),
            rec("philosophy", 0, 1, [[50], [5], [60], [70]])]


def _ctx(tmp_path, score_fn=token_stub, batch_size=2):
    return suites.Context(scoring.BatchedScorer(score_fn, 16, batch_size), tmp_path, progress=False)


def test_mmlu_suite_with_stub_equals_hand_computation(tmp_path):
    res = suites.MMLUSuite(inputs_fn=_mmlu_records).run(_ctx(tmp_path))
    m = res.metrics
    assert m["subjects"]["anatomy"]["acc"] == 0.5
    assert m["subjects"]["philosophy"]["acc"] == 1.0
    assert m["overall"]["acc"] == pytest.approx(2 / 3)
    assert m["overall"]["acc_macro"] == pytest.approx(0.75)
    assert m["categories"]["stem"]["acc"] == 0.5
    assert m["categories"]["humanities"]["acc"] == 1.0
    lines = [json.loads(l) for l in (tmp_path / "samples_mmlu.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    s = {l["sample_id"]: l for l in lines}["anatomy/1"]
    assert s["loglikelihoods"] == pytest.approx([-0.1, -0.2, -0.3, -0.4])
    assert s["prediction"] == 0 and s["acc"] == 0.0
    assert s["acc_norm"] == 0.0  # one-character choices: acc_norm = acc
    assert s["prompt_hash"] == hashlib.sha256(b"P1").hexdigest()
    assert s["target_hash"] == hashlib.sha256(b" C").hexdigest()  # no CSV answer in this doc
    assert s["doc_hash"] == hashlib.sha256(b'{\n  "q": 1\n}').hexdigest()


def test_mmlu_suite_with_shared_context_scorer_gives_same_results(tmp_path):
    ctx = _ctx(tmp_path / "shared")
    ctx.choice_scorer = scoring.SharedContextScorer(candidate_stub, 16, 2)
    shared = suites.MMLUSuite(inputs_fn=_mmlu_records).run(ctx)
    rows = suites.MMLUSuite(inputs_fn=_mmlu_records).run(_ctx(tmp_path / "rows"))
    assert json.dumps(shared.metrics) == json.dumps(rows.metrics)
    assert shared.config["scorer"] == "SharedContextScorer"


def test_interrupted_suite_resumes_with_identical_results(tmp_path):
    full = suites.MMLUSuite(inputs_fn=_mmlu_records).run(_ctx(tmp_path / "full", batch_size=1))
    calls = {"n": 0}

    def dies_after_five(batch, positions):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt("killed")
        return token_stub(batch, positions)

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        suites.MMLUSuite(inputs_fn=_mmlu_records).run(_ctx(out, dies_after_five, batch_size=1))
    written = (out / "samples_mmlu.jsonl").read_text().splitlines()
    assert 0 < len(written) < 3
    # A torn last line (killed mid-write) is dropped on resume.
    (out / "samples_mmlu.jsonl").write_text("\n".join(written) + '\n{"sample_id": "anat')
    calls["n"] = -100
    res = suites.MMLUSuite(inputs_fn=_mmlu_records).run(_ctx(out, dies_after_five, batch_size=1))
    assert calls["n"] == -100 + 4 * (3 - len(written))  # only the missing questions
    assert json.dumps(res.metrics) == json.dumps(full.metrics)  # (nan != nan)
    assert len((out / "samples_mmlu.jsonl").read_text().splitlines()) == 3


def test_text_suite_bpb_and_report_files(tmp_path):
    docs = [{"sample_id": "d0", "text": "héllo wörld", "token_ids": list(range(3, 40))},
            {"sample_id": "d1", "text": "abc", "token_ids": [7, 8]}]
    suite = suites.TextLMSuite(inputs_fn=lambda: docs, position_curve=True, min_curve_tokens=4)
    res = suite.run(_ctx(tmp_path))
    nll = 0.01 * (sum(range(3, 40)) + 15)
    n_bytes = len("héllo wörld".encode()) + 3
    assert res.metrics["bits_per_byte"] == pytest.approx(nll / (n_bytes * math.log(2)))
    assert res.metrics["token_perplexity"] == pytest.approx(math.exp(nll / 39))
    curve = res.metrics["nll_by_position"]
    assert curve["num_documents"] == 1 and len(curve["cumulative_nll"]) == 16
    md, html = report.write_report(tmp_path, "t", {"date": "today"}, res.sections,
                                   [report.Section("Training curves", ["extra seam"])])
    text = html.read_text()
    assert "data:image/png;base64," in text and "Training curves" in text
    assert (tmp_path / "plots" / "text_lm_nll_by_position.png").stat().st_size > 1000
    assert "bits per byte" in md.read_text()


def test_training_curves_section_flags_starved_experts(tmp_path):
    from model.evaluation import training_curves
    rows = [{"step": s, "split": "train", "loss": 5.0 / s, "moe_aux_loss": 1.0 + 1 / s,
             "moe_layer_0/expert_usage": [0.5, 0.3, 0.19, 0.01]} for s in range(1, 21)]
    rows.append({"step": 20, "split": "validation", "loss": 0.3})
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    usage = training_curves.expert_usage_summary(rows, window=10)
    assert usage["moe_layer_0"]["min_fraction_of_fair_share"] == pytest.approx(0.04)
    assert usage["moe_layer_0"]["starved"]
    (section,) = training_curves.training_curves_section(tmp_path, {}, model_dir=str(tmp_path))
    assert {f.name for f in section.figures} == {
        "training_loss", "training_aux_loss", "training_moe_layer_0_usage"}
    assert section.tables[0].rows[0][2] == "yes"


def test_resuming_with_other_inputs_is_refused(tmp_path):
    suites.MMLUSuite(inputs_fn=_mmlu_records).run(_ctx(tmp_path))
    changed = _mmlu_records()
    changed[0]["context_ids"] = [99]
    with pytest.raises(ValueError, match="other inputs or settings"):
        suites.MMLUSuite(inputs_fn=lambda: changed).run(_ctx(tmp_path))


def test_model_eval_imports_no_data_side_modules():
    import subprocess
    import sys
    code = ("import sys, model.eval; bad = [m for m in ('tensorflow', 'apache_beam', 'seqio', "
            "'tasks') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_missing_data_skips_the_suite_when_asked(tmp_path):
    from model import eval as eval_lib

    def missing():
        raise FileNotFoundError("no MMLU test files under /nowhere")

    kwargs = dict(model=None, checkpoint_path=None, output_dir=str(tmp_path), max_length=16,
                  batch_size=2, progress=False, score_fn=token_stub, shared_context=False,
                  suites=[suites.MMLUSuite(inputs_fn=missing),
                          suites.MMLUSuite(inputs_fn=_mmlu_records, name="mmlu_small")])
    with pytest.raises(FileNotFoundError):
        eval_lib.evaluate(**kwargs)
    results = eval_lib.evaluate(skip_missing_data=True, **kwargs)
    assert results["tasks"]["mmlu"] == {"skipped": "no MMLU test files under /nowhere"}
    assert results["tasks"]["mmlu_small"]["metrics"]["overall"]["n"] == 3
    assert "mmlu (skipped)" in (tmp_path / "report.md").read_text()


def test_results_json_has_per_task_provenance(tmp_path):
    from model import eval as eval_lib
    eval_lib.evaluate(model=None, checkpoint_path=None, output_dir=str(tmp_path), max_length=16,
                      batch_size=2, progress=False, score_fn=token_stub, shared_context=False,
                      suites=[suites.MMLUSuite(inputs_fn=_mmlu_records)])
    task = json.loads((tmp_path / "results.json").read_text())["tasks"]["mmlu"]
    assert task["n"] == 3 and task["n_shot"] == 0
    assert {"date", "git_commit", "versions", "checkpoint_step", "config", "metrics"} <= set(task)
    assert task["metrics"]["subjects"]["philosophy"]["acc_stderr"] is None  # n=1: no stderr


def test_mmlu_report_labels_chance_level_results():
    m = {"overall": {"acc": 0.26, "acc_stderr": 0.01, "acc_macro": 0.26, "acc_macro_stderr": 0.01,
                     "n": 1000, "num_subjects": 1},
         "categories": {"stem": {"acc": 0.26, "acc_stderr": 0.01, "n": 1000, "num_subjects": 1}},
         "subjects": {"anatomy": {"acc": 0.26, "acc_stderr": 0.01, "n": 1000}}}
    cfg = {"num_shots": 5, "max_length": 256, "truncated_prompts": 0}
    whole = [{"sample_id": "anatomy/0", "num_prompt_tokens": 200, "truncated": False,
              "prompt_tokens_cut": 0}]
    (sec,) = suites.MMLUSuite(inputs_fn=list)._sections(m, cfg, whole)
    assert "within two standard errors of chance" in sec.paragraphs[-1]
    m["overall"]["acc"] = 0.6
    (sec,) = suites.MMLUSuite(inputs_fn=list)._sections(m, cfg, whole)
    assert len(sec.paragraphs) == 2 and "Every prompt was scored whole" in sec.paragraphs[1]
