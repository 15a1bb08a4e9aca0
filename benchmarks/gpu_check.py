"""One-shot GPU check (issue 11): bf16 MFU, cuDNN vs blockwise attention, a 128k forward.

    bash benchmarks/gpu_check.sh                        # on the GPU host, <= 8 minutes
    .venv/bin/python benchmarks/gpu_check.py --cpu_smoke   # every code path, tiny, on CPU

Synthetic batches, JAX + Flax + Optax + gin (gin-config is pure Python; see
gpu_check.sh for carrying it as a wheel). Parts, in this order (each guarded: a
failure is printed and the others still run; the exit status is 1 if any failed):

1. attention: our 'cudnn' backend (model.attention.cudnn_attention,
   jax.nn.dot_product_attention(implementation='cudnn') with the packed-segment mask)
   and our blockwise attention, both in bf16, against a float32 XLA reference on packed
   rows with segment ids and padding ([2, 4096] tokens, 16 query / 8 kv heads of 128):
   outputs and input gradients, relative L2 error on non-padding tokens (bf16
   tolerance 2e-2 for outputs, 5e-2 for gradients).
2. long: one 131,072-token row through `dense_1b` (blockwise attention, 1024-token
   blocks, bf16 weights, output layer + loss in 8192-token chunks), forward only:
   seconds per forward and peak device memory (XLA's compiled buffer sizes and the
   allocator's peak_bytes_in_use).
3. mfu: train steps (Trainer.jit_train_step: value_and_grad + AdamW, bf16 compute over
   float32 master weights) of `dense_1b` and `moe_1b` (~1.1B active each) at 4 x 4096
   tokens with cuDNN attention; MFU = model FLOPs (model/flops.py: 6 x active matmul
   params + causal attention, per token) x tokens/s / the chip's bf16 dense peak
   (H100/H200 SXM 989 TFLOP/s; else the measured 8192^3 bf16 matmul). Targets:
   dense >= 45%, MoE >= 35%.
--cpu_smoke runs the same functions with tiny widths and lengths (XLA attention in
place of cuDNN), so a CPU test keeps this script working without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from model.attention import cudnn_attention, segment_causal_mask, xla_attention  # noqa: E402
from model.blockwise_attention import blockwise_attention  # noqa: E402
from model.config import model_config  # noqa: E402
from model.models import DecoderOnlyModel  # noqa: E402
from model.partitioning import Partitioner  # noqa: E402
from model.trainer import Trainer, adamw, constant_schedule  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s) by device_kind substring; order matters.
BF16_PEAKS = (("H100 PCIe", 756e12), ("H100", 989.4e12), ("H200", 989.4e12),
              ("H800", 989.4e12), ("A100", 312e12), ("B200", 2250e12))
TINY = {"vocab_size": 512, "d_model": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
        "head_dim": 16, "d_ff": 128, "image": None, "video": None, "audio": None}


def sizes(smoke: bool) -> dict:
    if smoke:
        return dict(att=(2, 256, 4, 2, 32), att_block=64, long_len=2048, long_block=256,
                    long_chunk=512, mfu_batch=2, mfu_len=256, steps=1, attention="xla")
    return dict(att=(2, 4096, 16, 8, 128), att_block=512, long_len=131072, long_block=1024,
                long_chunk=8192, mfu_batch=4, mfu_len=4096, steps=10, attention="cudnn")


def preset(name: str, smoke: bool, **over) -> DecoderOnlyModel:
    base = {"image": None, "video": None, "audio": None}
    if smoke:
        base = dict(TINY, **({"moe.expert_hidden": 64} if name.startswith("moe") else {}))
    return DecoderOnlyModel(model_config(name, {**base, **over}))


def packed_segments(b: int, t: int) -> np.ndarray:
    """[b, t] int32: row 0 three documents, row 1 two documents then 1/16 padding (0)."""
    seg = np.ones((b, t), np.int32)
    seg[0, t // 4:], seg[0, 3 * t // 4:] = 2, 3
    seg[1:, t // 2:] = 2
    seg[1:, t - t // 16:] = 0
    return seg


def rel_err(a: jax.Array, b: jax.Array, valid: np.ndarray) -> float:
    """||a - b|| / ||b|| over tokens where valid [B, T]."""
    m = jnp.asarray(valid)[..., None, None]
    a, b = a.astype(jnp.float32) * m, b.astype(jnp.float32) * m
    return float(jnp.linalg.norm(a - b) / jnp.maximum(jnp.linalg.norm(b), 1e-30))


def part_attention(cfg: dict, smoke: bool) -> dict:
    b, t, n, k, h = cfg["att"]
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(keys[0], (b, t, n, h), jnp.bfloat16)
    kk = jax.random.normal(keys[1], (b, t, k, h), jnp.bfloat16)
    v = jax.random.normal(keys[2], (b, t, k, h), jnp.bfloat16)
    seg_np = packed_segments(b, t)
    seg, valid = jnp.asarray(seg_np), seg_np != 0
    ct = jax.random.normal(keys[3], (b, t, n, h), jnp.float32) * jnp.asarray(valid)[..., None, None]
    block = cfg["att_block"]
    impls = {
        "reference": lambda q, kk, v: xla_attention(q.astype(jnp.float32), kk.astype(jnp.float32),
                                                    v.astype(jnp.float32),
                                                    segment_causal_mask(seg)),
        "blockwise": lambda q, kk, v: blockwise_attention(q, kk, v, seg, block_q=block,
                                                          block_kv=block),
        # --cpu_smoke: cuDNN does not exist on CPU; bf16 XLA attention takes its place.
        cfg["attention"]: (lambda q, kk, v: cudnn_attention(q, kk, v, seg)) if not smoke else
        (lambda q, kk, v: xla_attention(q, kk, v, segment_causal_mask(seg))),
    }
    outs = {}
    for name, fn in impls.items():
        f = jax.jit(lambda q, kk, v, fn=fn: jax.value_and_grad(
            lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * ct), argnums=(0, 1, 2))(q, kk, v))
        out = jax.jit(fn)(q, kk, v)
        _, grads = f(q, kk, v)
        outs[name] = (out, grads)
    ref_out, ref_grads = outs.pop("reference")
    res = {}
    for name, (out, grads) in outs.items():
        errs = {"out": rel_err(out, ref_out, valid)}
        for g_name, g, g_ref in zip(("dq", "dk", "dv"), grads, ref_grads):
            errs[g_name] = rel_err(g, g_ref, valid)
        ok = errs["out"] < 2e-2 and max(errs["dq"], errs["dk"], errs["dv"]) < 5e-2
        res[name] = dict(errs, ok=ok)
        print(f"[attention] {name:9s} vs f32 reference on packed rows [{b}, {t}], {n}/{k} heads "
              f"of {h}: rel err out {errs['out']:.2e}, dq {errs['dq']:.2e}, dk "
              f"{errs['dk']:.2e}, dv {errs['dv']:.2e} -> {'OK' if ok else 'FAIL'}", flush=True)
    names = list(outs)
    res["between"] = rel_err(outs[names[1]][0], outs[names[0]][0], valid)
    print(f"[attention] {names[1]} vs {names[0]}: rel err out {res['between']:.2e}", flush=True)
    if not all(r["ok"] for r in res.values() if isinstance(r, dict)):
        raise AssertionError(f"attention backends disagree: {res}")
    return res


def _cast_bf16(tree):
    return jax.tree.map(lambda x: x.astype(jnp.bfloat16)
                        if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def text_batch(b: int, t: int, vocab: int, docs: int = 2) -> dict[str, np.ndarray]:
    """Random tokens packed `docs` documents per row (positions restart per document)."""
    rng = np.random.default_rng(0)
    toks = rng.integers(20, vocab, (b, t)).astype(np.int32)
    seg = np.repeat(np.arange(1, docs + 1, dtype=np.int32), t // docs)
    seg = np.broadcast_to(np.pad(seg, (0, t - seg.size), mode="edge"), (b, t)).copy()
    pos = np.concatenate([np.arange(np.sum(seg[0] == d), dtype=np.int32)
                          for d in range(1, docs + 1)])
    return {"decoder_input_tokens": toks, "decoder_target_tokens": np.roll(toks, -1, 1),
            "decoder_loss_weights": np.ones((b, t), np.float32), "decoder_segment_ids": seg,
            "decoder_positions": np.broadcast_to(pos, (b, t)).copy()}


def part_long(cfg: dict, smoke: bool) -> dict:
    length = cfg["long_len"]
    model = preset("dense_1b", smoke, attention_backend="blockwise", block_q=cfg["long_block"],
                   block_kv=cfg["long_block"], loss_chunk=cfg["long_chunk"], max_len=length)
    # Parameters do not depend on the length: init on a short batch, keep bf16 copies.
    short = text_batch(1, 8, model.config.vocab_size)
    init = jax.jit(lambda key: _cast_bf16(nn.unbox(model.init(key, short))))
    params = init(jax.random.PRNGKey(0))
    batch = jax.device_put(text_batch(1, length, model.config.vocab_size, docs=1))
    fwd = jax.jit(lambda p, b: model.loss_fn(p, b, None, train=False)[1]["cross_entropy"])
    compiled = fwd.lower(params, batch).compile()
    mem = compiled.memory_analysis()
    compiled_bytes = (mem.temp_size_in_bytes + mem.argument_size_in_bytes
                      + mem.output_size_in_bytes) if mem else float("nan")
    loss = float(compiled(params, batch))  # warm-up
    times = []
    for _ in range(2):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, batch))
        times.append(time.perf_counter() - start)
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use", float("nan"))
    res = {"tokens": length, "forward_s": min(times), "loss": loss,
           "compiled_bytes": compiled_bytes, "peak_bytes_in_use": peak}
    print(f"[long] {length:,}-token forward ({model.config.num_layers} layers, blockwise "
          f"{cfg['long_block']}): {res['forward_s']:.2f} s = {length / res['forward_s']:,.0f} "
          f"tokens/s; compiled buffers {compiled_bytes / 2**30:.2f} GiB, device peak "
          f"{peak / 2**30:.2f} GiB; loss {loss:.3f}", flush=True)
    return res


def chip_peak(smoke: bool) -> tuple[float, str]:
    """(bf16 dense FLOP/s, where it came from)."""
    kind = jax.devices()[0].device_kind
    for key, peak in BF16_PEAKS:
        if key in kind:
            return peak, f"{kind}: spec {peak / 1e12:.0f} TFLOP/s"
    n = 512 if smoke else 8192
    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(5):
        out = f(a)
    out.block_until_ready()
    peak = 5 * 2 * n ** 3 / (time.perf_counter() - start)
    return peak, f"{kind}: measured {n}^3 bf16 matmul {peak / 1e12:.1f} TFLOP/s"


def part_mfu(cfg: dict, smoke: bool, name: str, peak: float, deadline: float, **over) -> dict:
    model = preset(name, smoke, attention_backend=cfg["attention"], max_len=cfg["mfu_len"],
                   **over)
    part = Partitioner((1, 1, 1), num_devices=1)
    schedule = constant_schedule(1e-4)
    trainer = Trainer(model, adamw(schedule), part, schedule, compute_dtype="bfloat16")
    host = text_batch(cfg["mfu_batch"], cfg["mfu_len"], model.config.vocab_size)
    batch = part.shard_batch(host)
    start = time.perf_counter()
    state = trainer.init_state(jax.random.key(0), batch)
    step = trainer.jit_train_step(host)
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for i in range(cfg["steps"]):
        if i and time.monotonic() > deadline:
            break
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    tokens = cfg["mfu_batch"] * cfg["mfu_len"]
    flops = model.flops_per_token(cfg["mfu_len"]) * tokens
    total, active = model.param_counts()
    res = {"preset": name, "over": over, "step_s": step_s, "tokens_per_s": tokens / step_s,
           "mfu": flops / step_s / peak, "params_total": total, "params_active": active,
           "compile_and_init_s": compile_s, "steps_timed": len(times),
           "loss": float(metrics["loss"])}
    label = name + "".join(f" {k}={v}" for k, v in over.items())
    print(f"[mfu] {label:28s} {total / 1e9:.2f}B total / {active / 1e9:.2f}B active: "
          f"{step_s * 1e3:.1f} ms/step, {res['tokens_per_s']:,.0f} tokens/s, MFU "
          f"{100 * res['mfu']:.1f}% (compile+init {compile_s:.0f} s, {len(times)} steps, "
          f"loss {res['loss']:.3f})", flush=True)
    del state
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu_smoke", action="store_true", help="tiny sizes, XLA attention, CPU")
    p.add_argument("--parts", default="attention,long,mfu")
    p.add_argument("--mfu", default="mfu_dense,mfu_moe,mfu_moe_dropless",
                   help="which train steps to time (dropless only if a minute is left)")
    p.add_argument("--budget_s", type=float, default=420, help="stop timing steps after this")
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args(argv)
    start = time.monotonic()
    cfg = sizes(args.cpu_smoke)
    dev = jax.devices()[0]
    print(f"jax {jax.__version__}, {jax.device_count()} x {dev.device_kind} ({dev.platform})"
          f"{' [cpu_smoke: tiny sizes]' if args.cpu_smoke else ''}", flush=True)
    if not args.cpu_smoke and dev.platform != "gpu":
        print("error: no GPU visible to JAX; use --cpu_smoke on CPU", file=sys.stderr)
        return 2
    parts, results, failed = args.parts.split(","), {}, []

    def guarded(name, fn, *a, **kw):
        try:
            results[name] = fn(*a, **kw)
        except Exception as e:  # report and go on: one broken part must not hide the rest
            failed.append(name)
            results[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            print(f"[{name}] FAILED: {type(e).__name__}: {str(e)[:1500]}", flush=True)
            traceback.print_exc(limit=4)

    if "attention" in parts:
        guarded("attention", part_attention, cfg, args.cpu_smoke)
    if "long" in parts:
        guarded("long", part_long, cfg, args.cpu_smoke)
    if "mfu" in parts:
        peak, source = chip_peak(args.cpu_smoke)
        results["peak_flops"], results["peak_source"] = peak, source
        print(f"[mfu] peak {source}", flush=True)
        deadline = start + args.budget_s
        runs = {"mfu_dense": ("dense_1b", {}), "mfu_moe": ("moe_1b", {}),
                "mfu_moe_dropless": ("moe_1b", {"moe.dispatch": "dropless"})}
        for key in args.mfu.split(","):
            if key == "mfu_moe_dropless" and time.monotonic() > deadline - 60:
                print("[mfu] moe dropless skipped: out of time", flush=True)
                continue
            name, over = runs[key]
            guarded(key, part_mfu, cfg, args.cpu_smoke, name, peak, deadline, **over)
        for key, target in (("mfu_dense", 0.45), ("mfu_moe", 0.35)):
            if "mfu" in results.get(key, {}):
                mfu = results[key]["mfu"]
                print(f"[mfu] {key[4:]}: {100 * mfu:.1f}% (target >= {100 * target:.0f}%: "
                      f"{'met' if mfu >= target else 'not met'})", flush=True)
    results["failed"] = failed
    results["wall_s"] = time.monotonic() - start
    print(f"done in {results['wall_s']:.0f} s; failed parts: {failed or 'none'}", flush=True)
    out = args.json or (os.path.join(os.environ["OUT"], "gpu_check.json")
                        if os.environ.get("OUT") else "")
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
