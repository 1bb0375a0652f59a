"""Interval join (Flink's): same-key events whose timestamps are within a bound of each other.

One implementation, two entry points: frames (``key=`` a column, each side
a stream of ``polars.DataFrame``) and ``(key, event)`` rows (``key=None``,
the legacy path). Both put their rows through :class:`IntervalCore`, one
per shard; only how a batch is read and how pairs are written back differ
(rows: ``(key, (left, right))``; frames: one frame of the joined columns).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import chain, repeat
from operator import itemgetter
from typing import Any, Literal

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from streamml.operators import _validate
from streamml.operators._core.state import snapshot
from streamml.operators.join._interval_core import (
    _EMPTY,
    _NO_PAIRS,
    IntervalCore,
    Pairs,
    _from_legacy,
    _from_v1,
)
from streamml.operators.join._legacy import _Buffer, _IntervalState
from streamml.operators.join._resume import resumed
from streamml.operators.join._shards import (
    Chunked,
    RowStore,
    frame_times,
    joined_frame,
    late_records,
    micros,
    side_times,
    split_outputs,
    tag_frames,
    tag_sides,
    unfit,
)

from streamml.errors import Rejected
from streamml.metrics import instrumented

__all__ = ["IntervalCore", "JoinOut", "interval_join"]

# Kept importable here for recovery stores of the previous release (see _legacy).
_LEGACY = (_Buffer, _IntervalState)

_KIND = "streamml.join.interval"
_VERSION = 2


@dataclass(frozen=True)
class JoinOut:
    """The streams of a time-based join."""

    oks: KeyedStream[Any] | Stream[pl.DataFrame]
    """Joined items ``(key, (left, right))``, or joined frames."""

    errs: Stream[Rejected]
    """Items whose key or timestamp could not be read."""

    late: Stream[Rejected]
    """Items older than their key's watermark on arrival (``error_type="Late"``)."""


class _Logic(StatefulBatchLogic):
    """One shard's Bytewax state: an :class:`IntervalCore` and how batches are read and written."""

    path = ""

    def __init__(self, cfg: _Config, resume: Any) -> None:
        self.cfg = cfg
        upgrades = {0: lambda old: _from_legacy(old, cfg.lower, cfg.upper), 1: _from_v1}
        data = resumed(resume, kind=_KIND, version=_VERSION, upgrades=upgrades)
        if data is not None and data["path"] != self.path:
            raise ValueError(
                f"the recovery store holds the {data['path']} path's state of this "
                f"interval join; it now reads {self.path}: use a new recovery store"
            )
        self.core = IntervalCore(
            lower=cfg.lower,
            upper=cfg.upper,
            lateness=cfg.lateness,
            outer=cfg.outer,
            ttl=cfg.ttl,
            idle_release=cfg.idle_release,
            clock=cfg.clock,
            data=None if data is None else data["core"],
        )
        self._restore_extra(data)

    def _restore_extra(self, data: dict[str, Any] | None) -> None:
        pass

    def _extra(self) -> dict[str, Any]:
        return {}

    def _write(
        self, pairs: Any, lost: np.ndarray, evicted: np.ndarray, is_left: np.ndarray
    ) -> list:
        raise NotImplementedError

    def _out(self, pairs: Any, errs: list, late: list, eof: bool = False) -> list:
        evicted, is_left, lost = self.core.release(eof=eof, may_wait=True)
        oks = self._write(pairs, lost, evicted, is_left)
        return [(oks, errs, late)] if oks or errs or late else []

    def notify_at(self) -> datetime | None:
        return self.core.et.notify_at()

    def on_notify(self) -> tuple[list, bool]:
        return self._out(self._none, [], []), False

    def on_eof(self) -> tuple[list, bool]:
        return self._out(self._none, [], [], eof=True), False

    def snapshot(self) -> dict[str, Any]:
        if self.core.waited:  # an inner join: evict what was due, nothing to emit, so the
            evicted, is_left, lost = self.core.release()  # snapshot is the same as without
            self._write(self._none, lost, evicted, is_left)
        data = {"path": self.path, "core": self.core.snapshot_data(), **self._extra()}
        return snapshot(_KIND, _VERSION, data)


