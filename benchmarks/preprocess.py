"""Benchmark of the multimodal preprocessing job (issue 3).

    .venv/bin/python -m benchmarks.preprocess [--workers=2] [--scale=1.0] [--text_mb=20] [--only=image,audio,video,text]

Per modality (image, audio, video), on the real files under $TAPESTRY_DATA_DIR
(replicated to thousands of documents), it times the same decode/normalise/
tokenize/interleave work (`interleave.DocumentEncoder.encode`) two ways:
  * a plain Python loop in one process on one core (BLAS/OpenMP pools limited to one
    thread, as in each Beam worker), after one warm-up document;
  * the Beam job (`python -m pipelines.preprocess_multimodal`, local FnApiRunner,
    multi_processing, --workers processes), end to end: start-up, reading, writing
    the SeqIO cache (32 shards in a deterministic order), dead letters and summary
    included.
Throughput per core is reported two ways: from wall time (documents / s / worker)
and from CPU time (documents per CPU-second, all processes of the job, read with
getrusage; robust when other work shares the cores). The ratio is Beam / loop.
Each Beam job also runs on a tiny input (one document per distinct file, or one
text chunk); "steady" figures subtract that run (start-up of the runner and its
worker processes, a fixed cost of a few CPU-seconds) and are the rate a long job
approaches.

For text, on --text_mb of the Gutenberg + Shakespeare text (repeated), cut into
~4000-character chunks, one per line, it compares tokens/s of
  * SentencePiece encoding the chunks in a plain loop (one core),
  * our text job (`pipelines.preprocess_text`) and our multimodal job (`--kind=text`),
  * `seqio.scripts.cache_tasks_main` on a plain SeqIO task over the same chunks,
with the same vocabulary, runner (FnApiRunner, multi_processing) and worker count.
"""
import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import threadpoolctl

from pipelines import vocab

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = vocab.DEFAULT_VOCAB  # the jobs' own default (the packaged model)
DATA = os.environ.get("TAPESTRY_DATA_DIR", os.path.join(os.path.dirname(REPO), "shared", "data"))
RUNNER = ["--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner",
          "--direct_running_mode=multi_processing"]


def media_files(modality: str) -> list[str]:
    if modality == "image":
        return sorted(glob.glob(f"{DATA}/images/skimage/*"))
    if modality == "audio":
        with open(f"{DATA}/speech/manifest.jsonl") as f:
            return [os.path.join(DATA, "speech", json.loads(l)["audio"]) for l in f if l.strip()]
    return sorted(glob.glob(f"{DATA}/video/*"))


# Sized so that each Beam run lasts 20-40 s on 2 cores: runner start-up and each
# worker's first-call costs (numba compiling librosa's kernels, ~5 s for audio) are
# then a minor part of the end-to-end figure, as in any real-sized job.
DOCS_PER_MODALITY = {"image": 5200, "audio": 4000, "video": 240}


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_cli(module: str, args: list[str], env: dict | None = None) -> tuple[float, float]:
    """Runs `python -m module args` to completion; returns (wall seconds, CPU seconds of it and its workers)."""
    cpu0, t0 = _child_cpu(), time.time()
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    wall, cpu = time.time() - t0, _child_cpu() - cpu0
    if proc.returncode:
        raise RuntimeError(f"{module} failed:\n{proc.stderr[-3000:]}")
    return wall, cpu


def _steady(n: int, n_tiny: int, wall: float, cpu: float, tiny: tuple[float, float], workers: int) -> dict:
    dw, dc = max(wall - tiny[0], 1e-9), max(cpu - tiny[1], 1e-9)
    return {"steady_per_s_per_core": (n - n_tiny) / dw / workers, "steady_per_cpu_s": (n - n_tiny) / dc}


