"""`python -m model.train` as several processes of one JAX job (model.launch_local,
CPU collectives over gloo): losses equal the 1-process 8-device run; SIGTERM to one
process stops all at the same step with one checkpoint; SIGKILL of one makes the
other fail fast; restarts reproduce the uninterrupted losses bitwise.

One case per behaviour (the machine has 2 cores): the three loss cases together
cover 2x4 and 4x2 processes x devices, meshes (8,1,1), (2,2,2) with FSDP and
(1,4,2), and dense, capacity-MoE and dropless-MoE models.
"""
from __future__ import annotations

import random
import re
import signal
import time

import jax
import numpy as np
import pytest

from model.metric_writers import read_jsonl
from tests import train_testlib

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    jax.device_count() < 8, reason="the 1-process reference needs 8 devices (XLA_FLAGS)")]

STEPS = 16
# The schedule must not depend on TRAIN_STEPS: interrupted runs are started "endless".
COMMON = ["warmup_cosine_schedule.decay_steps = 100", "train.log_every = 1",
          "CheckpointConfig.save_every = 5", "train.eval_every = 0", "train.eval_steps = 2"]
MOE = ["model_config.preset = 'tiny_moe'", train_testlib.overrides_binding(num_layers=2)]
DROPLESS = ["model_config.preset = 'tiny_moe'",
            train_testlib.overrides_binding(num_layers=2, **{"moe.dispatch": "dropless"})]
DENSE = ["Partitioner.mesh_shape = (8, 1, 1)"]
CASES = {  # name: (processes, devices per process, bindings)
    "2x4-dense-8.1.1": (2, 4, DENSE + ["train.eval_every = 5", "train.eval_steps = 2"]),
    "4x2-capacity_moe-2.2.2-fsdp": (4, 2, MOE + ["Partitioner.mesh_shape = (2, 2, 2)",
                                                 "Partitioner.fsdp = True"]),
    "2x4-dropless_moe-1.4.2": (2, 4, DROPLESS + ["Partitioner.mesh_shape = (1, 4, 2)"]),
}


def _run_multi(tmp, name, steps, procs, devices, bindings, timeout=1200):
    model_dir = tmp / name
    cluster = train_testlib.launch(train_testlib.cli_args(model_dir, steps, COMMON + bindings),
                                   procs, devices, tmp / f"{name}.log")
    codes = cluster.wait(timeout=timeout)
    assert codes == [0] * procs, (codes, _tail(tmp / f"{name}.log"))
    return train_testlib.losses(model_dir)


def _tail(path, n=4000) -> str:
    text = path.read_text() if path.exists() else ""
    return "\n".join(line for line in text.splitlines() if "[Gloo]" not in line)[-n:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Losses of an uninterrupted 2x4 dense run on (8,1,1) (evaluating every 5 steps,
    which leaves the train losses alone): the bitwise reference."""
    procs, devices, bindings = CASES["2x4-dense-8.1.1"]
    tmp = tmp_path_factory.mktemp("uninterrupted")
    _run_multi(tmp, "run", STEPS, procs, devices, bindings)
    return tmp / "run"


@pytest.mark.parametrize("case", sorted(CASES))
def test_losses_equal_one_process(tmp_path, case, uninterrupted):
    procs, devices, bindings = CASES[case]
    multi_dir = uninterrupted if case == "2x4-dense-8.1.1" else tmp_path / "multi"
    if case != "2x4-dense-8.1.1":
        _run_multi(tmp_path, "multi", 10, procs, devices, bindings)
    multi = train_testlib.losses(multi_dir)
    train_testlib.train_in_process(train_testlib.cli_args(
        tmp_path / "single", 10, COMMON + bindings))
    single = train_testlib.losses(tmp_path / "single")
    steps = list(range(1, 11))
    assert [s for s in steps if s in multi] == steps
    np.testing.assert_allclose([multi[s] for s in steps], [single[s] for s in steps],
                               rtol=0, atol=2e-5)
    if "train.eval_every = 5" in bindings:  # eval on every host at the same steps
        evals = [read_jsonl(d / "metrics.jsonl", "eval")[:2]
                 for d in (multi_dir, tmp_path / "single")]
        assert [r["step"] for r in evals[0]] == [5, 10] == [r["step"] for r in evals[1]]
        np.testing.assert_allclose([r["loss"] for r in evals[0]], [r["loss"] for r in evals[1]],
                                   rtol=0, atol=2e-5)


def _restart_matches(tmp, name, reference_dir, procs=2, devices=4):
    """Restarts run `name` to STEPS: its losses equal the reference run's bitwise."""
    want = train_testlib.losses(reference_dir)
    got = _run_multi(tmp, name, STEPS, procs, devices, DENSE)
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert got[step] == want[step], (step, got[step], want[step])  # bitwise


def test_sigterm_to_one_process_stops_all_at_one_step(tmp_path, uninterrupted):
    rng = random.Random()
    at, victim = rng.randint(2, 6), rng.randint(0, 1)
    model_dir = tmp_path / "run"
    args = train_testlib.cli_args(model_dir, 10_000,
                                  COMMON + DENSE + ["CheckpointConfig.save_every = 1000"])
    cluster = train_testlib.launch(args, 2, 4, tmp_path / "run.log")
    alive = lambda: all(p.poll() is None for p in cluster.procs)  # noqa: E731
    train_testlib.wait_for_step(model_dir, at, alive)
    cluster.send_signal(signal.SIGTERM, victim)
    codes = cluster.wait(timeout=600)
    out = _tail(tmp_path / "run.log", 200_000)
    assert codes == [0, 0], (victim, codes, out[-4000:])
    caught = {int(p): int(s) for p, s in
              re.findall(r"\[p(\d)\] preempted: checkpoint saved at step (\d+)", out)}
    assert set(caught) == {0, 1} and caught[0] == caught[1], (victim, caught)
    step = caught[0]
    assert at <= step < STEPS, (at, step)
    assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == [str(step)]
    # The checkpoint holds both hosts' input states, right after the last batch.
    data = (model_dir / "checkpoints" / str(step) / "data" / "metadata").read_text()
    assert f'"iterator_states": [{{"next_batch": {step}}}, {{"next_batch": {step}}}]' in data
    _restart_matches(tmp_path, "run", uninterrupted)


def test_sigkill_of_one_process_fails_the_other_fast(tmp_path, uninterrupted):
    rng = random.Random()
    at, victim = rng.randint(6, 9), rng.randint(0, 1)
    model_dir = tmp_path / "run"
    args = train_testlib.cli_args(model_dir, 10_000, COMMON + DENSE)
    # The launcher would kill the survivor itself: give it time to fail on its own.
    cluster = train_testlib.launch(args, 2, 4, tmp_path / "run.log", failure_grace_s=120,
                                   heartbeat_timeout_s=10)
    alive = lambda: all(p.poll() is None for p in cluster.procs)  # noqa: E731
    train_testlib.wait_for_step(model_dir, at, alive)
    killed_at = time.monotonic()
    cluster.send_signal(signal.SIGKILL, victim)
    survivor = cluster.procs[1 - victim]
    survivor.wait(timeout=90)
    took = time.monotonic() - killed_at
    codes = cluster.wait(timeout=30)
    out = _tail(tmp_path / "run.log", 400_000)
    assert codes[victim] == 128 + signal.SIGKILL
    assert codes[1 - victim] != 0 and took < 60, (codes, took, out[-4000:])
    assert re.search(rf"\[p{1 - victim}\] .*(another task died|leader task was preempted/died|process \d failed: )",
                     out), out[-4000:]
    _restart_matches(tmp_path, "run", uninterrupted)
