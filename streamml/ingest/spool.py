"""The bounded on-disk spool: every record the agent reads waits here until Kafka has it.

The spool is a write-ahead queue of *blocks*. A block is what one source
gave in one read (a few thousand log lines, a few camera frames, one HTTP
POST), with the source's position after it. Records are numbered by a
sequence number that never repeats for the agent, so a record keeps its
identity across restarts. Blocks are appended to segment files
(``spool/<first seq>.seg``); a segment is deleted once all its records are
acknowledged, so the disk holds only what Kafka does not have yet.

Each block is written with its length and a CRC-32, then ``fsync``-ed: a
block is either whole on disk or, torn by a crash mid-write, cut off at the
next open (its source position was never recorded, so its records are read
again from the source).

The spool is bounded by ``max_bytes`` of unacknowledged blocks: when it is
full, :meth:`Spool.full` is true and the agent stops reading its inputs
until the sender has delivered and released some (back-pressure; nothing is
dropped).
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

__all__ = ["Block", "Spool", "SpoolError"]

_HEAD = struct.Struct("<IIIQI")  # magic, body length, crc32 of body, first seq, record count
_MAGIC = 0x5354_4D4C  # "STML"
_NONE = -1
_SEGMENT_SUFFIX = ".seg"


class SpoolError(RuntimeError):
    """The spool directory cannot be used (not writable, or a segment is unreadable)."""


@dataclass(frozen=True)
class Block:
    """One source read: its records and the source's position after them.

    Attributes:
        first_seq: Sequence number of the first record; the others follow.
        source: Name of the source the records came from.
        delta: What the source's position becomes once the block is
            delivered (JSON-able; each source knows how to apply it).
        keys: Kafka keys, one per record (``None``: no key).
        values: Kafka values, one per record.
        notes: Per-record extra header from the edge model (``None``: none);
            see :mod:`streamml.ingest.edge`.

    Examples:
        >>> b = Block(7, "app.log", {"offset": 12}, [None, b"k"], [b"a", b"b"], [None, None])
        >>> b.last_seq, len(b)
        (8, 2)
    """

    first_seq: int
    source: str
    delta: Any
    keys: Sequence[bytes | None]
    values: Sequence[bytes]
    notes: Sequence[bytes | None]

    def __len__(self) -> int:
        return len(self.values)

    @property
    def last_seq(self) -> int:
        """Sequence number of the last record."""
        return self.first_seq + len(self.values) - 1


@dataclass
class _Entry:
    """Where an unacknowledged block lives, without its records (they stay on disk)."""

    segment: Path
    offset: int
    size: int
    first_seq: int
    count: int
    source: str
    delta: Any

    @property
    def end_seq(self) -> int:
        return self.first_seq + self.count


def _lengths(items: Sequence[bytes | None]) -> np.ndarray:
    n = len(items)
    nones = items.count(None)
    if nones == n:  # no keys, no notes: the usual case, at C speed
        return np.full(n, _NONE, dtype="<i4")
    if not nones:
        return np.fromiter(map(len, items), dtype="<i4", count=n)  # type: ignore[arg-type]
    return np.fromiter((_NONE if x is None else len(x) for x in items), dtype="<i4", count=n)


def _joined(items: Sequence[bytes | None]) -> bytes:
    if None in items:
        return b"".join(x for x in items if x is not None)
    return b"".join(items)  # type: ignore[arg-type]


def _encode(block: Block) -> list[bytes]:
    """The block as the pieces written one after the other (a 4 MB read is not copied twice)."""
    meta = orjson.dumps({"source": block.source, "delta": block.delta})
    columns = (block.keys, block.values, block.notes)
    parts = [struct.pack("<I", len(meta)), meta]
    parts.extend(_lengths(c).tobytes() for c in columns)
    parts.extend(_joined(c) for c in columns)
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    length = sum(map(len, parts))
    return [_HEAD.pack(_MAGIC, length, crc, block.first_seq, len(block)), *parts]


def _split(blob: memoryview, lengths: np.ndarray, at: int) -> tuple[list[bytes | None], int]:
    ends = np.cumsum(np.maximum(lengths, 0)) + at
    starts = ends - np.maximum(lengths, 0)
    out: list[bytes | None] = [
        None if n == _NONE else bytes(blob[s:e])
        for n, s, e in zip(lengths.tolist(), starts.tolist(), ends.tolist())
    ]
    return out, int(ends[-1]) if len(ends) else at


def _decode(body: bytes, first_seq: int, count: int) -> Block:
    view = memoryview(body)
    (meta_len,) = struct.unpack_from("<I", body, 0)
    meta = orjson.loads(view[4 : 4 + meta_len])
    at = 4 + meta_len
    lengths = []
    for _ in range(3):
        lengths.append(np.frombuffer(body, dtype="<i4", count=count, offset=at))
        at += 4 * count
    keys, at = _split(view, lengths[0], at)
    values, at = _split(view, lengths[1], at)
    notes, _ = _split(view, lengths[2], at)
    return Block(first_seq, meta["source"], meta["delta"], keys, values, notes)  # type: ignore[arg-type]


def _read_meta(body: bytes) -> tuple[str, Any]:
    (meta_len,) = struct.unpack_from("<I", body, 0)
    meta = orjson.loads(body[4 : 4 + meta_len])
    return meta["source"], meta["delta"]


class Spool:
    """A bounded, crash-safe queue of record blocks in a directory.

    Use one spool per agent (``<state dir>/spool``). Sources' reads go in
    with :meth:`append`; the sender takes them in order with
    :meth:`pending` and :meth:`read`, and :meth:`release` drops what Kafka
    has acknowledged. Thread-safe: one thread may append while another
    sends.

    Args:
        directory: Where the segment files live (created if missing).
        max_bytes: Bound on the unacknowledged bytes; above it :meth:`full`
            is true. One block may overshoot it (a block is never split).
        acked_seq: Records below this sequence number are already delivered
            (from the agent's checkpoint); they are skipped and their
            segments deleted.
        segment_bytes: A new segment file starts after this many bytes.
        fsync: ``fsync`` every block (the default): a power cut loses no
            block that was appended. ``False`` still survives a killed
            process (the page cache keeps the data), not a power cut.
        cache_bytes: Appended blocks up to this many bytes stay in memory
            until released, so :meth:`read` need not go back to disk.

    Examples:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> spool = Spool(d, max_bytes=1 << 20)
        >>> spool.append("cam", {"names": ["a.jpg"]}, [b"a.jpg"], [b"..."], [None])
        0
        >>> [(b.first_seq, b.source, b.values) for b in map(spool.read, spool.pending(10))]
        [(0, 'cam', [b'...'])]
        >>> Spool(d, max_bytes=1 << 20).next_seq  # a reopened spool finds its blocks
        1
        >>> spool.release(1); spool.unacked_bytes
        0
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int,
        acked_seq: int = 0,
        segment_bytes: int = 64 << 20,
        fsync: bool = True,
        cache_bytes: int = 64 << 20,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be > 0; got {max_bytes}")
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be > 0; got {segment_bytes}")
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the spool directory {self.directory}: {exc}") from exc
        self.max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._fsync = fsync
        self._lock = threading.Condition()
        self._entries: deque[_Entry] = deque()
        self._bytes = 0
        self._acked = acked_seq
        self._next_seq = acked_seq
        self._tail: Path | None = None
        self._tail_size = 0
        # Blocks appended by this process, kept decoded until released so the sender does not
        # read back and split what it was just given (bounded: beyond it, blocks come from disk).
        self._cache: dict[int, tuple[Block, int]] = {}
        self._cache_bytes = 0
        self._cache_max = min(max_bytes, cache_bytes)
        self._open_segments()

    def _open_segments(self) -> None:
        segments = sorted(self.directory.glob("*" + _SEGMENT_SUFFIX), key=lambda p: int(p.stem))
        for segment in segments:
            data = segment.read_bytes()
            at = 0
            while at + _HEAD.size <= len(data):
                magic, length, crc, first, count = _HEAD.unpack_from(data, at)
                body = data[at + _HEAD.size : at + _HEAD.size + length]
                if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
                    break  # torn by a crash mid-write: the rest was never acknowledged to anyone
                size = _HEAD.size + length
                if first + count > self._acked:
                    source, delta = _read_meta(body)
                    self._entries.append(_Entry(segment, at, size, first, count, source, delta))
                    self._bytes += size
                self._next_seq = max(self._next_seq, first + count)
                at += size
            if at < len(data):
                with open(segment, "r+b") as f:
                    f.truncate(at)
            self._tail, self._tail_size = segment, at
        self._drop_acked_segments()

    @property
    def next_seq(self) -> int:
        """The sequence number the next appended record gets."""
        with self._lock:
            return self._next_seq

    @property
    def unacked_bytes(self) -> int:
        """Bytes of blocks not yet released (what :attr:`max_bytes` bounds)."""
        with self._lock:
            return self._bytes

    @property
    def unacked_records(self) -> int:
        """Records not yet released."""
        with self._lock:
            return self._next_seq - self._acked

    def full(self) -> bool:
        """Whether the unacknowledged bytes have reached :attr:`max_bytes`."""
        with self._lock:
            return self._bytes >= self.max_bytes

    def unacked_deltas(self) -> list[tuple[str, Any]]:
        """``(source, delta)`` of every unacknowledged block, oldest first.

        A restarted agent resumes each source after its last spooled block,
        not after its last delivered one: those records are already here.
        """
        with self._lock:
            return [(e.source, e.delta) for e in self._entries]

    def append(
        self,
        source: str,
        delta: Any,
        keys: Sequence[bytes | None],
        values: Sequence[bytes],
        notes: Sequence[bytes | None],
    ) -> int:
        """Write one block durably and return its first sequence number."""
        if not (len(keys) == len(values) == len(notes)) or not values:
            raise ValueError(
                f"a block needs as many keys, values and notes, at least one; "
                f"got {len(keys)}, {len(values)}, {len(notes)}"
            )
        with self._lock:
            first = self._next_seq
            block = Block(first, source, delta, keys, values, notes)
            parts = _encode(block)
            size = sum(map(len, parts))
            if self._tail is None or self._tail_size >= self._segment_bytes:
                self._tail, self._tail_size = self.directory / f"{first:020d}{_SEGMENT_SUFFIX}", 0
            with open(self._tail, "ab") as f:
                f.writelines(parts)
                if self._fsync:
                    f.flush()
                    os.fsync(f.fileno())
            self._entries.append(
                _Entry(self._tail, self._tail_size, size, first, len(values), source, delta)
            )
            self._tail_size += size
            self._bytes += size
            if self._cache_bytes + size <= self._cache_max:
                self._cache[first] = (block, size)
                self._cache_bytes += size
            self._next_seq = first + len(values)
            self._lock.notify_all()
            return first

    def pending(
        self, max_records: int, max_bytes: int = 1 << 62, *, wait: float = 0.0
    ) -> list[_Entry]:
        """The oldest unacknowledged blocks, up to ``max_records`` and ``max_bytes`` (at least one).

        Waits up to ``wait`` seconds for a block when there is none.
        """
        with self._lock:
            if not self._entries and wait > 0:
                self._lock.wait(wait)
            out, records, size = [], 0, 0
            for entry in self._entries:
                if out and (records + entry.count > max_records or size + entry.size > max_bytes):
                    break
                out.append(entry)
                records += entry.count
                size += entry.size
            return out

    def read(self, entry: _Entry) -> Block:
        """One block's records (from memory if this process appended it, else from disk)."""
        cached = self._cache.get(entry.first_seq)
        if cached is not None:
            return cached[0]
        with open(entry.segment, "rb") as f:
            f.seek(entry.offset)
            data = f.read(entry.size)
        _, length, crc, first, count = _HEAD.unpack_from(data, 0)
        body = data[_HEAD.size :]
        if zlib.crc32(body) != crc:
            raise SpoolError(f"spool segment {entry.segment} changed on disk at {entry.offset}")
        return _decode(body, first, count)

    def release(self, acked_seq: int) -> None:
        """Forget every block whose records are all below ``acked_seq``; delete spent segments."""
        with self._lock:
            self._acked = max(self._acked, acked_seq)
            while self._entries and self._entries[0].end_seq <= self._acked:
                entry = self._entries.popleft()
                self._bytes -= entry.size
                cached = self._cache.pop(entry.first_seq, None)
                if cached is not None:
                    self._cache_bytes -= cached[1]
            self._drop_acked_segments()

    def _drop_acked_segments(self) -> None:
        live = {e.segment for e in self._entries}
        for segment in sorted(self.directory.glob("*" + _SEGMENT_SUFFIX)):
            if segment not in live and segment != self._tail:
                segment.unlink(missing_ok=True)
