"""``parquet_sink``: results as Parquet files in a directory or an object store, whole or not at all.

Rows and frames are written as Parquet files partitioned hive-style by
event time (``date=2026-01-01/hour=05/``) and, when asked, by a key column
(``.../sensor_id=s1/``), to a local directory or any fsspec store (S3 via
``s3fs``: install ``streamml[s3]``). A file is first uploaded under
``_staging/`` (one PUT on S3), and made visible under its final name only
once the snapshot that lists it has been taken and the next one is due (a
rename on disk, a server-side copy on S3): a reader never sees a partial
file. After a crash, the resumed sink re-commits the staged files its
snapshot lists, and deletes every file of its own with a later sequence
number (their rows are replayed): no committed row is lost or written
twice. docs/object_store.md tells the whole story.

Examples:
    >>> import tempfile
    >>> from datetime import datetime, timezone
    >>> import bytewax.operators as op
    >>> import polars as pl
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSource, run_main
    >>> root = tempfile.mkdtemp()
    >>> t = datetime(2026, 1, 1, 5, 30, tzinfo=timezone.utc)
    >>> flow = Dataflow("parquet_doc")
    >>> rows = op.input("in", flow, TestingSource([
    ...     {"sensor": "s1", "ts": t, "p_hot": 0.9},
    ...     {"sensor": "s2", "ts": t, "p_hot": 0.1},
    ...     {"sensor": "s3", "p_hot": 0.5},
    ... ]))
    >>> errs = parquet_sink("results", rows, path=root, time="ts")
    >>> _ = op.inspect("errs", errs, lambda _step, rejected: print(rejected.reason))
    >>> run_main(flow)
    no event time: field 'ts' is missing or null
    >>> files = sorted(p.relative_to(root).as_posix() for p in Path(root).rglob("*.parquet"))
    >>> files
    ['date=2026-01-01/hour=05/part-0-00000000.parquet']
    >>> pl.read_parquet(Path(root, files[0]))["sensor"].to_list()
    ['s1', 's2']
"""

from __future__ import annotations

import io
import logging
import re
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zlib import adler32

import bytewax.operators as op
import fsspec
import polars as pl
from bytewax.dataflow import Stream, operator
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from streamml.errors import Rejected
from streamml.frames import from_rows
from streamml.metrics import delivered, instrumented

__all__ = ["Committed", "ParquetSink", "parquet_sink"]

log = logging.getLogger(__name__)

STAGING = "_staging"
"""The folder under the root where files wait to be committed (readers skip ``_`` folders)."""

_HOUR_COLUMN = "__streamml_hour"
_COMPRESSIONS = {"zstd", "snappy", "lz4", "gzip", "brotli", "uncompressed"}
"""What polars' Parquet writer takes."""


@dataclass(frozen=True)
class Committed:
    """A partition's snapshot: where its file numbers stand, and the staged files to commit.

    Every file a partition writes has a sequence number, one after the
    other. A resume from this snapshot commits ``pending`` (each a staged
    file's number and final path under the root) and deletes the
    partition's files numbered ``next_seq`` or later: they hold rows that
    the resumed flow writes again.
    """

    next_seq: int
    pending: tuple[tuple[int, str], ...] = ()


@dataclass
class _Buffer:
    """Frames waiting to become one file in one partition directory."""

    opened: float
    frames: list[pl.DataFrame] = field(default_factory=list)
    size: int = 0


def _file_name(name: str, part: str, seq: int) -> str:
    return f"{name}-{part}-{seq:08d}.parquet"


