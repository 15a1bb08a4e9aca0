"""Tapestry checkpoint -> HF transformers model directory.

    python -m model.export_hf --gin_file=gin/models/tiny.gin \
        --checkpoint=/tmp/run --out=/tmp/run/hf [--step=N] [--dtype=bfloat16]

reads the params of a checkpoint (`model.checkpointing.restore_params`; the model gin
file must be the one it was trained with), checks them against the model's own
parameter tree (`jax.eval_shape` of `DecoderOnlyModel.init`, unrolled or scanned
layers), and writes to --out:
  config.json                         the HF architecture (model/hf_mapping.py picks it:
                                      Llama, Gemma, Mixtral or Qwen2-MoE)
  model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json
                                      (shards of at most --max_shard_mb, written one at a time)
  generation_config.json              start token 0 (our BOS), eos 1, pad 0
  tokenizer.json, tokenizer.model, tokenizer_config.json, special_tokens_map.json
                                      our SentencePiece model (--vocab; default the packaged
                                      tasks/vocab/tapestry_8k.model): the same ids, with
                                      <pad> (id 0, our start token) as BOS
Media encoders are not exported (HF has no place for them): the text decoder alone is,
and the command says so. Options HF cannot express (parallel_block) are refused with a
message naming them. No torch or transformers needed.

Load the result with `transformers.AutoModelForCausalLM.from_pretrained(out)`; prompts
start with token 0, as in our decoding (`bos_token_id` = 0).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import json
import logging
import sys
from typing import Any, Mapping, Sequence

import numpy as np

from model import fs, hf_mapping
from model.config import TransformerConfig

log = logging.getLogger("tapestry.export_hf")
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": None}
MEDIA_FIELDS = ("image", "video", "audio")


def text_config(cfg: TransformerConfig) -> TransformerConfig:
    """`cfg` without media encoders (what an HF causal LM holds)."""
    return dataclasses.replace(cfg, **{m: None for m in MEDIA_FIELDS})


def expected_shapes(cfg: TransformerConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{path: shape} of the model's parameters, from `jax.eval_shape` of its init."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from model.models import DecoderOnlyModel
    model = DecoderOnlyModel(cfg)
    batch = {"decoder_input_tokens": jnp.zeros((1, 8), jnp.int32)}
    abstract = nn.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), batch)))
    return {_path(k): tuple(v.shape) for k, v in jax.tree_util.tree_flatten_with_path(
        abstract)[0]}


def _path(keys) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in keys)


def _flat(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(tree, Mapping):
        out = {}
        for k, v in tree.items():
            out.update(_flat(v, prefix + (str(k),)))
        return out
    return {prefix: getattr(tree, "value", tree)}


def check_params(params: Mapping[str, Any], cfg: TransformerConfig) -> None:
    """Raises ValueError naming each text-decoder parameter missing or of another shape."""
    want = {p: s for p, s in expected_shapes(text_config(cfg)).items()}
    have = _flat(params)
    bad = [f"{'/'.join(p)}: expected {s}, checkpoint has "
           f"{tuple(have[p].shape) if p in have else 'nothing'}"
           for p, s in sorted(want.items()) if p not in have or tuple(have[p].shape) != s]
    if bad:
        raise ValueError("checkpoint does not match the model gin config (" + "; ".join(bad[:8])
                         + (f"; and {len(bad) - 8} more" if len(bad) > 8 else "") + ")")


def _cast(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        import ml_dtypes
        return x.astype(ml_dtypes.bfloat16)
    return x.astype(DTYPES[dtype])


def default_vocab() -> str:
    return str(importlib.resources.files("tasks").joinpath("vocab/tapestry_8k.model"))


_REGEX_META = set("\\.+*?()|[]{}^$#&-~")
_REGEX_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "\\x20"}


def _regex_escape(text: str) -> str:
    return "".join(_REGEX_ESCAPES.get(c, "\\" + c if c in _REGEX_META else c) for c in text)


def sentencepiece_tokenizer_json(model_bytes: bytes) -> str:
    """tokenizer.json (HF `tokenizers`) encoding exactly as our SentencePiece model does.

    The same pipeline as transformers' SpmConverter builds for a Unigram model with the
    identity normalizer and no dummy prefix (ours): spaces -> U+2581, user-defined
    symbols (media markers, newline) split off whole, Unigram with byte fallback.
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_bytes)
    if (proto.trainer_spec.model_type != 1 or proto.normalizer_spec.add_dummy_prefix
            or proto.normalizer_spec.name != "identity"):
        raise ValueError("only Unigram SentencePiece models with the identity normalizer "
                         "and no dummy prefix are converted (as ours); pass one")
    vocab = [(p.piece, p.score) for p in proto.pieces]
    tok = Tokenizer(models.Unigram(vocab, proto.trainer_spec.unk_id,
                                   byte_fallback=proto.trainer_spec.byte_fallback))
    tok.normalizer = normalizers.Sequence([normalizers.Replace(" ", "\u2581")])
    user = sorted((p.piece for p in proto.pieces if p.type == p.USER_DEFINED),
                  key=len, reverse=True)
    if user:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(
            Regex("|".join(_regex_escape(u) for u in user)), behavior="isolated")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                            for p in proto.pieces if p.type == p.CONTROL or p.type == p.UNKNOWN])
    # Every sequence starts with our start token (id 0), as in training and decoding.
    start = proto.pieces[0].piece
    tok.post_processor = processors.TemplateProcessing(
        single=f"{start} $A", pair=f"{start} $A $B:1", special_tokens=[(start, 0)])
    return tok.to_str()


