"""A local GCS for tests: `gcp-storage-emulator` on loopback, and the environment that
points every client we use at it.

    with gcs_emulator.running("bkt") as env:   # env: variables for this process and children
        ...gs://bkt/... 

- google-cloud-storage (Beam's GcsIO, tensorboardX) and gcsfs (etils.epath, hence orbax's
  own file operations and model/fs.py): `STORAGE_EMULATOR_HOST`.
- TensorStore (orbax's array data): `TENSORSTORE_GCS_HTTP_URL`, plus a fixed test token
  (`GOOGLE_AUTH_TOKEN_FOR_TESTING`) so it does not look for credentials.
- gcp-storage-emulator 2026.7.19 sends no `x-goog-generation` header with object
  downloads; TensorStore's OCDBT reads its manifest's generation from it ("Malformed
  StorageGeneration" otherwise), so `_MAIN` adds the header (as real GCS sends it).
- TensorFlow's own GCS file system (tf.io.gfile, tf.data, hence SeqIO) has its endpoint
  compiled in (storage.googleapis.com): it cannot be pointed at an emulator (README).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from typing import Iterator


_MAIN = '''
import sys
from gcp_storage_emulator.handlers import objects
_download = objects.download
def download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        response["x-goog-generation"] = str(obj["generation"])
        response["x-goog-metageneration"] = str(obj["metageneration"])
    except Exception:  # missing object: the handler answers 404
        pass
    return _download(request, response, storage, *args, **kwargs)
objects.download = download  # before the server module builds its routing table
from gcp_storage_emulator.__main__ import main
sys.argv[0] = "gcp-storage-emulator"
sys.exit(main())
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout_s}s")


def client_env(port: int) -> dict[str, str]:
    url = f"http://127.0.0.1:{port}"
    return {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "GOOGLE_CLOUD_PROJECT": "test"}


@contextlib.contextmanager
def running(bucket: str) -> Iterator[dict[str, str]]:
    """Starts the emulator with `bucket`, sets the client variables in os.environ for the
    duration (restored after), and yields them (for child processes)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _MAIN, "start", "--host=127.0.0.1",
         f"--port={port}", "--in-memory", f"--default-bucket={bucket}", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = client_env(port)
    saved = {k: os.environ.get(k) for k in env}
    try:
        wait_for_port(port, proc, "gcp-storage-emulator")
        os.environ.update(env)
        _forget_clients()
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _forget_clients()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _forget_clients() -> None:
    """gcsfs caches file systems (with their endpoint) per process: drop them."""
    if "gcsfs" in sys.modules:
        sys.modules["gcsfs"].GCSFileSystem.clear_instance_cache()
