"""Long-range memory on whole books: none vs Transformer-XL vs compressive vs few-layer memory.

    TAPESTRY_DATA_DIR=../shared/data .venv/bin/python benchmarks/memory.py --out=/tmp/memory_bench
    (--cache_dir=DIR reuses a text cache of the books; else the text job builds one in OUT)

Books: $TAPESTRY_DATA_DIR/text (Pride and Prejudice and tinyshakespeare train; Alice in
Wonderland is held out whole). Every variant trains the same decoder for the same steps
on the same segments (rows continue book after book, tasks/long_books.py), so training
compute is equal up to the memory's attention; each memory variant attends the same
number of memory slots per layer on average ("equal attention cost per token"):

    none         segment T, no memory
    xl           mem T in every layer                         (Transformer-XL)
    compressive  mem T/2 + cmem T/2 at rate 2, conv compressor (Compressive Transformer)
    few_layers   mem T/2 in every layer but the top one, whose memory takes the rest of
                 xl's slots (4 layers: 160 + 3 x 32 = 4 x 64; Rae & Razavi 2020)

The held-out book is then read start to end (PG-19 protocol: memory carried) and scored:
bpb, word-level perplexity, NLL by position in the book with and without memory. Also
printed: step time and XLA temp memory of each variant's train step vs none at the same
segment length, the maximum effective context sum over layers of (mem + c * cmem), and
the context-parallel memory analysis (8-way 'context' split at 8x the length vs one
device). Writes OUT/report.md, OUT/results.json, OUT/bpb.png, OUT/nll_by_position.png.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from model.config import model_config  # noqa: E402
from model.models import DecoderOnlyModel  # noqa: E402
from model.nn.memory import empty_memory  # noqa: E402
from model.nn.memory_eval import evaluate_books  # noqa: E402
from model.partitioning import DEFAULT_LOGICAL_AXIS_RULES, Partitioner  # noqa: E402
from model.trainer import Trainer, adamw, constant_schedule  # noqa: E402
from tasks.long_books import read_books, segment_batches, split_books  # noqa: E402

EXPECTED = ("Rae et al. 2019 / Rae & Razavi 2020 expect: compressive <= xl < none in bpb; "
            "few_layers ~= xl (long memory in few layers is enough).")


def variants(t: int, layers: int) -> dict[str, dict]:
    few_top = layers * t - (layers - 1) * (t // 2)  # slots sum to xl's
    return {
        "none": {},
        "xl": {"memory.mem_len": t},
        "compressive": {"memory.mem_len": t // 2, "memory.cmem_len": t // 2,
                        "memory.compression_rate": 2, "memory.compressor": "conv"},
        "few_layers": {"memory.mem_len": few_top, "memory.layers": (-1,),
                       "memory.short_mem_len": t // 2},
    }


def build_cache(out: str) -> str:
    data = os.environ.get("TAPESTRY_DATA_DIR", "../shared/data")
    text = os.path.join(data, "text")
    inputs = [os.path.join(text, p) for p in ("gutenberg/11-0.txt", "gutenberg/1342-0.txt",
                                              "tinyshakespeare/input.txt")]
    missing = [p for p in inputs if not os.path.exists(p)]
    if missing:
        sys.exit(f"books not found: {missing}; set TAPESTRY_DATA_DIR (see README)")
    cache = os.path.join(out, "cache")
    cmd = [sys.executable, "-m", "pipelines.preprocess_text", f"--cache_dir={cache}",
           "--direct_num_workers=1"] + [f"--input={p}" for p in inputs]
    subprocess.run(cmd, check=True)
    return cache


def _memory_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)


def train_and_eval(name, overrides, base, train_books, held, args):
    model = DecoderOnlyModel(model_config("tiny", dict(base, **overrides)))
    part = Partitioner((1, 1, 1), num_devices=1)
    sched = constant_schedule(args.lr, warmup_steps=20)
    tr = Trainer(model, adamw(learning_rate=sched), part, sched)
    batches = segment_batches([b.tokens for b in train_books], args.batch, args.segment_len,
                              epochs=None)
    first = next(batches)
    state = tr.init_state(jax.random.PRNGKey(0), first)
    step = tr.jit_train_step(first)
    if hasattr(step, "_jitted"):  # memory-carrying step: memory is an input
        mem = empty_memory(model, state.params, first)
        compiled = step._jitted.lower(state, part.shard_batch(first), mem).compile()
    else:
        compiled = step.lower(state, part.shard_batch(first)).compile()
    mem_bytes = _memory_bytes(compiled)
    losses, times, batch = [], [], first
    for i in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = step(state, part.shard_batch(batch))
        loss = float(metrics["cross_entropy"])
        if i >= 2:
            times.append(time.perf_counter() - t0)
        losses.append(loss)
        batch = next(batches)
    params = jax.device_get(state.params)
    books = [held.tokens]
    res = evaluate_books(model, params, books, args.segment_len, [held.num_bytes],
                         [held.num_words])
    out = {"train_ce_last20": float(np.mean(losses[-20:])), "bpb": res.bpb,
           "word_perplexity": res.word_perplexity, "token_nll": res.token_nll,
           "step_s": float(np.median(times)), "train_step_bytes": mem_bytes,
           "effective_context": (model.config.memory.effective_context(base["num_layers"])
                                 if model.config.memory else 0)}
    edges = [0] + [int(args.segment_len * 2 ** k) for k in range(0, 12)
                   if args.segment_len * 2 ** k < len(held.tokens)] + [len(held.tokens) + 1]
    out["nll_edges"] = edges
    out["nll_by_position"] = res.nll_by_position(edges)
    out["nll_by_segment_offset"] = _by_offset(res, args.segment_len)
    out["cumulative_nll"], out["power_law"] = _cumulative(res)
    if model.config.memory is not None:
        cut = evaluate_books(model, params, books, args.segment_len, [held.num_bytes],
                             [held.num_words], memory=False)
        out["bpb_without_memory"] = cut.bpb
        out["nll_by_position_without_memory"] = cut.nll_by_position(edges)
        out["nll_by_segment_offset_without_memory"] = _by_offset(cut, args.segment_len)
        out["cumulative_nll_without_memory"], out["power_law_without_memory"] = _cumulative(cut)
    if args.needle:
        out["needle_answer_nll"] = needle_probe(model, params, args)
    print(f"{name:12s} bpb {out['bpb']:.4f}  word ppl {out['word_perplexity']:.1f}  "
          f"train CE {out['train_ce_last20']:.3f}  step {out['step_s'] * 1e3:.1f} ms  "
          f"train-step memory {mem_bytes / 2**20:.1f} MiB  effective context "
          f"{out['effective_context']}", flush=True)
    return out


def needle_probe(model, params, args) -> dict[str, float]:
    """Needle in a haystack beyond one segment (tasks/eval_long_context.py prompts over the
    held-out book): mean NLL of the needle's number after the question, the prompt read
    in segments with memory carried vs with empty memory, per context length."""
    from tasks.eval_long_context import niah_prompts  # noqa: E402
    from tasks.eval_tokens import encode_pair, tokenizer  # noqa: E402
    data = os.environ.get("TAPESTRY_DATA_DIR", "../shared/data")
    lengths = [2 * args.segment_len, 4 * args.segment_len]
    prompts = niah_prompts([os.path.join(data, "text/gutenberg/11-0.txt")],
                           context_lengths=lengths, depths=(0.1, 0.3, 0.5), trials=2)
    encode = tokenizer()
    out = {}
    for length in lengths:
        rows, spans = [], []
        for p in prompts:
            if p["meta"]["context_length"] != length:
                continue
            ctx, ans = encode_pair(encode, "x", " " + p["answer"])
            rows.append(np.asarray(p["prompt_ids"] + ans, np.int32))
            spans.append(len(ans))
        for memory in (True, False):
            if model.config.memory is None and not memory:
                continue
            res = evaluate_books(model, params, rows, args.segment_len, [1] * len(rows),
                                 [1] * len(rows), memory=memory)
            # nll[r] covers targets of the row + EOS; the answer is the span before EOS.
            nll = [float(x[-1 - k:-1].sum()) for x, k in zip(res.nll, spans)]
            out[f"L{length}{'' if memory else '_memory_off'}"] = float(np.mean(nll))
    return out


def _cumulative(res) -> tuple[list[tuple[int, float]], dict[str, float]]:
    """The eval's power-law view (model/evaluation/long_context.py): C(x), the mean NLL
    of the book's first x tokens, at ~100 log-spaced x, and its fit a*x**b + c."""
    from model.evaluation.long_context import cumulative_average, fit_power_law  # noqa: E402
    cum = cumulative_average(res.nll[0])
    xs = np.unique(np.geomspace(1, cum.size, 100).astype(int))
    return [(int(x), float(cum[x - 1])) for x in xs], fit_power_law(cum)


