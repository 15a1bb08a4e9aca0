"""Model hyperparameters: frozen dataclasses with named presets.

gin picks a preset and overrides a few fields (it never binds layer internals):

    DecoderOnlyModel.config = @model_config()
    model_config.preset = 'tiny'
    model_config.overrides = {'num_layers': 4, 'moe.num_experts': 4}

Dotted override keys reach nested configs (`moe.`, `image.`, `audio.`, `video.`).
Every config validates itself at construction and says how to fix a bad value.
The reserved token ids mirror `pipelines/special_tokens.py` (a test checks them);
model/ does not import pipelines/ so that it runs on hosts with only JAX.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Mapping

import gin

from model.nn.memory_config import MemoryConfig

# Mirrors pipelines/special_tokens.py (checked by tests/test_model_config.py).
PAD_ID = 0
EOS_ID = 1
IMAGE_ID, BEGIN_IMAGE_ID, END_IMAGE_ID = 3, 4, 5
AUDIO_ID, BEGIN_AUDIO_ID, END_AUDIO_ID = 6, 7, 8
VIDEO_ID, BEGIN_VIDEO_ID, END_VIDEO_ID = 9, 10, 11
PLACEHOLDER_IDS = {"image": IMAGE_ID, "audio": AUDIO_ID, "video": VIDEO_ID}

ATTENTION_BACKENDS = ("xla", "blockwise", "cudnn", "context")  # context: model/nn/context_parallel.py
DISPATCH_MODES = ("capacity", "dropless")
# Rematerialisation of each decoder layer in training (model/transformer.py maps the
# names to jax.checkpoint policies): 'none' keeps every activation; 'full' and
# 'nothing_saveable' recompute the whole layer in the backward pass; 'dots' saves
# matmul outputs without batch dims (jax's dots_with_no_batch_dims_saveable);
# 'dots_saveable' saves every matmul output.
REMAT_POLICIES = ("none", "full", "nothing_saveable", "dots", "dots_saveable")
DTYPES = ("float32", "bfloat16", "float16")
# Decoder block layouts (model/nn/gating.py): 'pre_norm' (DecoderBlock), 'trxl_i' (ReLU on
# each sub-layer's output), 'gtrxl' (TrXL-I with gated residuals), 'post_norm' (baseline).
BLOCK_TYPES = ("pre_norm", "trxl_i", "gtrxl", "post_norm")
GATES = ("gru", "input", "output", "highway", "sigmoid_tanh")


def _fail(cls: str, field: str, value: Any, fix: str) -> None:
    raise ValueError(f"{cls}.{field}={value!r} is invalid: {fix}")


def _check_positive(cls: str, obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or value <= 0:
            _fail(cls, name, value, "must be a positive int")


def _check_choice(cls: str, field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        near = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        _fail(cls, field, value, f"choose one of {choices}{hint}")


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Sparse feed-forward: top-k routing over `num_experts` SwiGLU experts.

    Routing is float32 softmax over the k chosen logits. `dispatch` selects the
    path: 'capacity' (GShard/Switch dispatch into [E, C] buffers, drops overflow;
    fast on CPU/TPU) or 'dropless' (sort by expert + `jax.lax.ragged_dot`; for GPUs).
    Capacity per expert and group C = ceil(capacity_factor * group_tokens * k / E),
    where a group is one row of the batch (so routing never crosses data shards).
    """
    num_experts: int = 8
    top_k: int = 2
    expert_hidden: int = 512
    num_shared_experts: int = 0
    shared_hidden: int = 0  # hidden size of each shared expert; 0 -> expert_hidden
    capacity_factor_train: float = 1.25
    capacity_factor_eval: float = 2.0
    dispatch: str = "capacity"
    aux_loss_coef: float = 1e-2
    router_z_loss_coef: float = 1e-3

    def __post_init__(self) -> None:
        _check_positive("MoEConfig", self, "num_experts", "top_k", "expert_hidden")
        if self.top_k > self.num_experts:
            _fail("MoEConfig", "top_k", self.top_k,
                  f"must be <= num_experts ({self.num_experts})")
        if self.num_shared_experts < 0 or self.shared_hidden < 0:
            _fail("MoEConfig", "num_shared_experts", self.num_shared_experts, "must be >= 0")
        for name in ("capacity_factor_train", "capacity_factor_eval"):
            if getattr(self, name) <= 0:
                _fail("MoEConfig", name, getattr(self, name), "must be > 0")
        _check_choice("MoEConfig", "dispatch", self.dispatch, DISPATCH_MODES)

    def capacity(self, group_tokens: int, train: bool) -> int:
        factor = self.capacity_factor_train if train else self.capacity_factor_eval
        return max(1, math.ceil(factor * group_tokens * self.top_k / self.num_experts))