class _ParquetPartition(StatefulSinkPartition[tuple[str, pl.DataFrame], Committed]):
    """One sink partition: buffers frames by directory, stages files, commits them a snapshot later."""

    def __init__(self, sink: ParquetSink, part: str, resume: Committed | None) -> None:
        self._sink = sink
        self._part = part
        self._fs, self._root = fsspec.core.url_to_fs(sink.path, **sink.storage_options)
        self._buffers: dict[str, _Buffer] = {}
        self._made: set[str] = set()
        self._staged: list[tuple[int, str]] = []
        """Staged since the last snapshot: the next one lists them, the one after commits them."""
        self._pending: list[tuple[int, str]] = []
        """Listed by the last snapshot: committed at the next one."""
        self._seq_of = re.compile(
            re.escape(f"{sink.name}-{part}-") + r"(\d+)\.parquet(?:\.tmp)?$"
        ).search
        self._next_seq = self._recover(resume)

    # -- paths ------------------------------------------------------------------
    def _final(self, rel: str) -> str:
        return f"{self._root}/{rel}"

    def _temp(self, seq: int) -> str:
        name = _file_name(self._sink.name, self._part, seq)
        return f"{self._root}/{STAGING}/{name}.tmp"

    def _own_files(self) -> tuple[dict[int, str], dict[int, str]]:
        """This partition's committed files and staged files, by sequence number."""
        self._fs.invalidate_cache()
        depth = "/".join(["*"] * self._sink.depth)
        mine = f"{self._sink.name}-{self._part}-*.parquet"
        found = []
        for pattern in (f"{self._root}/{depth}/{mine}", f"{self._root}/{STAGING}/{mine}.tmp"):
            found.append({int(self._seq_of(p).group(1)): p for p in self._fs.glob(pattern)})
        return found[0], found[1]

    # -- recovery ---------------------------------------------------------------
    def _recover(self, resume: Committed | None) -> int:
        """Commit what the snapshot staged, delete what came after it; the next file's number."""
        finals, temps = self._own_files()
        if resume is None:
            start = max(finals, default=-1) + 1  # a new run adds files; it never overwrites
        else:
            start = resume.next_seq
            for seq, rel in resume.pending:
                if seq in temps:
                    self._move(temps.pop(seq), self._final(rel))
                elif seq not in finals:
                    raise FileNotFoundError(
                        f"parquet sink {self._sink.path}: the staged file {self._temp(seq)} that "
                        "the snapshot lists is gone; the store lost data written before it"
                    )
        doomed = [p for seq, p in finals.items() if seq >= start] + list(temps.values())
        if doomed:
            log.info("parquet sink part %s: deleting %d uncommitted files", self._part, len(doomed))
            self._fs.rm(doomed)
        return start

    # -- writing ----------------------------------------------------------------
    def write_batch(self, values: list[tuple[str, pl.DataFrame]]) -> None:
        for rel_dir, piece in values:
            buf = self._buffers.get(rel_dir)
            if buf is not None and buf.frames and buf.frames[0].schema != piece.schema:
                self._stage(rel_dir)  # one schema per file
                buf = None
            if buf is None:
                buf = self._buffers[rel_dir] = _Buffer(_time.monotonic())
            buf.frames.append(piece)
            buf.size += piece.estimated_size()
            if buf.size >= self._sink.roll_bytes:
                self._stage(rel_dir)
        if self._sink.roll_interval is not None:
            too_old = _time.monotonic() - self._sink.roll_interval.total_seconds()
            for rel_dir in [d for d, b in self._buffers.items() if b.opened <= too_old]:
                self._stage(rel_dir)

    def _stage(self, rel_dir: str) -> None:
        """Write a directory's buffer as one Parquet file under ``_staging/``."""
        buf = self._buffers.pop(rel_dir)
        frame = buf.frames[0] if len(buf.frames) == 1 else pl.concat(buf.frames, rechunk=False)
        out = io.BytesIO()
        frame.write_parquet(out, compression=self._sink.compression)
        seq = self._next_seq
        self._next_seq += 1
        temp = self._temp(seq)
        self._mkdir(temp)
        self._fs.pipe_file(temp, out.getvalue())
        self._staged.append((seq, f"{rel_dir}/{_file_name(self._sink.name, self._part, seq)}"))

    def _commit(self, files: list[tuple[int, str]]) -> None:
        for seq, rel in files:
            self._move(self._temp(seq), self._final(rel))

    def _move(self, src: str, dst: str) -> None:
        """Rename (on disk) or copy and delete (on S3): ``dst`` appears whole or not at all."""
        self._mkdir(dst)
        self._fs.mv(src, dst)

    def _mkdir(self, file: str) -> None:
        """The folder of ``file``, on stores that have folders (a no-op on S3)."""
        parent = file.rsplit("/", 1)[0]
        if parent not in self._made:
            self._fs.makedirs(parent, exist_ok=True)
            self._made.add(parent)

    def snapshot(self) -> Committed:
        self._commit(self._pending)  # listed by the previous snapshot, taken an epoch ago
        for rel_dir in list(self._buffers):
            self._stage(rel_dir)  # a file never spans a snapshot
        self._pending, self._staged = self._staged, []
        return Committed(self._next_seq, tuple(self._pending))

    def close(self) -> None:
        for rel_dir in list(self._buffers):
            self._stage(rel_dir)
        self._commit(self._pending + self._staged)
        self._pending, self._staged = [], []


