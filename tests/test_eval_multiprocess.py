"""Sharded, multi-process evaluation: `python -m model.eval` on 2 processes x 4 devices
writes the same results.json metrics and samples as on 1 device (bit for bit, dense,
with `evaluate.rows_per_device`), once, from process 0; an MoE on a mesh scores like
one device (exactly with expert axis 1; to float rounding under expert parallelism)."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from model.checkpointing import CheckpointConfig, Checkpointer
from model.config import model_config
from model.evaluation import scoring, sharded
from model.models import DecoderOnlyModel
from model.partitioning import Partitioner
from model.trainer import Trainer, adamw, warmup_cosine_schedule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(d_model=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16, d_ff=64,
             vocab_size=256, max_len=64, image=None, video=None, audio=None)


def _write_checkpoint(model_dir, overrides):
    """Step-3 params of the small model (init, then scaled so they are not init's)."""
    model = DecoderOnlyModel(model_config("tiny", overrides))
    part = Partitioner((1, 1, 1), num_devices=1)
    sched = warmup_cosine_schedule(1e-2, 1, 50)
    tr = Trainer(model, adamw(sched), part, sched)
    batch = scoring.build_batch([], 16, 1)
    state = tr.init_state(jax.random.key(3), batch)
    state = state.replace(step=state.step + 3,
                          params=jax.tree.map(lambda p: p * 1.25, state.params))
    ck = Checkpointer(model_dir, CheckpointConfig(async_save=False))
    ck.save(3, state, {"train_batches_consumed": 3})
    ck.close()


def _write_inputs(tmp_path):
    rng = np.random.default_rng(0)
    docs = [{"sample_id": f"doc{i}", "text": "x" * int(n),
             "token_ids": [int(t) for t in rng.integers(3, 256, int(n))]}
            for i, n in enumerate((64, 40, 50, 33))]  # one window each: one shape
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    questions = []
    for i in range(6):
        questions.append({
            "sample_id": f"anatomy/{i}", "subject": "anatomy", "label": i % 4,
            "doc": {"q": i}, "prompt": f"Q{i}", "choices": [" A", " B", " C", " D"],
            "target": " " + "ABCD"[i % 4], "num_shots": 0,
            "context_ids": [int(t) for t in rng.integers(3, 256, 10 + 3 * i)],
            "continuation_ids": [[40, 41], [42], [43], [40, 44]]})
    (tmp_path / "mmlu.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))


def _gin_file(tmp_path, out, overrides):
    text = f"""
evaluate.model = @DecoderOnlyModel()
DecoderOnlyModel.config = @model_config()
model_config.preset = 'tiny'
model_config.overrides = {overrides!r}
evaluate.checkpoint_path = '{tmp_path / "run"}'
evaluate.output_dir = '{out}'
evaluate.suites = [@TextLMSuite(), @MMLUSuite()]
TextLMSuite.inputs_fn = @docs/jsonl_records
docs/jsonl_records.path = '{tmp_path / "docs.jsonl"}'
MMLUSuite.inputs_fn = @mmlu/jsonl_records
mmlu/jsonl_records.path = '{tmp_path / "mmlu.jsonl"}'
evaluate.max_length = 64
evaluate.batch_size = 8
evaluate.rows_per_device = 1
evaluate.progress = False
Partitioner.mesh_shape = (-1, 1, 1)
"""
    path = tmp_path / f"{out.name}.gin"
    path.write_text(text)
    return path


def _eval_command(gin_path):
    return [sys.executable, "-m", "model.eval", f"--gin_file={gin_path}"]


@pytest.mark.slow
def test_eval_on_two_processes_equals_one_device(tmp_path):
    _write_checkpoint(tmp_path / "run", SMALL)
    _write_inputs(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")
    single = subprocess.Popen(_eval_command(_gin_file(tmp_path, one, SMALL)), cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    multi = subprocess.run(
        [sys.executable, "-m", "model.launch_local", "--num_processes=2",
         "--devices_per_process=4", "--", *_eval_command(_gin_file(tmp_path, two, SMALL))],
        cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
        timeout=600)
    single_out = single.communicate(timeout=600)[0]
    assert single.returncode == 0, single_out[-3000:]
    assert multi.returncode == 0, (multi.stdout + multi.stderr)[-4000:]
    r1 = json.loads((one / "results.json").read_text())
    r2 = json.loads((two / "results.json").read_text())
    assert r1["meta"]["processes"] == 1 and r2["meta"]["processes"] == 2
    assert r2["meta"]["mesh"] == {"data": 8, "expert": 1, "model": 1}
    assert r1["meta"]["checkpoint_step"] == r2["meta"]["checkpoint_step"] == 3
    for task in ("text_lm", "mmlu"):
        assert json.dumps(r1["tasks"][task]["metrics"]) == json.dumps(r2["tasks"][task]["metrics"])
    # Written once (process 0): one line per sample, same scores as one device.
    for name, n in (("text_lm", 4), ("mmlu", 6)):
        lines1 = (one / f"samples_{name}.jsonl").read_text().splitlines()
        lines2 = (two / f"samples_{name}.jsonl").read_text().splitlines()
        assert len(lines2) == n
        assert sorted(lines1) == sorted(lines2)
    assert "eval report:" in multi.stdout and (two / "report.html").exists()
    assert r1["tasks"]["text_lm"]["metrics"]["bits_per_byte"] > 0


def _moe_scores(runner, params, requests, batch_size, buckets):
    return np.array([s.loglikelihood for s in scoring.BatchedScorer(
        runner.score_fn(params), 64, batch_size, buckets).score(requests)])


def test_moe_scores_on_a_mesh_equal_one_device():
    """Capacity MoE with a small eval capacity (tokens are dropped): each row is its own
    routing group and padding is never routed, so a mesh (expert parallel, model
    sharded) changes nothing but float rounding, and with expert axis 1 not even that."""
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    cfg = dict(SMALL, **{"moe.capacity_factor_eval": 0.5, "moe.expert_hidden": 32})
    model = DecoderOnlyModel(model_config("tiny_moe", cfg))
    one = sharded.MeshRunner(model, Partitioner((1, 1, 1), num_devices=1), 64, rows_per_device=1)
    params = one.init(0)
    host = jax.device_get(params)
    rng = np.random.default_rng(5)
    reqs = [scoring.Request(list(rng.integers(3, 256, rng.integers(5, 30))),
                            list(rng.integers(3, 256, 2))) for _ in range(16)]  # one shape
    want = _moe_scores(one, params, reqs, 8, None)
    data = sharded.MeshRunner(model, Partitioner((8, 1, 1)), 64, rows_per_device=1)
    np.testing.assert_array_equal(_moe_scores(data, data.place(host), reqs, 8, None), want)
    experts = sharded.MeshRunner(model, Partitioner((1, 4, 2)), 64)  # experts 1/4, mlp 1/2
    np.testing.assert_allclose(_moe_scores(experts, experts.place(host), reqs, 8, None), want,
                               rtol=1e-5, atol=1e-5)


def test_greedy_decoding_on_a_mesh_equals_one_device():
    """Prompts of different lengths (3, padded to the 8 batch shards), decoded with the
    KV cache on meshes: the same tokens as on one device."""
    if jax.device_count() < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8")
    from model import eval as eval_lib
    model = DecoderOnlyModel(model_config("tiny", SMALL))
    one = eval_lib.one_device_runner(model, 64)
    params = one.init(1)
    host = jax.device_get(params)
    prompts = [([40, 41, 42, 43, 44], None), ([50, 51], None), ([7] * 9, None)]
    want = one.generate_fn(params, eval_lib.prompt_batch)(prompts, 4)
    assert [len(o) for o in want] == [4, 4, 4]
    for mesh, rows in (((8, 1, 1), 1), ((2, 2, 2), None)):
        runner = sharded.MeshRunner(model, Partitioner(mesh), 64, rows_per_device=rows)
        got = runner.generate_fn(runner.place(host), eval_lib.prompt_batch)(prompts, 4)
        assert got == want, mesh
