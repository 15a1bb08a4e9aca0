"""Modality encoders and the placeholder merge.

Batch inputs (per modality a fixed budget of M item slots per row):
  images [B, M, H, W, 3] uint8, image_mask [B, M] bool
  videos [B, M, F, H, W, 3] uint8, video_lengths [B, M] int32 (frames; 0 = empty)
  audio  [B, M, T, n_mels] float, audio_lengths [B, M] int32 (frames; 0 = empty)
Each encoder returns slots [B, M, S, D] (D = decoder width) and valid [B, M, S]:
  image: S = (image_size / patch)^2, all valid when the item is present;
  video: S = F * (frame_size / patch)^2, frame f valid when f < length;
  audio: S = ceil(T / 4), slot s valid when s < ceil(length / 4).
`merge_media` writes the j-th valid slot of a row, in (item, slot) order, into
the j-th placeholder token of that modality in the row (cumsum index).

Legend: B batch, M items per row, F frames, P patches per frame, S slots per
item, W encoder width, D decoder width, T tokens / audio frames, H head dim.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.config import (PLACEHOLDER_IDS, AudioEncoderConfig, TransformerConfig,
                          VisionEncoderConfig)
from model.layers import DenseGeneral, RMSNorm, SwiGLU, param_with_axes

MEDIA_KEYS = {"image": ("images", "image_mask"), "video": ("videos", "video_lengths"),
              "audio": ("audio", "audio_lengths")}


def merge_media(x: jax.Array, tokens: jax.Array, modality: str, slots: jax.Array,
                valid: jax.Array) -> jax.Array:
    """x [B,T,D] with placeholder rows replaced by valid slots [B,M,S,D] in order."""
    b, m, s, d = slots.shape
    flat = slots.reshape(b, m * s, d)
    order = jnp.argsort((~valid.reshape(b, m * s)).astype(jnp.int32), axis=1, stable=True)
    compact = jnp.take_along_axis(flat, order[..., None], axis=1)  # valid slots first
    is_placeholder = tokens == PLACEHOLDER_IDS[modality]
    j = jnp.clip(jnp.cumsum(is_placeholder, axis=1) - 1, 0, m * s - 1)
    gathered = jnp.take_along_axis(compact, j[..., None], axis=1)
    return jnp.where(is_placeholder[..., None], gathered.astype(x.dtype), x)


class EncoderBlock(nn.Module):
    """Bidirectional pre-norm transformer block with a key-validity mask."""
    num_heads: int
    mlp_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        """x [B,T,W], valid [B,T] -> [B,T,W]."""
        w = x.shape[-1]
        n, h = self.num_heads, w // self.num_heads
        dense = lambda f, ax, name, **kw: DenseGeneral(f, ax, self.dtype, self.param_dtype,
                                                       name=name, **kw)
        y = RMSNorm(1e-6, self.dtype, self.param_dtype, name="pre_attention_norm")(x)
        qkv = dense((3, n, h), ("embed", None, "heads", "head_dim"), "qkv")(y)
        mask = (valid[:, None, :] & valid[:, :, None])[:, None]  # [B,1,T,T]
        # Rows with no valid key (empty items) attend to themselves only.
        mask = mask | jnp.eye(x.shape[1], dtype=bool)[None, None]
        a = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], mask=mask)
        x = x + dense((w,), ("heads", "head_dim", "embed"), "out", in_axes=2)(a)
        y = RMSNorm(1e-6, self.dtype, self.param_dtype, name="pre_mlp_norm")(x)
        return x + SwiGLU(self.mlp_dim, self.dtype, self.param_dtype, name="mlp")(y)


class EncoderStack(nn.Module):
    """depth x EncoderBlock -> norm -> projection to the decoder width."""
    depth: int
    num_heads: int
    mlp_dim: int
    out_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
        for i in range(self.depth):
            x = EncoderBlock(self.num_heads, self.mlp_dim, self.dtype, self.param_dtype,
                             name=f"block_{i}")(x, valid)
        x = RMSNorm(1e-6, self.dtype, self.param_dtype, name="final_norm")(x)
        return DenseGeneral((self.out_dim,), (None, "embed"), self.dtype, self.param_dtype,
                            name="to_decoder")(x)


class VisionEncoder(nn.Module):
    """ViT over frames [N, F, H, W, 3] uint8 with frame validity [N, F] -> [N, F*P, D]."""
    cfg: VisionEncoderConfig
    out_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, frames: jax.Array, frame_valid: jax.Array) -> jax.Array:
        cfg = self.cfg
        n, f, hh, ww, c = frames.shape
        if (f, hh, ww) != (cfg.num_frames, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"media of shape {frames.shape[1:]} does not match the encoder config "
                f"(num_frames={cfg.num_frames}, image_size={cfg.image_size}); resize in the "
                "data pipeline or change the model preset's image/video config")
        p, g = cfg.patch_size, cfg.image_size // cfg.patch_size
        x = frames.astype(self.dtype) / 127.5 - 1.0
        if cfg.input_channels > c:  # video: append frame t - frame t-1 (zero for the first)
            previous = jnp.concatenate([x[:, :1], x[:, :-1]], axis=1)
            x = jnp.concatenate([x, x - previous], axis=-1)
            c = x.shape[-1]
        x = x.reshape(n, f, g, p, g, p, c).transpose(0, 1, 2, 4, 3, 5, 6)
        x = x.reshape(n, f, g * g, p * p * c)
        x = DenseGeneral((cfg.width,), (None, "embed"), self.dtype, self.param_dtype,
                         name="patch_embed")(x)
        pos = param_with_axes(self, "position", nn.initializers.normal(0.02),
                              (g * g, cfg.width), (None, "embed"), self.param_dtype)
        x = x + pos.astype(self.dtype)
        if cfg.num_frames > 1:
            temporal = param_with_axes(self, "temporal_position", nn.initializers.normal(0.02),
                                       (cfg.num_frames, cfg.width), (None, "embed"),
                                       self.param_dtype)
            x = x + temporal.astype(self.dtype)[:, None, :]
        x = x.reshape(n, f * g * g, cfg.width)
        valid = jnp.repeat(frame_valid, g * g, axis=1)
        return EncoderStack(cfg.depth, cfg.num_heads, cfg.mlp_dim, self.out_dim, self.dtype,
                            self.param_dtype, name="stack")(x, valid)


def normalize_log_mel(mel: jax.Array, frame_ok: jax.Array) -> jax.Array:
    """Natural-log mel [N, T, mels] -> Whisper's input scale, per clip.

    As Whisper's front end: log10, floor at 8 decades (80 dB) below the clip's
    loudest bin, then (x + 4) / 4, which puts speech roughly in [-1, 1.5] whatever
    the recording level. Only valid frames (`frame_ok` [N, T]) set the maximum.
    """
    x = mel.astype(jnp.float32) / jnp.log(10.0)
    peak = jnp.max(jnp.where(frame_ok[..., None], x, -jnp.inf), axis=(1, 2), keepdims=True)
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    return (jnp.maximum(x, peak - 8.0) + 4.0) / 4.0


class AudioEncoder(nn.Module):
    """Log-mel [N, T, mels] + lengths [N] -> conv 4x subsampler -> transformer -> [N, S, D]."""
    cfg: AudioEncoderConfig
    out_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, mel: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.cfg
        n, t, mels = mel.shape
        if mels != cfg.num_mels:
            raise ValueError(f"audio has {mels} mel bins but the encoder expects "
                             f"num_mels={cfg.num_mels}; fix the data pipeline or the preset")
        # Zero frames past each clip's length so padding never leaks into valid slots.
        frame_ok = jnp.arange(t)[None, :] < lengths[:, None]
        x = jnp.where(frame_ok[..., None], normalize_log_mel(mel, frame_ok), 0)
        x = x.astype(self.dtype)[..., None]
        for i in range(2):
            x = nn.Conv(cfg.conv_channels, (3, 3), strides=(2, 2), padding="SAME",
                        dtype=self.dtype, param_dtype=self.param_dtype,
                        kernel_init=nn.with_logical_partitioning(
                            nn.initializers.lecun_normal(), (None, None, None, "mlp")),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                                               ("mlp",)),
                        name=f"conv_{i}")(x)
            x = nn.gelu(x)
        s = x.shape[1]  # ceil(t / 4)
        x = x.reshape(n, s, -1)
        x = DenseGeneral((cfg.width,), (None, "embed"), self.dtype, self.param_dtype,
                         name="conv_out")(x)
        pos = param_with_axes(self, "position", nn.initializers.normal(0.02),
                              (cfg.slots_per_item, cfg.width), (None, "embed"),
                              self.param_dtype)
        if s > cfg.slots_per_item:
            raise ValueError(f"audio has {t} frames but the encoder allows max_frames="
                             f"{cfg.max_frames}; raise audio.max_frames or crop the clips")
        x = x + pos[:s].astype(self.dtype)
        valid = jnp.arange(s)[None, :] < -(-lengths[:, None] // cfg.subsample)
        out = EncoderStack(cfg.depth, cfg.num_heads, cfg.mlp_dim, self.out_dim, self.dtype,
                           self.param_dtype, name="stack")(x, valid)
        return out, valid


class MediaEncoders(nn.Module):
    """Runs each configured encoder on its batch inputs -> {modality: (slots, valid)}."""
    config: TransformerConfig

    @nn.compact
    def __call__(self, media: dict[str, dict[str, jax.Array]]
                 ) -> dict[str, tuple[jax.Array, jax.Array]]:
        cfg = self.config
        dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        out = {}
        for modality, arrays in media.items():
            enc_cfg = getattr(cfg, modality)
            if enc_cfg is None:
                raise ValueError(f"the batch has {modality} inputs but the model config has "
                                 f"{modality}=None; use a preset with a {modality} encoder")
            data_key, aux_key = MEDIA_KEYS[modality]
            data, aux = arrays[data_key], arrays[aux_key]
            b, m = data.shape[:2]
            if modality == "audio":
                slots, valid = AudioEncoder(enc_cfg, cfg.d_model, dtype, pdtype,
                                            name="audio")(
                    data.reshape(b * m, *data.shape[2:]), aux.reshape(b * m))
            else:
                frames = data if modality == "video" else data[:, :, None]
                frames = frames.reshape(b * m, *frames.shape[2:])
                nf = frames.shape[1]
                if modality == "image":
                    frame_valid = jnp.broadcast_to(aux.reshape(b * m, 1).astype(bool), (b * m, 1))
                else:
                    frame_valid = jnp.arange(nf)[None, :] < aux.reshape(b * m, 1)
                slots = VisionEncoder(enc_cfg, cfg.d_model, dtype, pdtype, name=modality)(
                    frames, frame_valid)
                valid = jnp.repeat(frame_valid, enc_cfg.patches_per_frame, axis=1)
            out[modality] = (slots.reshape(b, m, *slots.shape[1:]),
                             valid.reshape(b, m, -1))
        return out
