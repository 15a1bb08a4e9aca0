"""DecoderOnlyModel: the API the trainer, eval and decoding use.

The batch (numpy or jax dict; SeqIO decoder names), e.g. two packed rows of L=6:

    decoder_input_tokens  [[0, 4, 3, 3, 5, 17], [0, 20, 21, 0, 22, 0]]  (shifted right)
    decoder_target_tokens [[4, 3, 3, 5, 17, 1], [20, 21, 1, 22, 1, 0]]
    decoder_loss_weights  [[0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1, 0]]
    decoder_segment_ids   [[1, 1, 1, 1, 1, 1], [1, 1, 1, 2, 2, 0]]    (0 = padding)
    decoder_positions     [[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 0]]
    images [B, Mi, H, W, 3] uint8, image_mask [B, Mi]           (optional)
    audio [B, Ma, T, mels], audio_lengths [B, Ma]                (optional)
    videos [B, Mv, F, H, W, 3] uint8, video_lengths [B, Mv]      (optional)

Row 0 holds one image of K=2 slots (<begin_image>=4, <image>=3 x2, <end_image>=5).
Loss is mean cross-entropy over weighted targets, never on placeholder targets,
plus z-loss and the MoE auxiliary losses.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from model import flops as flops_lib
from model.config import PLACEHOLDER_IDS, TransformerConfig
from model.encoders import MEDIA_KEYS
from model.losses import (chunked_cross_entropy_parts, softmax_cross_entropy_parts,
                          vocab_logits)
from model.transformer import Transformer

Batch = Mapping[str, Any]
Params = Any
TEXT_KEYS = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
             "decoder_segment_ids", "decoder_positions")


def media_inputs(batch: Batch) -> dict[str, dict[str, jax.Array]]:
    """The media arrays present in a batch, grouped by modality."""
    out = {}
    for modality, (data_key, aux_key) in MEDIA_KEYS.items():
        if data_key in batch:
            if aux_key not in batch:
                raise KeyError(f"batch has {data_key!r} but not {aux_key!r}")
            out[modality] = {data_key: jnp.asarray(batch[data_key]),
                             aux_key: jnp.asarray(batch[aux_key])}
    return out


def _text_inputs(batch: Batch) -> tuple[jax.Array, jax.Array, jax.Array]:
    tokens = jnp.asarray(batch["decoder_input_tokens"], jnp.int32)
    if "decoder_segment_ids" in batch:
        segments = jnp.asarray(batch["decoder_segment_ids"], jnp.int32)
    else:
        segments = (tokens != 0).astype(jnp.int32).at[:, 0].set(1)
    if "decoder_positions" in batch:
        positions = jnp.asarray(batch["decoder_positions"], jnp.int32)
    else:
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
    return tokens, segments, positions


def text_loss_weights(batch: Batch) -> jax.Array:
    """decoder_loss_weights with every placeholder target forced to 0 (float32 [B, L])."""
    targets = jnp.asarray(batch["decoder_target_tokens"], jnp.int32)
    weights = jnp.asarray(batch.get("decoder_loss_weights", targets != 0), jnp.float32)
    for pid in PLACEHOLDER_IDS.values():
        weights = jnp.where(targets == pid, 0.0, weights)
    return weights


@gin.configurable
class DecoderOnlyModel:
    """Multimodal (MoE) decoder-only LM; stateless, all methods are jit-friendly."""

    def __init__(self, config: TransformerConfig):
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig (got {type(config).__name__}); "
                            "in gin: DecoderOnlyModel.config = @model_config()")
        self.config = config

    def __eq__(self, other: object) -> bool:  # equal configs share jit caches
        return isinstance(other, DecoderOnlyModel) and other.config == self.config

    def __hash__(self) -> int:
        return hash(self.config)

    def module(self, *, train: bool = False, mode: str = "full", cache_len: int = 0
               ) -> Transformer:
        return Transformer(self.config, train=train, mode=mode, cache_len=cache_len)

    # -- parameters ---------------------------------------------------------
    def init(self, rng: jax.Array, batch: Batch) -> Params:
        """Parameters (boxed nn.Partitioned with logical axis names) for batch's shapes."""
        tokens, segments, positions = _text_inputs(batch)
        media = media_inputs(batch)
        media.update({m: v for m, v in self.dummy_media(tokens.shape[0]).items()
                      if m not in media})
        variables = self.module(train=False).init(rng, tokens, segments, positions,
                                                  media or None)
        return variables["params"]

    def dummy_media(self, batch_size: int) -> dict[str, dict[str, jax.Array]]:
        """One empty item per row for every configured encoder (so init makes its params)."""
        cfg, b = self.config, batch_size
        out = {}
        if cfg.image is not None:
            s = cfg.image.image_size
            out["image"] = {"images": jnp.zeros((b, 1, s, s, 3), jnp.uint8),
                            "image_mask": jnp.zeros((b, 1), bool)}
        if cfg.video is not None:
            s, f = cfg.video.image_size, cfg.video.num_frames
            out["video"] = {"videos": jnp.zeros((b, 1, f, s, s, 3), jnp.uint8),
                            "video_lengths": jnp.zeros((b, 1), jnp.int32)}
        if cfg.audio is not None:
            out["audio"] = {"audio": jnp.zeros((b, 1, 4, cfg.audio.num_mels), jnp.float32),
                            "audio_lengths": jnp.zeros((b, 1), jnp.int32)}
        return out

    def param_counts(self) -> tuple[int, int]:
        """(total, active per token) parameter counts, from the config."""
        return flops_lib.param_counts(self.config)

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per text token (6 x active matmul params + causal attention)."""
        return flops_lib.flops_per_token(self.config, seq_len or self.config.max_len)

    # -- forward ------------------------------------------------------------
    def _forward(self, module: Transformer, params: Params, batch: Batch, memory: Any = None
                 ) -> tuple[Any, dict[str, Any]]:
        """module on the batch -> (outputs, new state). With long-range memory configured,
        the state holds the advanced 'memory' (start: `memory`, None = empty) and the
        'memory_losses' (model/nn/memory.py); without, it is {}."""
        tokens, segments, positions = _text_inputs(batch)
        args = (tokens, segments, positions, media_inputs(batch) or None)
        if self.config.memory is None:
            return module.apply({"params": params}, *args), {}
        variables = {"params": params} if memory is None else {"params": params,
                                                                "memory": memory}
        return module.apply(variables, *args, mutable=["memory", "memory_losses"])

    def logits(self, params: Params, batch: Batch, *, train: bool = False
               ) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
        """Full forward: (logits [B, L, V] float32, per-MoE-layer metrics)."""
        return self._forward(self.module(train=train), params, batch)[0]

    def _hidden(self, params: Params, batch: Batch, train: bool
                ) -> tuple[jax.Array, list[dict[str, jax.Array]]]:
        """Final normed hidden states [B, L, D] (no output layer) and MoE metrics."""
        return self._forward(Transformer(self.config, train=train, return_hidden=True),
                             params, batch)[0]

    def _output_kernel(self, params: Params) -> jax.Array:
        """The output layer: [D, V], or the tied embedding [V, D]."""
        kernel = (params["embed"]["embedding"] if self.config.tie_embeddings
                  else params["logits"]["kernel"])
        return kernel.value if isinstance(kernel, nn.Partitioned) else kernel

    def _ce_parts(self, params: Params, batch: Batch, train: bool, memory: Any = None):
        """(lse, target_logit, max_logit) [B, L], MoE metrics, and the memory state (see
        _forward); chunked if configured."""
        targets = jnp.asarray(batch["decoder_target_tokens"], jnp.int32)
        chunk = self.config.loss_chunk

        def run(hidden: bool):
            if self.config.memory is None:  # (subclasses may override logits / _hidden)
                return (self._hidden(params, batch, train) if hidden
                        else self.logits(params, batch, train=train)), {}
            return self._forward(Transformer(self.config, train=train, return_hidden=hidden),
                                 params, batch, memory)

        if not chunk:
            (logits, moe_metrics), state = run(False)
            return softmax_cross_entropy_parts(logits, targets), moe_metrics, state
        (hidden, moe_metrics), state = run(True)
        parts = chunked_cross_entropy_parts(hidden, self._output_kernel(params), targets, chunk,
                                            vocab_major=self.config.tie_embeddings)
        return parts, moe_metrics, state

    def logits_at(self, params: Params, batch: Batch, positions: jax.Array) -> jax.Array:
        """Eval-mode logits [B, P, V] float32 at input positions [B, P] only.

        The output layer runs on the P gathered hidden states instead of all L: for
        scoring a few continuation tokens per row this is most of the work saved.
        """
        hidden, _ = self._hidden(params, batch, train=False)
        h = jnp.take_along_axis(hidden, jnp.asarray(positions, jnp.int32)[..., None], axis=1)
        return vocab_logits(h, self._output_kernel(params), vocab_major=self.config.tie_embeddings)

    def score_positions(self, params: Params, batch: Batch, positions: jax.Array) -> jax.Array:
        """[B, P] float32 log p(decoder_target_tokens) at positions [B, P] (as score_batch)."""
        positions = jnp.asarray(positions, jnp.int32)
        targets = jnp.take_along_axis(jnp.asarray(batch["decoder_target_tokens"], jnp.int32),
                                      positions, axis=1)
        lse, target_logit, _ = softmax_cross_entropy_parts(
            self.logits_at(params, batch, positions), targets)
        return target_logit - lse

    def loss_fn(self, params: Params, batch: Batch, rng: jax.Array | None = None, *,
                train: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(loss, metrics): weighted mean CE + z-loss + MoE aux and router z losses."""
        del rng  # no dropout / router noise
        loss, metrics, _ = self.loss_and_memory(params, batch, None, train=train)
        return loss, metrics

    def loss_and_memory(self, params: Params, batch: Batch, memory: Any, *,
                        train: bool = True) -> tuple[jax.Array, dict[str, jax.Array], Any]:
        """(loss, metrics, advanced memory) reading long-range `memory` (None: empty; the
        returned memory is None when the config has none). Adds the memory compressor's
        attention-reconstruction loss (metric memory_reconstruction_loss)."""
        cfg = self.config
        (lse, target_logit, max_logit), moe_metrics, state = self._ce_parts(params, batch,
                                                                            train, memory)
        weights = text_loss_weights(batch)
        num_tokens = jnp.sum(weights)
        denom = jnp.maximum(num_tokens, 1.0)
        cross_entropy = jnp.sum((lse - target_logit) * weights) / denom
        z_loss = jnp.sum(lse ** 2 * weights) / denom
        correct = (target_logit >= max_logit).astype(jnp.float32)  # argmax (ties count)
        accuracy = jnp.sum(correct * weights) / denom
        moe_aux = jnp.zeros((), jnp.float32)
        moe_z = jnp.zeros((), jnp.float32)
        metrics: dict[str, jax.Array] = {}
        for i, m in enumerate(moe_metrics):
            moe_aux = moe_aux + m["aux_loss"]
            moe_z = moe_z + m["router_z_loss"]
            for key in ("expert_usage", "drop_fraction", "router_confidence"):
                metrics[f"moe_layer_{i}/{key}"] = m[key]
        n_moe = max(len(moe_metrics), 1)
        moe_aux, moe_z = moe_aux / n_moe, moe_z / n_moe
        loss = cross_entropy + cfg.z_loss_coef * z_loss
        if cfg.moe is not None:
            loss = loss + cfg.moe.aux_loss_coef * moe_aux + cfg.moe.router_z_loss_coef * moe_z
        if cfg.memory is not None:
            recon = jax.tree.leaves(state.get("memory_losses", {}))
            recon = sum(recon) / len(recon) if recon else jnp.zeros((), jnp.float32)
            loss = loss + cfg.memory.reconstruction_loss_coef * recon
            metrics["memory_reconstruction_loss"] = recon
        metrics.update(loss=loss, cross_entropy=cross_entropy, z_loss=z_loss,
                       moe_aux_loss=moe_aux, moe_z_loss=moe_z, accuracy=accuracy,
                       num_tokens=num_tokens)
        return loss, metrics, state.get("memory")

    def score_batch(self, params: Params, batch: Batch) -> jax.Array:
        """[B, L] float32 log p(decoder_target_tokens) (eval-mode capacity; mask with weights)."""
        (lse, target_logit, _), _, _ = self._ce_parts(params, batch, train=False)
        return target_logit - lse