@dataclass(frozen=True)
class ParquetSink(FixedPartitionedSink[tuple[str, pl.DataFrame], Committed]):
    """The Bytewax sink under :func:`parquet_sink`: ``(partition, (directory, frame))`` in, files out.

    ``directory`` is the frame's path under the root (``date=.../hour=...``);
    :func:`parquet_sink` cuts frames by directory and routes them.
    """

    path: str
    parts: int = 1
    name: str = "part"
    depth: int = 2
    roll_bytes: int = 64 << 20
    roll_interval: timedelta | None = timedelta(minutes=5)
    compression: str = "zstd"
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(self.parts)]

    def part_fn(self, item_key: str) -> int:
        return int(item_key)

    def build_part(
        self, step_id: str, for_part: str, resume_state: Committed | None
    ) -> _ParquetPartition:
        return _ParquetPartition(self, for_part, resume_state)


def _hive(column: str, value: Any) -> str:
    """``column=value``, the value percent-encoded as hive readers expect, null as hive's default.

    Examples:
        >>> _hive("sensor", "a/b c"), _hive("sensor", None), _hive("n", 3)
        ('sensor=a%2Fb%20c', 'sensor=__HIVE_DEFAULT_PARTITION__', 'n=3')
    """
    text = "__HIVE_DEFAULT_PARTITION__" if value is None else quote(str(value), safe="")
    return f"{column}={text}"


_HOUR_MS = 3_600_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MIN_HOUR = -(_EPOCH - datetime(1, 1, 1, tzinfo=timezone.utc)) // timedelta(hours=1)
_MAX_HOUR = (datetime(9999, 12, 31, 23, tzinfo=timezone.utc) - _EPOCH) // timedelta(hours=1)
"""The hours since the epoch that a directory name can show (Python's datetime range)."""


