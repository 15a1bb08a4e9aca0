"""A host's share of a SeqIO cache, read sequentially from saved byte offsets.

The input position of a resumable run (tasks/resumable.py) is, at bottom, a
`FileCycle` cursor: which epoch, which files are open and at what byte offset
each one's next record starts. Reopening a file at an offset is one seek, so a
restart costs the same at step 10 as at step 5,000. Example cursor (JSON):

    {"epoch": 3, "next": 2, "open": [[5, 1048576], [0, 73728]], "turn": 1}

  epoch  pass over this host's files (each pass visits them in a seeded order)
  next   position in that order of the next file to open
  open   [file index in `files`, byte offset of its next record], read round-robin
  turn   the open slot to read next

Files are split over hosts by whole files (`host_files`): host i reads files
i, i + n, i + 2n, ... of the sorted shard list, so the shares are disjoint and
cover the cache. Records are checked against their CRCs (TFRecord framing:
uint64 length, masked crc32c of the length, data, masked crc32c of the data);
a bad one raises `CorruptRecordError` naming the file and offset.
Paths go through `tf.io.gfile` (local, gs://, s3:// where TF has the plugin).
"""
from __future__ import annotations

import json
import logging
import struct
from typing import Any, Sequence

import google_crc32c
import numpy as np
import tensorflow as tf

log = logging.getLogger("tapestry.input")

_CHUNK = 1 << 20  # bytes per read (per open file): large enough for object stores, small in memory


class CorruptRecordError(IOError):
    """A TFRecord whose framing or CRC is wrong (the message names file and offset)."""


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def cache_files(cache_dir: str, split: str) -> list[str]:
    """The TFRecord shards of `split` in a SeqIO cache dir, sorted (as SeqIO lists them)."""
    info_path = f"{cache_dir}/info.{split}.json"
    if not tf.io.gfile.exists(info_path):
        raise FileNotFoundError(f"no SeqIO cache of split {split!r} in {cache_dir} ({info_path} is missing)")
    with tf.io.gfile.GFile(info_path) as f:
        num_shards = int(json.load(f)["num_shards"])
    files = sorted(tf.io.gfile.glob(f"{cache_dir}/{split}.tfrecord-*-of-{num_shards:05d}"))
    if len(files) != num_shards:
        raise FileNotFoundError(f"{info_path} says {num_shards} shards but {len(files)} are in {cache_dir}")
    return files


def host_files(files: Sequence[str], shard_id: int, num_shards: int, rebuild_hint: str) -> list[str]:
    """This host's whole files: files[shard_id::num_shards]. Fewer files than hosts is an error."""
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id={shard_id} is not in [0, num_shards={num_shards})")
    if len(files) < num_shards:
        raise ValueError(
            f"the cache has {len(files)} TFRecord shard(s) ({files[0] if files else 'none'}, ...) but {num_shards} "
            f"hosts read it, and each host reads whole files; rebuild it with at least {num_shards} shards "
            f"(a multiple of the host count keeps the shares even): {rebuild_hint} --num_shards=N")
    if len(files) % num_shards:
        log.warning("%d cache shards over %d hosts: host shares differ by one file", len(files), num_shards)
    return list(files[shard_id::num_shards])


class RecordReader:
    """Records of one TFRecord file from a byte offset on; `offset` is the next record's."""

    def __init__(self, path: str, offset: int = 0):
        self.path, self.offset = path, offset
        self._f = tf.io.gfile.GFile(path, "rb")
        if offset:
            self._f.seek(offset)
        self._buf, self._pos = b"", 0

    def _take(self, n: int) -> bytes | None:
        """The next n bytes, or None at a clean end of file."""
        if len(self._buf) - self._pos < n:
            self._buf = self._buf[self._pos:] + self._f.read(max(n, _CHUNK))
            self._pos = 0
            if len(self._buf) < n:
                return None
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def read(self) -> bytes | None:
        """The next record's bytes, or None at the end of the file."""
        header = self._take(12)
        if header is None:
            if len(self._buf) - self._pos:
                raise CorruptRecordError(f"{self.path}: truncated record header at byte {self.offset}")
            return None
        length, crc = struct.unpack("<QI", header)
        if _masked_crc(header[:8]) != crc:
            raise CorruptRecordError(f"{self.path}: bad length CRC at byte {self.offset}")
        body = self._take(length + 4)
        if body is None:
            raise CorruptRecordError(f"{self.path}: truncated record at byte {self.offset} ({length} bytes declared)")
        data = body[:length]
        if _masked_crc(data) != struct.unpack("<I", body[length:])[0]:
            raise CorruptRecordError(f"{self.path}: bad data CRC in the record at byte {self.offset}")
        self.offset += 12 + length + 4
        return data

    def close(self) -> None:
        self._f.close()