class _RowLogic(_Logic):
    """``(side, key, event)`` rows in, ``(key, (left, right))`` out (the legacy path).

    The core pairs ids; ``events`` (and, for a left outer join, ``keys``)
    say what each stored id stands for. Eviction: an id leaves both when
    the core releases it.
    """

    path = "rows"
    _none: list = []  # no pairs (never appended to: _write copies)

    def __init__(self, cfg: _Config, resume: Any) -> None:
        self.events: dict[int, Any] = {}
        self.keys: dict[int, str] = {}  # unmatched left ids (left outer join): their key
        super().__init__(cfg, resume)

    def _restore_extra(self, data: dict[str, Any] | None) -> None:
        if data is not None:
            stored = data["events"]
            self.events = dict(zip(stored["ids"], stored["events"]))
            self.keys = dict(zip(self.core.unmatched.ids().tolist(), stored["keys"]))

    def _extra(self) -> dict[str, Any]:
        ids = sorted(self.events)
        return {
            "events": {
                "ids": ids,
                "events": [self.events[i] for i in ids],
                "keys": [self.keys[i] for i in self.core.unmatched.ids().tolist()],
            }
        }

    def on_batch(self, values: list[tuple[int, list[tuple[str, Any]]]]) -> tuple[list, bool]:
        cfg = self.cfg
        errs: list[Rejected] = []
        late: list[Rejected] = []
        getters = cfg.getters
        rows, ts, side = self._read(values, getters, errs)
        if not rows:
            return self._out([], errs, late), False
        keys, events = zip(*rows)
        adm, ids, pairs = self.core.add(side, keys, ts)
        n = len(adm.ok)
        if n < len(rows):
            ids = ids[adm.ok]
            ok = adm.ok.tolist()
            keys, events = [keys[i] for i in ok], [events[i] for i in ok]
            if len(adm.late):
                late = late_records(cfg.step_id, adm, ts, rows.__getitem__)
        if n:
            id_list = ids.tolist()
            self.events.update(zip(id_list, events))
            if cfg.outer:
                self.keys.update(zip(id_list, keys))
        out = self._pairs(pairs, keys, events) if len(pairs.q) else []
        return self._out(out, errs, late), False

    def _pairs(self, pairs: Pairs, keys: Sequence[str], events: Sequence[Any]) -> list:
        """``(key, (left, right))`` of the batch's pairs: those a left row completed, then
        those a right row completed (each in arrival order). The completing row and its key
        come from the batch, its partner from the stored events (this batch's included)."""
        stored = self.events
        q_left = pairs.q_left
        out: list = []
        for completed_by_left in (True, False):
            sel = q_left if completed_by_left else ~q_left
            n = int(np.count_nonzero(sel))
            if not n:
                continue
            if n == len(sel):
                q, partner = pairs.q.tolist(), pairs.partner.tolist()
            else:
                q, partner = pairs.q[sel].tolist(), pairs.partner[sel].tolist()
            if n == 1:
                pair_keys, mine, theirs = (keys[q[0]],), (events[q[0]],), (stored[partner[0]],)
            else:
                get = itemgetter(*q)
                pair_keys, mine, theirs = get(keys), get(events), itemgetter(*partner)(stored)
            if completed_by_left:
                out += zip(pair_keys, zip(mine, theirs))
            else:
                out += zip(pair_keys, zip(theirs, mine))
        return out

    def _read(
        self, values: list[tuple[int, list[tuple[str, Any]]]], getters: tuple, errs: list
    ) -> tuple[list[tuple[str, Any]], np.ndarray, np.ndarray]:
        """The call's ``(key, event)`` pairs whose time could be read, their times and sides."""
        step_id = self.cfg.step_id
        if not values:
            return [], _EMPTY, _EMPTY
        sides = np.array([s for s, _ in values], dtype=np.int64)
        counts = [len(items) for _, items in values]
        if len(values) == 1 or getters[0] is getters[1]:  # one getter: one pass over the rows
            rows = (
                values[0][1]
                if len(values) == 1
                else list(chain.from_iterable(v for _, v in values))
            )
            bad: list[Rejected] = []
            good, ts = side_times(step_id, rows, getters[values[0][0]], bad)
            if not bad:
                return good, ts, np.repeat(sides, counts)
        chunks, times = [], []
        for i, (s, items) in enumerate(values):  # chunks of one side's (key, event) pairs
            items, t = side_times(step_id, items, getters[s], errs)
            chunks.append(items)
            times.append(t)
            counts[i] = len(items)
        rows = list(chain.from_iterable(chunks))
        return rows, np.concatenate(times), np.repeat(sides, counts)

    def _write(
        self, pairs: list, lost: np.ndarray, evicted: np.ndarray, is_left: np.ndarray
    ) -> list:
        out = pairs
        events = self.events
        if len(lost):
            lost_ids = lost.tolist()
            keys = map(self.keys.__getitem__, lost_ids)
            out = out + list(zip(keys, zip(map(events.__getitem__, lost_ids), repeat(None))))
        if len(evicted) == len(events):  # all of them (end of input)
            events.clear()
            self.keys.clear()
        elif len(evicted):
            gone = evicted.tolist()
            deque(map(events.pop, gone), maxlen=0)
            if self.cfg.outer:
                deque(map(self.keys.pop, gone, repeat(None)), maxlen=0)
        return out