def _pieces(
    step_id: str, time: str, key: str | None, frame: pl.DataFrame
) -> tuple[list[tuple[str, pl.DataFrame]], list[Rejected]]:
    """The frame cut by directory (``date=.../hour=...[/key=...]``), and the rows it cannot place.

    Rows are grouped by their hour since the epoch (and key) as integers;
    each group's directory name is formatted once. As hive writers do
    (Spark, Arrow), the key is in the path, not in the file.
    """

    def reject_all(kind: str, why: str, rows: pl.DataFrame) -> list[Rejected]:
        return [Rejected(step_id, kind, why, r) for r in rows.iter_rows(named=True)]

    no_time = f"no event time: field {time!r} is missing or null"
    if time not in frame.columns or frame.schema[time] == pl.Null:
        return [], reject_all("MissingField", no_time, frame)
    objects = [name for name, dtype in frame.schema.items() if dtype == pl.Object]
    if objects:
        why = f"fields {objects} hold Python objects that Parquet cannot store"
        return [], reject_all("BadItem", why, frame)
    if key is not None and key not in frame.columns:
        return [], reject_all("MissingField", f"no partition_by field {key!r}", frame)
    dtype = frame.schema[time]
    if isinstance(dtype, pl.Datetime):
        hour = pl.col(time).dt.epoch("ms") // _HOUR_MS  # the UTC hour, whatever the zone
    elif dtype.is_integer():
        hour = pl.col(time).cast(pl.Int64, strict=False) // _HOUR_MS  # past Int64: null
    else:
        why = f"event time {time!r} must be a datetime or integer epoch milliseconds; got {dtype}"
        return [], reject_all("BadTime", why, frame)
    bad: list[Rejected] = []
    hours = frame.select(hour.alias(_HOUR_COLUMN)).to_series()
    missing = frame.get_column(time).is_null()
    unplaced = ~hours.is_between(_MIN_HOUR, _MAX_HOUR).fill_null(False)
    if unplaced.any():
        bad = reject_all("MissingField", no_time, frame.filter(missing))
        why = f"event time {time!r} is outside the years 1-9999"
        bad += reject_all("BadTime", why, frame.filter(unplaced & ~missing))
        frame, hours = frame.filter(~unplaced), hours.filter(~unplaced)
        if not frame.height:
            return [], bad
    by = [_HOUR_COLUMN] if key is None else [_HOUR_COLUMN, key]
    groups = frame.with_columns(hours).partition_by(
        by, as_dict=True, include_key=False, maintain_order=True
    )
    out = []
    for values, piece in groups.items():
        start = _EPOCH + timedelta(hours=values[0])
        rel_dir = f"date={start.year:04d}-{start:%m-%d}/hour={start:%H}"  # %Y: no zeros on glibc
        out.append((rel_dir if key is None else f"{rel_dir}/{_hive(key, values[1])}", piece))
    return out, bad


def _rows_frame(
    step_id: str, time: str, rows: list[Any]
) -> tuple[pl.DataFrame | None, list[Rejected]]:
    """A batch of rows as one frame (:func:`~streamml.frames.from_rows`), and the rows left out.

    Each row that cannot be written is rejected by itself, with the row as
    given: no event time, a value that fits no common column, or a value
    Parquet has no type for (a set, an arbitrary object).
    """
    no_time = f"no event time: field {time!r} is missing or null"
    bad: list[Rejected] = []
    timed = []
    for row in rows:
        if isinstance(row, Mapping) and row.get(time) is None:
            bad.append(Rejected(step_id, "MissingField", no_time, row))
        else:
            timed.append(row)
    frame, misfits = from_rows(timed, step_id)
    bad += misfits
    objects = [] if frame is None else [n for n, t in frame.schema.items() if t == pl.Object]
    if objects:
        why = f"fields {objects} hold Python objects that Parquet cannot store"
        left_out = {id(r.original) for r in misfits}
        kept = []
        for row in timed:
            if id(row) in left_out:
                continue
            if any(row.get(name) is not None for name in objects):
                bad.append(Rejected(step_id, "BadItem", why, row))
            else:
                kept.append(row)
        frame, more = from_rows(kept, step_id)
        bad += more
    return frame, bad


def _piece_rows(pieces: list[tuple[str, pl.DataFrame]]) -> int:
    """Rows in a batch of ``(directory, frame)`` pieces a sink partition wrote."""
    return sum(piece.height for _, piece in pieces)


