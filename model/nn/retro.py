"""RETRO (Borgeaud et al. 2021): the decoder with chunked cross-attention to retrieved text.

A row of T = C * M tokens is C chunks of M tokens. For every chunk u the batch carries
K retrieved neighbours of R tokens each (a database chunk and its continuation,
R = 2M in the paper), precomputed by pipelines/retrieval/ so training needs no index:

    decoder_input_tokens  [B, T]          (as model/models.py)
    retrieved_neighbours  [B, C, K, R]    int token ids, 0 = padding / no neighbour

The decoder is model/transformer.py's stack (the same `layer_{i}` blocks and param
names, by composition) with a residual CCA sublayer after the 1-indexed decoder
layers `RetroConfig.cca_layers` (default: every 3rd from layer 6, clipped to the depth):

    x = x + CCA(norm(x), E)          E = encoder(neighbours | x at the first CCA layer)

Causality (paper section 2.4): chunk u's neighbours were retrieved with chunk u's
tokens, so they may only inform positions after chunk u is complete. The *attending
chunk* u is the last token of chunk u plus the first M-1 tokens of chunk u+1
(positions uM+M-1 .. uM+2M-2); it attends chunk u's K*R encoded neighbour tokens.
The first M-1 positions of the row attend nothing (the CCA residual there is 0). The
neighbour encoder (bidirectional, `encoder_layers` blocks) cross-attends to the
decoder activations of chunk u itself, taken at the first CCA layer.

Retrieval off (no `retrieved_neighbours` in the batch, or all neighbours padding):
every CCA residual is 0 and the model is exactly the plain decoder with the same
params; so a plain checkpoint plus fresh `retro_*` params is a RETROfit start.
RETROfit (freeze the decoder, train only `retro_*`): `retrofit_adamw` below, in gin
`train.optimizer_fn = @retrofit_adamw`.

Legend: B batch, T length, C chunks per row, M chunk length, K neighbours per chunk,
R neighbour length, D model width, N heads, H head dim, Q query length, S key length.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from model import trainer as trainer_lib
from model.config import TransformerConfig
from model.encoders import MediaEncoders, merge_media
from model.layers import DenseGeneral, Embed, RMSNorm, SwiGLU, apply_rope, constrain, rope_tables
from model.models import DecoderOnlyModel, _text_inputs, media_inputs
from model.transformer import MoEMetrics, _block, output_logits

NEIGHBOURS_KEY = "retrieved_neighbours"
RETRO_PREFIX = "retro_"  # every RETRO-only param lives under a top-level name with this prefix
LAYER_RULES = ("paper", "megatron")


def cca_layer_numbers(num_layers: int, rule: str = "paper") -> tuple[int, ...]:
    """1-indexed decoder layers followed by a CCA sublayer.

    'paper': every 3rd from layer 6 (RETRO's 6, 9, 12, ...); 'megatron': Megatron-LM's
    rule (from layer 6 when num_layers <= 15, else from 9, every 3rd). When the model is
    shallower than the start layer, the last layer alone.
    """
    if rule not in LAYER_RULES:
        raise ValueError(f"RetroConfig.layer_rule={rule!r}: choose one of {LAYER_RULES}")
    start = 6 if rule == "paper" or num_layers <= 15 else 9
    return tuple(range(start, num_layers + 1, 3)) or (num_layers,)


@dataclasses.dataclass(frozen=True)
class RetroConfig:
    """Retrieval hyperparameters; 0 in a size field means "the decoder's value"."""
    chunk_len: int = 64  # M
    num_neighbours: int = 2  # K
    neighbour_len: int = 128  # R: retrieved chunk + its continuation
    cca_layers: tuple[int, ...] = ()  # 1-indexed; () -> cca_layer_numbers(L, layer_rule)
    layer_rule: str = "paper"
    encoder_layers: int = 2
    num_heads: int = 0  # encoder and CCA heads
    head_dim: int = 0
    d_ff: int = 0  # encoder feed-forward hidden

    def __post_init__(self) -> None:
        for name in ("chunk_len", "num_neighbours", "neighbour_len", "encoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"RetroConfig.{name}={value!r} is invalid: must be a positive int")
        for name in ("num_heads", "head_dim", "d_ff"):
            if getattr(self, name) < 0:
                raise ValueError(f"RetroConfig.{name}={getattr(self, name)!r}: must be >= 0 "
                                 "(0 = the decoder's value)")
        if self.head_dim % 2:
            raise ValueError(f"RetroConfig.head_dim={self.head_dim}: must be even (rotary)")
        if self.layer_rule not in LAYER_RULES:
            raise ValueError(f"RetroConfig.layer_rule={self.layer_rule!r}: choose one of "
                             f"{LAYER_RULES}")

    def layers_for(self, cfg: TransformerConfig) -> tuple[int, ...]:
        """The CCA layer numbers for decoder `cfg`, validated against its depth."""
        layers = tuple(self.cca_layers) or cca_layer_numbers(cfg.num_layers, self.layer_rule)
        bad = [l for l in layers if not 1 <= l <= cfg.num_layers]
        if bad or len(set(layers)) != len(layers):
            raise ValueError(f"RetroConfig.cca_layers={layers}: need distinct layer numbers in "
                             f"1..num_layers={cfg.num_layers} (1-indexed)")
        return tuple(sorted(layers))


@gin.configurable
def retro_config(overrides: Mapping[str, Any] | None = None) -> RetroConfig:
    """RetroConfig() with `overrides` (gin: retro_config.overrides = {'chunk_len': 16})."""
    overrides = dict(overrides or {})
    names = [f.name for f in dataclasses.fields(RetroConfig)]
    for key in overrides:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"unknown RetroConfig field {key!r}{hint} (fields: {names})")
    if "cca_layers" in overrides:
        overrides["cca_layers"] = tuple(overrides["cca_layers"])
    return RetroConfig(**overrides)


# ----------------------------------------------------------------- attention
def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """q [..., Q, N, H], k/v [..., S, N, H], mask [..., Q, S] bool -> [..., Q, N, H].

    Softmax in float32; a query with no visible key gets 0 (not a uniform average), so
    masked-out retrieval contributes exactly nothing.
    """
    logits = jnp.einsum("...QNH,...SNH->...NQS", q, k).astype(jnp.float32)
    logits = logits * (q.shape[-1] ** -0.5)
    m = mask[..., None, :, :]
    logits = jnp.where(m, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1) * m  # all-masked rows -> 0
    return jnp.einsum("...NQS,...SNH->...QNH", probs.astype(v.dtype), v)


class CrossAttention(nn.Module):
    """Multi-head attention of x [..., Q, D] over y [..., S, Dy] with optional rotary
    positions (sin/cos broadcastable to [..., Q|S, H/2]); output [..., Q, D]."""
    num_heads: int
    head_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, y: jax.Array, mask: jax.Array,
                 q_rope: tuple[jax.Array, jax.Array] | None = None,
                 k_rope: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        n, h = self.num_heads, self.head_dim
        proj = lambda feats, axes, name: DenseGeneral(feats, axes, self.dtype, self.param_dtype,
                                                      name=name)
        q = proj((n, h), ("embed", "heads", "head_dim"), "query")(x)
        k = proj((n, h), ("embed", "heads", "head_dim"), "key")(y)
        v = proj((n, h), ("embed", "heads", "head_dim"), "value")(y)
        if q_rope is not None:
            q = _rope_nd(q, *q_rope)
        if k_rope is not None:
            k = _rope_nd(k, *k_rope)
        out = masked_attention(q, k, v, mask)
        return DenseGeneral((x.shape[-1],), ("heads", "head_dim", "embed"), self.dtype,
                            self.param_dtype, in_axes=2, name="out")(out)


def _rope_nd(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """apply_rope for x [..., S, N, H] with sin/cos [S, H/2] (positions shared by rows)."""
    lead = x.shape[:-3]
    flat = x.reshape((-1,) + x.shape[-3:])
    s = jnp.broadcast_to(sin, (flat.shape[0],) + sin.shape)
    c = jnp.broadcast_to(cos, (flat.shape[0],) + cos.shape)
    return apply_rope(flat, s, c).reshape(lead + x.shape[-3:])


def _positions_rope(n: int, offset: int, head_dim: int, base: float):
    sin, cos = rope_tables(jnp.arange(offset, offset + n)[None], head_dim, base)
    return sin[0], cos[0]  # [n, H/2]


# ------------------------------------------------------------ neighbour encoder
class NeighbourEncoder(nn.Module):
    """Bidirectional encoder of each chunk's neighbours, conditioned on the chunk.

    neighbours_x [B,C,K,R,D] (token embeddings), neighbour_mask [B,C,K,R],
    chunk_x [B,C,M,D] (decoder activations of chunk u at the first CCA layer)
    -> encoded [B,C,K,R,D]. Each block: self-attention over one neighbour's R tokens
    (rotary positions, padding masked), cross-attention to its chunk's M activations,
    SwiGLU; all pre-norm residual.
    """
    num_layers: int
    num_heads: int
    head_dim: int
    d_ff: int
    norm_eps: float
    rope_base: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, chunk_x: jax.Array) -> jax.Array:
        r, m = x.shape[-2], chunk_x.shape[-2]
        norm = lambda name: RMSNorm(self.norm_eps, self.dtype, self.param_dtype, name=name)
        rope = _positions_rope(r, 0, self.head_dim, self.rope_base)
        self_mask = mask[..., :, None] & mask[..., None, :]  # [B,C,K,R,R]
        cross_mask = jnp.broadcast_to(mask[..., None], mask.shape + (m,))  # [B,C,K,R,M]
        chunk_kv = jnp.broadcast_to(chunk_x[:, :, None], x.shape[:3] + chunk_x.shape[2:])
        for i in range(self.num_layers):
            attn = CrossAttention(self.num_heads, self.head_dim, self.dtype, self.param_dtype,
                                  name=f"layer_{i}_self_attention")
            h = norm(f"layer_{i}_pre_self_norm")(x)
            x = x + attn(h, h, self_mask, rope, rope)
            cross = CrossAttention(self.num_heads, self.head_dim, self.dtype, self.param_dtype,
                                   name=f"layer_{i}_chunk_attention")
            x = x + cross(norm(f"layer_{i}_pre_cross_norm")(x), chunk_kv, cross_mask)
            x = x + SwiGLU(self.d_ff, self.dtype, self.param_dtype, name=f"layer_{i}_mlp")(
                norm(f"layer_{i}_pre_ffn_norm")(x))
        return norm("final_norm")(x)


# ------------------------------------------------------- chunked cross-attention
def attending_chunks(h: jax.Array, m: int, c: int) -> jax.Array:
    """h [B,T,D] -> [B,C,M,D]: attending chunk u = positions uM+M-1 .. uM+2M-2
    (zero-padded past T)."""
    shifted = h[:, m - 1:]
    pad = c * m - shifted.shape[1]
    shifted = jnp.pad(shifted, ((0, 0), (0, pad), (0, 0))) if pad > 0 else shifted[:, :c * m]
    return shifted.reshape(h.shape[0], c, m, h.shape[-1])


def unshift_chunks(out: jax.Array, t: int) -> jax.Array:
    """Inverse of attending_chunks: [B,C,M,D] -> [B,T,D], the first M-1 positions 0."""
    b, c, m, d = out.shape
    flat = out.reshape(b, c * m, d)[:, :t - (m - 1)]
    return jnp.concatenate([jnp.zeros((b, m - 1, d), out.dtype), flat], axis=1)


def row_chunks(x: jax.Array, m: int, c: int) -> jax.Array:
    """x [B,T,D] -> [B,C,M,D]: chunk u = positions uM .. uM+M-1 (zero-padded past T)."""
    pad = c * m - x.shape[1]
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0))) if pad > 0 else x[:, :c * m]
    return x.reshape(x.shape[0], c, m, x.shape[-1])


class ChunkedCrossAttention(nn.Module):
    """The CCA residual: h [B,T,D] (normed), encoded [B,C,K,R,D], mask [B,C,K,R] -> [B,T,D].

    Queries carry rotary positions M-1..2M-2 (their offset from chunk u's start) and
    neighbour tokens 0..R-1, so attention sees their relative placement.
    """
    chunk_len: int
    num_heads: int
    head_dim: int
    rope_base: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, encoded: jax.Array, mask: jax.Array) -> jax.Array:
        b, t, _ = h.shape
        _, c, k, r, d = encoded.shape
        m = self.chunk_len
        queries = attending_chunks(h, m, c)  # [B,C,M,D]
        keys = encoded.reshape(b, c, k * r, d)  # [B,C,S=K*R,D]
        key_mask = mask.reshape(b, c, k * r)
        q_rope = _positions_rope(m, m - 1, self.head_dim, self.rope_base)
        ks, kc = _positions_rope(r, 0, self.head_dim, self.rope_base)
        k_rope = (jnp.tile(ks, (k, 1)), jnp.tile(kc, (k, 1)))  # neighbour-local positions
        attn_mask = jnp.broadcast_to(key_mask[:, :, None, :], (b, c, m, k * r))
        out = CrossAttention(self.num_heads, self.head_dim, self.dtype, self.param_dtype,
                             name="attention")(queries, keys, attn_mask, q_rope, k_rope)
        return unshift_chunks(out, t)


# ----------------------------------------------------------------- the decoder
class RetroTransformer(nn.Module):
    """model.transformer.Transformer plus CCA sublayers; same call, plus `neighbours`.

    tokens/segment_ids/positions [B,T], neighbours [B,C,K,R] or None (retrieval off)
    -> (logits [B,T,V] float32 | final hidden [B,T,D], per-MoE-layer metrics).
    Unrolled layers only (scan_layers would need the CCA inside the scanned period).
    """
    config: TransformerConfig
    retro: RetroConfig
    train: bool = False
    mode: str = "full"
    cache_len: int = 0
    return_hidden: bool = False

    @nn.compact
    def __call__(self, tokens: jax.Array, segment_ids: jax.Array, positions: jax.Array,
                 media: dict[str, dict[str, jax.Array]] | None = None,
                 step_positions: jax.Array | None = None,
                 neighbours: jax.Array | None = None) -> tuple[jax.Array, list[MoEMetrics]]:
        cfg, rc = self.config, self.retro
        if cfg.scan_layers:
            raise ValueError("RETRO needs scan_layers=False (CCA sits between unrolled layers); "
                             "set model_config.overrides = {'scan_layers': False}")
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        heads = rc.num_heads or cfg.num_heads
        head_dim = rc.head_dim or cfg.head_dim
        embed = Embed(cfg.vocab_size, cfg.d_model, dtype, pdtype,
                      init_std=cfg.d_model ** -0.5 if cfg.tie_embeddings else 1.0, name="embed")

        def embed_tokens(ids):
            e = embed(ids)
            return e * jnp.asarray(cfg.d_model ** 0.5, dtype) if cfg.scale_embeddings else e

        x = embed_tokens(tokens)
        if media:
            encoded = MediaEncoders(cfg, name="encoders")(media)
            for modality, (slots, valid) in encoded.items():
                x = merge_media(x, tokens, modality, slots, valid)
        x = constrain(x, ("batch", "length", "embed"))
        sin, cos = rope_tables(positions, cfg.head_dim, cfg.rope_base)
        block_args = (sin, cos, segment_ids, step_positions)

        retrieving = neighbours is not None and self.mode == "full"
        cca_layers = rc.layers_for(cfg)
        enc, enc_mask = None, None
        all_metrics: list[MoEMetrics] = []
        for i in range(cfg.num_layers):
            x, metrics = _block(cfg, i, self.train, self.mode, self.cache_len,
                                f"layer_{i}")(x, *block_args)
            if metrics is not None:
                all_metrics.append(metrics)
            if not retrieving or (i + 1) not in cca_layers:
                continue
            c = neighbours.shape[1]
            if enc is None:  # first CCA layer: encode neighbours conditioned on x's chunks
                enc_mask = neighbours != 0  # [B,C,K,R]
                enc = NeighbourEncoder(rc.encoder_layers, heads, head_dim, rc.d_ff or cfg.d_ff,
                                       cfg.norm_eps, cfg.rope_base, dtype, pdtype,
                                       name=f"{RETRO_PREFIX}encoder")(
                    embed_tokens(neighbours), enc_mask, row_chunks(x, rc.chunk_len, c))
            h = RMSNorm(cfg.norm_eps, dtype, pdtype, name=f"{RETRO_PREFIX}cca_{i + 1}_norm")(x)
            x = x + ChunkedCrossAttention(rc.chunk_len, heads, head_dim, cfg.rope_base, dtype,
                                          pdtype, name=f"{RETRO_PREFIX}cca_{i + 1}")(
                h, enc, enc_mask)
            x = constrain(x, ("batch", "length", "embed"))
        x = RMSNorm(cfg.norm_eps, dtype, pdtype, name="final_norm")(x)
        if self.return_hidden and not self.is_initializing():
            return x, all_metrics
        return output_logits(cfg, embed, x), all_metrics


# ------------------------------------------------------------------ the model API
@gin.configurable
class RetroDecoderModel(DecoderOnlyModel):
    """DecoderOnlyModel whose decoder attends retrieved neighbours (batch key
    `retrieved_neighbours` [B,C,K,R]); without that key it is the plain decoder.

    gin: train.model = @RetroDecoderModel()
         RetroDecoderModel.config = @model_config()
         RetroDecoderModel.retro = @retro_config()
    Decoding (prefill/step) runs with retrieval off.
    """

    def __init__(self, config: TransformerConfig, retro: RetroConfig = RetroConfig()):
        super().__init__(config)
        if not isinstance(retro, RetroConfig):
            raise TypeError(f"retro must be a RetroConfig (got {type(retro).__name__}); "
                            "in gin: RetroDecoderModel.retro = @retro_config()")
        retro.layers_for(config)  # validates the CCA positions against the depth
        if config.scan_layers:
            raise ValueError("RetroDecoderModel needs scan_layers=False; set "
                             "model_config.overrides = {'scan_layers': False}")
        self.retro = retro

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, RetroDecoderModel) and other.config == self.config
                and other.retro == self.retro)

    def __hash__(self) -> int:
        return hash((self.config, self.retro))

    def module(self, *, train: bool = False, mode: str = "full", cache_len: int = 0,
               return_hidden: bool = False) -> RetroTransformer:
        return RetroTransformer(self.config, self.retro, train=train, mode=mode,
                                cache_len=cache_len, return_hidden=return_hidden)

    def dummy_neighbours(self, tokens: jax.Array) -> jax.Array:
        """All-padding neighbours [B,C,K,R] for a [B,T] batch (init creates retro params)."""
        rc = self.retro
        c = -(-tokens.shape[1] // rc.chunk_len)
        return jnp.zeros((tokens.shape[0], c, rc.num_neighbours, rc.neighbour_len), jnp.int32)

    def init(self, rng: jax.Array, batch) -> Any:
        tokens, segments, positions = _text_inputs(batch)
        media = media_inputs(batch)
        media.update({m: v for m, v in self.dummy_media(tokens.shape[0]).items()
                      if m not in media})
        neighbours = self._neighbours(batch, tokens)
        if neighbours is None:
            neighbours = self.dummy_neighbours(tokens)
        return self.module().init(rng, tokens, segments, positions, media or None, None,
                                  neighbours)["params"]

    def _neighbours(self, batch, tokens: jax.Array) -> jax.Array | None:
        if NEIGHBOURS_KEY not in batch:
            return None
        n = jnp.asarray(batch[NEIGHBOURS_KEY], jnp.int32)
        rc = self.retro
        want = (tokens.shape[0], -(-tokens.shape[1] // rc.chunk_len), rc.num_neighbours,
                rc.neighbour_len)
        if n.shape != want:
            raise ValueError(f"batch[{NEIGHBOURS_KEY!r}] has shape {n.shape}; RetroConfig "
                             f"(chunk_len={rc.chunk_len}, num_neighbours={rc.num_neighbours}, "
                             f"neighbour_len={rc.neighbour_len}) needs {want}")
        return n

    def _apply(self, params, batch, train: bool, return_hidden: bool):
        tokens, segments, positions = _text_inputs(batch)
        return self.module(train=train, return_hidden=return_hidden).apply(
            {"params": params}, tokens, segments, positions, media_inputs(batch) or None,
            None, self._neighbours(batch, tokens))

    def logits(self, params, batch, *, train: bool = False):
        return self._apply(params, batch, train, return_hidden=False)

    def _hidden(self, params, batch, train: bool):
        return self._apply(params, batch, train, return_hidden=True)


# ------------------------------------------------------------------- RETROfit
def zero_frozen() -> optax.GradientTransformation:
    """Sets every non-`retro_*` leaf of the updates to 0 (state-free; keeps the tree's
    structure, so the trainer's optimizer-state sharding rules apply unchanged)."""
    def update(updates, state, params=None):
        del params
        zeroed = jax.tree_util.tree_map_with_path(
            lambda path, u: u if _is_retro(path) else jnp.zeros_like(u), updates)
        return zeroed, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _is_retro(path) -> bool:
    return str(getattr(path[0], "key", path[0])).startswith(RETRO_PREFIX)


@gin.configurable
def retrofit_adamw(learning_rate: optax.Schedule = gin.REQUIRED, **adamw_kwargs
                   ) -> optax.GradientTransformation:
    """RETROfit: AdamW (model.trainer.adamw, clipping included) on the CCA and encoder
    params only: the decoder's gradients are zeroed before AdamW (so clipping sees only
    the trained params) and its updates after it (so weight decay cannot move it).
    Adam moments of the frozen params stay 0 but are allocated (the state mirrors the
    params, as the trainer's sharding rules expect; optax.multi_transform's masked state
    does not).

    gin: train.optimizer_fn = @retrofit_adamw (adamw's own bindings still apply).
    """
    return optax.chain(zero_frozen(), trainer_lib.adamw(learning_rate=learning_rate, **adamw_kwargs),
                       zero_frozen())
