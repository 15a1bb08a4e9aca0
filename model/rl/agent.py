"""Agents for V-MPO: a torso with memory, then policy logits and a value.

    agent = Agent(AgentConfig(torso='gtrxl'), num_actions=2, input_size=6)
    memory = agent.initial_memory(batch_size)
    (logits [B,T,A], values [B,T]), memory = agent.apply(params, memory, inputs, firsts)

Step input at time t: the observation, one_hot(a_{t-1}) and r_{t-1} (zeros at an
episode's first step), embedded to d_model. `firsts [B,T]` marks each episode's first
step. The same call acts (T = 1) and learns (T = unroll + 1, from the memory the
segment started with), so acting and learning see the same context.

Torsos:
  'gtrxl' | 'trxl_i' | 'pre_norm'  our decoder blocks (model/transformer.py `_block`,
      block_type from model/nn/gating.py) over [memory window; new inputs]: the memory
      is the last `window` step inputs with their episode ids (as packed segment ids,
      so attention never crosses an episode start) and in-episode positions (RoPE).
      An episode longer than `window` steps sees only its last `window` inputs.
  'lstm'  an LSTM whose carry is zeroed at episode starts (the memory is the carry).
Legend: B environments, T steps, W window, I step-input size, D width, A actions.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from model.config import TransformerConfig
from model.layers import RMSNorm, rope_tables
from model.transformer import _block

TORSOS = ("gtrxl", "trxl_i", "pre_norm", "lstm")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class AgentConfig:
    torso: str = "gtrxl"
    d_model: int = 32
    num_layers: int = 2
    num_heads: int = 2
    d_ff: int = 64
    window: int = 32       # transformer memory: the last W step inputs
    gate: str = "gru"
    gate_bias: float = 2.0

    def __post_init__(self):
        if self.torso not in TORSOS:
            raise ValueError(f"AgentConfig.torso={self.torso!r}: choose one of {TORSOS}")
        if self.window < 1 or self.d_model % self.num_heads:
            raise ValueError(f"AgentConfig: window={self.window} must be >= 1 and "
                             f"d_model={self.d_model} divisible by num_heads={self.num_heads}")

    def decoder_config(self) -> TransformerConfig:
        """The TransformerConfig our blocks are built from (vocab unused)."""
        return TransformerConfig(
            vocab_size=2, d_model=self.d_model, num_layers=self.num_layers,
            num_heads=self.num_heads, num_kv_heads=self.num_heads,
            head_dim=self.d_model // self.num_heads, d_ff=self.d_ff, block_type=self.torso,
            gate=self.gate, gate_bias=self.gate_bias, z_loss_coef=0.0, max_len=self.window)


def step_inputs(obs: jax.Array, prev_action: jax.Array, prev_reward: jax.Array,
                first: jax.Array, num_actions: int) -> jax.Array:
    """[B, O] obs, [B] previous action and reward, [B] first -> [B, O + A + 1]."""
    keep = (~first)[:, None].astype(jnp.float32)
    onehot = jax.nn.one_hot(prev_action, num_actions) * keep
    return jnp.concatenate([obs.astype(jnp.float32), onehot,
                            prev_reward[:, None].astype(jnp.float32) * keep], axis=-1)


class TransformerMemory(nn.Module):
    """Our decoder blocks over [window; new inputs]; returns the new inputs' states."""
    cfg: AgentConfig

    @nn.compact
    def __call__(self, memory: dict[str, jax.Array], x: jax.Array, firsts: jax.Array):
        b, t, _ = x.shape
        # Episode ids and in-episode positions continue from the window's last entry.
        def advance(carry, first):
            episode, position = carry
            episode = episode + first.astype(jnp.int32)
            position = jnp.where(first, 0, position + 1)
            return (episode, position), (episode, position)

        _, (episodes, positions) = jax.lax.scan(
            advance, (memory["episode"][:, -1], memory["position"][:, -1]), firsts.T)
        inputs = jnp.concatenate([memory["inputs"], x], axis=1)        # [B, W+T, I]
        episode = jnp.concatenate([memory["episode"], episodes.T], axis=1)
        position = jnp.concatenate([memory["position"], positions.T], axis=1)
        dcfg = self.cfg.decoder_config()
        h = nn.Dense(dcfg.d_model, name="embed")(inputs)
        sin, cos = rope_tables(jnp.maximum(position, 0), dcfg.head_dim, dcfg.rope_base)
        for i in range(dcfg.num_layers):
            h, _ = _block(dcfg, i, False, "full", 0, f"layer_{i}")(h, sin, cos, episode)
        h = RMSNorm(dcfg.norm_eps, name="final_norm")(h)[:, -t:]
        w = self.cfg.window
        new_memory = {"inputs": inputs[:, -w:], "episode": episode[:, -w:],
                      "position": position[:, -w:]}
        return h, new_memory


class LSTMMemory(nn.Module):
    cfg: AgentConfig

    @nn.compact
    def __call__(self, memory: dict[str, jax.Array], x: jax.Array, firsts: jax.Array):
        h = nn.Dense(self.cfg.d_model, name="embed")(x)

        def step(cell, carry, inp):
            x_t, first = inp
            carry = jax.tree.map(lambda c: jnp.where(first[:, None], 0.0, c), carry)
            carry, y = cell(carry, x_t)
            return carry, y

        scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False},
                       in_axes=1, out_axes=1)
        carry, ys = scan(nn.OptimizedLSTMCell(self.cfg.d_model, name="lstm"),
                         (memory["c"], memory["h"]), (h, firsts))
        return ys, {"c": carry[0], "h": carry[1]}


class Agent(nn.Module):
    """(memory, inputs [B,T,I], firsts [B,T]) -> ((logits [B,T,A], values [B,T]), memory)."""
    cfg: AgentConfig
    num_actions: int
    input_size: int

    def initial_memory(self, batch: int) -> dict[str, jax.Array]:
        if self.cfg.torso == "lstm":
            zeros = jnp.zeros((batch, self.cfg.d_model), jnp.float32)
            return {"c": zeros, "h": zeros}
        w = self.cfg.window
        return {"inputs": jnp.zeros((batch, w, self.input_size), jnp.float32),
                "episode": jnp.zeros((batch, w), jnp.int32),   # 0: empty slot
                "position": jnp.full((batch, w), -1, jnp.int32)}

    @nn.compact
    def __call__(self, memory: dict[str, jax.Array], inputs: jax.Array, firsts: jax.Array):
        torso = (LSTMMemory if self.cfg.torso == "lstm" else TransformerMemory)(
            self.cfg, name="torso")
        h, memory = torso(memory, inputs, firsts)
        logits = nn.Dense(self.num_actions, name="policy")(h)
        values = nn.Dense(1, name="value")(h)[..., 0]
        return (logits.astype(jnp.float32), values.astype(jnp.float32)), memory
