"""Deterministic sharded files, replaced as a whole: the cache's TFRecords and the dead letters.

    keyed | WriteShards("/cache/task/train.tfrecord", num_shards=32, fmt="tfrecord")
      -> /cache/task/train.tfrecord-00000-of-00032 ... -00031-of-00032 (empty ones included)

Input elements are `(key: str, payload: bytes)`. A record goes to shard
`blake2b(key) % num_shards`, and inside a shard records are ordered by
(hash, key, CRC of the payload): the same records give byte-identical files
whatever the runner, bundling or worker count, so a rebuilt cache feeds training
in the same order.

Payloads never pass through the runner's shuffle (media examples are hundreds of
KB each): each bundle appends its records, already framed, to a spill file in a
temporary directory beside the shards and emits a small index entry (shard,
order, spill file, offset, length); only the index is grouped by shard, and each
shard is then copied together from the spill files in order. `commit` deletes
every earlier file of the prefix (any shard count: SeqIO's glob
`train.tfrecord-*-of-*4` would also match a stale `-of-00014`), moves the new
shards into place and removes the temporary directory.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
import zlib
from typing import Iterable

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil

FORMATS = ("tfrecord", "lines")
_MAX_OPEN = 64  # spill files a shard writer keeps open at once


def frame(payload: bytes, fmt: str) -> tuple[bytes, int]:
    """The bytes of one record in the shard file, and a checksum of the payload (order tie-break)."""
    if fmt == "lines":
        return payload + b"\n", zlib.crc32(payload)
    crc = _TFRecordUtil._masked_crc32c(payload)  # pylint: disable=protected-access
    length = struct.pack("<Q", len(payload))
    return b"".join([length, struct.pack("<I", _TFRecordUtil._masked_crc32c(length)),  # pylint: disable=protected-access
                     payload, struct.pack("<I", crc)]), crc


class _Spill(beam.DoFn):
    """(key, payload) -> appended to this bundle's spill file; yields (shard, index entry)."""

    def __init__(self, tmp_dir: str, num_shards: int, fmt: str):
        self._tmp_dir, self._n, self._fmt = tmp_dir, num_shards, fmt

    def start_bundle(self):
        self._file = None

    def process(self, element):
        key, payload = element
        if self._file is None:
            self._path = FileSystems.join(self._tmp_dir, f"spill-{uuid.uuid4().hex}")
            self._file, self._offset = FileSystems.create(self._path), 0
        data, crc = frame(payload, self._fmt)
        self._file.write(data)
        index, order = shard_of(key, self._n)
        yield index, (order, key, crc, self._path, self._offset, len(data))
        self._offset += len(data)

    def finish_bundle(self):
        if self._file is not None:
            self._file.close()
            self._file = None


def shard_of(key: str, num_shards: int) -> tuple[int, int]:
    """(shard index, order within it) of a record key."""
    h = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")
    return h % num_shards, h


def shard_name(prefix: str, index: int, num_shards: int, suffix: str = "") -> str:
    return f"{prefix}-{index:05d}-of-{num_shards:05d}{suffix}"


def stale_patterns(prefix: str, suffix: str = "") -> list[str]:
    """Globs of every file an earlier write of `prefix` may have left (sharded or not)."""
    return [f"{prefix}-*-of-*{suffix}", f"{prefix}{suffix}"]


def _existing(patterns: list[str]) -> list[str]:
    return [m.path for r in FileSystems.match(patterns) for m in r.metadata_list]


class WriteShards(beam.PTransform):
    """PCollection[(key, bytes)] -> one element: the list of shard files (see module doc).

    With `commit=False` the files stay in the temporary directory and the caller
    runs `self.commit(temp_files)` when it is ready to replace the old ones.
    """

    def __init__(self, prefix: str, num_shards: int, *, suffix: str = "", fmt: str = "tfrecord",
                 commit: bool = True):
        super().__init__()
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        if fmt not in FORMATS:
            raise ValueError(f"fmt {fmt!r} is not one of {FORMATS}")
        self._prefix, self._n, self._suffix, self._fmt, self._commit = prefix, num_shards, suffix, fmt, commit
        directory, base = FileSystems.split(prefix)
        # Chosen at construction, so every worker writes into the same directory.
        self._tmp_dir = FileSystems.join(directory, f".tmp-{base}-{uuid.uuid4().hex[:12]}")

    def temp_name(self, index: int) -> str:
        return FileSystems.join(self._tmp_dir, FileSystems.split(shard_name(self._prefix, index, self._n, self._suffix))[1])

    def _write_shard(self, shard: tuple[int, Iterable[tuple]]) -> str:
        """Copies a shard's records from the spill files, in order."""
        index, entries = shard
        path, spills = self.temp_name(index), {}
        with FileSystems.create(path) as out:
            for _, _, _, spill, offset, length in sorted(entries):
                if spill not in spills:
                    if len(spills) >= _MAX_OPEN:
                        for f in spills.values():
                            f.close()
                        spills.clear()
                    spills[spill] = FileSystems.open(spill, compression_type=CompressionTypes.UNCOMPRESSED)
                f = spills[spill]
                f.seek(offset)
                out.write(f.read(length))
        for f in spills.values():
            f.close()
        return path

    def commit(self, written: list[str]) -> list[str]:
        """Fills in empty shards, deletes every earlier file of the prefix, moves the new ones in place."""
        written = set(written)
        for i in range(self._n):
            if self.temp_name(i) not in written:
                FileSystems.create(self.temp_name(i)).close()
        stale = _existing(stale_patterns(self._prefix, self._suffix))
        if stale:
            FileSystems.delete(stale)
        finals = [shard_name(self._prefix, i, self._n, self._suffix) for i in range(self._n)]
        FileSystems.rename([self.temp_name(i) for i in range(self._n)], finals)
        spills = _existing([FileSystems.join(self._tmp_dir, "spill-*")])
        if spills:
            FileSystems.delete(spills)
        if FileSystems.exists(self._tmp_dir):  # object stores have no directory left to delete
            FileSystems.delete([self._tmp_dir])
        return finals

    def expand(self, keyed):
        written = (keyed
                   | "Spill" >> beam.ParDo(_Spill(self._tmp_dir, self._n, self._fmt))
                   | "GroupShards" >> beam.GroupByKey()
                   | "WriteShard" >> beam.Map(self._write_shard)
                   | "Collect" >> beam.combiners.ToList())
        if self._commit:
            written = written | "Commit" >> beam.Map(self.commit)
        return written
