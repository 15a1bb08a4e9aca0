"""Preemption: SIGKILL + restart reproduces the uninterrupted losses bitwise; SIGTERM
saves a checkpoint at the step it was caught and exits cleanly. Real subprocesses."""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

from model.metric_writers import read_jsonl
from tests import train_testlib

pytestmark = pytest.mark.slow

# The schedule must not depend on TRAIN_STEPS: the killed run is started "endless".
RESUME_BINDINGS = ["warmup_cosine_schedule.decay_steps = 100", "train.log_every = 1",
                   "CheckpointConfig.save_every = 5"]


def _losses(model_dir) -> dict[int, float]:
    """step -> loss; for steps logged twice (redone after a restart) the last value."""
    return {r["step"]: r["loss"] for r in read_jsonl(model_dir / "metrics.jsonl", "train")}


def _tail(path) -> str:
    return path.read_text()[-3000:] if path.exists() else ""


def _wait_for_step(proc, model_dir, step: int, timeout: float = 600) -> int:
    path = model_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"run ended early (rc {proc.returncode}):\n"
                                 f"{_tail(model_dir.parent / (model_dir.name + '.log'))}")
        if path.exists():
            rows = read_jsonl(path, "train")
            if rows and rows[-1]["step"] >= step:
                return rows[-1]["step"]
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"step {step} not reached in {timeout} s")


def test_sigkill_and_restart_reproduces_losses_bitwise(tmp_path):
    steps = 30
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    ref = train_testlib.popen(train_testlib.cli_args(ref_dir, steps, RESUME_BINDINGS),
                              tmp_path / "uninterrupted.log")
    killed = train_testlib.popen(train_testlib.cli_args(run_dir, 10_000, RESUME_BINDINGS),
                                 tmp_path / "killed.log")
    seen = _wait_for_step(killed, run_dir, 13)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    before_kill = _losses(run_dir)
    assert ref.wait(timeout=900) == 0, _tail(tmp_path / "uninterrupted.log")

    restarted = train_testlib.run(train_testlib.cli_args(run_dir, steps, RESUME_BINDINGS))
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    resumed_at = int(re.search(r"resuming at step (\d+)", restarted.stderr).group(1))
    assert 5 <= resumed_at <= max(seen, max(before_kill)) and resumed_at % 5 == 0

    want, got = _losses(ref_dir), _losses(run_dir)
    assert sorted(want) == list(range(1, steps + 1)) == sorted(got)
    for step in range(resumed_at + 1, steps + 1):
        assert got[step] == want[step], (step, got[step], want[step])  # bitwise
    for step, loss in before_kill.items():  # and the run before the kill matched too
        assert loss == want[step], step
    assert want[steps] < want[1]


def test_sigterm_saves_at_the_step_caught(tmp_path):
    model_dir = tmp_path / "run"
    proc = train_testlib.popen(train_testlib.cli_args(
        model_dir, 10_000, ["train.log_every = 1", "CheckpointConfig.save_every = 1000"]),
        tmp_path / "run.log")
    _wait_for_step(proc, model_dir, 7)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=600)
    out = (tmp_path / "run.log").read_text()
    assert proc.returncode == 0, out[-3000:]
    caught = int(re.search(r"preempted: checkpoint saved at step (\d+)", out).group(1))
    assert caught >= 7
    assert os.listdir(model_dir / "checkpoints") == [str(caught)]
    assert max(_losses(model_dir)) == caught