def _by_offset(res, t: int) -> list[float]:
    """Mean NLL by offset within a segment (where memory helps most: early offsets)."""
    nll = np.concatenate(res.nll)
    pos = np.concatenate([np.arange(x.size) for x in res.nll]) % t
    return [float(nll[pos == o].mean()) for o in range(t)]


def context_parallel_memory(args) -> dict:
    """Per-device memory (XLA analysis) of a train step: one device at length L vs the
    8-way 'context' split (ring attention) at 8L."""
    small = {"d_model": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
             "head_dim": 16, "d_ff": 128, "image": None, "video": None, "audio": None,
             "vocab_size": 512}
    rules = (("length", "context"),) + tuple(r for r in DEFAULT_LOGICAL_AXIS_RULES
                                             if r[0] != "length")
    import gin  # noqa: E402
    with gin.unlock_config():
        gin.bind_parameter("context_parallel_settings.strategy", "ring")
    out = {}
    for label, length, backend, part in (
            ("1 device", args.cp_len, "xla", Partitioner((1, 1, 1), num_devices=1)),
            ("8-way context", 8 * args.cp_len, "context",
             Partitioner((1, 1, 1, 8), logical_axis_rules=rules))):
        model = DecoderOnlyModel(model_config("tiny", dict(small, attention_backend=backend)))
        toks = np.ones((1, length), np.int32)
        batch = {"decoder_input_tokens": toks, "decoder_target_tokens": toks,
                 "decoder_segment_ids": toks, "decoder_positions": np.arange(length)[None]}
        tr = Trainer(model, adamw(learning_rate=1e-3), part)
        abstract, _ = tr.abstract_state(batch)
        compiled = tr.jit_train_step(batch).lower(abstract, part.shard_batch(batch)).compile()
        out[label] = {"length": length, "bytes_per_device": _memory_bytes(compiled)}
    ratio = out["8-way context"]["bytes_per_device"] / out["1 device"]["bytes_per_device"]
    out["ratio"] = ratio
    print(f"context parallel: 1 device L={args.cp_len}: "
          f"{out['1 device']['bytes_per_device'] / 2**20:.1f} MiB; 8-way split L={8 * args.cp_len}: "
          f"{out['8-way context']['bytes_per_device'] / 2**20:.1f} MiB per device "
          f"({ratio:.2f}x)", flush=True)
    return out


