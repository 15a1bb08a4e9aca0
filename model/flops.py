"""Parameter counts (total / active) and training FLOPs per token, from a config.

Counts match the parameter tree exactly (tests/test_model_flops.py checks them
against `jax.eval_shape(model.init)`); "active" excludes the routed experts a
token does not visit (E - k per MoE layer). Training FLOPs per text token:
  6 x (active matmul parameters, i.e. without the input-embedding lookup and
  norm scales; the output projection counts even when tied)
  + 6 x 2 x N x H x L_ctx per layer for causal attention scores and values,
    L_ctx = seq_len / 2 (the average causal context).
Media encoders are counted in the parameters but not in the text FLOPs.
"""
from __future__ import annotations

from model.config import AudioEncoderConfig, TransformerConfig, VisionEncoderConfig


def _encoder_stack(width: int, depth: int, mlp: int, out_dim: int) -> int:
    block = 2 * width + 3 * width * width + width * width + 3 * width * mlp
    return depth * block + width + width * out_dim


def vision_params(cfg: VisionEncoderConfig, out_dim: int) -> int:
    g = cfg.image_size // cfg.patch_size
    n = cfg.patch_size ** 2 * cfg.input_channels * cfg.width + g * g * cfg.width
    if cfg.num_frames > 1:
        n += cfg.num_frames * cfg.width
    return n + _encoder_stack(cfg.width, cfg.depth, cfg.mlp_dim, out_dim)


def audio_params(cfg: AudioEncoderConfig, out_dim: int) -> int:
    c = cfg.conv_channels
    mels_out = -(-(-(-cfg.num_mels // 2)) // 2)
    n = (9 * c + c) + (9 * c * c + c) + mels_out * c * cfg.width
    n += cfg.slots_per_item * cfg.width
    return n + _encoder_stack(cfg.width, cfg.depth, cfg.mlp_dim, out_dim)


def _layer_params(cfg: TransformerConfig, moe_layer: bool) -> tuple[int, int, int]:
    """(total, active, active matmul) parameters of one decoder layer."""
    d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    attn = d * n * h + d * 2 * k * h + n * h * d
    if cfg.block_type == "gtrxl":  # two gates per layer, [D, D] matrices (model/nn/gating.py)
        attn += 2 * d * d * {"gru": 6, "sigmoid_tanh": 2}.get(cfg.gate, 1)
    norms = d if cfg.parallel_block else 2 * d
    if not moe_layer:
        ffn = 3 * d * cfg.d_ff
        return attn + norms + ffn, attn + norms + ffn, attn + ffn
    m = cfg.moe
    expert = 3 * d * m.expert_hidden
    shared = 3 * d * m.num_shared_experts * (m.shared_hidden or m.expert_hidden)
    router = d * m.num_experts
    total = attn + norms + router + m.num_experts * expert + shared
    active_mm = attn + router + m.top_k * expert + shared
    return total, active_mm + norms, active_mm


def param_counts(cfg: TransformerConfig) -> tuple[int, int]:
    """(total, active) parameters including embeddings and media encoders."""
    total = active = cfg.vocab_size * cfg.d_model + cfg.d_model  # embedding + final norm
    if not cfg.tie_embeddings:
        total += cfg.vocab_size * cfg.d_model
        active += cfg.vocab_size * cfg.d_model
    for i in range(cfg.num_layers):
        t, a, _ = _layer_params(cfg, cfg.is_moe_layer(i))
        total, active = total + t, active + a
    enc = 0
    for vcfg in (cfg.image, cfg.video):
        if vcfg is not None:
            enc += vision_params(vcfg, cfg.d_model)
    if cfg.audio is not None:
        enc += audio_params(cfg.audio, cfg.d_model)
    return total + enc, active + enc


def flops_per_token(cfg: TransformerConfig, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per text token at sequence length seq_len."""
    matmul = cfg.vocab_size * cfg.d_model  # output projection
    for i in range(cfg.num_layers):
        matmul += _layer_params(cfg, cfg.is_moe_layer(i))[2]
    attention = cfg.num_layers * 2 * cfg.num_heads * cfg.head_dim * (seq_len / 2)
    return 6.0 * matmul + 6.0 * attention


def sparse_flops_per_token(cfg: TransformerConfig, seq_len: int, forward_density: float,
                           backward_density: float, sparse_output: bool = False) -> float:
    """Training FLOPs per text token under Top-KAST (model/nn/topkast.py): a sparse
    matrix costs 2·D (forward) + 2·D (input gradient through the same sparse weights)
    + 2·(D+M) (weight gradient on the backward set B) per parameter instead of 6.
    Decoder-layer matmuls are sparse; the output projection only with `sparse_output`."""
    layers = sum(_layer_params(cfg, cfg.is_moe_layer(i))[2] for i in range(cfg.num_layers))
    output = cfg.vocab_size * cfg.d_model
    sparse, dense = (layers + output, 0) if sparse_output else (layers, output)
    per_sparse = 4.0 * forward_density + 2.0 * backward_density
    attention = cfg.num_layers * 2 * cfg.num_heads * cfg.head_dim * (seq_len / 2)
    return per_sparse * sparse + 6.0 * dense + 6.0 * attention


def describe(cfg: TransformerConfig, seq_len: int | None = None) -> str:
    """One-line summary for gin comments: total/active params and FLOPs/token."""
    total, active = param_counts(cfg)
    seq = seq_len or cfg.max_len
    return (f"params total {total:,} / active {active:,}; "
            f"train FLOPs/token {flops_per_token(cfg, seq):.4g} at length {seq}")


if __name__ == "__main__":
    import sys

    from model.config import PRESETS, model_config

    for name in sys.argv[1:] or sorted(PRESETS):
        print(f"{name}: {describe(model_config(name))}")
