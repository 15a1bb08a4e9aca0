"""Autoregressive decoding with a KV cache: one prefill pass, then one step per token.

    tokens = generate(model, params, prompt_batch, max_new_tokens=32,
                      temperature=0.0)              # greedy
    tokens = generate(..., temperature=0.8, top_k=40, top_p=0.95, rng=key)

`prompt_batch` holds `decoder_input_tokens` [B, P] (right-padded prompts, as the
model reads them, e.g. starting with the 0 "BOS" of shifted-right inputs) and the
prompt lengths as `prompt_lengths` [B] or implied by `decoder_segment_ids` != 0
(else every row is P long). Media arrays of the batch contract (images, audio,
videos + masks/lengths) may be included: they are encoded in the prefill and
written into the prompt's placeholder positions, as in training.

Each row continues at its own position (its prompt length), so prompts of
different lengths share one batch without left-padding. After a row emits
`eos_id`, its later tokens are `pad_id`.
Legend: B batch, P prompt length, N new tokens, V vocab.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from model.config import EOS_ID, PAD_ID
from model.models import DecoderOnlyModel, media_inputs


def sample_logits(logits: jax.Array, rng: jax.Array, *, temperature: float, top_k: int,
                  top_p: float) -> jax.Array:
    """[B, V] logits -> [B] int32 tokens. temperature 0 = greedy."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    neg = jnp.finfo(jnp.float32).min
    if top_k > 0:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg, logits)
    if top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
        cutoff = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1,
                         keepdims=True)
        logits = jnp.where(logits < cutoff, neg, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def prompt_lengths(prompt_batch: Mapping[str, Any]) -> jax.Array:
    tokens = jnp.asarray(prompt_batch["decoder_input_tokens"])
    if "prompt_lengths" in prompt_batch:
        return jnp.asarray(prompt_batch["prompt_lengths"], jnp.int32)
    if "decoder_segment_ids" in prompt_batch:
        return jnp.sum(jnp.asarray(prompt_batch["decoder_segment_ids"]) != 0, axis=1,
                       dtype=jnp.int32)
    return jnp.full((tokens.shape[0],), tokens.shape[1], jnp.int32)


def generate(model: DecoderOnlyModel, params: Any, prompt_batch: Mapping[str, Any],
             max_new_tokens: int, *, temperature: float = 0.0, top_k: int = 0,
             top_p: float = 1.0, rng: jax.Array | None = None, eos_id: int = EOS_ID,
             return_logits: bool = False) -> jax.Array | tuple[jax.Array, jax.Array]:
    """[B, N] generated tokens (and [B, N, V] float32 logits that chose them)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got "
                         f"{temperature}, {top_p}, {top_k}")
    if temperature > 0 and rng is None:
        raise ValueError("sampling with temperature > 0 needs rng=jax.random.PRNGKey(...)")
    inputs = {"tokens": jnp.asarray(prompt_batch["decoder_input_tokens"], jnp.int32),
              "lengths": prompt_lengths(prompt_batch), "media": media_inputs(prompt_batch)}
    rng = jax.random.PRNGKey(0) if rng is None else rng
    return _generate(model, max_new_tokens, float(temperature), int(top_k), float(top_p),
                     int(eos_id), bool(return_logits), params, inputs, rng)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6))
def _generate(model, max_new_tokens, temperature, top_k, top_p, eos_id, return_logits,
              params, inputs, rng):
    tokens, lengths, media = inputs["tokens"], inputs["lengths"], inputs["media"]
    b, p = tokens.shape
    cache_len = p + max_new_tokens
    segments = (jnp.arange(p)[None, :] < lengths[:, None]).astype(jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
    (logits, _), state = model.module(mode="prefill", cache_len=cache_len).apply(
        {"params": params}, tokens, segments, positions, media or None, mutable=["cache"])
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    sample = functools.partial(sample_logits, temperature=temperature, top_k=top_k,
                               top_p=top_p)
    stepper = model.module(mode="step", cache_len=cache_len)

    def step(carry, i):
        cache, last, done, key = carry
        key, sub = jax.random.split(key)
        tok = jnp.where(done, PAD_ID, sample(last, sub))
        done = done | (tok == eos_id)
        pos = lengths + i
        (new_logits, _), new_state = stepper.apply(
            {"params": params, "cache": cache}, tok[:, None], jnp.ones((b, 1), jnp.int32),
            pos[:, None], None, pos, mutable=["cache"])
        return (new_state["cache"], new_logits[:, 0], done, key), (tok, last)

    init = (state["cache"], last, jnp.zeros((b,), bool), rng)
    _, (toks, used_logits) = jax.lax.scan(step, init, jnp.arange(max_new_tokens))
    toks = toks.T
    if return_logits:
        return toks, jnp.swapaxes(used_logits, 0, 1)
    return toks
