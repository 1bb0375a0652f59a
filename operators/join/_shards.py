"""Shared plumbing of the joins: both sides routed to shards, read into arrays, written back.

Every join runs one implementation per shard for both of its entry points:

- **frames** (the unit): each side a stream of ``polars.DataFrame``; rows
  are routed by their ``key`` column with
  :func:`~streamml.operators._core.keys.route` (the one router and the one
  bad-key rule) and event time is read from a timestamp column (a
  time-zone-aware ``Datetime`` or epoch-ms integers);
- **rows** (the legacy path): each side a keyed stream of ``(key, item)``;
  the same CRC-32 shards, and the same ``BadKey`` rule for a key that is
  not text or an item that is not a ``(key, item)`` pair.

A shard step receives chunks of ``(side, key, item)`` (rows) or
``(side, frame)`` (frames) and emits at most one ``(oks, errs, late)``
triple per call, split afterwards by :func:`split_outputs`. Rejected items
never reach a shard: they leave through the routing step's errors.

Joined frames hold the left columns, then the right side's columns without
its key column; a right column whose name is also a left column gets a
suffix (``"_right"`` by default): :func:`joined_names`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic
from streamml.operators._core.arrays import highest, lowest
from streamml.operators._core.columns import frame_times as checked_times
from streamml.operators._core.event_time import MAX_TS, MIN_TS, Admission
from streamml.operators._core.keys import frame_sharder
from streamml.operators._core.state import frame_from_bytes, frame_to_bytes

from streamml.errors import Rejected, reject

__all__ = [
    "LEFT",
    "RIGHT",
    "CONTROL",
    "Chunked",
    "MISSING",
    "Outputs",
    "RowStore",
    "check_shards",
    "clip",
    "frame_times",
    "joined_frame",
    "joined_names",
    "late_records",
    "micros",
    "pick",
    "read_groups",
    "side_times",
    "split_outputs",
    "tag_frames",
    "tag_frames_table",
    "tag_sides",
    "to_datetime",
    "unfit",
]

LEFT = 0
RIGHT = 1
CONTROL = 2

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)


class _Missing:
    """The "no default given" marker (a class so it pickles as itself)."""

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def micros(delta: timedelta) -> int:
    """A timedelta as integer microseconds (the joins' internal time unit)."""
    return delta // _US


def clip(us: int) -> int:
    """A duration in microseconds bounded to ``±2**61``, so due times never overflow int64."""
    return max(-(1 << 61), min(1 << 61, us))


def to_datetime(us: int) -> datetime:
    """Integer microseconds since the epoch as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=us)


def check_shards(shards: int) -> None:
    if shards < 1:
        raise ValueError(f"shards must be >= 1; got {shards}")


def _bad_row(item: Any) -> str | None:
    """Why a row item cannot be routed (``None`` if it can)."""
    if type(item) is not tuple or len(item) != 2:
        return f"expected a (key, item) pair; got {type(item).__name__}"
    if type(item[0]) is not str:
        return f"a key must be a str; got {type(item[0]).__name__} {item[0]!r:.40}"
    return None


@dataclass(frozen=True)
class Tagged:
    """The routed chunks of both sides, and the items that could not be routed."""

    chunks: Stream[tuple[str, list]]
    errs: Stream[Rejected]


def _split_tagged(step_id: str, mixed: Stream[Any]) -> Tagged:
    split = op.branch("bad", mixed, lambda x: type(x) is Rejected)
    return Tagged(chunks=split.falses, errs=split.trues)


_CACHE_KEYS = 1 << 16
"""Keys whose shard a routing step remembers (the memo is cleared when full: memory stays bounded)."""


@operator
def tag_sides(
    step_id: str,
    left: Stream[Any],
    right: Stream[Any],
    shards: int,
    control: type | None = None,
    grouped: bool = False,
    memo: bool = True,
) -> Tagged:
    """Route both sides' ``(key, item)`` rows to shards: ``(shard, [(side, key, item), ...])``.

    Each upstream batch gives one chunk per shard it touches, in arrival
    order (Bytewax's routing cost is per item; a chunk is one item). An item
    that is not a ``(str, item)`` pair becomes a ``BadKey`` rejection on
    ``errs``. Items of type ``control`` on the right side (bootstrap
    markers) are sent to every shard as ``(CONTROL, "", item)``, behind the
    rows that came before them on the same stream.

    With ``grouped=True`` a chunk is ``(shard, (side, [(key, item), ...]))``:
    the upstream pairs themselves, no tuple made per row (the interval
    join's row path reads them a side at a time). ``memo=False`` computes
    each key's shard every time instead of remembering it: for keys seen
    once or twice (event ids), where a memo only costs an insertion.
    """
    if grouped and control is not None:
        raise ValueError("tag_sides: control items are not sent in grouped chunks")
    names = [str(i) for i in range(shards)]
    full_id = f"{step_id}.route"

    def tagger(side: int) -> Callable[[list[Any]], list[Any]]:
        shard_of: dict[str, int] = {}  # key -> shard index (a memo of the CRC-32 below)

        def tag(batch: list[Any]) -> list[Any]:
            crc = zlib.crc32
            buckets: list[list] = [[] for _ in names]
            bad: list[Any] = []
            known = shard_of.get
            for item in batch:
                if type(item) is tuple and len(item) == 2 and type(item[0]) is str:
                    k = item[0]
                    i = known(k) if memo else None
                    if i is None:
                        i = crc(k.encode("utf-8", "surrogatepass")) % shards
                        if memo:
                            if len(shard_of) >= _CACHE_KEYS:
                                shard_of.clear()
                            shard_of[k] = i
                    buckets[i].append(item if grouped else (side, k, item[1]))
                elif control is not None and side == RIGHT and type(item) is control:
                    for rows in buckets:
                        rows.append((CONTROL, "", item))
                else:
                    bad.append(Rejected(full_id, "BadKey", _bad_row(item), item))
            if grouped:
                return [*((n, (side, r)) for n, r in zip(names, buckets) if r), *bad]
            return [*((n, r) for n, r in zip(names, buckets) if r), *bad]

        return tag

    mixed = op.merge(
        "merge",
        op.flat_map_batch("shard_left", left, tagger(LEFT)),
        op.flat_map_batch("shard_right", right, tagger(RIGHT)),
    )
    return _split_tagged(step_id, mixed)


def _frame_tagger(
    side: int, key: str, shards: int, step_id: str, control: type | None = None
) -> Callable[[list[Any]], list[Any]]:
    """A batch function: one side's frames to ``(shard, [(side, part), ...])`` chunks, then rejections.

    Frames go through :func:`~streamml.operators._core.keys.frame_sharder`
    (``BadItem``, ``BadKey``); ``control`` items go to every shard as
    ``(CONTROL, item)``, in their place among the frames.
    """
    names = [str(i) for i in range(shards)]
    sharder = frame_sharder(step_id, key=key, shards=shards)

    def tag(batch: list[Any]) -> list[Any]:
        chunks: dict[str, list] = {}
        bad: list[Any] = []
        for item in batch:
            if control is not None and type(item) is control:
                for name in names:
                    chunks.setdefault(name, []).append((CONTROL, item))
                continue
            for out in sharder([item]):
                if isinstance(out, Rejected):
                    bad.append(out)
                else:
                    chunks.setdefault(out[0], []).append((side, out[1]))
        return [*chunks.items(), *bad]

    return tag


@operator
def tag_frames(
    step_id: str,
    left: Stream[Any],
    right: Stream[Any],
    key: str,
    shards: int,
    control: type | None = None,
) -> Tagged:
    """Route both sides' frames to shards by the ``key`` column: ``(shard, [(side, frame), ...])``.

    Rows with a bad key become ``BadKey`` rejections (see
    :func:`~streamml.operators._core.keys.route`), an item that is not a
    frame a ``BadItem``; ``control`` items of the right side go to every
    shard as ``(CONTROL, item)``.
    """
    full_id = f"{step_id}.route"
    mixed = op.merge(
        "merge",
        op.flat_map_batch("shard_left", left, _frame_tagger(LEFT, key, shards, full_id)),
        op.flat_map_batch(
            "shard_right", right, _frame_tagger(RIGHT, key, shards, full_id, control)
        ),
    )
    return _split_tagged(step_id, mixed)


@operator
def tag_frames_table(
    step_id: str,
    left: Stream[Any],
    right: Stream[Any],
    key: str,
    shards: int,
    control: type | None = None,
) -> Tagged:
    """Route left frames by their ``key`` column and a right changelog's ``(key, row)`` items.

    For a stream–table join on frames: the left side is a stream of frames
    (routed as in :func:`tag_frames`: ``BadKey`` by
    :func:`~streamml.operators._core.keys.route`, ``BadItem`` for an item
    that is not a frame), the right side the table's changelog, rows as in
    :func:`tag_sides` (a ``BadKey`` for an item that is not a ``(str,
    item)`` pair). A chunk is ``(shard, [(LEFT, frame) | (RIGHT, [(key, row),
    ...]) | (CONTROL, marker), ...])``: a run of changelog rows is one list,
    and ``control`` items (bootstrap markers) go to every shard, behind the
    rows that came before them.
    """
    names = [str(i) for i in range(shards)]
    full_id = f"{step_id}.route"

    shard_of: dict[str, str] = {}  # key -> shard name (a memo of the CRC-32 below)

    def tag_right(batch: list[Any]) -> list[Any]:
        crc = zlib.crc32
        chunks: dict[str, list] = {}
        bad: list[Any] = []
        for item in batch:
            if type(item) is tuple and len(item) == 2 and type(item[0]) is str:
                k = item[0]
                name = shard_of.get(k)
                if name is None:
                    if len(shard_of) >= _CACHE_KEYS:
                        shard_of.clear()
                    name = shard_of[k] = names[crc(k.encode("utf-8", "surrogatepass")) % shards]
                chunk = chunks.setdefault(name, [])
                if chunk and chunk[-1][0] == RIGHT:
                    chunk[-1][1].append(item)
                else:
                    chunk.append((RIGHT, [item]))
            elif control is not None and type(item) is control:
                for name in names:
                    chunks.setdefault(name, []).append((CONTROL, item))
            else:
                bad.append(Rejected(full_id, "BadKey", _bad_row(item), item))
        return [*chunks.items(), *bad]

    mixed = op.merge(
        "merge",
        op.flat_map_batch("shard_left", left, _frame_tagger(LEFT, key, shards, full_id)),
        op.flat_map_batch("shard_right", right, tag_right),
    )
    return _split_tagged(step_id, mixed)


class Chunked(StatefulBatchLogic[list, Any, Any]):
    """A shard logic fed the chunks of :func:`tag_sides`/:func:`tag_frames`: it sees their items.

    Everything else (notifications, end of input, snapshots) is the wrapped
    logic's own.

    Examples:
        >>> class Echo(StatefulBatchLogic):
        ...     def on_batch(self, values):
        ...         return [values], False
        ...     def snapshot(self):
        ...         return None
        >>> Chunked(Echo()).on_batch([[(0, "a", 1), (0, "b", 2)], [(1, "a", 3)]])
        ([[(0, 'a', 1), (0, 'b', 2), (1, 'a', 3)]], False)
    """

    def __init__(self, inner: StatefulBatchLogic) -> None:
        self.inner = inner

    def on_batch(self, values: list[list]) -> tuple[Iterable[Any], bool]:
        if len(values) == 1:
            return self.inner.on_batch(values[0])
        return self.inner.on_batch([x for chunk in values for x in chunk])

    def on_notify(self) -> tuple[Iterable[Any], bool]:
        return self.inner.on_notify()

    def on_eof(self) -> tuple[Iterable[Any], bool]:
        return self.inner.on_eof()

    def notify_at(self) -> datetime | None:
        return self.inner.notify_at()

    def snapshot(self) -> Any:
        return self.inner.snapshot()


def read_groups(
    step_id: str,
    values: Sequence[tuple[int, list[tuple[str, Any]]]],
    getters: tuple[Callable[[Any], datetime], ...],
    errs: list[Rejected],
) -> tuple[list[tuple[str, Any]], np.ndarray, np.ndarray]:
    """The ``(key, item)`` pairs of a call's grouped chunks (``tag_sides(grouped=True)``)
    whose time could be read, their times (µs) and sides, in arrival order.

    One getter per chunk, no tuple made per row; an unreadable time (see
    :func:`side_times`) is a ``BadTimestamp`` whose reason names what the
    getter raised, as the frame paths and the other families say it.

    Examples:
        >>> from datetime import datetime, timezone
        >>> t = datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc)
        >>> errs = []
        >>> pairs, ts, sides = read_groups(
        ...     "s", [(0, [("a", {"ts": t})]), (1, [("b", {"ts": None})])], (lambda e: e["ts"],) * 2, errs)
        >>> pairs, ts.tolist(), sides.tolist(), [r.error_type for r in errs]
        ([('a', {'ts': datetime.datetime(1970, 1, 1, 0, 0, 1, tzinfo=datetime.timezone.utc)})], [1000000], [0], ['BadTimestamp'])
    """
    chunks, times, counts, sides = [], [], [], []
    for side, items in values:
        bad: list[Rejected] = []
        items, t = side_times(step_id, items, getters[side], bad)
        for r in bad:
            why = f"cannot read the event time ({r.error_type}: {r.reason})"
            errs.append(Rejected(r.step_id, "BadTimestamp", why, r.original))
        if items:
            chunks.append(items)
            times.append(t)
            counts.append(len(items))
            sides.append(side)
    if len(chunks) == 1:
        return chunks[0], times[0], np.full(counts[0], sides[0], dtype=np.int64)
    if not chunks:
        return [], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    side_arr = np.array(sides, dtype=np.int64).repeat(counts)  # the method: no np.repeat wrapper
    pairs = chunks[0].copy()
    for more in chunks[1:]:  # list += list copies references at C speed (chain: one by one)
        pairs += more
    return pairs, np.concatenate(times), side_arr


def side_times(
    step_id: str,
    items: list[tuple[str, Any]],
    getter: Callable[[Any], datetime],
    errs: list[Rejected],
) -> tuple[list[tuple[str, Any]], np.ndarray]:
    """The ``(key, item)`` pairs of one side whose time could be read, and their times (µs).

    For a chunk of :func:`tag_sides` with ``grouped=True``. A getter that
    raises, returns something that is not an aware datetime, or a time
    beyond ±146,000 years rejects just that item (into ``errs``, as
    ``(key, item)``); the rest of the chunk keeps the fast path.
    """
    epoch, us = _EPOCH, _US
    try:
        out = np.array([(getter(v) - epoch) // us for _, v in items], dtype=np.int64)
        if not len(out) or (lowest(out) >= MIN_TS and highest(out) <= MAX_TS):
            return items, out
    except Exception:  # noqa: BLE001 - some item is bad; find it item by item
        pass
    rows, times = [], []
    for k, v in items:
        try:
            t = (getter(v) - epoch) // us
            if not MIN_TS <= t <= MAX_TS:
                raise ValueError(f"timestamp {getter(v)} is out of range")
        except Exception as exc:  # noqa: BLE001 - bad data goes to errs, never raises
            errs.append(reject(step_id, exc, (k, v)))
            continue
        rows.append((k, v))
        times.append(t)
    return rows, np.array(times, dtype=np.int64)


def frame_times(
    step_id: str, frame: pl.DataFrame, timestamp: str, errs: list[Rejected]
) -> tuple[pl.DataFrame, np.ndarray]:
    """The rows of ``frame`` whose event time is usable, and their times (int64 µs).

    The others go to ``errs`` as ``BadTimestamp`` (see
    :func:`~streamml.operators._core.columns.frame_times`).
    """
    good, us, bad = checked_times(frame, step_id=step_id, timestamp=timestamp)
    errs.extend(bad)
    return good, us


class RowStore:
    """A shard's stored rows of one side of a frame join, addressed by integer ids.

    Rows are appended frame by frame under the join's ids; :meth:`drop`
    forgets ids and the store compacts once most of its rows (and more than
    1,024) are dead.
    Eviction: the join drops every id it releases.

    Examples:
        >>> s = RowStore()
        >>> s.add(pl.DataFrame({"k": ["a", "b"], "x": [1, 2]}), np.array([0, 1]))
        >>> s.add(pl.DataFrame({"k": ["c"], "x": [3]}), np.array([5]))
        >>> s.drop([0])
        >>> s.gather([5, 1])["x"].to_list()
        [3, 2]
    """

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.frame: pl.DataFrame | None = None
        self.ids = np.zeros(0, dtype=np.int64)
        self.alive = np.zeros(0, dtype=bool)
        self.dead = 0
        self.layout: tuple[list[str], list[Any]] | None = None  # the stored columns and types
        if data is not None:
            self.frame = None if data["frame"] is None else frame_from_bytes(data["frame"])
            self.ids = np.asarray(data["ids"], dtype=np.int64)
            self.alive = np.ones(len(self.ids), dtype=bool)
            if self.frame is not None:
                self.layout = (self.frame.columns, self.frame.dtypes)

    def fits(self, frame: pl.DataFrame, pending: Sequence[pl.DataFrame] = ()) -> str | None:
        """Why ``frame`` cannot join the stored rows and ``pending`` (``None`` if it can).

        ``pending``: the frames of this side accepted earlier in the same call,
        stored together with ``frame`` after it.

        Examples:
            >>> s = RowStore()
            >>> s.fits(pl.DataFrame({"x": [b"a"]}), [pl.DataFrame({"x": [1]})]) is not None
            True
        """
        layout = (frame.columns, frame.dtypes)
        before = [f for f in (self.frame, *pending) if f is not None]
        if all((f.columns, f.dtypes) == layout for f in before):
            return None
        try:
            pl.concat([f.head(0) for f in (*before, frame)], how="diagonal_relaxed")
        except Exception as exc:  # noqa: BLE001 - polars names the clash
            return f"columns do not fit the rows of earlier frames: {exc}"
        return None

    def add(self, frame: pl.DataFrame, ids: np.ndarray, alive: np.ndarray | None = None) -> None:
        """Store the rows of ``frame`` under ``ids`` (ascending, above every stored id).

        Rows with ``alive`` false are stored already dropped (a frame is
        kept whole instead of gathered without its late rows).
        """
        n = frame.height
        if self.frame is None or not self.frame.height:
            self.frame = frame
        elif self.layout == (frame.columns, frame.dtypes):
            self.frame = self.frame.vstack(frame)  # a chunk more, nothing copied
            if self.frame.n_chunks() > 8:  # gathers slow down with chunks
                self.frame = self.frame.rechunk()
        else:
            self.frame = pl.concat([self.frame, frame], how="diagonal_relaxed", rechunk=True)
        self.layout = (self.frame.columns, self.frame.dtypes)
        self.ids = np.concatenate([self.ids, ids])
        self.alive = np.concatenate(
            [self.alive, np.ones(n, dtype=bool) if alive is None else alive]
        )
        if alive is not None:
            self.dead += n - int(np.count_nonzero(alive))
            self._compact()

    def drop(self, ids: Sequence[int] | np.ndarray) -> None:
        """Forget rows (ids not stored are ignored)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids) or not len(self.ids):
            return
        pos = np.searchsorted(self.ids, ids)
        found = pos < len(self.ids)
        found[found] = self.ids[pos[found]] == ids[found]
        pos = pos[found]
        hit = pos[self.alive[pos]]
        self.alive[hit] = False
        self.dead += len(hit)
        self._compact()

    def _compact(self) -> None:
        """Drop the dead rows once they are most of the store (and over 1,024)."""
        if self.dead > max(len(self.ids) - self.dead, 1024):  # dead rows cost memory only
            keep = np.flatnonzero(self.alive)
            if self.frame is not None:
                self.frame = self.frame[pl.Series(keep.astype(np.uint32))]
            self.ids, self.alive, self.dead = self.ids[keep], self.alive[keep], 0

    def gather(self, ids: Sequence[int] | np.ndarray) -> pl.DataFrame:
        """The stored rows of ``ids``, in that order."""
        if self.frame is None:
            return pl.DataFrame()
        pos = np.searchsorted(self.ids, np.asarray(ids, dtype=np.int64))
        return self.frame[pl.Series(pos.astype(np.uint32))]  # 2x a NumPy index's speed

    def snapshot_data(self) -> dict[str, Any]:
        keep = np.flatnonzero(self.alive)
        frame = None if self.frame is None else frame_to_bytes(self.frame[keep])
        return {"frame": frame, "ids": self.ids[keep].copy()}


def unfit(
    step_id: str,
    store: RowStore,
    side: int,
    frame: pl.DataFrame,
    accepted: Sequence[tuple[int, pl.DataFrame]],
    errs: list[Rejected],
) -> bool:
    """Whether ``frame`` cannot be stored with ``store``'s rows and the call's ``accepted``
    ``(side, frame)`` pairs of its ``side``; if so, each of its rows is a ``BadItem`` in ``errs``.

    Examples:
        >>> errs = []
        >>> unfit("s", RowStore(), 0, pl.DataFrame({"x": [b"a"]}), [(0, pl.DataFrame({"x": [1]}))], errs)
        True
        >>> [(r.error_type, r.original) for r in errs]
        [('BadItem', {'x': b'a'})]
    """
    why = store.fits(frame, [f for s, f in accepted if s == side])
    if why is None:
        return False
    errs.extend(Rejected(step_id, "BadItem", why, r) for r in frame.to_dicts())
    return True


def joined_names(left: Sequence[str], right: Sequence[str], key: str, suffix: str) -> list[str]:
    """The names of the right side's columns in a joined frame (its key column left out).

    Examples:
        >>> joined_names(["id", "ts", "x"], ["id", "ts", "y"], "id", "_right")
        ['ts_right', 'y']
    """
    taken = set(left)
    return [name + suffix if name in taken else name for name in right if name != key]


def joined_frame(
    left: pl.DataFrame, right: pl.DataFrame | None, key: str, suffix: str
) -> pl.DataFrame:
    """Left rows beside right rows (row by row); ``right=None`` gives nulls for an outer join.

    Examples:
        >>> joined_frame(pl.DataFrame({"k": ["a"], "x": [1]}), pl.DataFrame({"k": ["a"], "x": [2]}),
        ...              "k", "_right").rows(named=True)
        [{'k': 'a', 'x': 1, 'x_right': 2}]
    """
    if right is None:
        return left
    names = joined_names(left.columns, right.columns, key, suffix)
    cols = [c for c in right.get_columns() if c.name != key]
    return pl.DataFrame(left.get_columns() + [c.alias(n) for c, n in zip(cols, names)])


@dataclass(frozen=True)
class Outputs:
    """The split streams of a shard step."""

    oks: Stream[Any]
    errs: Stream[Rejected]
    late: Stream[Rejected]


def pick(i: int) -> Callable[[list[tuple[str, tuple[list, ...]]]], Iterable[Any]]:
    """A ``flat_map_batch`` function taking list ``i`` of each shard step's output tuple."""

    def take(batch: list[tuple[str, tuple[list, ...]]]) -> list[Any]:
        out: list[Any] = []
        for _, lists in batch:
            out += lists[i]  # ~4x chain.from_iterable's speed on a few hundred items
        return out

    return take


@operator
def split_outputs(step_id: str, up: Stream[tuple[str, tuple[list, list, list]]]) -> Outputs:
    """Unpack the shard steps' ``(shard, (oks, errs, late))`` items into three streams."""
    return Outputs(
        oks=op.flat_map_batch("oks", up, pick(0)),
        errs=op.flat_map_batch("errs", up, pick(1)),
        late=op.flat_map_batch("late", up, pick(2)),
    )


NEVER = -(2**62)
"""A timestamp before every real one."""


def late_records(
    step_id: str, adm: Admission, ts: np.ndarray, original: Callable[[int], Any]
) -> list[Rejected]:
    """The ``Late`` records of an admission's late rows (``original(i)`` gives batch row ``i``).

    The reason says how far behind its key's watermark a row was (about
    0.4 µs a record, against ~6 µs for three ISO times).

    Examples:
        >>> from streamml.operators._core.event_time import KeyedEventTime
        >>> et = KeyedEventTime(max_delay=timedelta(seconds=1))
        >>> ts = np.array([5_000_000, 2_500_000])
        >>> adm = et.admit(["a", "a"], ts)
        >>> [r.reason for r in late_records("s", adm, ts, lambda i: i)]
        ["1.5 s older than key 'a''s watermark"]
    """
    behind = ((adm.late_mark - ts[adm.late]) / 1e6).tolist()
    keys = adm._keys
    return [
        Rejected(
            step_id,
            "Late",
            f"{b:g} s older than the horizon of forgotten keys"
            if unknown
            else f"{b:g} s older than key {keys[i]!r}'s watermark",
            original(i),
        )
        for i, b, unknown in zip(adm.late.tolist(), behind, adm.late_unknown.tolist())
    ]
