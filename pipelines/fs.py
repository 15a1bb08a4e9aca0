"""User paths in pipelines/ and tasks/: local files and any URI Beam's FileSystems serves.

    fs.read_text("gs://bucket/mmlu/dev/anatomy_dev.csv")
    fs.join("gs://bucket/cache", "text", "COMPLETED")  -> "gs://bucket/cache/text/COMPLETED"
    fs.glob("s3://bucket/docs/*.jsonl")                -> sorted URIs

A path with a scheme (`gs://`, `s3://`, `hdfs://`, ...) goes through
`apache_beam.io.filesystems.FileSystems` (imported on first use, so tasks/ stays light);
a plain path is read with Python's own file calls. Callers never put a user path
through `pathlib` or `os.path`: `pathlib.Path("gs://b/x")` is `gs:/b/x`, and a "remote"
run silently writes local files.

Which URIs work is up to the Beam installation: `gs://` needs `google-cloud-storage`
(in requirements.txt; it honours `STORAGE_EMULATOR_HOST`), `s3://` needs `boto3`
(`apache-beam[aws]`), `hdfs://` needs `hdfs`.
"""
from __future__ import annotations

import glob as _glob
import os
import posixpath


def has_scheme(path: str) -> bool:
    """True for URIs (`gs://b/x`), False for local paths."""
    return "://" in str(path)


def _filesystems():
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
    return FileSystems


def join(base: str, *parts: str) -> str:
    """`base/part/...` with '/' for URIs and the OS separator for local paths."""
    base = str(base)
    if has_scheme(base):
        return posixpath.join(base, *(p.strip("/") for p in parts))
    return os.path.join(base, *parts)


def basename(path: str) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def dirname(path: str) -> str:
    """The parent of `path` ('gs://b/x/y' -> 'gs://b/x'; a local path is made absolute)."""
    path = str(path)
    if has_scheme(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"
    return os.path.dirname(os.path.abspath(path))


def absolute(path: str) -> str:
    """Local paths made absolute (they may travel to other processes); URIs as they are."""
    return str(path) if has_scheme(path) else os.path.abspath(path)


def exists(path: str) -> bool:
    if has_scheme(path):
        return _filesystems().exists(path)
    return os.path.exists(path)


def is_file(path: str) -> bool:
    """An existing file (for URIs: an existing object)."""
    if has_scheme(path):
        return _filesystems().exists(path) and not str(path).endswith("/")
    return os.path.isfile(path)


def is_dir(path: str) -> bool:
    """A local directory, or a URI prefix with at least one object under it."""
    if has_scheme(path):
        return bool(glob(join(path, "**")))
    return os.path.isdir(path)


def read_bytes(path: str) -> bytes:
    """All bytes of `path`; FileNotFoundError naming it when it does not exist."""
    if has_scheme(path):
        fs = _filesystems()
        if not fs.exists(path):
            raise FileNotFoundError(f"no such file: {path}")
        with fs.open(path, compression_type="uncompressed") as f:
            return f.read()
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Writes `path` whole (local: a temp file renamed over it, so readers never see half)."""
    if has_scheme(path):  # one object upload: atomic on object stores
        with _filesystems().create(path, compression_type="uncompressed") as f:
            f.write(data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def makedirs(path: str) -> None:
    """Creates a local directory (and parents); object stores need none."""
    if not has_scheme(path):
        os.makedirs(path, exist_ok=True)


def glob(pattern: str) -> list[str]:
    """Sorted files matching `pattern` (`*`, `?`, `**`); [] when nothing matches."""
    if has_scheme(pattern):
        result = _filesystems().match([pattern])[0]
        return sorted(m.path for m in result.metadata_list)
    return sorted(p for p in _glob.glob(pattern, recursive=True) if os.path.isfile(p))


def delete(paths: list[str]) -> None:
    """Deletes files (and, for URIs, prefixes); missing ones are ignored."""
    present = [p for p in paths if exists(p)]
    if present:
        remote = [p for p in present if has_scheme(p)]
        if remote:
            _filesystems().delete(remote)
        for p in present:
            if not has_scheme(p):
                if os.path.isdir(p):
                    import shutil  # pylint: disable=g-import-not-at-top
                    shutil.rmtree(p)
                else:
                    os.remove(p)


def copy_tree(src: str, dst: str) -> list[str]:
    """Copies every file under `src` to the same relative path under `dst`; returns them.

    For moving data between a bucket and a local directory (e.g. giving a reader that
    cannot reach a bucket a local copy of it)."""
    src = str(src).rstrip("/")
    files = glob(join(src, "**")) if has_scheme(src) else glob(os.path.join(src, "**"))
    out = []
    for f in files:
        rel = f[len(src):].lstrip("/")
        target = join(dst, *rel.split("/"))
        write_bytes(target, read_bytes(f))
        out.append(target)
    return out
