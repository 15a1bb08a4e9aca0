"""The eval harness on the real tiny model: batching is exact, bpb is the hand formula,
and `python -m model.eval` restores a trained checkpoint and writes the report."""
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from model import eval as eval_lib
from model.config import model_config
from model.evaluation import scoring, suites
from model.models import DecoderOnlyModel
from model.partitioning import Partitioner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny():
    model = DecoderOnlyModel(model_config("tiny"))
    params, _ = eval_lib.load_params(model, None, None, init_seed=0, max_length=64)
    return model, params


def test_bucketed_batches_score_like_single_rows(tiny):
    model, params = tiny
    score_fn = eval_lib.make_score_fn(model, params)
    rng = np.random.default_rng(1)
    reqs = [scoring.Request(list(rng.integers(20, 8000, rng.integers(0, 60))),
                            list(rng.integers(20, 8000, rng.integers(1, 3)))) for _ in range(9)]
    batched = scoring.BatchedScorer(score_fn, 64, 4).score(reqs)
    single = scoring.BatchedScorer(score_fn, 64, 1, buckets=(64,)).score(reqs)
    for a, b in zip(batched, single):
        assert a.loglikelihood == pytest.approx(b.loglikelihood, abs=2e-4)
        assert a.loglikelihood < 0


def test_shared_context_scorer_matches_row_per_choice_on_the_model(tiny):
    model, params = tiny
    rng = np.random.default_rng(4)
    reqs = []
    for q in range(6):
        ctx = list(rng.integers(20, 8000, rng.integers(5, 50)))
        reqs += [scoring.Request(ctx, c) for c in ([276, 336], [980], [1611], [276, 900])]
    rows = scoring.BatchedScorer(eval_lib.make_score_fn(model, params), 64, 4).score(reqs)
    shared = scoring.SharedContextScorer(eval_lib.make_candidate_fn(model, params), 64, 4)
    assert shared.num_batches(reqs) == 2
    for a, b in zip(shared.score(reqs), rows):
        assert a.loglikelihood == pytest.approx(b.loglikelihood, abs=2e-4)


def test_bits_per_byte_equals_hand_computation(tiny, tmp_path):
    model, params = tiny
    text = "Alice was beginning to get very tired."
    tokens = [int(t) for t in np.random.default_rng(2).integers(20, 8000, 100)]
    # Hand computation: windows of 64 targets, inputs shifted right (0 first, then the
    # token before the window), NLL summed over all 100 tokens.
    nll = 0.0
    for start in (0, 64):
        tgt = tokens[start:start + 64]
        inp = ([0] if start == 0 else [tokens[start - 1]]) + tgt[:-1]
        n = len(tgt)
        batch = {"decoder_input_tokens": np.array([inp]), "decoder_target_tokens": np.array([tgt]),
                 "decoder_segment_ids": np.ones((1, n), np.int32),
                 "decoder_positions": np.arange(n)[None], "decoder_loss_weights": np.ones((1, n))}
        nll -= float(np.sum(model.score_batch(params, batch)))
    expected = nll / (len(text.encode("utf-8")) * math.log(2))
    docs = [{"sample_id": "alice", "text": text, "token_ids": tokens}]
    results = eval_lib.evaluate(model=model, params=params, checkpoint_path=None,
                                suites=[suites.TextLMSuite(inputs_fn=lambda: docs)],
                                output_dir=str(tmp_path), max_length=64, batch_size=2,
                                progress=False)
    got = results["tasks"]["text_lm"]["metrics"]
    assert got["bits_per_byte"] == pytest.approx(expected, rel=1e-5)
    assert got["token_perplexity"] == pytest.approx(math.exp(nll / 100), rel=1e-5)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["tasks"]["text_lm"]["metrics"]["num_tokens"] == 100
    assert (tmp_path / "report.html").exists() and (tmp_path / "report.md").exists()


