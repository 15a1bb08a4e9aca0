"""V-MPO trainer: batched gymnax environments stepped on device, one jitted iteration.

    python -m model.rl --gin_file=gin/rl/memory_chain.gin \
        --gin.MODEL_DIR=/tmp/vmpo --gin.AgentConfig.torso="'gtrxl'"

One iteration (`iterate`, a pure jitted function of the RLState):
1. act: `unroll` steps in `num_envs` environments (gymnax, vmapped; auto-reset) with the
   target network π_old (the behaviour policy, as in V-MPO), carrying the agent's
   memory across steps and iterations;
2. learn: rerun the online network over the segment (+1 step to bootstrap) from the
   memory the segment started with; n-step value targets, advantages A = G - V,
   `model.rl.vmpo.vmpo_loss` (top-half E-step, temperature η and KL α duals with their
   ε constraints; KL(π_old ‖ π) per step) + value_coef · ½(G - V)²; Adam on the agent
   and the duals together (duals projected to ≥ 1e-10 after each update);
3. every `target_every` iterations the target network takes the online parameters.
Metrics (model.metric_writers: MODEL_DIR/metrics.jsonl and TensorBoard) every
`log_every` iterations: mean return of the episodes finished in that window, env
steps, the losses, η, α, KL. Checkpoints (model.checkpointing: orbax, async, keep)
hold step, online and target params, the optimizer state and the dual variables; a
restarted run resumes from the newest (environments and agent memory start afresh).
gymnax 1.0.x `step` returns (obs, state, reward, terminated, truncated, info).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

import flax
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax

from model import fs, metric_writers
from model.checkpointing import CheckpointConfig, Checkpointer
from model.rl import vmpo
from model.rl.agent import Agent, AgentConfig, step_inputs

log = logging.getLogger("tapestry.rl")


@flax.struct.dataclass
class Learner:
    """What checkpoints hold (the `as_dict` Checkpointer saves)."""
    step: jax.Array
    params: Any          # {'agent': ..., 'duals': {'temperature', 'alpha'}}
    target: Any          # the target agent params (π_old)
    opt_state: Any

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "params": self.params, "target": self.target,
                "opt_state": self.opt_state}


@flax.struct.dataclass
class Actors:
    """The environments and the acting agent's memory (not checkpointed)."""
    env_state: Any
    obs: jax.Array          # [B, O]
    prev_action: jax.Array  # [B]
    prev_reward: jax.Array  # [B]
    first: jax.Array        # [B] bool: next step starts an episode
    memory: Any
    episode_return: jax.Array  # [B] running return of the current episode
    rng: jax.Array


@gin.configurable
@dataclasses.dataclass(frozen=True)
class VmpoConfig:
    env_name: str = "MemoryChain-bsuite"
    memory_length: int = 4          # MemoryChain: steps between the cue and the query
    num_envs: int = 32
    unroll: int = 16
    learning_rate: float = 1e-3
    discount: float = 0.99
    n_step: int = 5
    eps_temperature: float = 0.1
    eps_alpha: float = 0.01
    init_temperature: float = 1.0
    init_alpha: float = 5.0
    top_fraction: float = 0.5
    value_coef: float = 0.5
    target_every: int = 10
    max_grad_norm: float = 1.0


def make_env(cfg: VmpoConfig):
    import gymnax  # a JAX-only package; imported here so model.rl imports without it
    env, params = gymnax.make(cfg.env_name)
    if hasattr(params, "memory_length"):
        params = params.replace(memory_length=cfg.memory_length)
    return env, params


