"""End to end on "remote" storage, with workers that see only the installed wheel.

A local GCS (gcp-storage-emulator on loopback, tests/gcs_emulator.py) holds the inputs.
`pipelines.preprocess_multimodal` is submitted with `PortableRunner` to Beam's Python job
service and runs in an external SDK worker pool; every process (launcher, job service,
workers, trainer, eval) starts in a scratch directory with PYTHONPATH = the installed
wheel alone (tests/wheel_env.py): the checkout is not importable there, so the packaged
vocabulary and gin files are the ones used. The job reads gs://BUCKET/in and writes the
SeqIO cache to gs://BUCKET/cache; `model.train` trains on it (SeqIO's input pipeline) and
writes checkpoints and metrics to gs://BUCKET/model; `model.eval` scores a text file
read from the bucket and writes its report to gs://BUCKET/report.

One library cannot be pointed at the emulator: TensorFlow's GCS file system (used by
tf.data, hence SeqIO) has storage.googleapis.com compiled in. The test therefore copies
the cache out of the bucket (through pipelines/fs.py) and trains from that copy; on real
GCS, CACHE_DIR=gs://... is read directly (README, "Remote storage").
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from model import fs as mfs
from pipelines import fs
from tests import gcs_emulator, wheel_env

pytestmark = pytest.mark.slow

BUCKET = "tapestry-portable"
ROOT = f"gs://{BUCKET}"
CAPTIONS = [("red", "square"), ("blue", "circle"), ("green", "square")]
SMALL_MODEL = [  # one dense layer, image encoder only: compiles in seconds
    "--gin_bindings=model_config.preset = 'tiny'",
    "--gin_bindings=model_config.overrides = {'num_layers': 1, 'video': None, 'audio': None}",
    "--gin_bindings=multimodal.get_dataset.max_videos = 0",
    "--gin_bindings=multimodal.get_dataset.max_audio = 0",
    "--gin.MIXTURE_OR_TASK_NAME='tapestry_mm_interleaved'",
    "--gin.TASK_FEATURE_LENGTHS={'targets': 64}", "--gin.BATCH_SIZE=2",
]


def write_inputs(root: str) -> None:
    """Three captioned images (PNG) and one text-only document, as interleaved JSONL,
    plus a text file for the eval."""
    from PIL import Image, ImageDraw
    docs = []
    for i, (colour, shape) in enumerate(CAPTIONS):
        img = Image.new("RGB", (48, 48), "white")
        draw = ImageDraw.Draw(img)
        (draw.rectangle if shape == "square" else draw.ellipse)([10, 10, 38, 38], fill=colour)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        fs.write_bytes(f"{root}/img_{i}.png", buf.getvalue())
        docs.append({"id": f"cap{i}", "parts": [{"image": f"img_{i}.png"},
                                                 {"text": f"a {colour} {shape}", "answer": True}]})
    docs.append({"id": "doc0", "parts": [{"text": "It was a bright cold day in April, and the "
                                                  "clocks were striking thirteen."}]})
    fs.write_text(f"{root}/docs.jsonl", "".join(json.dumps(d) + "\n" for d in docs))
    fs.write_text(f"{root}/book.txt", "Call me Ishmael. Some years ago, never mind how long "
                                      "precisely, having little money in my purse.\n" * 20)


def start(args: list[str], cwd: str, env: dict[str, str], port: int, what: str) -> subprocess.Popen:
    log = open(os.path.join(cwd, f"{what}.log"), "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    gcs_emulator.wait_for_port(port, proc, what, timeout_s=120)
    return proc


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def test_portable_runner_cache_train_eval_on_gcs(tmp_path):
    site, _ = wheel_env.installed_wheel()
    work = str(tmp_path / "work")
    os.makedirs(work)
    with gcs_emulator.running(BUCKET) as gcs:
        env = wheel_env.isolated_env(site, gcs)
        write_inputs(f"{ROOT}/in")

        # Beam: job service + external worker pool, both outside the checkout.
        job_port, pool_port = gcs_emulator.free_port(), gcs_emulator.free_port()
        services = [
            start(["-m", "apache_beam.runners.portability.local_job_service_main",
                   f"--port={job_port}"], work, env, job_port, "job_service"),
            start(["-m", "apache_beam.runners.worker.worker_pool_main",
                   f"--service_port={pool_port}"], work, env, pool_port, "worker_pool")]
        try:
            out = wheel_env.run(
                ["-m", "pipelines.preprocess_multimodal", "--kind=interleaved",
                 f"--input={ROOT}/in/docs.jsonl", f"--cache_dir={ROOT}/cache",
                 "--image_size=32", "--image_patch_size=8",
                 "--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
                 "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}"],
                work, env, timeout=600)
        finally:
            stop(services)
        with open(os.path.join(work, "worker_pool.log")) as f:
            assert "Starting worker" in f.read(), "the job did not run in the worker pool"
        assert "4 documents in, 4 examples out, 0 dead-lettered" in out, out[-3000:]
        task_dir = f"{ROOT}/cache/tapestry_mm_interleaved"
        summary = json.loads(fs.read_text(f"{task_dir}/summary.train.json"))
        assert (summary["documents_in"], summary["examples_out"]) == (4, 4)
        assert fs.exists(f"{task_dir}/COMPLETED") and fs.glob(f"{task_dir}/train.tfrecord-*")
        assert json.loads(fs.read_text(f"{task_dir}/info.train.json"))

        # SeqIO -> model.train: checkpoints and metrics in the bucket.
        cache_copy = os.path.join(work, "cache")  # TF's GCS client cannot reach the emulator
        fs.copy_tree(f"{ROOT}/cache", cache_copy)
        wheel_env.run(["-m", "model.train", "--gin_file=gin/experiments/demo.gin",
                       f"--gin.MODEL_DIR={ROOT}/model", f"--gin.CACHE_DIR={cache_copy}",
                       "--gin.TRAIN_STEPS=2", "--gin_bindings=train.eval_every = 0",
                       "--gin_bindings=train.log_every = 1",
                       "--gin_bindings=warmup_cosine_schedule.warmup_steps = 1",
                       "--gin_bindings=train.peak_flops_per_device = 1e9", *SMALL_MODEL],
                      work, env, timeout=900)
        model_dir = mfs.path(f"{ROOT}/model")
        assert (model_dir / "checkpoints" / "2" / "state").exists()
        rows = [json.loads(l) for l in mfs.read_text(model_dir / "metrics.jsonl").splitlines()]
        assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2]
        assert all(r["loss"] > 0 for r in rows)
        assert (model_dir / "config.gin").exists()
        assert fs.glob(f"{ROOT}/model/tensorboard/train/events.out.tfevents.*")

        # model.eval: restores from the bucket, reads a text file there, writes the report.
        wheel_env.run(["-m", "model.eval", "--gin_file=gin/experiments/demo.gin",
                       "--gin_file=gin/runs/eval.gin", f"--gin.CHECKPOINT_PATH={ROOT}/model",
                       f"--gin.EVAL_OUTPUT_DIR={ROOT}/report", f"--gin.CACHE_DIR={cache_copy}",
                       "--gin_bindings=evaluate.suites = [@TextLMSuite()]",
                       "--gin_bindings=TextLMSuite.inputs_fn = @eval_inputs.text_files",
                       f"--gin_bindings=eval_inputs.text_files.paths = ['{ROOT}/in/book.txt']",
                       "--gin_bindings=TextLMSuite.compare_untrained = False",
                       "--gin_bindings=TextLMSuite.position_curve = False",
                       "--gin_bindings=evaluate.batch_size = 4", *SMALL_MODEL[:2]],
                      work, env, timeout=900)
        report = mfs.path(f"{ROOT}/report")
        results = json.loads(mfs.read_text(report / "results.json"))
        assert results["meta"]["checkpoint_step"] == 2
        assert results["tasks"]["text_lm"]["metrics"]["bits_per_byte"] > 0
        assert "Training curves" in mfs.read_text(report / "report.md")  # from gs:// metrics
        assert (report / "report.html").exists() and (report / "samples_text_lm.jsonl").exists()

    # Nothing "remote" was written locally (pathlib would have made a gs: directory).
    assert sorted(os.listdir(work)) == ["cache", "job_service.log", "worker_pool.log"]
