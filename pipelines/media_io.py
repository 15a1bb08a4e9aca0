"""Reading media bytes from local paths or any URI Beam's FileSystems can open.

Local paths are read with plain `open` (fast, no Beam import); anything with a
scheme (gs://, s3://, hdfs://, ...) goes through `apache_beam.io.filesystems`.
Errors become `BadInput` with a reason, never a traceback from deep inside I/O.
"""
import os
import posixpath

from pipelines.media_config import BadInput


def has_scheme(path: str) -> bool:
    return "://" in path


def resolve(path: str, base_dir: str) -> str:
    """`path` relative to `base_dir` (a manifest's directory) unless absolute or a URI."""
    if has_scheme(path) or os.path.isabs(path):
        return path
    if has_scheme(base_dir):
        return posixpath.join(base_dir, path)
    return os.path.normpath(os.path.join(base_dir, path))


def dirname(path: str) -> str:
    return posixpath.dirname(path) if has_scheme(path) else os.path.dirname(os.path.abspath(path))


def read_bytes(uri: str, max_bytes: int) -> bytes:
    """All bytes of `uri`; BadInput on missing, unreadable, empty or oversize files."""
    if not has_scheme(uri):
        try:
            size = os.path.getsize(uri)
        except FileNotFoundError:
            raise BadInput("missing_file", uri) from None
        except OSError as e:
            raise BadInput("unreadable", f"{uri}: {e}") from None
        if size > max_bytes:
            raise BadInput("oversize", f"{uri}: {size} bytes > max_file_bytes {max_bytes}")
        try:
            with open(uri, "rb") as f:
                data = f.read()
        except OSError as e:
            raise BadInput("unreadable", f"{uri}: {e}") from None
    else:
        from apache_beam.io.filesystems import FileSystems
        try:
            if not FileSystems.exists(uri):
                raise BadInput("missing_file", uri)
            with FileSystems.open(uri) as f:
                data = f.read(max_bytes + 1)
        except BadInput:
            raise
        except Exception as e:  # noqa: BLE001 - any filesystem error is "unreadable"
            raise BadInput("unreadable", f"{uri}: {e}") from None
        if len(data) > max_bytes:
            raise BadInput("oversize", f"{uri}: more than max_file_bytes {max_bytes}")
    if not data:
        raise BadInput("empty", f"{uri}: zero bytes")
    return data


def read_text(uri: str) -> str:
    """A whole text file (annotations, transcripts), UTF-8."""
    if has_scheme(uri):
        from apache_beam.io.filesystems import FileSystems
        with FileSystems.open(uri) as f:
            return f.read().decode("utf-8")
    with open(uri, encoding="utf-8") as f:
        return f.read()


def glob(pattern: str) -> list[str]:
    """Sorted paths matching `pattern` (local glob or FileSystems.match)."""
    if has_scheme(pattern):
        from apache_beam.io.filesystems import FileSystems
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    import glob as _glob
    return sorted(_glob.glob(pattern, recursive=True))


def ends_inside_a_declared_block(data: bytes) -> bool:
    """True when a FLAC or ISO-BMFF (MP4/MOV/M4A) file ends inside a block its own headers declare:
    a cut download, so `truncated` rather than `corrupt` when no decoder can open it."""
    if data.startswith(b"fLaC"):  # metadata blocks: 1 byte last-flag/type, 3 bytes length
        offset, last = 4, False
        while not last:
            if offset + 4 > len(data):
                return True
            last = bool(data[offset] & 0x80)
            offset += 4 + int.from_bytes(data[offset + 1:offset + 4], "big")
        return offset > len(data)
    if data[4:8] == b"ftyp":  # top-level boxes: 4 bytes size (1: 8-byte size follows; 0: to the end), 4 bytes type
        offset = 0
        while offset + 8 <= len(data):
            size = int.from_bytes(data[offset:offset + 4], "big")
            if size == 1 and offset + 16 <= len(data):
                size = int.from_bytes(data[offset + 8:offset + 16], "big")
            if size == 0:
                return False
            if size < 8 or not all(32 <= c < 127 or c == 0xA9 for c in data[offset + 4:offset + 8]):
                return False  # not a box structure (sizes and ASCII types): corrupt, not cut
            offset += size
        return offset > len(data)
    return False
