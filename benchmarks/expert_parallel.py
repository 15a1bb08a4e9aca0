"""Expert parallelism benchmark (issue 11): experts replicated vs expert-parallel.

    nice .venv/bin/python benchmarks/expert_parallel.py               # ~3 min on 2 cores
    nice .venv/bin/python benchmarks/expert_parallel.py --mesh=2,4,1 --dispatch=dropless

One MoE train step (the Trainer's jitted step: value_and_grad + AdamW, donated state),
same model, same global batch, same mesh of 8 fake CPU devices, two placements:
  replicated: logical rule ('expert', None): every device holds all E experts; XLA
              places the dispatch (batch rows split over ('data', 'expert')).
  expert-parallel: the default rules: E/n experts per device, tokens exchanged by
              explicit all-to-all (model/moe_parallel.py).
Each variant's compiled HLO is summarised (its all-to-all and all-gather ops) and
its step timed as the median of --steps steps, the two interleaved so that drift in
the machine's load affects both alike. Prints step times, the ratio replicated /
expert-parallel, the parameter bytes per device, and the load average.
Fake CPU devices share this machine's cores: the ratio measures the work and
memory traffic each placement does, not interconnect speed.

Measured 2026-12-01 on this 2-core machine shared with other jobs (load average 20-30),
`nice .venv/bin/python benchmarks/expert_parallel.py --steps=5` (mesh (1,8,1), capacity,
E=16, batch 16 x 256): replicated 15.52 s/step (best 12.27; XLA's own plan has 8
all-to-all and 14 all-gather ops), expert-parallel 8.40 s/step (best 7.41; 8 all-to-all,
2 all-gather ops, none of expert weights): 1.85x; parameters on a device 52 -> 10 MiB.
`... --steps=3 --dispatch=dropless --length=64` (load 20-50): replicated 65.58 s/step,
expert-parallel 9.19 s/step: 7.14x (replicated, every device sorts the whole batch and
runs ragged_dot, which CPU lowers to a dense masked product, over all 16 experts).
"""
from __future__ import annotations

import os
import sys

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from model.config import model_config  # noqa: E402
from model.models import DecoderOnlyModel  # noqa: E402
from model.partitioning import DEFAULT_LOGICAL_AXIS_RULES, Partitioner  # noqa: E402
from model.trainer import Trainer, adamw, constant_schedule  # noqa: E402

REPLICATED_RULES = tuple(r for r in DEFAULT_LOGICAL_AXIS_RULES if r[0] != "expert") + (
    ("expert", None),)


def text_batch(batch: int, length: int, vocab: int) -> dict[str, np.ndarray]:
    toks = np.random.default_rng(0).integers(20, vocab, (batch, length)).astype(np.int32)
    return {"decoder_input_tokens": toks, "decoder_target_tokens": np.roll(toks, -1, 1),
            "decoder_loss_weights": np.ones((batch, length), np.float32),
            "decoder_segment_ids": np.ones((batch, length), np.int32),
            "decoder_positions": np.tile(np.arange(length, dtype=np.int32), (batch, 1))}


def prepare(name: str, model: DecoderOnlyModel, mesh: tuple[int, ...], rules, batch):
    """Compiles one variant; returns a function running one step -> wall seconds."""
    part = Partitioner(mesh, logical_axis_rules=rules)
    schedule = constant_schedule(1e-3)
    tr = Trainer(model, adamw(schedule), part, schedule)
    abstract, _ = tr.abstract_state(batch)
    t = time.perf_counter()
    step = tr.jit_train_step(batch).lower(abstract, batch).compile()
    compile_s, hlo = time.perf_counter() - t, step.as_text()
    state = tr.init_state(jax.random.key(0), part.shard_batch(batch))
    device_batch = part.shard_batch(batch)
    dev0 = jax.devices()[0]
    param_bytes = sum(s.data.nbytes for x in jax.tree.leaves(state.params)
                      for s in x.addressable_shards if s.device == dev0)
    print(f"{name:16s} all-to-all ops {hlo.count(' all-to-all('):3d}, "
          f"all-gather ops {hlo.count(' all-gather('):3d}, "
          f"params on device 0 {param_bytes / 2**20:.1f} MiB, compile {compile_s:.0f} s",
          flush=True)
    holder = {"state": state}

    def run() -> float:
        t = time.perf_counter()
        holder["state"], metrics = step(holder["state"], device_batch)
        metrics["loss"].block_until_ready()
        return time.perf_counter() - t

    run()  # warm-up
    return run, hlo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mesh", default="1,8,1", help="data,expert,model sizes (8 devices)")
    p.add_argument("--dispatch", default="capacity", choices=("capacity", "dropless"))
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--num_experts", type=int, default=16)
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--expert_hidden", type=int, default=512)
    args = p.parse_args()
    mesh = tuple(int(s) for s in args.mesh.split(","))
    model = DecoderOnlyModel(model_config("tiny_moe", {
        "d_model": args.d_model, "num_layers": 2, "num_heads": 4, "num_kv_heads": 4,
        "head_dim": 64, "d_ff": 4 * args.d_model, "vocab_size": 1024, "max_len": args.length,
        "image": None, "video": None, "audio": None, "layer_pattern": "m",
        "attention_backend": "xla", "moe.num_experts": args.num_experts, "moe.top_k": 2,
        "moe.expert_hidden": args.expert_hidden, "moe.dispatch": args.dispatch}))
    batch = text_batch(args.batch, args.length, 1024)
    print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} devices, "
          f"mesh {mesh}, {args.dispatch}, E={args.num_experts}, batch {args.batch} x "
          f"{args.length}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus",
          flush=True)
    rep, _ = prepare("replicated", model, mesh, REPLICATED_RULES, batch)
    ep, ep_hlo = prepare("expert-parallel", model, mesh, DEFAULT_LOGICAL_AXIS_RULES, batch)
    if " all-to-all(" not in ep_hlo:
        raise SystemExit("expert-parallel step has no all-to-all: is the expert axis > 1?")
    times: dict[str, list[float]] = {"replicated": [], "expert-parallel": []}
    for _ in range(args.steps):
        times["replicated"].append(rep())
        times["expert-parallel"].append(ep())
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:16s} {med[k]:.3f} s/step (best {min(v):.3f})")
    print(f"replicated / expert-parallel step time: {med['replicated'] / med['expert-parallel']:.2f}x"
          f"  (load average at the end {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