class _FrameLogic(_Logic):
    """``(side, frame)`` in, joined frames out.

    The core pairs ids; ``stores`` keep each side's accepted rows under
    their ids. Eviction: a row leaves its store when the core releases it.
    """

    path = "frames"
    _none = _NO_PAIRS

    def __init__(self, cfg: _Config, resume: Any) -> None:
        self.stores = (RowStore(), RowStore())
        super().__init__(cfg, resume)

    def _restore_extra(self, data: dict[str, Any] | None) -> None:
        if data is not None:
            self.stores = (RowStore(data["stores"][0]), RowStore(data["stores"][1]))

    def _extra(self) -> dict[str, Any]:
        return {"stores": [s.snapshot_data() for s in self.stores]}

    def on_batch(self, values: list[tuple[int, pl.DataFrame]]) -> tuple[list, bool]:
        cfg = self.cfg
        errs: list[Rejected] = []
        late: list[Rejected] = []
        frames: list[tuple[int, pl.DataFrame]] = []
        times: list[np.ndarray] = []
        for side, frame in values:
            if unfit(cfg.step_id, self.stores[side], side, frame, frames, errs):
                continue
            frame, ts = frame_times(cfg.step_id, frame, cfg.timestamps[side], errs)
            if frame.height:
                frames.append((side, frame))
                times.append(ts)
        if not frames:
            return self._out(_NO_PAIRS, errs, late), False
        # One admission for the whole call: the frames' rows in arrival order.
        if len(frames) == 1:
            side, frame = frames[0]
            sides = np.full(frame.height, side, dtype=np.int64)
            keys = frame.get_column(cfg.key).to_list()
            ts = times[0]
        else:
            sides = np.concatenate([np.full(f.height, s, dtype=np.int64) for s, f in frames])
            keys = [k for _, f in frames for k in f.get_column(cfg.key).to_list()]
            ts = np.concatenate(times)
        adm, ids, pairs = self.core.add(sides, keys, ts)
        starts = np.cumsum([0] + [f.height for _, f in frames])
        if len(adm.late):  # the late rows as dicts, one polars call per frame
            which = np.searchsorted(starts, adm.late, side="right") - 1
            originals: dict[int, Any] = {}
            for j in np.unique(which).tolist():
                rows_j = adm.late[which == j]
                dicts = frames[j][1][rows_j - int(starts[j])].to_dicts()
                originals.update(zip(rows_j.tolist(), dicts))
            late = late_records(cfg.step_id, adm, ts, originals.__getitem__)
        accepted = None
        if len(adm.ok) < len(ts):
            accepted = np.zeros(len(ts), dtype=bool)
            accepted[adm.ok] = True
        for j, (side, frame) in enumerate(frames):  # kept whole: late rows are stored dead
            a, b = int(starts[j]), int(starts[j + 1])
            self.stores[side].add(frame, ids[a:b], None if accepted is None else accepted[a:b])
        return self._out(pairs, errs, late), False

    def _write(
        self, pairs: Pairs, lost: np.ndarray, evicted: np.ndarray, is_left: np.ndarray
    ) -> list:
        cfg = self.cfg
        lefts, rights = self.stores
        out = []
        if len(pairs.q):
            left_ids, right_ids = pairs.ids()
            left, right = lefts.gather(left_ids), rights.gather(right_ids)
            out.append(joined_frame(left, right, cfg.key, cfg.suffix))
        if len(lost):
            out.append(lefts.gather(lost))
        if len(evicted):
            lefts.drop(evicted[is_left])
            rights.drop(evicted[~is_left])
        if len(out) == 2:
            return [pl.concat(out, how="diagonal_relaxed")]
        return out


@dataclass(frozen=True)
class _Config:
    step_id: str
    lower: int
    upper: int
    lateness: timedelta
    outer: bool
    ttl: timedelta | None
    idle_release: timedelta | None
    getters: tuple[Callable[[Any], datetime], Callable[[Any], datetime]] | None = None
    key: str = ""
    timestamps: tuple[str, str] = ("", "")
    suffix: str = "_right"
    clock: Callable[[], float] = time.time


