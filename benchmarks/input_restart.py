"""Benchmark: time to the first batch when training input restarts late vs early (issue 11).

    .venv/bin/python -m benchmarks.input_restart [--tokens_m=8] [--steps=10,5000] [--batch=2] [--length=512]
                                                 [--words=50,1500]  (document lengths; short ones: --words=5,60)

Builds a text cache from generated text with the real job (`pipelines.preprocess_text`,
16 shards; reused from --work_dir when already there), then, for the trainer's text
input (`tasks.seqio_input.get_dataset`, packed rows of --length, this host's --batch
rows per step):
  * runs the resumable input uninterrupted to the last step, keeping `get_state()` at
    each restart step (this also times its steady throughput, batches/s);
  * restarts from the saved state at each step: seconds from `get_dataset(..., state=)`
    to the first batch (median of --repeats), checked equal to the uninterrupted batch;
  * for contrast, the old resume (SeqIO's pipeline, `.skip(start_batch)`: replay) at
    the same steps, and the resumable input without a state (replay fallback);
  * SeqIO's pipeline steady throughput over as many batches, in the same run.
Prints the ratios: restart(last) / restart(first) (target <= 1.5x) and our steady
throughput / SeqIO's (target >= 0.8x). Wall-clock on a shared machine: rerun if noisy.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "tapestry_bench_restart"
RUNNER = ["--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner",
          "--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def generate_text(path: str, tokens_m: float, words: tuple[int, int], seed: int = 0) -> None:
    """JSONL documents of pseudo-words (about 1 token per 1.5 characters with our vocabulary)."""
    rng = np.random.default_rng(seed)
    syllables = np.array([c + v for c in "bcdfghklmnprstvz" for v in ("a", "e", "i", "o", "u", "ai", "ou")])
    chars_needed, written, doc = int(tokens_m * 1e6 * 1.5), 0, 0
    with open(path, "w") as f:
        while written < chars_needed:
            n_words = int(rng.integers(*words))
            parts = rng.choice(syllables, size=(n_words, 3))
            lengths = rng.integers(1, 4, n_words)
            text = " ".join("".join(p[:k]) for p, k in zip(parts, lengths)) + "."
            f.write(json.dumps({"id": f"g{doc}", "text": text}) + "\n")
            written, doc = written + len(text), doc + 1


def build_cache(work_dir: str, tokens_m: float, words: tuple[int, int]) -> str:
    cache_dir = os.path.join(work_dir, f"cache_{tokens_m:g}M_{words[0]}-{words[1]}w")
    if os.path.exists(os.path.join(cache_dir, TASK, "COMPLETED")):
        print(f"reusing {cache_dir}/{TASK}")
        return cache_dir
    corpus = os.path.join(work_dir, "generated.jsonl")
    generate_text(corpus, tokens_m, words)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "pipelines.preprocess_text", f"--input={corpus}",
                           f"--cache_dir={cache_dir}", f"--task={TASK}", "--num_shards=16", *RUNNER],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode:
        raise RuntimeError(f"preprocess_text failed:\n{proc.stderr[-3000:]}")
    print(f"built {cache_dir}/{TASK} in {time.time() - t0:.0f}s")
    return cache_dir


def first_batch_seconds(make) -> tuple[float, dict]:
    t0 = time.perf_counter()
    batch = next(make())
    return time.perf_counter() - t0, batch


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "tapestry_input_restart"))
    parser.add_argument("--tokens_m", type=float, default=8.0, help="cache size, millions of tokens")
    parser.add_argument("--steps", default="10,5000", help="restart steps, comma-separated (first and last compared)")
    parser.add_argument("--batch", type=int, default=2, help="rows per step on this host")
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--words", default="50,1500", help="document length range in words (short: 5,60)")
    args = parser.parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    words = tuple(int(w) for w in args.words.split(","))
    cache_dir = build_cache(args.work_dir, args.tokens_m, words)

    import seqio  # pylint: disable=import-outside-toplevel  (after the build: keeps its import out of the job)
    from tasks import seqio_input, text  # pylint: disable=import-outside-toplevel
    text.register_text_task(TASK)
    seqio.add_global_cache_dirs([cache_dir])
    cfg = types.SimpleNamespace(mixture_or_task_name=TASK, task_feature_lengths={"targets": args.length},
                                split="train", batch_size=args.batch, shuffle=True, seed=0, use_cached=True,
                                pack=True)
    steps = [int(s) for s in args.steps.split(",")]
    last = max(steps)
    with open(os.path.join(cache_dir, TASK, "stats.train.json")) as f:
        stats = json.load(f)
    print(f"cache: {stats['examples']} examples of {words[0]}-{words[1]} words, "
          f"{stats.get('targets_tokens', 0) / 1e6:.1f}M tokens; "
          f"{last} steps x {args.batch} x {args.length} = {last * args.batch * args.length / 1e6:.1f}M tokens")

    # Uninterrupted resumable run: states at the restart steps, the batch after each, throughput.
    it = seqio_input.get_dataset(cfg)
    states, expected = {}, {}
    t0 = time.perf_counter()
    for step in range(1, last + 2):
        batch = next(it)
        if step - 1 in states:
            expected[step - 1] = batch
        if step in steps:
            states[step] = json.loads(json.dumps(it.get_state()))
    ours_rate = (last + 1) / (time.perf_counter() - t0)
    state_bytes = max(len(json.dumps(s)) for s in states.values())

    warm = seqio_input.get_dataset(cfg, resumable_input_enabled=False)  # SeqIO's one-time start-up, untimed
    next(warm)
    del warm
    results = {}
    for step in steps:
        times = []
        for _ in range(args.repeats):
            sec, batch = first_batch_seconds(lambda: seqio_input.get_dataset(cfg, start_batch=step, state=states[step]))
            assert all(np.array_equal(batch[k], expected[step][k]) for k in batch), f"restart at {step} differs"
            times.append(sec)
        results[("state", step)] = statistics.median(times)
        results[("replay", step)] = first_batch_seconds(
            lambda: seqio_input.get_dataset(cfg, start_batch=step))[0]
        results[("seqio", step)] = first_batch_seconds(
            lambda: seqio_input.get_dataset(cfg, start_batch=step, resumable_input_enabled=False))[0]

    legacy = seqio_input.get_dataset(cfg, resumable_input_enabled=False)
    next(legacy)
    t0 = time.perf_counter()
    for _ in range(last):
        next(legacy)
    seqio_rate = last / (time.perf_counter() - t0)

    print(f"\nseconds to the first batch after a restart (state: median of {args.repeats}):")
    print(f"{'step':>8} {'from state':>11} {'replay (no state)':>18} {'SeqIO .skip (old)':>18}")
    for step in steps:
        print(f"{step:>8} {results[('state', step)]:>11.3f} {results[('replay', step)]:>18.3f} "
              f"{results[('seqio', step)]:>18.3f}")
    first = min(steps)
    ratio = results[("state", last)] / results[("state", first)]
    print(f"\nrestart at step {last} / step {first}, from state: {ratio:.2f}x (target <= 1.5x); "
          f"old SeqIO replay: {results[('seqio', last)] / results[('seqio', first)]:.1f}x")
    print(f"steady throughput: resumable {ours_rate:.0f} batches/s, SeqIO pipeline {seqio_rate:.0f} batches/s "
          f"-> {ours_rate / seqio_rate:.2f}x (target >= 0.8x); largest state {state_bytes} bytes")


if __name__ == "__main__":
    main()