def bench_media(modality: str, workers: int, scale: float, tmp: str) -> dict:
    from pipelines import interleave
    from pipelines.media_config import MediaConfig
    files = media_files(modality)
    n = max(len(files), int(DOCS_PER_MODALITY[modality] * scale))
    docs = [{"id": f"{modality}-{i}", "source": "interleaved",
             "parts": [{"text": f"document {i}"}, {modality: files[i % len(files)]}]} for i in range(n)]
    manifest = os.path.join(tmp, f"{modality}.jsonl")
    with open(manifest, "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    encoder = interleave.DocumentEncoder(MediaConfig(), VOCAB)
    encoder.encode(docs[0])  # warm-up (imports, numba JIT)
    c0, t0 = time.process_time(), time.time()
    items = 0
    # One core: numpy's BLAS / OpenMP pools would otherwise spread the loop's mel
    # filterbank products over every core (2 cores' CPU for 1 core's wall).
    with threadpoolctl.threadpool_limits(1):
        for d in docs:
            items += sum(int(v) for k, v in encoder.encode(d).example["_stats"].items() if k.endswith("_items"))
    loop_wall, loop_cpu = time.time() - t0, time.process_time() - c0
    tiny_manifest = os.path.join(tmp, f"{modality}_tiny.jsonl")
    with open(tiny_manifest, "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs[:len(files)])
    flags = ["--kind=interleaved", f"--cache_dir={tmp}/cache", "--progress_every_s=0", *RUNNER,
             f"--direct_num_workers={workers}"]
    tiny = run_cli("pipelines.preprocess_multimodal", [*flags, f"--input={tiny_manifest}", f"--task=tiny_{modality}"])
    wall, cpu = run_cli("pipelines.preprocess_multimodal", [*flags, f"--input={manifest}", f"--task=bench_{modality}"])
    with open(os.path.join(tmp, "cache", f"bench_{modality}", "summary.train.json")) as f:
        summary = json.load(f)
    assert summary["examples_out"] == n, summary
    out = {"documents": n, "media_items": items,
           "loop_docs_per_s_per_core": n / loop_wall, "loop_docs_per_cpu_s": n / loop_cpu,
           "beam_wall_s": wall, "beam_cpu_s": cpu,
           "beam_docs_per_s_per_core": n / wall / workers, "beam_docs_per_cpu_s": n / cpu}
    out["ratio_wall"] = out["beam_docs_per_s_per_core"] / out["loop_docs_per_s_per_core"]
    out["ratio_cpu"] = out["beam_docs_per_cpu_s"] / out["loop_docs_per_cpu_s"]
    out.update(_steady(n, len(files), wall, cpu, tiny, workers))
    out["steady_ratio_wall"] = out["steady_per_s_per_core"] / out["loop_docs_per_s_per_core"]
    out["steady_ratio_cpu"] = out["steady_per_cpu_s"] / out["loop_docs_per_cpu_s"]
    return out


def make_text_corpus(tmp: str, megabytes: float, chunk_chars: int = 4000) -> tuple[str, str, list[str]]:
    books = [f"{DATA}/text/gutenberg/11-0.txt", f"{DATA}/text/gutenberg/1342-0.txt",
             f"{DATA}/text/tinyshakespeare/input.txt"]
    text = " ".join(open(b, encoding="utf-8").read() for b in books)
    text = " ".join(text.split())  # one line per chunk for TextLineDataSource: no newlines inside
    chunks, size, i = [], 0, 0
    while size < megabytes * 1e6:
        start = (i * chunk_chars) % max(1, len(text) - chunk_chars)
        chunk = text[start:start + chunk_chars]
        chunks.append(chunk)
        size += len(chunk.encode("utf-8"))
        i += 1
    return _write_corpus(tmp, "corpus", chunks) + (chunks,)


def _write_corpus(tmp: str, name: str, chunks: list[str]) -> tuple[str, str]:
    txt, jsonl = os.path.join(tmp, f"{name}.txt"), os.path.join(tmp, f"{name}.jsonl")
    with open(txt, "w", encoding="utf-8") as f:
        f.writelines(c + "\n" for c in chunks)
    with open(jsonl, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": f"c{i}", "text": c}) + "\n" for i, c in enumerate(chunks))
    return txt, jsonl


def _cache_tokens(task_dir: str) -> int:
    with open(os.path.join(task_dir, "stats.train.json")) as f:
        return int(json.load(f)["targets_tokens"])


def bench_text(workers: int, megabytes: float, tmp: str) -> dict:
    txt, jsonl, chunks = make_text_corpus(tmp, megabytes)
    sp = vocab.load(VOCAB)
    c0, t0 = time.process_time(), time.time()
    tokens = sum(len(ids) for ids in (sp.encode(c) for c in chunks))
    sp_wall, sp_cpu = time.time() - t0, time.process_time() - c0
    out = {"megabytes": megabytes, "chunks": len(chunks), "tokens": tokens,
           "sentencepiece_loop": {"tokens_per_s": tokens / sp_wall, "tokens_per_cpu_s": tokens / sp_cpu}}
    beam_flags = [*RUNNER, f"--direct_num_workers={workers}"]
    tiny_txt, tiny_jsonl = _write_corpus(tmp, "tiny", chunks[:1])

    def jobs(txt: str, jsonl: str, tag: str) -> dict:
        return {
            "preprocess_text": ("pipelines.preprocess_text",
                                [f"--input={jsonl}", f"--cache_dir={tmp}/tcache{tag}", "--task=bench_text", *beam_flags],
                                f"{tmp}/tcache{tag}/bench_text", None),
            "preprocess_multimodal_text": ("pipelines.preprocess_multimodal",
                                           ["--kind=text", f"--input={jsonl}", f"--cache_dir={tmp}/mcache{tag}",
                                            "--task=bench_mm_text", "--progress_every_s=0", *beam_flags],
                                           f"{tmp}/mcache{tag}/bench_mm_text", None),
            "seqio_cache_tasks_main": ("seqio.scripts.cache_tasks_main",
                                       ["--module_import=benchmarks.seqio_text_task",
                                        "--tasks=tapestry_bench_seqio_text", f"--output_cache_dir={tmp}/scache{tag}",
                                        "--pipeline_options=" + ",".join(beam_flags)],
                                       f"{tmp}/scache{tag}/tapestry_bench_seqio_text", {"TAPESTRY_BENCH_CORPUS": txt}),
        }

    tiny_jobs = jobs(tiny_txt, tiny_jsonl, "_tiny")
    for name, (module, args, task_dir, env) in jobs(txt, jsonl, "").items():
        t_module, t_args, t_dir, t_env = tiny_jobs[name]
        tiny = run_cli(t_module, t_args, t_env)
        wall, cpu = run_cli(module, args, env)
        n = _cache_tokens(task_dir)
        out[name] = {"tokens": n, "wall_s": wall, "cpu_s": cpu, "tokens_per_s": n / wall,
                     "tokens_per_s_per_core": n / wall / workers, "tokens_per_cpu_s": n / cpu,
                     "tiny_wall_s": tiny[0], "tiny_cpu_s": tiny[1],
                     **_steady(n, _cache_tokens(t_dir), wall, cpu, tiny, workers)}
        out[name]["steady_tokens_per_s"] = out[name]["steady_per_s_per_core"] * workers
    seqio = out["seqio_cache_tasks_main"]
    sp_rate = out["sentencepiece_loop"]
    for name in ("preprocess_text", "preprocess_multimodal_text"):
        j = out[name]
        j["x_seqio"] = j["tokens_per_s"] / seqio["tokens_per_s"]
        j["x_seqio_cpu"] = j["tokens_per_cpu_s"] / seqio["tokens_per_cpu_s"]
        j["steady_x_seqio_cpu"] = j["steady_per_cpu_s"] / seqio["steady_per_cpu_s"]
        j["per_core_vs_sentencepiece"] = j["tokens_per_s_per_core"] / sp_rate["tokens_per_s"]
        j["per_cpu_vs_sentencepiece"] = j["tokens_per_cpu_s"] / sp_rate["tokens_per_cpu_s"]
        j["steady_per_cpu_vs_sentencepiece"] = j["steady_per_cpu_s"] / sp_rate["tokens_per_cpu_s"]
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the number of media documents")
    parser.add_argument("--text_mb", type=float, default=20.0)
    parser.add_argument("--only", default="image,audio,video,text")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if not os.path.isdir(DATA):
        parser.error(f"real data not found at {DATA}; set TAPESTRY_DATA_DIR")
    results = {"workers": args.workers, "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        for modality in ("image", "audio", "video"):
            if modality in args.only:
                r = results[modality] = bench_media(modality, args.workers, args.scale, tmp)
                print(f"{modality:6s} {r['documents']:4d} docs, docs per core-s | loop {r['loop_docs_per_s_per_core']:.1f} "
                      f"(per CPU-s {r['loop_docs_per_cpu_s']:.1f}) | beam end-to-end {r['beam_docs_per_s_per_core']:.1f} "
                      f"(per CPU-s {r['beam_docs_per_cpu_s']:.1f}), ratio {r['ratio_wall']:.2f} wall / "
                      f"{r['ratio_cpu']:.2f} CPU | beam steady {r['steady_per_s_per_core']:.1f} "
                      f"(per CPU-s {r['steady_per_cpu_s']:.1f}), ratio {r['steady_ratio_wall']:.2f} wall / "
                      f"{r['steady_ratio_cpu']:.2f} CPU", flush=True)
        if "text" in args.only:
            r = results["text"] = bench_text(args.workers, args.text_mb, tmp)
            print(f"text   {r['megabytes']:.0f} MB, {r['tokens']} tokens | sentencepiece loop "
                  f"{r['sentencepiece_loop']['tokens_per_s'] / 1e6:.2f}M tokens/s on 1 core "
                  f"({r['sentencepiece_loop']['tokens_per_cpu_s'] / 1e6:.2f}M per CPU-s)")
            for name in ("preprocess_text", "preprocess_multimodal_text", "seqio_cache_tasks_main"):
                j = r[name]
                line = (f"  {name:27s} end-to-end {j['tokens_per_s'] / 1e6:.3f}M tokens/s ({args.workers} workers, "
                        f"wall {j['wall_s']:.1f}s; {j['tokens_per_cpu_s'] / 1e6:.3f}M per CPU-s) | steady "
                        f"{j['steady_tokens_per_s'] / 1e6:.3f}M tokens/s ({j['steady_per_cpu_s'] / 1e6:.3f}M per CPU-s)")
                if "x_seqio" in j:
                    line += (f" | vs seqio {j['x_seqio']:.1f}x wall, {j['x_seqio_cpu']:.1f}x CPU, "
                             f"{j['steady_x_seqio_cpu']:.1f}x steady CPU | vs sentencepiece per core "
                             f"{100 * j['per_core_vs_sentencepiece']:.0f}% wall, {100 * j['per_cpu_vs_sentencepiece']:.0f}% "
                             f"CPU, {100 * j['steady_per_cpu_vs_sentencepiece']:.0f}% steady CPU")
                print(line, flush=True)
    results["load_avg_end"] = os.getloadavg()
    print(f"load average start {results['load_avg_start'][0]:.1f}, end {results['load_avg_end'][0]:.1f} "
          f"on {results['cpu_count']} cores")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