def write_tokenizer(out: str, vocab: str) -> None:
    """Our SentencePiece model as HF tokenizer files: tokenizer.json (exact ids; with
    special tokens, encode prepends <pad> = id 0, our start token, as BOS) and the
    original tokenizer.model."""
    model_bytes = fs.read_bytes(vocab)
    fs.write_bytes(fs.join(out, "tokenizer.model"), model_bytes)
    fs.write_text(fs.join(out, "tokenizer.json"), sentencepiece_tokenizer_json(model_bytes))
    special = {"bos_token": "<pad>", "eos_token": "</s>", "pad_token": "<pad>",
               "unk_token": "<unk>"}
    tok_cfg = dict(special, tokenizer_class="PreTrainedTokenizerFast", add_bos_token=True,
                   add_eos_token=False, clean_up_tokenization_spaces=False,
                   model_max_length=1 << 30)
    fs.write_text(fs.join(out, "tokenizer_config.json"), json.dumps(tok_cfg, indent=2))
    fs.write_text(fs.join(out, "special_tokens_map.json"), json.dumps(special, indent=2))


def export(params: Mapping[str, Any], cfg: TransformerConfig, out: str, *,
           dtype: str | None = None, vocab: str | None = None,
           max_shard_mb: float = 2000) -> dict[str, Any]:
    """Writes the HF directory for `params` (plain or boxed arrays, unrolled or scanned
    layout, with or without encoders) to `out`; returns {architecture, files, tensors}."""
    arch = hf_mapping.choose_architecture(cfg)
    dropped = [m for m in MEDIA_FIELDS if getattr(cfg, m) is not None]
    if dropped:
        log.warning("exporting the text decoder alone: the %s encoder(s) have no place in "
                    "an HF causal LM and are left out", ", ".join(dropped))
    params = {k: v for k, v in params.items() if k != "encoders"}
    check_params(params, cfg)
    tcfg = text_config(cfg)
    dtype = dtype or cfg.param_dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {sorted(DTYPES)}")
    fs.makedirs(out)
    from safetensors.numpy import save

    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    files, weight_map, total = [], {}, 0
    limit = int(max_shard_mb * (1 << 20))

    def flush() -> None:
        # Names are fixed once the count is known; write to a temporary name first.
        name = f"shard-{len(files):05d}.tmp"
        fs.write_bytes(fs.join(out, name), save(shards[0], metadata={"format": "pt"}))
        files.append((name, list(shards[0])))
        shards[0] = {}

    for name, value in hf_mapping.to_hf(_flat_to_tree(params), tcfg, arch):
        value = _cast(value, dtype)
        if size and size + value.nbytes > limit:
            flush()
            size = 0
        shards[0][name] = value
        size += value.nbytes
        total += value.nbytes
    flush()
    names = (["model.safetensors"] if len(files) == 1 else
             [f"model-{i + 1:05d}-of-{len(files):05d}.safetensors" for i in range(len(files))])
    for (tmp, keys), final in zip(files, names):
        fs.rename(fs.join(out, tmp), fs.join(out, final))
        weight_map.update({k: final for k in keys})
    if len(files) > 1:
        fs.write_text(fs.join(out, "model.safetensors.index.json"), json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config = hf_mapping.hf_config(tcfg, arch, dtype)
    if arch == "qwen2_moe" and not tcfg.moe.num_shared_experts:
        config["tapestry_zero_shared_expert"] = True  # the width-1 zero expert is filler
    fs.write_text(fs.join(out, "config.json"), json.dumps(config, indent=2))
    fs.write_text(fs.join(out, "generation_config.json"), json.dumps(
        {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0, "do_sample": False},
        indent=2))
    write_tokenizer(out, vocab or default_vocab())
    return {"architecture": config["architectures"][0], "files": names,
            "tensors": len(weight_map)}


def _flat_to_tree(params: Mapping[str, Any]) -> dict[str, Any]:
    """Unboxes (nn.Partitioned -> array) and pulls arrays to host, keeping the nesting."""
    if isinstance(params, Mapping):
        return {k: _flat_to_tree(v) for k, v in params.items()}
    return np.asarray(getattr(params, "value", params))


def export_checkpoint(checkpoint: str, cfg: TransformerConfig, out: str,
                      step: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """`export` of the params saved at `checkpoint` (a MODEL_DIR, its checkpoints/ dir or
    a step dir; latest step unless `step`)."""
    from model.checkpointing import restore_params
    hf_mapping.choose_architecture(cfg)  # refuse before reading any weights
    params, step = restore_params(checkpoint, step)
    summary = export(params, cfg, out, **kwargs)
    summary["step"] = step
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--step", type=int, default=None)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    parser.add_argument("--vocab", default=None, help="SentencePiece model (default: ours)")
    parser.add_argument("--max_shard_mb", type=float, default=2000)
    args, rest = parser.parse_known_args(argv)
    from model import checkpointing, gin_flags  # noqa: F401  - gin configurables
    from model.models import DecoderOnlyModel  # registered with gin before parsing
    try:
        gin_flags.parse_gin_flags(rest, "Export a Tapestry checkpoint to HF transformers.")
        cfg = DecoderOnlyModel().config
        summary = export_checkpoint(args.checkpoint, cfg, args.out, args.step,
                                    dtype=args.dtype, vocab=args.vocab,
                                    max_shard_mb=args.max_shard_mb)
    except (hf_mapping.UnsupportedForHF, ValueError, FileNotFoundError) as e:
        print(f"export_hf: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
