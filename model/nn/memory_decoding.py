"""KV-cache decoding that keeps long-range memories: generation sees the book so far.

    memory = ...  # from reading the document's earlier segments (model.loss_and_memory,
                  # or model/nn/memory_eval.py), one row per document
    tokens = generate_with_memory(model, params, memory, prompt_batch, max_new_tokens=32)

Every layer with memory attends [its memory (cmem; mem); the KV cache of prompt and new
tokens]; the memory is read, never advanced, while decoding (the caller advances it
with the next segment's forward, as in training). Prompt positions continue the
document: `decoder_positions` [B, P] if given (e.g. 512.. after a 512-token segment),
else 0..P-1; new tokens follow each row's last prompt position. Sampling options are
model/decoding.py's. Legend: B batch, P prompt length, N new tokens, V vocab.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from model.config import EOS_ID, PAD_ID
from model.decoding import prompt_lengths, sample_logits


def generate_with_memory(model: Any, params: Any, memory: Any,
                         prompt_batch: Mapping[str, Any], max_new_tokens: int, *,
                         temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                         rng: jax.Array | None = None, eos_id: int = EOS_ID,
                         return_logits: bool = False):
    """[B, N] generated tokens (and [B, N, V] float32 logits that chose them)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if model.config.memory is None:
        raise ValueError("generate_with_memory needs a model with config.memory set; "
                         "use model.decoding.generate for the plain decoder")
    if temperature > 0 and rng is None:
        raise ValueError("sampling with temperature > 0 needs rng=jax.random.PRNGKey(...)")
    tokens = jnp.asarray(prompt_batch["decoder_input_tokens"], jnp.int32)
    b, p = tokens.shape
    positions = jnp.asarray(prompt_batch.get(
        "decoder_positions", jnp.broadcast_to(jnp.arange(p), (b, p))), jnp.int32)
    inputs = {"tokens": tokens, "lengths": prompt_lengths(prompt_batch),
              "positions": positions}
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return _generate(model, max_new_tokens, float(temperature), int(top_k), float(top_p),
                     int(eos_id), bool(return_logits), params, memory, inputs, rng)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6))
def _generate(model, max_new_tokens, temperature, top_k, top_p, eos_id, return_logits,
              params, memory, inputs, rng):
    tokens, lengths, positions = inputs["tokens"], inputs["lengths"], inputs["positions"]
    b, p = tokens.shape
    cache_len = p + max_new_tokens
    variables = {"params": params, "memory": memory}
    segments = (jnp.arange(p)[None, :] < lengths[:, None]).astype(jnp.int32)
    (logits, _), state = model.module(mode="prefill", cache_len=cache_len).apply(
        variables, tokens, segments, positions, None, mutable=["cache"])
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    next_position = jnp.take_along_axis(positions, (lengths - 1)[:, None], axis=1)[:, 0] + 1
    sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k,
                               top_p=top_p)
    stepper = model.module(mode="step", cache_len=cache_len)

    def step(carry, i):
        cache, last, done, key = carry
        key, sub = jax.random.split(key)
        tok = jnp.where(done, PAD_ID, sample(last, sub))
        done = done | (tok == eos_id)
        slot = lengths + i  # KV-cache index; the rotary position continues the document
        (new_logits, _), new_state = stepper.apply(
            {**variables, "cache": cache}, tok[:, None], jnp.ones((b, 1), jnp.int32),
            (next_position + i)[:, None], None, slot, mutable=["cache"])
        return (new_state["cache"], new_logits[:, 0], done, key), (tok, last)

    init = (state["cache"], last, jnp.zeros((b,), bool), rng)
    _, (toks, used_logits) = jax.lax.scan(step, init, jnp.arange(max_new_tokens))
    toks = toks.T
    if return_logits:
        return toks, jnp.swapaxes(used_logits, 0, 1)
    return toks
