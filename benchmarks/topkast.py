"""Top-KAST benchmark (issue 18): 80% and 90% sparse vs dense at equal steps, on text.

    .venv/bin/python benchmarks/topkast.py                  # ~3-5 min on 2 shared cores
    .venv/bin/python benchmarks/topkast.py --steps=600 --out=/tmp/topkast_bench

Task: byte-level language modelling of tinyshakespeare (TAPESTRY_DATA_DIR, default
../shared/data/text/tinyshakespeare/input.txt): token = byte + 12 (ids below 12 are
reserved), the first 90% of the text for training (random windows), the last 10% for
eval (fixed windows). Model: our decoder, d_model 64, 2 layers, 4 heads, SwiGLU 256.
Runs, same data order, seed, steps and AdamW schedule: dense; Top-KAST D=0.2 (80%
sparse forward), D=0.1 (90%), each with M=0.1 (B = top D+M), masks refreshed every 20
steps, regulariser 1e-4; embeddings and the output layer stay dense (as in the
paper's language models; model/nn/topkast.py). Eval loss is of the sparse model θ ⊙ A.

Prints a table (final eval loss nats/byte, gap to dense, FLOPs/token from
model.flops.sparse_flops_per_token) and writes loss curves to OUT/topkast.png.
The paper's claim, beside ours: Top-KAST at 80% sparsity trains to close to the dense
model (Jayakumar et al. 2020: ResNet-50 on ImageNet, Transformer-XL on enwik8), with a
larger gap at 90% and beyond. (Its exact figures are not quoted here: check the paper.)

Measured 2026-12-02 (defaults: 400 steps x 16 x 128 bytes, load average ~7 on 2 cores,
dense 133 s, 80% 258 s, 90% 168 s):
| run | forward density | eval loss (nats/byte) | bits/byte | gap to dense | train FLOPs/token |
|---|---|---|---|---|---|
| dense | 1.0 | 2.0059 | 2.894 | +0.0000 | 9.88e+05 |
| top-kast 80% | 0.2 | 2.3153 | 3.340 | +0.3094 | 3.85e+05 |
| top-kast 90% | 0.1 | 2.4779 | 3.575 | +0.4720 | 3.06e+05 |
At equal (few) steps on this tiny model the sparse runs are well behind dense, 90%
behind 80%: the ordering of the paper, but not "near dense at 80%". The paper trains
far longer and larger models; a 64-wide, 2-layer model at 20% density has ~26k active
decoder weights. Mask churn at each refresh fell to ~0.5% by the end.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import flops  # noqa: E402
from model.config import model_config  # noqa: E402
from model.nn import topkast
from model.partitioning import Partitioner
from model.trainer import Trainer, adamw, warmup_cosine_schedule

BYTE_OFFSET = 12
DATA_DIR = os.environ.get("TAPESTRY_DATA_DIR",
                          os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def text_bytes(path: str | None = None) -> np.ndarray:
    path = path or os.path.join(DATA_DIR, "text", "tinyshakespeare", "input.txt")
    with open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8).astype(np.int32) + BYTE_OFFSET


def lm_batch(data: np.ndarray, starts: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """Windows data[s : s + length + 1] -> the model's batch contract ([B, L] each)."""
    rows = np.stack([data[s:s + length + 1] for s in starts])
    b = rows.shape[0]
    return {"decoder_input_tokens": rows[:, :-1], "decoder_target_tokens": rows[:, 1:],
            "decoder_loss_weights": np.ones((b, length), np.float32),
            "decoder_segment_ids": np.ones((b, length), np.int32),
            "decoder_positions": np.broadcast_to(np.arange(length, dtype=np.int32), (b, length))}