class VmpoTrainer:
    def __init__(self, cfg: VmpoConfig, agent_cfg: AgentConfig, seed: int = 0):
        self.cfg, self.seed = cfg, seed
        self.env, self.env_params = make_env(cfg)
        self.num_actions = self.env.num_actions
        obs_size = int(np.prod(self.env.observation_space(self.env_params).shape))
        self.agent = Agent(agent_cfg, self.num_actions, obs_size + self.num_actions + 1)
        self.optimizer = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm),
                                     optax.adam(cfg.learning_rate))

    # ------------------------------------------------------------------ init
    def init(self, seed: int | jax.Array | None = None, env_params: Any = None
             ) -> tuple[Learner, Actors]:
        """Fresh learner and actors (seed: the trainer's by default; vmappable).
        `env_params` (default: the config's) may be a traced argument, so one compile
        serves e.g. every memory length."""
        cfg = self.cfg
        env_params = self.env_params if env_params is None else env_params
        rng = jax.random.key(self.seed if seed is None else seed)
        rng, k_env, k_init = jax.random.split(rng, 3)
        obs, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(
            jax.random.split(k_env, cfg.num_envs), env_params)
        memory = self.agent.initial_memory(cfg.num_envs)
        zeros_in = jnp.zeros((cfg.num_envs, 1, self.agent.input_size), jnp.float32)
        agent_params = self.agent.init(k_init, memory, zeros_in,
                                       jnp.ones((cfg.num_envs, 1), bool))["params"]
        params = {"agent": agent_params,
                  "duals": {"temperature": jnp.asarray(cfg.init_temperature, jnp.float32),
                            "alpha": jnp.asarray(cfg.init_alpha, jnp.float32)}}
        learner = Learner(jnp.zeros((), jnp.int32), params,
                          jax.tree.map(jnp.copy, agent_params), self.optimizer.init(params))
        b = cfg.num_envs
        actors = Actors(env_state, obs, jnp.zeros((b,), jnp.int32), jnp.zeros((b,)),
                        jnp.ones((b,), bool), memory, jnp.zeros((b,)), rng)
        return learner, actors

    # ------------------------------------------------------------------ act
    def _act(self, target: Any, actors: Actors, env_params: Any):
        """`unroll` steps with π_old -> (actors after, the segment's trajectory)."""
        cfg = self.cfg

        def one(carry, _):
            a: Actors = carry
            rng, k_act, k_env = jax.random.split(a.rng, 3)
            x = step_inputs(a.obs, a.prev_action, a.prev_reward, a.first, self.num_actions)
            (logits, _), memory = self.agent.apply({"params": target}, a.memory, x[:, None],
                                                   a.first[:, None])
            action = jax.random.categorical(k_act, logits[:, 0])
            obs, env_state, reward, terminated, truncated, _ = jax.vmap(
                self.env.step, in_axes=(0, 0, 0, None))(
                jax.random.split(k_env, cfg.num_envs), a.env_state, action, env_params)
            done = jnp.logical_or(terminated, truncated)
            ret = a.episode_return + reward
            out = dict(inputs=x, first=a.first, action=action, reward=reward,
                       discount=cfg.discount * (1.0 - terminated.astype(jnp.float32)),
                       done=done, finished_return=jnp.where(done, ret, 0.0))
            new = Actors(env_state, obs, action, reward.astype(jnp.float32), done, memory,
                         jnp.where(done, 0.0, ret), rng)
            return new, out

        return jax.lax.scan(one, actors, None, length=cfg.unroll)

    # ---------------------------------------------------------------- learn
    def _loss(self, params, target, memory, inputs, firsts, traj):
        """inputs [B,T+1,I], firsts [B,T+1]; traj fields [T,B]."""
        cfg = self.cfg
        (logits, values), _ = self.agent.apply({"params": params["agent"]}, memory, inputs,
                                               firsts)
        (old_logits, _), _ = self.agent.apply({"params": target}, memory, inputs, firsts)
        old_logits = jax.lax.stop_gradient(old_logits)
        logits, old_logits, values = (jnp.swapaxes(v, 0, 1)            # -> [T+1, B, ...]
                                      for v in (logits, old_logits, values))
        targets = vmpo.n_step_targets(traj["reward"], traj["discount"],
                                      jax.lax.stop_gradient(values), cfg.n_step)
        advantages = targets - jax.lax.stop_gradient(values[:-1])
        log_probs = jnp.take_along_axis(jax.nn.log_softmax(logits[:-1]),
                                        traj["action"][..., None], axis=-1)[..., 0]
        kl = vmpo.categorical_kl(old_logits[:-1], logits[:-1])
        duals = params["duals"]
        policy, parts = vmpo.vmpo_loss(log_probs, advantages, duals["temperature"],
                                       cfg.eps_temperature, kl, duals["alpha"], cfg.eps_alpha,
                                       top_fraction=cfg.top_fraction)
        value_loss = 0.5 * jnp.mean(jnp.square(targets - values[:-1]))
        loss = jnp.mean(policy) + cfg.value_coef * value_loss
        metrics = {"loss": loss, "value_loss": value_loss,
                   "policy_loss": jnp.mean(parts.policy_loss),
                   "temperature_loss": parts.temperature_loss, "kl": jnp.mean(kl),
                   "temperature": vmpo.project_dual(duals["temperature"]),
                   "alpha": vmpo.project_dual(duals["alpha"]),
                   "advantage_mean": jnp.mean(advantages), "value_mean": jnp.mean(values)}
        return loss, metrics

    def iterate(self, learner: Learner, actors: Actors, env_params: Any = None):
        """One act + learn iteration -> (learner, actors, metrics)."""
        env_params = self.env_params if env_params is None else env_params
        start_memory = actors.memory
        actors, traj = self._act(learner.target, actors, env_params)
        boot = step_inputs(actors.obs, actors.prev_action, actors.prev_reward, actors.first,
                           self.num_actions)
        inputs = jnp.concatenate([jnp.swapaxes(traj["inputs"], 0, 1), boot[:, None]], axis=1)
        firsts = jnp.concatenate([traj["first"].T, actors.first[:, None]], axis=1)
        (_, metrics), grads = jax.value_and_grad(self._loss, has_aux=True)(
            learner.params, learner.target, start_memory, inputs, firsts, traj)
        updates, opt_state = self.optimizer.update(grads, learner.opt_state, learner.params)
        params = optax.apply_updates(learner.params, updates)
        params = dict(params, duals=jax.tree.map(vmpo.project_dual, params["duals"]))
        step = learner.step + 1
        target = jax.tree.map(lambda t, p: jnp.where(step % self.cfg.target_every == 0, p, t),
                              learner.target, params["agent"])
        metrics = dict(metrics, episodes=jnp.sum(traj["done"]),
                       return_sum=jnp.sum(traj["finished_return"]))
        return Learner(step, params, target, opt_state), actors, metrics

    @property
    def env_steps_per_iteration(self) -> int:
        return self.cfg.num_envs * self.cfg.unroll