@dataclasses.dataclass(frozen=True)
class VisionEncoderConfig:
    """ViT over patches of square images (or video frames).

    Slots per image K = (image_size // patch_size) ** 2; for video
    K = num_frames * (image_size // patch_size) ** 2 with a learned temporal
    position per frame. With `frame_differences` (video only), each frame's patch
    embedding also sees the frame minus the previous one, so motion is in every
    token rather than left for attention to infer across frames (two-stream style).
    """
    image_size: int = 64
    patch_size: int = 16
    width: int = 64
    depth: int = 1
    num_heads: int = 2
    mlp_dim: int = 128
    num_frames: int = 1  # > 1 only for the video encoder
    frame_differences: bool = True  # video: motion channels next to RGB (ignored for images)

    @property
    def input_channels(self) -> int:
        return 6 if self.num_frames > 1 and self.frame_differences else 3

    def __post_init__(self) -> None:
        _check_positive("VisionEncoderConfig", self, "image_size", "patch_size", "width",
                        "num_heads", "mlp_dim", "num_frames")
        if self.depth < 0:
            _fail("VisionEncoderConfig", "depth", self.depth, "must be >= 0")
        if self.image_size % self.patch_size:
            _fail("VisionEncoderConfig", "image_size", self.image_size,
                  f"must be a multiple of patch_size={self.patch_size}")
        if self.width % self.num_heads:
            _fail("VisionEncoderConfig", "width", self.width,
                  f"must be divisible by num_heads={self.num_heads}")

    @property
    def patches_per_frame(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def slots_per_item(self) -> int:
        return self.num_frames * self.patches_per_frame


@dataclasses.dataclass(frozen=True)
class AudioEncoderConfig:
    """Log-mel frames -> 2 stride-2 convs (4x in time) -> small transformer.

    Slots per clip of n frames: ceil(n / 4); the slot budget is ceil(max_frames / 4).
    """
    num_mels: int = 80
    max_frames: int = 400
    conv_channels: int = 32
    width: int = 64
    depth: int = 1
    num_heads: int = 2
    mlp_dim: int = 128
    subsample: int = 4  # fixed: two stride-2 convolutions

    def __post_init__(self) -> None:
        _check_positive("AudioEncoderConfig", self, "num_mels", "max_frames", "conv_channels",
                        "width", "num_heads", "mlp_dim")
        if self.subsample != 4:
            _fail("AudioEncoderConfig", "subsample", self.subsample,
                  "only 4 (two stride-2 convolutions) is implemented")
        if self.width % self.num_heads:
            _fail("AudioEncoderConfig", "width", self.width,
                  f"must be divisible by num_heads={self.num_heads}")

    def slots(self, n_frames: int) -> int:
        return -(-n_frames // self.subsample)

    @property
    def slots_per_item(self) -> int:
        return self.slots(self.max_frames)


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Decoder-only transformer (optionally MoE, optionally multimodal).

    `layer_pattern` is a string of 'd' (dense SwiGLU) and 'm' (MoE) repeated
    cyclically over the layers: 'm' = every layer MoE, 'dm' = every 2nd layer.
    `scan_layers` runs the decoder as `nn.scan` over num_layers / len(layer_pattern)
    repeats of one pattern period: compile time independent of depth, parameters
    stacked on a leading 'layers' axis (convert with model.transformer.stack_layers /
    unstack_layers); same loss as the unrolled stack.
    """
    vocab_size: int = 8192
    d_model: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: int = 64
    d_ff: int = 1024
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    scale_embeddings: bool = False  # multiply input embeddings by sqrt(d_model) (Gemma)
    parallel_block: bool = False  # x + attn(norm(x)) + ffn(norm(x)) (PaLM)
    block_type: str = "pre_norm"  # see BLOCK_TYPES; model/nn/gating.py (GTrXL)
    gate: str = "gru"  # block_type='gtrxl': the gate replacing each residual sum
    gate_bias: float = 2.0  # the gate's b_g: large -> each gated block starts as the identity
    z_loss_coef: float = 1e-4
    dtype: str = "float32"  # activations / matmul inputs
    param_dtype: str = "float32"
    attention_backend: str = "xla"
    block_q: int = 512  # blockwise attention tile sizes
    block_kv: int = 512
    remat: str = "none"  # see REMAT_POLICIES
    scan_layers: bool = False
    loss_chunk: int = 0  # > 0: output layer + loss in token chunks, recomputed (long context)
    max_len: int = 512  # default sequence length (FLOPs/token and decoding caches)
    moe: MoEConfig | None = None
    layer_pattern: str = "d"
    image: VisionEncoderConfig | None = None
    video: VisionEncoderConfig | None = None
    audio: AudioEncoderConfig | None = None
    memory: MemoryConfig | None = None  # long-range memory (model/nn/memory_config.py)

    def __post_init__(self) -> None:
        name = "TransformerConfig"
        _check_positive(name, self, "vocab_size", "d_model", "num_layers", "num_heads",
                        "num_kv_heads", "head_dim", "d_ff", "block_q", "block_kv", "max_len")
        if self.num_heads % self.num_kv_heads:
            _fail(name, "num_kv_heads", self.num_kv_heads,
                  f"must divide num_heads={self.num_heads} (1 = multi-query)")
        if self.head_dim % 2:
            _fail(name, "head_dim", self.head_dim, "must be even for rotary embeddings")
        _check_choice(name, "attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        _check_choice(name, "remat", self.remat, REMAT_POLICIES)
        _check_choice(name, "dtype", self.dtype, DTYPES)
        _check_choice(name, "param_dtype", self.param_dtype, DTYPES)
        _check_choice(name, "block_type", self.block_type, BLOCK_TYPES)
        _check_choice(name, "gate", self.gate, GATES)
        if self.block_type != "pre_norm" and self.parallel_block:
            _fail(name, "block_type", self.block_type,
                  "parallel_block=True needs block_type='pre_norm' (or parallel_block=False)")
        if self.loss_chunk < 0:
            _fail(name, "loss_chunk", self.loss_chunk, "must be >= 0 (0 = no chunking)")
        if not self.layer_pattern or set(self.layer_pattern) - {"d", "m"}:
            _fail(name, "layer_pattern", self.layer_pattern,
                  "use a non-empty string of 'd' (dense) and 'm' (MoE), e.g. 'm' or 'dm'")
        if "m" in self.layer_pattern and self.moe is None:
            _fail(name, "layer_pattern", self.layer_pattern,
                  "has MoE layers but moe=None; set moe=MoEConfig(...) or use 'd'")
        if self.moe is not None and "m" not in self.layer_pattern:
            _fail(name, "layer_pattern", self.layer_pattern,
                  "has no 'm' although moe is set; use e.g. 'm' (all) or 'dm' (every 2nd)")
        if self.scan_layers and self.num_layers % len(self.layer_pattern):
            _fail(name, "num_layers", self.num_layers,
                  f"with scan_layers=True it must be a multiple of len(layer_pattern)="
                  f"{len(self.layer_pattern)} ({self.layer_pattern!r}); change num_layers, "
                  "the pattern, or set scan_layers=False")
        if self.memory is not None:
            self.memory.validate_layers(self.num_layers)
            if self.scan_layers:
                _fail(name, "scan_layers", True, "long-range memory needs unrolled layers "
                      "(per-layer memory lengths); set scan_layers=False")
        if self.video is not None and self.video.num_frames < 1:
            _fail(name, "video", self.video, "video.num_frames must be >= 1")

    def is_moe_layer(self, i: int) -> bool:
        return self.layer_pattern[i % len(self.layer_pattern)] == "m"

    @property
    def num_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.num_layers))


# ---------------------------------------------------------------------------
# Presets. Parameter counts and FLOPs/token: gin/models/*.gin (from model/flops.py).

_TINY_MEDIA = dict(
    image=VisionEncoderConfig(image_size=32, patch_size=8, width=64, depth=1, num_heads=2,
                              mlp_dim=128),
    video=VisionEncoderConfig(image_size=32, patch_size=16, width=64, depth=1, num_heads=2,
                              mlp_dim=128, num_frames=4),
    audio=AudioEncoderConfig(num_mels=80, max_frames=128, conv_channels=16, width=64, depth=1,
                             num_heads=2, mlp_dim=128),
)

PRESETS: dict[str, TransformerConfig] = {
    # Seconds per step on 2 CPU cores; text + all three modalities.
    "tiny": TransformerConfig(
        vocab_size=8192, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
        d_ff=512, max_len=256, attention_backend="blockwise", block_q=64, block_kv=64,
        **_TINY_MEDIA),
    "tiny_moe": TransformerConfig(
        vocab_size=8192, d_model=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
        d_ff=512, max_len=256, attention_backend="blockwise", block_q=64, block_kv=64,
        moe=MoEConfig(num_experts=4, top_k=2, expert_hidden=256),
        layer_pattern="dm", **_TINY_MEDIA),
    "small": TransformerConfig(
        vocab_size=8192, d_model=512, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64,
        d_ff=2048, max_len=1024,
        moe=MoEConfig(num_experts=8, top_k=2, expert_hidden=1024), layer_pattern="dm",
        image=VisionEncoderConfig(image_size=224, patch_size=16, width=384, depth=4,
                                  num_heads=6, mlp_dim=1536),
        video=VisionEncoderConfig(image_size=112, patch_size=16, width=384, depth=4,
                                  num_heads=6, mlp_dim=1536, num_frames=16),
        audio=AudioEncoderConfig(num_mels=80, max_frames=3001, conv_channels=128, width=384,
                                 depth=4, num_heads=6, mlp_dim=1536)),
    "base": TransformerConfig(
        vocab_size=32768, d_model=1024, num_layers=16, num_heads=16, num_kv_heads=4,
        head_dim=64, d_ff=4096, max_len=2048, attention_backend="blockwise",
        block_q=512, block_kv=512, remat="dots",
        moe=MoEConfig(num_experts=16, top_k=2, expert_hidden=2048, num_shared_experts=1),
        layer_pattern="dm",
        image=VisionEncoderConfig(image_size=224, patch_size=14, width=768, depth=12,
                                  num_heads=12, mlp_dim=3072),
        video=VisionEncoderConfig(image_size=224, patch_size=28, width=768, depth=12,
                                  num_heads=12, mlp_dim=3072, num_frames=16),
        audio=AudioEncoderConfig(num_mels=128, max_frames=3000, conv_channels=256, width=768,
                                 depth=8, num_heads=12, mlp_dim=3072)),
    # Pod-scale example: MoE in every layer, bf16, blockwise attention with remat,
    # layers scanned (compile time independent of depth: benchmarks/compile_time.py).
    "large_moe": TransformerConfig(
        vocab_size=256000, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
        head_dim=128, d_ff=14336, max_len=8192, attention_backend="blockwise",
        block_q=1024, block_kv=1024, remat="full", dtype="bfloat16", scan_layers=True,
        moe=MoEConfig(num_experts=64, top_k=2, expert_hidden=8192, num_shared_experts=1,
                      shared_hidden=8192),
        layer_pattern="m",
        image=VisionEncoderConfig(image_size=448, patch_size=14, width=1152, depth=27,
                                  num_heads=16, mlp_dim=4304),
        video=VisionEncoderConfig(image_size=224, patch_size=28, width=1152, depth=27,
                                  num_heads=16, mlp_dim=4304, num_frames=32),
        audio=AudioEncoderConfig(num_mels=128, max_frames=3000, conv_channels=512, width=1024,
                                 depth=24, num_heads=16, mlp_dim=4096)),
    # ~1B active parameters for GPU MFU checks (benchmarks/gpu_check.sh): 4k-token rows,
    # bf16 compute, scanned layers. The MoE twin has the dense FFN's active width in
    # its top-2 of 8 experts (~3.5B total).
    "dense_1b": TransformerConfig(
        vocab_size=32768, d_model=2048, num_layers=16, num_heads=16, num_kv_heads=8,
        head_dim=128, d_ff=8192, max_len=4096, attention_backend="blockwise",
        block_q=512, block_kv=512, dtype="bfloat16", scan_layers=True),
    "moe_1b": TransformerConfig(
        vocab_size=32768, d_model=2048, num_layers=16, num_heads=16, num_kv_heads=8,
        head_dim=128, d_ff=8192, max_len=4096, attention_backend="blockwise",
        block_q=512, block_kv=512, dtype="bfloat16", scan_layers=True,
        moe=MoEConfig(num_experts=8, top_k=2, expert_hidden=4096), layer_pattern="m"),
    # The MaxText 0.2.5 peer shapes (issue 4): keep exactly.
    "maxtext_dense": TransformerConfig(
        vocab_size=8192, d_model=256, num_layers=4, num_heads=4, num_kv_heads=4, head_dim=64,
        d_ff=1024, rope_base=10000.0, norm_eps=1e-5, tie_embeddings=False, z_loss_coef=0.0,
        max_len=512, attention_backend="blockwise", block_q=64, block_kv=64),
    "maxtext_moe": TransformerConfig(
        vocab_size=8192, d_model=256, num_layers=4, num_heads=4, num_kv_heads=4, head_dim=64,
        d_ff=1024, rope_base=10000.0, norm_eps=1e-5, tie_embeddings=False, z_loss_coef=0.0,
        max_len=512, attention_backend="blockwise", block_q=64, block_kv=64,
        moe=MoEConfig(num_experts=8, top_k=2, expert_hidden=512,
                                   capacity_factor_train=1.25, aux_loss_coef=0.01,
                                   router_z_loss_coef=0.0),
        layer_pattern="m"),
}

_NESTED = {"moe": MoEConfig, "image": VisionEncoderConfig, "video": VisionEncoderConfig,
           "audio": AudioEncoderConfig, "memory": MemoryConfig}


def _replace(cfg: Any, overrides: Mapping[str, Any], where: str) -> Any:
    names = [f.name for f in dataclasses.fields(cfg)]
    flat: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if head not in names:
            near = difflib.get_close_matches(head, names, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"unknown {where} field {key!r}{hint} (fields: {names})")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[head] = value
    for head, sub in nested.items():
        base = flat.get(head, getattr(cfg, head))
        if base is None:
            base = _NESTED[head]()
        flat[head] = _replace(base, sub, f"{where}.{head}")
    return dataclasses.replace(cfg, **flat)


@gin.configurable
def model_config(preset: str = "tiny", overrides: Mapping[str, Any] | None = None
                 ) -> TransformerConfig:
    """Returns the named preset with `overrides` applied (dotted keys reach nested configs)."""
    if preset not in PRESETS:
        near = difflib.get_close_matches(preset, PRESETS, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"unknown model preset {preset!r}{hint} (presets: {sorted(PRESETS)})")
    return _replace(PRESETS[preset], dict(overrides or {}), "TransformerConfig")