def test_untrained_baseline_is_scored_next_to_the_checkpoint(tiny, tmp_path):
    model, params = tiny
    docs = [{"sample_id": "d", "text": "abc", "token_ids": [30, 31, 32, 33]}]
    trained = jax.tree.map(lambda x: x * 0.5, params)  # any other parameters
    results = eval_lib.evaluate(
        model=model, params=trained, checkpoint_path="(given)", max_length=64, batch_size=2,
        suites=[suites.TextLMSuite(inputs_fn=lambda: docs, compare_untrained=True)],
        output_dir=str(tmp_path), progress=False)
    m = results["tasks"]["text_lm"]["metrics"]
    untrained = eval_lib.evaluate(
        model=model, params=params, checkpoint_path=None, max_length=64, batch_size=2,
        suites=[suites.TextLMSuite(inputs_fn=lambda: docs)], output_dir=str(tmp_path / "u"),
        progress=False)["tasks"]["text_lm"]["metrics"]
    assert m["untrained"]["bits_per_byte"] == pytest.approx(untrained["bits_per_byte"], rel=1e-6)
    assert m["bits_per_byte"] != pytest.approx(untrained["bits_per_byte"])
    assert "untrained model" in (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_eval_cli_restores_a_trained_checkpoint(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    model_dir = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "model.train", "--gin_file=gin/models/tiny.gin",
         "--gin_file=gin/runs/pretrain_synthetic.gin", f"--gin.MODEL_DIR={model_dir}",
         "--gin.TRAIN_STEPS=2", "--gin_bindings=warmup_cosine_schedule.warmup_steps = 1"],
        cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    book = tmp_path / "book.txt"
    book.write_text("It was the best of times, it was the worst of times.\n" * 20)
    out = tmp_path / "eval"
    proc = subprocess.run(
        [sys.executable, "-m", "model.eval", "--gin_file=gin/models/tiny.gin",
         "--gin_file=gin/runs/eval.gin", f"--gin.CHECKPOINT_PATH={model_dir}",
         f"--gin.EVAL_OUTPUT_DIR={out}",
         "--gin_bindings=evaluate.suites = [@TextLMSuite()]",
         "--gin_bindings=TextLMSuite.inputs_fn = @eval_inputs.text_files",
         f"--gin_bindings=eval_inputs.text_files.paths = ['{book}']",
         "--gin_bindings=evaluate.max_length = 64"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["checkpoint_step"] == 2
    assert results["tasks"]["text_lm"]["metrics"]["bits_per_byte"] > 0
    assert f"eval report: {out / 'report.html'}" in proc.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "model.eval", "--gin_file=gin/models/tiny.gin",
         "--gin_file=gin/runs/eval.gin", "--gin.CHECKPOINT_PATH=None",
         f"--gin.EVAL_OUTPUT_DIR={out}", "--gin.EVAL_OUTPUT_DIRR=x"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "EVAL_OUTPUT_DIRR" in bad.stderr


@pytest.mark.parametrize("extra,checks", [
    ([], {"evaluate.batch_size": 32}),
    (["gin/runs/eval_mmlu.gin"], {}),
    (["gin/runs/eval_long_context.gin", "--gin.BOOKS=['b.txt']"],
     {"niah/GenerationSuite.metric": "contains"}),
])
def test_eval_gin_files_parse(extra, checks):
    import gin

    from model import gin_flags
    files = [f"--gin_file={e}" for e in extra if e.endswith(".gin")]
    flags = [e for e in extra if not e.endswith(".gin")]
    try:
        gin.clear_config()
        gin_flags.parse_gin_flags(
            ["--gin_file=gin/models/tiny.gin", "--gin_file=gin/runs/eval.gin", *files,
             "--gin.CHECKPOINT_PATH=None", "--gin.EVAL_OUTPUT_DIR=/tmp/x", *flags],
            "test", finalize=False)
        for key, value in checks.items():
            assert gin.query_parameter(key) == value
    finally:
        gin.clear_config()


def test_multimodal_eval_gin_parses_with_the_demo_experiment():
    import gin

    from model import gin_flags
    try:
        gin.clear_config()
        gin_flags.parse_gin_flags(
            ["--gin_file=gin/experiments/demo.gin", "--gin_file=gin/runs/eval.gin",
             "--gin_file=gin/runs/eval_multimodal.gin", "--gin.CHECKPOINT_PATH=None",
             "--gin.EVAL_OUTPUT_DIR=/tmp/x", "--gin.CACHE_DIR=/tmp/c"], "test", finalize=False)
        assert gin.query_parameter("captions/GenerationSuite.metric") == "slots"
        assert gin.query_parameter("speech/eval_inputs.multimodal_prompts.task_name") == \
            "tapestry_mm_speech_manifest"
    finally:
        gin.clear_config()


def test_greedy_generation_continues_after_the_whole_prompt(tiny):
    pytest.importorskip("model.decoding")
    model, params = tiny
    prompts = [([40, 41, 42, 43, 44], None), ([50, 51], None)]
    outs = eval_lib.make_generate_fn(model, params)(prompts, 3)
    assert [len(o) for o in outs] == [3, 3]
    for (p, _), out in zip(prompts, outs):
        n = len(p) + 1
        batch = {"decoder_input_tokens": np.array([[0] + p]),
                 "decoder_segment_ids": np.ones((1, n), np.int32),
                 "decoder_positions": np.arange(n)[None]}
        logits, _ = model.logits(params, batch)
        assert out[0] == int(np.argmax(logits[0, -1]))  # next token after the last prompt token


def test_capacity_moe_scores_do_not_depend_on_batching_or_resume(tmp_path):
    """A capacity MoE that drops tokens (eval capacity factor 0.5) scores a request the
    same whatever its bucket length, batch mates or resume point: padding (segment id 0)
    is never routed and each row's capacity comes from its real tokens."""
    small = dict(d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16, d_ff=64,
                 vocab_size=256, max_len=64, image=None, video=None, audio=None)
    model = DecoderOnlyModel(model_config("tiny_moe", dict(
        small, **{"moe.capacity_factor_eval": 0.5, "moe.expert_hidden": 32})))
    runner = eval_lib.one_device_runner(model, 64)
    params = runner.init(0)
    score_fn = runner.score_fn(params)
    rng = np.random.default_rng(7)
    # Continuations of 2 tokens and two buckets keep this to three compiled shapes.
    reqs = [scoring.Request(list(rng.integers(3, 256, rng.integers(3, 60))),
                            list(rng.integers(3, 256, 2))) for _ in range(8)]
    tight = scoring.BatchedScorer(score_fn, 64, 3, buckets=(32, 64)).score(reqs)
    loose = scoring.BatchedScorer(score_fn, 64, 5, buckets=(64,)).score(reqs)
    assert len({bucket for _, bucket in scoring.plan_batches(
        [len(scoring.make_row(r, 64)[1]) for r in reqs], 3, (32, 64))}) == 2
    for a, b in zip(tight, loose):
        assert a.loglikelihood == pytest.approx(b.loglikelihood, abs=1e-4)
    _, metrics = jax.jit(lambda p, b: model.loss_fn(p, b, train=False))(
        params, scoring.build_batch([scoring.make_row(r, 64) for r in reqs], 64, 8))
    assert float(metrics["moe_layer_0/drop_fraction"]) > 0.05  # capacity binds

    # Documents of 33-64 tokens: one window each, all in one shape.
    docs = [{"sample_id": f"d{i}", "text": "t" * 20,
             "token_ids": [int(t) for t in rng.integers(3, 256, n)]}
            for i, n in enumerate((64, 40, 60, 35, 50))]
    kwargs = dict(model=model, params=jax.device_get(params), checkpoint_path=None,
                  max_length=64, batch_size=2, progress=False,
                  partitioner=Partitioner((1, 1, 1), num_devices=1))
    full = eval_lib.evaluate(suites=[suites.TextLMSuite(inputs_fn=lambda: docs)],
                             output_dir=str(tmp_path / "full"), **kwargs)
    # Interrupted after two documents, resumed with the rest in other batches.
    (tmp_path / "resumed").mkdir()
    eval_lib.evaluate(suites=[suites.TextLMSuite(inputs_fn=lambda: docs[:2])],
                      output_dir=str(tmp_path / "part"), **kwargs)
    part = (tmp_path / "part" / "samples_text_lm.jsonl").read_text()
    (tmp_path / "resumed" / "samples_text_lm.jsonl").write_text(part)
    resumed = eval_lib.evaluate(suites=[suites.TextLMSuite(inputs_fn=lambda: docs)],
                                output_dir=str(tmp_path / "resumed"), **kwargs)
    assert resumed["tasks"]["text_lm"]["timing"]["new_samples"] == 3
    got, want = resumed["tasks"]["text_lm"]["metrics"], full["tasks"]["text_lm"]["metrics"]
    assert got["bits_per_byte"] == pytest.approx(want["bits_per_byte"], rel=1e-6)