@functools.lru_cache(maxsize=8)
def _trainer_and_step(config: VmpoConfig, agent: AgentConfig):
    """One trainer and jitted iteration per configuration (seeds only change init), so
    runs of the same configuration in one process compile once."""
    trainer = VmpoTrainer(config, agent)
    return trainer, jax.jit(trainer.iterate)


@gin.configurable
def train_rl(*, model_dir: str = gin.REQUIRED, iterations: int = gin.REQUIRED,
             config: VmpoConfig | None = None, agent: AgentConfig | None = None,
             seed: int = 0, log_every: int = 10,
             checkpoint_cfg: CheckpointConfig | None = None, tensorboard: bool = True
             ) -> list[dict[str, float]]:
    """Trains for `iterations` (resuming from MODEL_DIR's newest checkpoint); returns the
    logged rows (env_steps, mean return over the window's finished episodes, ...)."""
    trainer, step_fn = _trainer_and_step(config or VmpoConfig(), agent or AgentConfig())
    checkpoint_cfg = checkpoint_cfg or CheckpointConfig(save_every=max(iterations, 1))
    model_dir = str(fs.makedirs(model_dir))
    metric_writers.write_config_gin(model_dir)
    learner, actors = trainer.init(seed)
    ckpt = Checkpointer(model_dir, checkpoint_cfg)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                            learner)
    restored = ckpt.restore_latest(abstract)
    if restored is not None:
        learner = Learner(**restored[0])
        log.info("resuming at iteration %d", int(learner.step))
    writers = metric_writers.MetricWriters(model_dir, tensorboard, True)
    rows, window, start = [], [], time.perf_counter()
    try:
        while int(learner.step) < iterations:
            learner, actors, metrics = step_fn(learner, actors)
            window.append(metrics)
            step = int(learner.step)
            if step % log_every == 0 or step == iterations:
                host = jax.device_get(window)
                episodes = sum(float(m["episodes"]) for m in host)
                row = {k: float(np.mean([m[k] for m in host])) for k in host[-1]
                       if k not in ("episodes", "return_sum")}
                row.update(env_steps=step * trainer.env_steps_per_iteration,
                           episodes=episodes,
                           mean_return=(sum(float(m["return_sum"]) for m in host)
                                        / max(episodes, 1.0)),
                           seconds=time.perf_counter() - start)
                writers.write(step, "train", row)
                rows.append(dict(row, step=step))
                window = []
            if step % checkpoint_cfg.save_every == 0 or step == iterations:
                ckpt.save(step, learner, {"train_batches_consumed": step})
    finally:
        ckpt.close()
        writers.close()
    return rows
