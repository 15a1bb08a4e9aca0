"""Tapestry <-> HF transformers: architecture choice, config.json, and the tensor map.

One table per direction-free rule, used by `model.export_hf` (ours -> HF) and
`model.import_hf` (HF -> ours). Numpy only (no torch, no transformers).

Architectures (HF `model_type`):
  'llama'    dense decoder (GQA/MQA, tied or untied embeddings);
  'gemma'    dense with `scale_embeddings` (x * sqrt(D)); norms stored as w - 1,
             MLP activation set to silu;
  'mixtral'  MoE in every layer (top-k softmax gates renormalised over the k =
             our softmax over the k chosen logits), no shared experts;
  'qwen2_moe' MoE with shared experts or a mixed 'd'/'m' pattern (dense layers
             listed in `mlp_only_layers`); the shared expert's sigmoid gate is
             written as zeros (sigmoid 0 = 1/2) and its down projection doubled.
Refused (no HF equivalent): `parallel_block`. Media encoders are not exported (the
text decoder is exported alone; `export_hf` says so).

Our per-layer parameters (unrolled `layer_{i}/...` or, with scan_layers, stacked
`layers/layer_{i % P}/...` at index i // P) with HF's names (Llama shown):
  attention/query/kernel [D,N,H]  -> self_attn.q_proj.weight [N*H, D]
  attention/key|value/kernel [D,K,H] -> k_proj|v_proj.weight [K*H, D]
  attention/out/kernel [N,H,D]    -> self_attn.o_proj.weight [D, N*H]
  pre_attention_norm/scale [D]    -> input_layernorm.weight
  pre_ffn_norm/scale [D]          -> post_attention_layernorm.weight
  mlp/wi_0|wi_1|wo/kernel [D,F]|[F,D] -> mlp.gate_proj|up_proj|down_proj.weight (transposed)
  moe/router [D,E]                -> block_sparse_moe.gate.weight [E, D]
  moe/wi_0|wi_1|wo [E,D,F]|[E,F,D] -> block_sparse_moe.experts.{e}.w1|w3|w2.weight
Rotary embeddings use the same rotate-half layout and frequencies as HF, so q/k need
no permutation. Legend: D model width, N heads, K kv heads, H head dim, F hidden,
E experts, V vocab, P pattern period.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from model.config import MoEConfig, TransformerConfig

ARCHITECTURES = {"llama": "LlamaForCausalLM", "gemma": "GemmaForCausalLM",
                 "mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}
SCAN_NAME = "layers"  # model/transformer.py's scanned stack (scan_layers=True)


class UnsupportedForHF(ValueError):
    """A Tapestry option, or an HF config field, the other side cannot express."""


# ----------------------------------------------------------- architecture
def choose_architecture(cfg: TransformerConfig) -> str:
    """The HF model_type for `cfg`; raises UnsupportedForHF naming every blocking option."""
    problems = []
    if cfg.parallel_block:
        problems.append("parallel_block=True (HF's Llama/Gemma/Mixtral/Qwen2-MoE blocks are "
                        "sequential: x + attn, then + ffn)")
    moe = cfg.moe
    if moe is not None and cfg.scale_embeddings:
        problems.append("scale_embeddings=True with MoE (no HF MoE architecture scales "
                        "input embeddings)")
    if problems:
        raise UnsupportedForHF("cannot export to HF transformers: " + "; ".join(problems))
    if moe is None:
        return "gemma" if cfg.scale_embeddings else "llama"
    if moe.num_shared_experts or "d" in cfg.layer_pattern:
        return "qwen2_moe"
    return "mixtral"


def dense_layers(cfg: TransformerConfig) -> list[int]:
    return [i for i in range(cfg.num_layers) if not cfg.is_moe_layer(i)]


def shared_width(moe: MoEConfig) -> int:
    return moe.num_shared_experts * (moe.shared_hidden or moe.expert_hidden)


def hf_config(cfg: TransformerConfig, arch: str, dtype: str) -> dict[str, Any]:
    """config.json content for `arch` (bos = our start token 0, eos 1, pad 0)."""
    out: dict[str, Any] = {
        "architectures": [ARCHITECTURES[arch]], "model_type": arch,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
        "intermediate_size": cfg.d_ff, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_base,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "max_position_embeddings": cfg.max_len, "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu", "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0, "dtype": dtype,
        "torch_dtype": dtype, "use_cache": True,
    }
    if arch == "llama":
        out["mlp_bias"] = False
    if arch == "gemma":
        out["hidden_activation"] = "silu"
    moe = cfg.moe
    if arch == "mixtral":
        out.update(num_local_experts=moe.num_experts, num_experts_per_tok=moe.top_k,
                   intermediate_size=moe.expert_hidden, sliding_window=None,
                   router_aux_loss_coef=moe.aux_loss_coef, output_router_logits=False)
    if arch == "qwen2_moe":
        out.update(num_experts=moe.num_experts, num_experts_per_tok=moe.top_k,
                   moe_intermediate_size=moe.expert_hidden, norm_topk_prob=True,
                   shared_expert_intermediate_size=shared_width(moe) or 1,
                   decoder_sparse_step=1, mlp_only_layers=dense_layers(cfg),
                   qkv_bias=False, use_sliding_window=False, sliding_window=None,
                   router_aux_loss_coef=moe.aux_loss_coef, output_router_logits=False)
    return out


def _get(hf: Mapping[str, Any], key: str, default: Any = None) -> Any:
    return hf[key] if hf.get(key) is not None else default


def config_from_hf(hf: Mapping[str, Any]) -> TransformerConfig:
    """A text-only TransformerConfig equal in function to HF config.json `hf`.

    Raises UnsupportedForHF naming each field we cannot express (rope scaling, biases,
    activations other than silu, sliding windows, unnormalised top-k gates, ...).
    """
    arch = hf.get("model_type")
    if arch not in ARCHITECTURES:
        raise UnsupportedForHF(f"config.json model_type={arch!r}: supported are "
                               f"{sorted(ARCHITECTURES)}")
    problems = []
    rope = dict(_get(hf, "rope_parameters", {}) or _get(hf, "rope_scaling", {}) or {})
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        problems.append(f"rope scaling {rope!r} (only plain RoPE)")
    act = hf.get("hidden_activation") if arch == "gemma" else hf.get("hidden_act", "silu")
    if act != "silu":
        problems.append(f"activation {act!r} (our MLPs are SwiGLU: silu)")
    for field in ("attention_bias", "mlp_bias", "qkv_bias"):
        if hf.get(field):
            problems.append(f"{field}=True (no biases in our layers)")
    if arch in ("mixtral", "qwen2_moe") and hf.get("sliding_window") and (
            arch == "mixtral" or hf.get("use_sliding_window")):
        problems.append(f"sliding_window={hf['sliding_window']} (full attention only)")
    if arch == "qwen2_moe":
        if not hf.get("norm_topk_prob"):
            problems.append("norm_topk_prob=False (our gates are renormalised over the top k)")
        if _get(hf, "decoder_sparse_step", 1) != 1:
            problems.append("decoder_sparse_step != 1 (list dense layers in mlp_only_layers)")
    if problems:
        raise UnsupportedForHF(f"cannot import {arch}: " + "; ".join(problems))

    d, n = hf["hidden_size"], hf["num_attention_heads"]
    theta = rope.get("rope_theta", _get(hf, "rope_theta", 10000.0))
    num_layers = hf["num_hidden_layers"]
    fields: dict[str, Any] = dict(
        vocab_size=hf["vocab_size"], d_model=d, num_layers=num_layers, num_heads=n,
        num_kv_heads=_get(hf, "num_key_value_heads", n), head_dim=_get(hf, "head_dim", d // n),
        d_ff=hf["intermediate_size"], rope_base=float(theta),
        norm_eps=float(_get(hf, "rms_norm_eps", 1e-6)),
        tie_embeddings=bool(_get(hf, "tie_word_embeddings", arch == "gemma")),
        scale_embeddings=arch == "gemma", max_len=_get(hf, "max_position_embeddings", 2048),
        attention_backend="xla", image=None, video=None, audio=None)
    if arch == "mixtral":
        e, k = hf["num_local_experts"], hf["num_experts_per_tok"]
        fields.update(layer_pattern="m", moe=MoEConfig(
            num_experts=e, top_k=k, expert_hidden=hf["intermediate_size"],
            capacity_factor_eval=e / k))  # C = T: no token is ever dropped at eval (as HF)
    if arch == "qwen2_moe":
        e, k = hf["num_experts"], hf["num_experts_per_tok"]
        dense = set(_get(hf, "mlp_only_layers", []))
        pattern = "".join("d" if i in dense else "m" for i in range(num_layers))
        zero_shared = bool(hf.get("tapestry_zero_shared_expert"))  # export_hf's filler
        fields.update(layer_pattern=_shortest_period(pattern), moe=MoEConfig(
            num_experts=e, top_k=k, expert_hidden=hf["moe_intermediate_size"],
            num_shared_experts=0 if zero_shared else 1,
            shared_hidden=0 if zero_shared else hf["shared_expert_intermediate_size"],
            capacity_factor_eval=e / k))
    return TransformerConfig(**fields)


def _shortest_period(pattern: str) -> str:
    for p in range(1, len(pattern) + 1):
        if len(pattern) % p == 0 and pattern[:p] * (len(pattern) // p) == pattern:
            return pattern[:p]
    return pattern


# ------------------------------------------------------------- tensor rules
@dataclasses.dataclass(frozen=True)
class Rule:
    """Our parameter `ours` (path in the unrolled tree) <-> HF tensors `hf`.

    `split` turns our array into the HF arrays (in `hf` order); `join` inverts it.
    A rule with `ours=None` is an HF-only constant (`split` gets None).
    """
    ours: tuple[str, ...] | None
    hf: tuple[str, ...]
    split: Callable[[Any], list[np.ndarray]]
    join: Callable[[list[np.ndarray]], np.ndarray]


def _t(ours, hf):  # 2D transpose
    return Rule(ours, (hf,), lambda a: [np.ascontiguousarray(a.T)], lambda xs: xs[0].T)


def _same(ours, hf):
    return Rule(ours, (hf,), lambda a: [np.asarray(a)], lambda xs: xs[0])


def _heads_in(ours, hf, heads, head_dim):  # [D,N,H] <-> [N*H, D]
    return Rule(ours, (hf,), lambda a: [np.ascontiguousarray(a.reshape(a.shape[0], -1).T)],
                lambda xs: xs[0].T.reshape(-1, heads, head_dim))


def _heads_out(ours, hf, heads, head_dim):  # [N,H,D] <-> [D, N*H]
    return Rule(ours, (hf,), lambda a: [np.ascontiguousarray(a.reshape(-1, a.shape[-1]).T)],
                lambda xs: xs[0].T.reshape(heads, head_dim, -1))


def _experts(ours, hf_names):  # [E,I,O] <-> E x [O, I]
    return Rule(ours, tuple(hf_names),
                lambda a: [np.ascontiguousarray(a[e].T) for e in range(a.shape[0])],
                lambda xs: np.stack([x.T for x in xs]))


def _norm(ours, hf, arch):
    if arch != "gemma":
        return _same(ours, hf)
    # Gemma's RMSNorm multiplies by (1 + w); exact both ways for scales in [0.5, 2].
    one = lambda a: np.asarray(1, a.dtype)
    return Rule(ours, (hf,), lambda a: [np.asarray(a - one(a))], lambda xs: xs[0] + one(xs[0]))


def rules(cfg: TransformerConfig, arch: str) -> list[Rule]:
    """Every tensor of the text decoder, in a stable order (embeddings, layers, head)."""
    out = [_same(("embed", "embedding"), "model.embed_tokens.weight"),
           _norm(("final_norm", "scale"), "model.norm.weight", arch)]
    if not cfg.tie_embeddings:
        out.append(_t(("logits", "kernel"), "lm_head.weight"))
    n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    for i in range(cfg.num_layers):
        ours, hf = f"layer_{i}", f"model.layers.{i}"
        out += [
            _norm((ours, "pre_attention_norm", "scale"), f"{hf}.input_layernorm.weight", arch),
            _norm((ours, "pre_ffn_norm", "scale"), f"{hf}.post_attention_layernorm.weight",
                  arch),
            _heads_in((ours, "attention", "query", "kernel"), f"{hf}.self_attn.q_proj.weight",
                      n, h),
            _heads_in((ours, "attention", "key", "kernel"), f"{hf}.self_attn.k_proj.weight",
                      k, h),
            _heads_in((ours, "attention", "value", "kernel"), f"{hf}.self_attn.v_proj.weight",
                      k, h),
            _heads_out((ours, "attention", "out", "kernel"), f"{hf}.self_attn.o_proj.weight",
                       n, h),
        ]
        if not cfg.is_moe_layer(i):
            out += [_t((ours, "mlp", w, "kernel"), f"{hf}.mlp.{p}.weight") for w, p in
                    (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj"))]
        else:
            out += _moe_rules(cfg, arch, ours, hf)
    return out


def _moe_rules(cfg: TransformerConfig, arch: str, ours: str, hf: str) -> list[Rule]:
    e = range(cfg.moe.num_experts)
    if arch == "mixtral":
        block = f"{hf}.block_sparse_moe"
        return [_t((ours, "moe", "router"), f"{block}.gate.weight")] + [
            _experts((ours, "moe", w), [f"{block}.experts.{j}.{p}.weight" for j in e])
            for w, p in (("wi_0", "w1"), ("wi_1", "w3"), ("wo", "w2"))]
    block = f"{hf}.mlp"
    out = [_t((ours, "moe", "router"), f"{block}.gate.weight")] + [
        _experts((ours, "moe", w), [f"{block}.experts.{j}.{p}.weight" for j in e])
        for w, p in (("wi_0", "gate_proj"), ("wi_1", "up_proj"), ("wo", "down_proj"))]
    d = cfg.d_model
    if cfg.moe.num_shared_experts:
        two = lambda a: np.asarray(2, a.dtype)
        out += [_t((ours, "moe", "shared", w, "kernel"), f"{block}.shared_expert.{p}.weight")
                for w, p in (("wi_0", "gate_proj"), ("wi_1", "up_proj"))]
        # Qwen2-MoE gates the shared expert with sigmoid(x W_g); W_g = 0 gives 1/2, so
        # the down projection is doubled (exact: a power of two).
        out.append(Rule((ours, "moe", "shared", "wo", "kernel"),
                        (f"{block}.shared_expert.down_proj.weight",),
                        lambda a: [np.ascontiguousarray(a.T * two(a))],
                        lambda xs: xs[0].T / two(xs[0])))
    else:  # a shared expert of width 1 that outputs zeros
        zeros = lambda shape: (lambda _: [np.zeros(shape, np.float32)])
        for p, shape in (("gate_proj", (1, d)), ("up_proj", (1, d)), ("down_proj", (d, 1))):
            out.append(Rule(None, (f"{block}.shared_expert.{p}.weight",), zeros(shape),
                            _expect_zero(f"{block}.shared_expert.{p}.weight")))
    out.append(Rule(None, (f"{block}.shared_expert_gate.weight",), lambda _: [
        np.zeros((1, d), np.float32)], _expect_zero(f"{block}.shared_expert_gate.weight")))
    return out


def _expect_zero(name: str) -> Callable[[list[np.ndarray]], None]:
    def check(xs: list[np.ndarray]) -> None:
        if np.any(xs[0]):
            raise UnsupportedForHF(f"{name} is not zero: a gated shared expert has no "
                                   "Tapestry equivalent")
    return check


# ------------------------------------------------------- our tree, both layouts
def layer_tree(params: Mapping[str, Any], cfg: TransformerConfig, i: int) -> Any:
    """Layer i's subtree from unrolled or scanned (stacked) params (a lazy view)."""
    if SCAN_NAME in params:
        p = len(cfg.layer_pattern)
        sub = params[SCAN_NAME][f"layer_{i % p}"]
        return _map(lambda x: x[i // p], sub)
    return params[f"layer_{i}"]


def _map(fn, tree):
    if isinstance(tree, Mapping):
        return {k: _map(fn, v) for k, v in tree.items()}
    return fn(tree)


def lookup(params: Mapping[str, Any], cfg: TransformerConfig, path: tuple[str, ...]) -> Any:
    """The array at an unrolled path (`layer_{i}/...`) in either layout."""
    if path[0].startswith("layer_"):
        node = layer_tree(params, cfg, int(path[0][len("layer_"):]))
        path = path[1:]
    else:
        node = params
    for key in path:
        node = node[key]
    return node


def to_hf(params: Mapping[str, Any], cfg: TransformerConfig, arch: str
          ) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (HF name, array) one tensor at a time (params: plain arrays, any layout)."""
    for rule in rules(cfg, arch):
        value = None if rule.ours is None else np.asarray(lookup(params, cfg, rule.ours))
        yield from zip(rule.hf, rule.split(value))


def from_hf(read: Callable[[str], np.ndarray], cfg: TransformerConfig, arch: str,
            scan_layers: bool = False) -> dict[str, Any]:
    """Our params (nested dict of numpy arrays) from `read(hf_name)`; stacked on a leading
    axis per pattern position when `scan_layers` (model/transformer.py's layout)."""
    tree: dict[str, Any] = {}
    for rule in rules(cfg, arch):
        value = rule.join([read(name) for name in rule.hf])
        if rule.ours is None:
            continue
        node = tree
        for key in rule.ours[:-1]:
            node = node.setdefault(key, {})
        node[rule.ours[-1]] = value
    if not scan_layers:
        return tree
    p = len(cfg.layer_pattern)
    stacked = {}
    for j in range(p):
        layers = [tree.pop(f"layer_{i}") for i in range(j, cfg.num_layers, p)]
        stacked[f"layer_{j}"] = _stack(layers)
    tree[SCAN_NAME] = stacked
    return tree


def _stack(trees: list[Any]) -> Any:
    if isinstance(trees[0], Mapping):
        return {k: _stack([t[k] for t in trees]) for k in trees[0]}
    return np.stack(trees)