class FileCycle:
    """Round-robin reads over `cycle_length` open files, epoch after epoch (see module doc).

    `read()` returns the next record (None after `num_epochs` passes); `cursor()` is the
    JSON-able position of the next record, and `FileCycle(..., cursor=c)` resumes there.
    """

    def __init__(self, files: Sequence[str], *, seed: int, shuffle: bool, cycle_length: int = 4,
                 num_epochs: int | None = None, cursor: dict[str, Any] | None = None):
        if not files:
            raise ValueError("FileCycle needs at least one file")
        if cycle_length < 1:
            raise ValueError(f"cycle_length={cycle_length} must be >= 1")
        self.files, self.seed, self.shuffle = list(files), seed, shuffle
        self.cycle_length, self.num_epochs = cycle_length, num_epochs
        self._readers: dict[int, RecordReader] = {}
        self._fresh_epoch_records: int | None = None  # records read in an epoch begun here
        if cursor is None:
            self._epoch, self._next, self._open, self._turn = 0, 0, [], 0
            self._begin_epoch()
        else:
            self._epoch, self._next, self._turn = int(cursor["epoch"]), int(cursor["next"]), int(cursor["turn"])
            self._open = [[int(i), int(o)] for i, o in cursor["open"]]

    def cursor(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "next": self._next, "open": [list(s) for s in self._open], "turn": self._turn}

    def _order(self) -> np.ndarray:
        n = len(self.files)
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self._epoch]).permutation(n)

    def _begin_epoch(self) -> None:
        order = self._order()
        self._open = [[int(i), 0] for i in order[:self.cycle_length]]
        self._next, self._turn = len(self._open), 0
        self._fresh_epoch_records = 0

    def _reader(self, slot: list[int]) -> RecordReader:
        index, offset = slot
        reader = self._readers.get(index)
        if reader is None or reader.offset != offset:
            if reader is not None:
                reader.close()
            reader = self._readers[index] = RecordReader(self.files[index], offset)
        return reader

    def _close(self, index: int) -> None:
        reader = self._readers.pop(index, None)
        if reader is not None:
            reader.close()

    def read(self) -> bytes | None:
        while True:
            if not self._open:
                if self._fresh_epoch_records == 0:
                    raise ValueError(f"no records in this host's {len(self.files)} cache file(s), e.g. "
                                     f"{self.files[0]}; rebuild the cache with fewer shards or more data")
                self._epoch += 1
                if self.num_epochs is not None and self._epoch >= self.num_epochs:
                    self._epoch = self.num_epochs
                    return None
                self._begin_epoch()
            self._turn %= len(self._open)
            slot = self._open[self._turn]
            record = self._reader(slot).read()
            if record is None:  # this file is done: the next one in the epoch's order takes its slot
                self._close(slot[0])
                order = self._order() if self._next < len(self.files) else None
                if order is not None:
                    self._open[self._turn] = [int(order[self._next]), 0]
                    self._next += 1
                else:
                    del self._open[self._turn]
                continue
            slot[1] = self._readers[slot[0]].offset
            self._turn += 1
            if self._fresh_epoch_records is not None:
                self._fresh_epoch_records += 1
            return record

    def close(self) -> None:
        for index in list(self._readers):
            self._close(index)
