"""User paths on the training side (MODEL_DIR, metrics, eval output, reports): local or remote.

    fs.path("gs://bucket/run") / "checkpoints"     -> epath.Path('gs://bucket/run/checkpoints')
    fs.path("runs/x")                              -> epath.Path('/abs/cwd/runs/x')
    fs.write_text(fs.path(out) / "results.json", text)   # atomic
    with fs.Appender(fs.path(model_dir) / "metrics.jsonl") as a: a.write(line)

Everything is an `etils.epath.Path`, the path type orbax itself takes, so checkpoints,
metrics and reports all accept the same `gs://`, `s3://` or local MODEL_DIR. Remote
paths go through fsspec (`gcsfs` for gs://, `s3fs` for s3://): this module sets
`EPATH_USE_TF=false` (unless already set) because epath would otherwise route gs://
through `tf.io.gfile`, importing TensorFlow into model/ (DESIGN.md) and ignoring
`STORAGE_EMULATOR_HOST`. Orbax writes array data with TensorStore, which has its own
GCS client (`TENSORSTORE_GCS_HTTP_URL` points it at an emulator; README).
Never put a user path through `pathlib`/`os.path`: `pathlib.Path("gs://b/x")` is `gs:/b/x`.

Object stores cannot append: `Appender` appends to local files in place and, for
remote ones, keeps the text and rewrites the object at most every `flush_secs` and on
`flush()`/`close()`/exit.
"""
from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Union

os.environ.setdefault("EPATH_USE_TF", "false")

from etils import epath  # noqa: E402  (after the backend choice above)

PathLike = Union[str, os.PathLike]


def is_remote(path: PathLike) -> bool:
    return "://" in os.fspath(path)


def path(p: PathLike) -> epath.Path:
    """An epath.Path; local paths are made absolute (orbax and other processes need that)."""
    text = os.fspath(p)
    return epath.Path(text if is_remote(text) else os.path.abspath(text))


def join(base: PathLike, *parts: str) -> str:
    return os.fspath(path(base).joinpath(*parts))


def exists(p: PathLike) -> bool:
    return path(p).exists()


def makedirs(p: PathLike) -> epath.Path:
    """Creates a directory and its parents (a no-op on object stores); returns it."""
    d = path(p)
    d.mkdir(parents=True, exist_ok=True)
    return d


def read_text(p: PathLike) -> str:
    return path(p).read_text(encoding="utf-8")


def read_bytes(p: PathLike) -> bytes:
    return path(p).read_bytes()


def write_bytes(p: PathLike, data: bytes) -> epath.Path:
    """Writes a whole file atomically: local via a temp file + rename (a killed writer
    leaves the old file), remote as one object upload (atomic on GCS/S3)."""
    target = path(p)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(target):
        target.write_bytes(data)
        return target
    tmp = target.parent / f".{target.name}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return target


def write_text(p: PathLike, text: str) -> epath.Path:
    return write_bytes(p, text.encode("utf-8"))


def rename(src: PathLike, dst: PathLike) -> None:
    """Moves a file or directory. Object stores have no rename (nor directories):
    there it is a copy then a delete, not atomic."""
    s, d = path(src), path(dst)
    if not is_remote(s):
        d.parent.mkdir(parents=True, exist_ok=True)
        s.rename(d)
    elif s.is_dir():
        _copy_tree(s, d)
        s.rmtree()
    else:
        d.write_bytes(s.read_bytes())
        s.unlink()


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
    key = os.fspath(src).split("://", 1)[-1]  # fsspec's walk yields roots without the scheme
    for root, _, files in src.walk():
        rel_root = os.fspath(root).split("://", 1)[-1][len(key):].strip("/")
        for name in files:
            rel = f"{rel_root}/{name}" if rel_root else name
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).write_bytes((src / rel).read_bytes())


class Appender:
    """Appends text to a file that survives the process (metrics, sample logs).

    Local: each `write` is appended and flushed (`fsync=True`: also synced), so a killed
    run keeps every line. Remote: the object is read once, kept in memory, and rewritten
    whole when `flush_secs` have passed since the last upload, on `flush()`/`close()`, and
    when the process exits; a killed run loses at most `flush_secs` of lines.
    """

    def __init__(self, p: PathLike, flush_secs: float = 10.0, fsync: bool = False):
        self.path = path(p)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._file = None
        self._state = None
        if is_remote(self.path):
            text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
            # [text, dirty, last upload]: shared with the exit hook, which must not hold self.
            self._state = [text, False, time.monotonic()]
            self._flush_secs = flush_secs
            self._finalizer = weakref.finalize(self, _upload, self.path, self._state, self._lock)
        else:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - long-lived

    def write(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text)
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())
            return
        with self._lock:
            self._state[0] += text
            self._state[1] = True
            due = time.monotonic() - self._state[2] >= self._flush_secs
        if due:
            self.flush()

    def replace(self, text: str) -> None:
        """Replaces the whole content (e.g. to drop a torn last line)."""
        if self._file is not None:
            self._file.close()
            write_text(self.path, text)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            return
        with self._lock:
            self._state[0], self._state[1] = text, True
        self.flush()

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()
        else:
            _upload(self.path, self._state, self._lock)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        else:
            self._finalizer()  # uploads pending text once, and detaches the exit hook

    def __enter__(self) -> "Appender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _upload(target: epath.Path, state: list, lock: threading.Lock) -> None:
    with lock:
        if not state[1]:
            return
        text, state[1], state[2] = state[0], False, time.monotonic()
    target.write_text(text, encoding="utf-8")