@operator
@instrumented(down="errs")
def parquet_sink(
    step_id: str,
    up: Stream[Any],
    *,
    path: str | Path,
    time: str,
    partition_by: str | None = None,
    roll_bytes: int = 64 << 20,
    roll_interval: timedelta | None = timedelta(minutes=5),
    parts: int = 1,
    name: str = "part",
    compression: str = "zstd",
    storage_options: Mapping[str, Any] | None = None,
) -> Stream[Rejected]:
    """Write rows or frames as Parquet files partitioned by event time, each file whole or absent.

    Use it to land results where analysts read them (a data lake on S3, a
    shared directory) next to, or instead of, a Kafka sink. Items are polars
    frames (one per batch, as streamml steps pass them) or rows (mappings);
    a batch of rows becomes a frame the way :func:`streamml.frames.from_rows`
    makes one.

    Files go to ``{path}/date=YYYY-MM-DD/hour=HH[/{partition_by}=value]/
    {name}-{part}-{seq}.parquet``, the date and hour of each row's event
    time in UTC. A file holds the rows of one directory and one schema;
    it is rolled at ``roll_bytes`` (in memory, before compression), after
    ``roll_interval``, and at every snapshot (each Bytewax epoch), so the
    epoch interval bounds file size too. A file becomes visible at the
    snapshot after the one that recorded it (one to two epochs after its
    rows arrived), or when the flow ends.

    Args:
        step_id: Unique step id.
        up: Frames or rows to write.
        path: A local directory or an fsspec URL (``s3://bucket/prefix``).
        time: The field with each row's event time: a datetime (any time
            zone; naive means UTC) or integer epoch milliseconds.
        partition_by: A field whose value adds a directory level under the hour.
        roll_bytes: Roll a file once its rows take this many bytes in memory.
        roll_interval: Roll a file this long after its first row arrived
            (``None``: only by size and at snapshots).
        parts: Independent writers: directories are spread over them by
            name, each a partition of the sink that Bytewax places on a worker.
        name: The files' name prefix; two sinks writing under one path
            need different names.
        compression: Parquet compression (``zstd``, ``snappy``, ``lz4``, ...).
        storage_options: Passed to fsspec (e.g. ``endpoint_url``, ``key``, ``secret``).

    Returns:
        The rows that were not written: not a mapping, a field that fits no
        common column type, or no usable event time.
    """
    if not isinstance(time, str) or not time:
        raise ValueError(f"time must name the event-time field; got {time!r}")
    if partition_by is not None and (not isinstance(partition_by, str) or not partition_by):
        raise ValueError(f"partition_by must name a field or be None; got {partition_by!r}")
    if roll_bytes <= 0:
        raise ValueError(f"roll_bytes must be > 0; got {roll_bytes}")
    if roll_interval is not None and roll_interval <= timedelta(0):
        raise ValueError(f"roll_interval must be > 0 or None; got {roll_interval}")
    if compression not in _COMPRESSIONS:
        raise ValueError(f"compression must be one of {sorted(_COMPRESSIONS)}; got {compression!r}")
    if parts < 1:
        raise ValueError(f"parts must be >= 1; got {parts}")
    if not re.fullmatch(r"[A-Za-z0-9_.]+", name) or name.startswith((".", "_")):
        raise ValueError(
            f"name must be letters, digits, '_' and '.' and not start with '_' or '.'; got {name!r}"
        )
    url = str(path).rstrip("/")
    options = dict(storage_options or {})
    fsspec.core.url_to_fs(url, **options)  # an unknown protocol or a missing s3fs fails here
    sink = ParquetSink(
        url,
        parts=parts,
        name=name,
        depth=2 if partition_by is None else 3,
        roll_bytes=roll_bytes,
        roll_interval=roll_interval,
        compression=compression,
        storage_options=options,
    )
    rejecting = f"{step_id}.route"

    def route(items: list[Any]) -> list[Any]:
        out: list[Any] = []
        rows = [item for item in items if type(item) is not pl.DataFrame]
        frames = [item for item in items if type(item) is pl.DataFrame]
        if rows:
            frame, bad = _rows_frame(rejecting, time, rows)
            out += bad
            if frame is not None:
                frames.append(frame)
        for frame in frames:
            if not frame.height:
                continue
            pieces, bad = _pieces(rejecting, time, partition_by, frame)
            out += bad
            for rel_dir, piece in pieces:
                part = "0" if parts == 1 else str(adler32(rel_dir.encode()) % parts)
                out.append((part, (rel_dir, piece)))
        return out

    routed = op.flat_map_batch("route", up, route)
    files = op.filter("files", routed, lambda item: type(item) is tuple)
    op.output("write", files, delivered(sink, _piece_rows))
    return op.filter("rejected", routed, lambda item: type(item) is Rejected)