def plots(results: dict, out: str, t: int) -> None:
    import matplotlib  # noqa: E402
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: E402
    names = list(results)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, [results[n]["bpb"] for n in names], color="tab:blue")
    ax.set_ylim(min(results[n]["bpb"] for n in names) * 0.98,
                max(results[n]["bpb"] for n in names) * 1.01)
    ax.set_ylabel("held-out bpb (lower is better)")
    ax.set_title("Whole held-out book, memory carried (equal steps)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "bpb.png"), dpi=120)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for n in names:
        ax.plot(range(t), results[n]["nll_by_segment_offset"], label=n)
        if "nll_by_segment_offset_without_memory" in results[n]:
            ax.plot(range(t), results[n]["nll_by_segment_offset_without_memory"], ls=":",
                    label=f"{n} (memory off)")
    ax.set_xlabel("offset within the segment")
    ax.set_ylabel("NLL (nats)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "nll_by_position.png"), dpi=120)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for n in names:
        for key, style, tag in (("cumulative_nll", "-", ""),
                                ("cumulative_nll_without_memory", ":", " (memory off)")):
            if key in results[n]:
                x, y = zip(*results[n][key])
                ax.plot(x, y, ls=style, label=n + tag)
    ax.set_xscale("log")
    ax.set_xlabel("tokens into the held-out book")
    ax.set_ylabel("mean NLL of the first x tokens")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "power_law.png"), dpi=120)