def splits(data: np.ndarray, steps: int, batch: int, length: int, eval_batches: int,
           seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train batches of random windows from the first 90%, fixed eval batches from the rest)."""
    cut = int(0.9 * len(data))
    rng = np.random.default_rng(seed)
    train = [lm_batch(data, rng.integers(0, cut - length - 1, batch), length)
             for _ in range(steps)]
    held = data[cut:]
    stride = max(1, (len(held) - length - 1) // (eval_batches * batch))
    starts = np.arange(eval_batches * batch) * stride
    evals = [lm_batch(held, starts[i * batch:(i + 1) * batch], length)
             for i in range(eval_batches)]
    return train, evals


MODEL = dict(vocab_size=256 + BYTE_OFFSET, d_model=64, num_layers=2, num_heads=4,
             num_kv_heads=4, head_dim=16, d_ff=256, max_len=128, attention_backend="xla",
             image=None, video=None, audio=None)


def run(name: str, density: float | None, train: list[dict], evals: list[dict], steps: int,
        lr: float) -> dict:
    cfg = model_config("tiny", MODEL)
    sched = warmup_cosine_schedule(lr, max(1, steps // 20), steps)
    opt = adamw(sched, weight_decay=0.1)
    model_obj = None
    if density is not None:
        sparsity = topkast.TopKastConfig(forward_density=density, backward_extra=0.1,
                                         refresh_every=20, regulariser=1e-4)
        opt = topkast.TopKast(opt, sparsity)
        model_obj = topkast.TopKastModel(cfg, sparsity)
    else:
        from model.models import DecoderOnlyModel
        model_obj = DecoderOnlyModel(cfg)
    tr = Trainer(model_obj, opt, Partitioner((1, 1, 1), num_devices=1), sched)
    state = tr.init_state(jax.random.key(0), train[0])
    step = jax.jit(tr.train_step, donate_argnums=(0,))

    def eval_loss(state) -> float:
        params = state.params if density is None else opt.forward_params(state.params,
                                                                         state.opt_state)
        losses = [float(eval_fn(params, b)[1]["cross_entropy"]) for b in evals]
        return float(np.mean(losses))

    eval_fn = jax.jit(lambda p, b: tr.model.loss_fn(p, b, train=False))
    curve, evals_at = [], []
    start = time.perf_counter()
    for i, b in enumerate(train):
        state, metrics = step(state, b)
        curve.append(float(metrics["cross_entropy"]))
        if (i + 1) % max(1, steps // 5) == 0 or i + 1 == steps:
            evals_at.append((i + 1, eval_loss(state)))
    seconds = time.perf_counter() - start
    extra = {k: float(v) for k, v in metrics.items() if k.startswith("topkast/")
             and k.count("/") == 1}
    return dict(name=name, curve=curve, evals=evals_at, final=evals_at[-1][1],
                seconds=seconds, flops=tr.model.flops_per_token(128), extra=extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--out", default="/tmp/topkast_bench")
    args = parser.parse_args()
    data = text_bytes()
    train, evals = splits(data, args.steps, args.batch, args.length, eval_batches=8)
    print(f"load average {os.getloadavg()[0]:.1f}; {args.steps} steps x {args.batch} x "
          f"{args.length} bytes", flush=True)
    results = []
    for name, density in (("dense", None), ("top-kast 80%", 0.2), ("top-kast 90%", 0.1)):
        r = run(name, density, train, evals, args.steps, args.lr)
        print(f"  {name}: eval {r['final']:.4f} nats/byte in {r['seconds']:.0f}s {r['extra']}",
              flush=True)
        results.append(r)
    dense = results[0]
    print("\n| run | forward density | eval loss (nats/byte) | bits/byte | gap to dense "
          "| train FLOPs/token |")
    print("|---|---|---|---|---|---|")
    for r, d in zip(results, (1.0, 0.2, 0.1)):
        print(f"| {r['name']} | {d:.1f} | {r['final']:.4f} | {r['final'] / np.log(2):.3f} "
              f"| {r['final'] - dense['final']:+.4f} | {r['flops']:.3g} |")
    print("\nPaper (Jayakumar et al. 2020): Top-KAST at 80% sparsity close to dense "
          "(ImageNet, enwik8), a larger gap at 90%.")
    os.makedirs(args.out, exist_ok=True)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for r in results:
        c = np.convolve(r["curve"], np.ones(10) / 10, mode="valid")
        ax1.plot(np.arange(len(c)) + 10, c, label=r["name"])
        ax2.plot(*zip(*r["evals"]), marker="o", label=r["name"])
    ax1.set(xlabel="step", ylabel="train loss (nats/byte, 10-step mean)", title="train")
    ax2.set(xlabel="step", ylabel="eval loss of θ⊙A (nats/byte)", title="held-out")
    for ax in (ax1, ax2):
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "topkast.png"), dpi=100)
    print(f"plot: {os.path.join(args.out, 'topkast.png')}")


if __name__ == "__main__":
    main()
