"""V-MPO agents and trainer (model/rl/): acting step by step sees what learning sees,
and `python -m model.rl`'s loop trains, logs and resumes from its checkpoint."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.rl.agent import Agent, AgentConfig


@pytest.mark.parametrize("torso", ["gtrxl", "lstm"])
def test_acting_step_by_step_equals_learning_over_the_segment(torso):
    cfg = AgentConfig(torso=torso, d_model=16, num_layers=1, num_heads=2, d_ff=32, window=8)
    agent = Agent(cfg, num_actions=2, input_size=5)
    b, t = 3, 6
    x = jax.random.normal(jax.random.key(0), (b, t, 5))
    firsts = jnp.zeros((b, t), bool).at[:, 0].set(True).at[1, 3].set(True)  # row 1 restarts
    memory = agent.initial_memory(b)
    apply = jax.jit(agent.apply)
    params = agent.init(jax.random.key(1), memory, x[:, :1], firsts[:, :1])
    (logits, values), _ = apply(params, memory, x, firsts)
    step_logits, mem = [], memory
    for i in range(t):
        (l_i, _), mem = apply(params, mem, x[:, i:i + 1], firsts[:, i:i + 1])
        step_logits.append(l_i[:, 0])
    np.testing.assert_allclose(jnp.stack(step_logits, 1), logits, rtol=2e-5, atol=2e-5)
    # Memory matters: after row 1's restart, a different past gives the same outputs,
    # and before it a different past changes them.
    x2 = x.at[1, :3].add(1.0)
    (logits2, _), _ = apply(params, memory, x2, firsts)
    np.testing.assert_allclose(logits2[1, 3:], logits[1, 3:], rtol=1e-5, atol=1e-5)
    assert float(jnp.max(jnp.abs(logits2[1, 1:3] - logits[1, 1:3]))) > 1e-4


def test_train_rl_logs_checkpoints_and_resumes(tmp_path):
    pytest.importorskip("gymnax", reason="gymnax not installed (requirements.txt)")
    from model.metric_writers import read_jsonl
    from model.rl.train import VmpoConfig, train_rl
    cfg = VmpoConfig(memory_length=2, num_envs=4, unroll=3, n_step=2, target_every=2)
    agent = AgentConfig(torso="lstm", d_model=16)
    from model.checkpointing import CheckpointConfig
    ckpt = CheckpointConfig(save_every=2, async_save=False, save_on_sigterm=False)
    rows = train_rl(model_dir=str(tmp_path), iterations=2, config=cfg, agent=agent,
                    log_every=1, checkpoint_cfg=ckpt, tensorboard=False)
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["env_steps"] == 24
    assert np.isfinite(rows[-1]["loss"]) and rows[-1]["episodes"] > 0
    rows = train_rl(model_dir=str(tmp_path), iterations=3, config=cfg, agent=agent,
                    log_every=1, checkpoint_cfg=ckpt, tensorboard=False)
    assert [r["step"] for r in rows] == [3]  # resumed at iteration 2
    logged = read_jsonl(tmp_path / "metrics.jsonl", "train")
    assert [r["step"] for r in logged] == [1, 2, 3] and "mean_return" in logged[-1]