def _default_ttl(lower: timedelta, upper: timedelta, lateness: timedelta) -> timedelta:
    """How long a key must stay to match: the interval's reach and the lateness, plus an hour."""
    return max(upper, -lower, timedelta(0)) + lateness + timedelta(hours=1)


@operator
@instrumented
def interval_join(
    step_id: str,
    left: KeyedStream[Any] | Stream[pl.DataFrame],
    right: KeyedStream[Any] | Stream[pl.DataFrame],
    *,
    left_ts: Callable[[Any], datetime] | str,
    right_ts: Callable[[Any], datetime] | str | None = None,
    lower: timedelta,
    upper: timedelta,
    lateness: timedelta = timedelta(0),
    how: Literal["inner", "left"] = "inner",
    key: str | None = None,
    suffix: str = "_right",
    ttl: timedelta | None = None,
    idle_release: timedelta | None = None,
    shards: int = 16,
) -> JoinOut:
    """Join same-key events with ``left.ts + lower <= right.ts <= left.ts + upper``.

    Use it to pair events of two streams that belong together in time — a
    click with the purchase that followed within 30 minutes, a sensor alarm
    with the maintenance ticket opened around it. Every matching pair is
    emitted once, as soon as its second event arrives. With ``how="left"``, a
    left event that matched nothing is emitted once when its key's
    watermark passes ``left.ts + upper`` (with no right columns: ``None``
    for rows, nulls in a frame).

    Frames are the unit: with ``key=`` a column name, ``left`` and ``right``
    are streams of ``polars.DataFrame`` and ``left_ts``/``right_ts`` name
    their event-time columns (a time-zone-aware ``Datetime`` or epoch-ms
    integers). Each output frame holds the left row's columns, then the
    right row's columns without the key column; a right column whose name
    is also a left column gets ``suffix`` (``ts`` → ``ts_right``). With
    ``key=None`` (the legacy path), both sides are keyed streams of
    ``(key, event)`` with ``key`` a ``str``, ``left_ts``/``right_ts``
    functions returning an aware ``datetime``, and the output is
    ``(key, (left, right))``. Both paths run the same implementation.

    Time is event time, per key (see
    :mod:`streamml.operators._core.event_time`): a key's watermark is the
    newest timestamp of its events on either side minus ``lateness``; an
    event older than its key's watermark on arrival goes to ``late``.
    Whether an event is late depends only on its key's own events in
    arrival order: not on ``shards=``, workers or batch boundaries (before
    this release the watermark was one per shard). State is dropped as a
    key's watermark passes it (a left event after ``ts + upper``, a right
    event after ``ts - lower``), and a key idle for ``ttl`` of its shard's
    event time is forgotten with its events (unmatched left events are
    emitted first); its very old events are late afterwards. When both
    inputs end, unmatched left events are emitted (``how="left"``).

    A bad key (not text; for frames see
    :func:`~streamml.operators._core.keys.route`), an item that is not a
    ``(key, event)`` pair or a frame, and a bad timestamp go to ``errs``;
    nothing raises.

    Args:
        step_id: Unique step id.
        left: Left frames, or keyed left events ``(key, event)``.
        right: Right frames, or keyed right events.
        left_ts: Event-time column of the left frames, or timestamp function
            of a left event.
        right_ts: The same for the right side; ``left_ts`` when omitted.
        lower: Lower bound of ``right.ts - left.ts`` (may be negative).
        upper: Upper bound of ``right.ts - left.ts``; ``>= lower``.
        lateness: How far out of order events may arrive.
        how: ``"inner"`` or ``"left"`` (left outer).
        key: The key column of both sides' frames; ``None`` for rows.
        suffix: Added to right column names that clash with left ones.
        ttl: Forget a key idle this long (event time of its shard); at least
            the interval's reach plus ``lateness``; by default that plus an
            hour.
        idle_release: Let a stored event leave after this long in wall-clock
            time even if its key's watermark has not passed it (an
            unmatched left event is emitted then); its key's watermark moves
            up to where it would have left. ``None``: only event time.
        shards: Number of state shards (keys are spread over them by CRC32).

    Returns:
        :class:`JoinOut`: ``oks`` (joined frames, or ``(key, (left, right))``
        with ``right`` ``None`` for an unmatched left event), ``errs`` and
        ``late``.

    Examples:
        Frames:

        >>> from datetime import datetime, timedelta, timezone
        >>> import polars as pl
        >>> from bytewax.dataflow import Dataflow
        >>> import bytewax.operators as op
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> flow = Dataflow("interval_frames_doc")
        >>> clicks = op.input("clicks", flow, TestingSource([
        ...     pl.DataFrame({"user": ["u1", "u2"], "ad": ["a", "b"], "ts": [0, 1_000]})]))
        >>> buys = op.input("buys", flow, TestingSource([
        ...     pl.DataFrame({"user": ["u1", "u2"], "sku": [7, 9], "ts": [5_000, 60_000]})]))
        >>> out = interval_join("attribute", clicks, buys, key="user", left_ts="ts",
        ...                     lower=timedelta(0), upper=timedelta(seconds=30), how="left")
        >>> got = []
        >>> op.output("out", out.oks, TestingSink(got))
        >>> run_main(flow)
        >>> result = pl.concat(got, how="diagonal_relaxed").sort("user")
        >>> result.columns
        ['user', 'ad', 'ts', 'sku', 'ts_right']
        >>> result.rows()
        [('u1', 'a', 0, 7, 5000), ('u2', 'b', 1000, None, None)]

        Rows:

        >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> at = lambda s: t0 + timedelta(seconds=s)
        >>> flow = Dataflow("interval_doc")
        >>> clicks = op.input("clicks", flow, TestingSource([
        ...     ("u1", {"ad": "a", "ts": at(0)}), ("u2", {"ad": "b", "ts": at(1)})]))
        >>> buys = op.input("buys", flow, TestingSource([
        ...     ("u1", {"sku": 7, "ts": at(5)}), ("u2", {"sku": 9, "ts": at(60)})]))
        >>> out = interval_join("attribute", clicks, buys, left_ts=lambda e: e["ts"],
        ...                     lower=timedelta(0), upper=timedelta(seconds=30), how="left")
        >>> got = []
        >>> op.output("out", out.oks, TestingSink(got))
        >>> run_main(flow)
        >>> for key, (click, buy) in sorted(got, key=lambda kv: kv[0]):
        ...     print(key, click["ad"], buy and buy["sku"])
        u1 a 7
        u2 b None
    """
    _validate.duration("lower", lower, minimum="any")
    _validate.duration("upper", upper, minimum="any")
    _validate.duration("lateness", lateness)
    _validate.duration("ttl", ttl, minimum="positive", optional=True)
    _validate.duration("idle_release", idle_release, minimum="positive", optional=True)
    _validate.count("shards", shards)
    if upper < lower:
        raise ValueError(f"upper must be >= lower; got lower={lower}, upper={upper}")
    if how not in ("inner", "left"):
        raise ValueError(f"how must be 'inner' or 'left'; got {how!r}")
    least = max(upper, -lower, timedelta(0)) + lateness
    if ttl is None:
        ttl = _default_ttl(lower, upper, lateness)
    if ttl <= timedelta(0) or ttl < least:
        raise ValueError(
            f"ttl must be > 0 and >= the interval's reach plus lateness ({least}); got {ttl}"
        )
    right_ts = left_ts if right_ts is None else right_ts
    common = dict(
        step_id=f"{step_id}.join",
        lower=micros(lower),
        upper=micros(upper),
        lateness=lateness,
        outer=how == "left",
        ttl=ttl,
        idle_release=idle_release,
    )
    if key is None:
        if not callable(left_ts) or not callable(right_ts):
            raise ValueError(
                "with key=None, both sides are keyed (key, event) streams and left_ts/right_ts "
                "must be functions of an event; for frames, give key= the key column's name"
            )
        cfg = _Config(getters=(left_ts, right_ts), **common)
        tagged = tag_sides("shard", left, right, shards, grouped=True)
        joined = op.stateful_batch("join", tagged.chunks, lambda r: _RowLogic(cfg, r))
    else:
        if (
            not isinstance(key, str)
            or not isinstance(left_ts, str)
            or not isinstance(right_ts, str)
        ):
            raise ValueError(
                "for frames, key, left_ts and right_ts name columns (e.g. key='user', "
                f"left_ts='ts'); got key={key!r}, left_ts={left_ts!r}, right_ts={right_ts!r}"
            )
        cfg = _Config(key=key, timestamps=(left_ts, right_ts), suffix=suffix, **common)
        tagged = tag_frames("shard", left, right, key, shards)
        joined = op.stateful_batch("join", tagged.chunks, lambda r: Chunked(_FrameLogic(cfg, r)))
    out = split_outputs("split", joined)
    return JoinOut(oks=out.oks, errs=op.merge("all_errs", tagged.errs, out.errs), late=out.late)