def report(results: dict, cp: dict, args, out: str, held_name: str, train_names) -> None:
    lines = ["# Long-range memory benchmark", "",
             f"Command: `{' '.join(sys.argv)}`", "",
             f"Train books: {', '.join(train_names)}; held out whole: {held_name}. "
             f"Decoder d_model {args.d_model}, {args.layers} layers, segment {args.segment_len}, "
             f"batch {args.batch} rows, {args.steps} steps each (equal training tokens).", "",
             "| variant | held-out bpb | word ppl | bpb memory off | train CE (last 20) | "
             "step ms | train-step MiB | effective context |",
             "|---|---|---|---|---|---|---|---|"]
    base = results["none"]
    for n, r in results.items():
        off = f"{r['bpb_without_memory']:.4f}" if "bpb_without_memory" in r else "-"
        lines.append(f"| {n} | {r['bpb']:.4f} | {r['word_perplexity']:.1f} | {off} | "
                     f"{r['train_ce_last20']:.3f} | {r['step_s'] * 1e3:.1f} "
                     f"({r['step_s'] / base['step_s']:.2f}x) | "
                     f"{r['train_step_bytes'] / 2**20:.1f} "
                     f"({r['train_step_bytes'] / base['train_step_bytes']:.2f}x) | "
                     f"{r['effective_context']} |")
    lines += ["", "Step times are medians over the run's steps in this one process; on a "
              "shared, loaded machine they are noisy (XLA's memory figures are not)."]
    order = sorted(results, key=lambda n: results[n]["bpb"])
    lines += ["", f"Measured order (best first): {' < '.join(order)}.", "", f"Expected: {EXPECTED}",
              "", "![bpb](bpb.png)", "", "![nll](nll_by_position.png)", "",
              "Cumulative mean NLL over the book, C(x) = a * x^b + c fitted "
              "(model/evaluation/long_context.py):", ""]
    for n, r in results.items():
        for key, tag in (("power_law", ""), ("power_law_without_memory", ", memory off")):
            if key in r:
                f = r[key]
                lines.append(f"- {n}{tag}: a={f['a']:.3g}, b={f['b']:.3g}, c={f['c']:.4f}, "
                             f"R²={f['r2']:.3f}")
    lines += ["", "![power law](power_law.png)", "",
              "## Context parallelism (XLA memory analysis, per device)", "",
              f"- 1 device, length {cp['1 device']['length']}: "
              f"{cp['1 device']['bytes_per_device'] / 2**20:.1f} MiB",
              f"- 8-way 'context' split (ring), length {cp['8-way context']['length']}: "
              f"{cp['8-way context']['bytes_per_device'] / 2**20:.1f} MiB "
              f"({cp['ratio']:.2f}x the 1-device figure; target <= 1.3x)"]
    keys = sorted({k for r in results.values() for k in r.get("needle_answer_nll", {})})
    if keys:
        lines += ["", "## Needle in a haystack beyond one segment", "",
                  "Mean NLL (nats) of the needle's 7-digit number after the question "
                  "(tasks/eval_long_context.py prompts over the held-out book; lower = "
                  "found); memory off = same model, empty memory each segment.", "",
                  "| variant | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for n, r in results.items():
            nd = r.get("needle_answer_nll", {})
            lines.append(f"| {n} | " + " | ".join(f"{nd[k]:.2f}" if k in nd else "-"
                                                  for k in keys) + " |")
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/memory_bench")
    p.add_argument("--cache_dir", default=None, help="an existing text cache of the books")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--segment_len", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--d_model", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--cp_len", type=int, default=256)
    p.add_argument("--only", default="", help="comma-separated variants (default: all)")
    p.add_argument("--needle", type=int, default=1, help="1: needle-in-a-haystack probe")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cache = args.cache_dir or build_cache(args.out)
    books = read_books([cache])
    train_books, held_books = split_books(books)
    held = held_books[0]
    base = {"d_model": args.d_model, "num_layers": args.layers, "num_heads": 4,
            "num_kv_heads": 4, "head_dim": args.d_model // 4, "d_ff": 4 * args.d_model,
            "image": None, "video": None, "audio": None, "attention_backend": "xla"}
    print(f"train books {[(b.name, len(b.tokens)) for b in train_books]}; held out "
          f"{held.name} ({len(held.tokens)} tokens, {held.num_bytes} bytes, "
          f"{held.num_words} words)", flush=True)
    results = {}
    chosen = variants(args.segment_len, args.layers)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only.split(",") or k == "none"}
    for name, overrides in chosen.items():
        results[name] = train_and_eval(name, overrides, base, train_books, held, args)
    cp = context_parallel_memory(args)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"variants": results, "context_parallel": cp, "expected": EXPECTED}, f,
                  indent=1)
    plots(results, args.out, args.segment_len)
    report(results, cp, args, args.out, held.name, [b.name for b in train_books])


if __name__ == "__main__":
    main()
