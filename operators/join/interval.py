"""Interval join (Flink's): same-key events whose timestamps are within a bound of each other.

One implementation, two entry points: frames (``key=`` a column, each side
a stream of ``polars.DataFrame``) and ``(key, event)`` rows (``key=None``,
the legacy path). Both put their rows through :class:`IntervalCore`, one
per shard; only how a batch is read and how pairs are written back differ
(rows: ``(key, (left, right))``; frames: one frame of the joined columns).
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from streamml.operators._core.event_time import KeyedEventTime
from streamml.operators._core.state import restore, snapshot
from streamml.operators.join._legacy import _Buffer, _IntervalState, is_legacy
from streamml.operators.join._shards import (
    LEFT,
    Chunked,
    RowStore,
    check_shards,
    clip,
    frame_times,
    joined_frame,
    micros,
    row_times,
    split_outputs,
    tag_frames,
    tag_sides,
)

from streamml.errors import Rejected

__all__ = ["IntervalCore", "JoinOut", "interval_join"]

# Kept importable here for recovery stores of the previous release (see _legacy).
_LEGACY = (_Buffer, _IntervalState)

_KIND = "streamml.join.interval"
_VERSION = 1


@dataclass(frozen=True)
class JoinOut:
    """The streams of a time-based join."""

    oks: KeyedStream[Any] | Stream[pl.DataFrame]
    """Joined items ``(key, (left, right))``, or joined frames."""

    errs: Stream[Rejected]
    """Items whose key or timestamp could not be read."""

    late: Stream[Rejected]
    """Items older than their key's watermark on arrival (``error_type="Late"``)."""


class _Side:
    """One key's stored rows of one side: times (sorted, ties in arrival order), ids and refs.

    A ref is what the entry point pairs: the event itself on the row path, the
    row's id on the frame path.
    """

    __slots__ = ("ts", "ids", "refs")

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.ids: list[int] = []
        self.refs: list[Any] = []


class IntervalCore:
    """One shard of an interval join: per-key watermarks, stored rows, matching, eviction.

    Event time is :class:`~streamml.operators._core.event_time.KeyedEventTime`
    over both sides: a key's watermark is its newest accepted time (either
    side) minus ``lateness``; a row older than it on arrival is late.

    Eviction: every stored row is held in the event-time state until its
    key's watermark passes the last time a row that is not late could
    match it — ``ts + upper`` for a left row, ``ts - lower`` for a right
    row — and leaves then (an unmatched left row is then emitted by a left
    outer join). A key idle for ``ttl`` of its shard's event time is
    forgotten with its rows; rows of an unknown key older than the newest
    forgotten time plus the interval are late afterwards, so forgetting
    never loses a pair. ``idle_release`` (wall clock) lets a row leave
    early, moving its key's watermark to where it would have left.
    """

    def __init__(
        self,
        *,
        lower: int,
        upper: int,
        lateness: timedelta,
        outer: bool,
        ttl: timedelta | None,
        idle_release: timedelta | None = None,
        clock: Callable[[], float] = time.time,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.lower, self.upper, self.outer = clip(lower), clip(upper), outer
        guard = timedelta(microseconds=max(self.upper, -self.lower, 0) + 1)
        self.et = KeyedEventTime(
            max_delay=lateness,
            guard=guard,
            ttl=ttl,
            idle_release=idle_release,
            width=2,
            clock=clock,
            resume=None if data is None else data["time"],
        )
        self.sides: tuple[dict[int, _Side], dict[int, _Side]] = ({}, {})
        self.unmatched: dict[int, tuple[Any, Any]] = {}  # unmatched left id -> (key, ref)
        self.next_id = 0
        if data is not None:
            for side, stored in zip(self.sides, data["sides"]):
                for kid, ts, ids, refs in stored:
                    s = side[kid] = _Side()
                    s.ts, s.ids, s.refs = list(ts), list(ids), list(refs)
            self.unmatched = dict(data["unmatched"])
            self.next_id = data["next_id"]

    def add(
        self,
        sides: np.ndarray,
        keys: Sequence[Any] | pl.Series,
        ts: np.ndarray,
        refs: Sequence[Any] | None = None,
    ) -> tuple[Any, np.ndarray, list[tuple[Any, tuple[Any, Any]]]]:
        """Admit a batch (arrival order); ``(admission, ids of the accepted, new pairs)``.

        Pairs are ``(key, (left ref, right ref))``, each emitted once: when
        its second row arrives. ``refs`` (one per row) default to the ids.
        """
        adm = self.et.admit(keys, ts)
        n = len(adm.ok)
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        if not n:
            return adm, ids, []
        ok = adm.ok.tolist()
        whole = n == len(sides)
        side = sides if whole else sides[adm.ok]
        if isinstance(keys, pl.Series):
            keys = keys.to_list()
        if not whole:
            keys = [keys[i] for i in ok]
        id_list = ids.tolist()
        if refs is None:
            refs = id_list
        elif not whole:
            refs = [refs[i] for i in ok]
        lower, upper, outer = self.lower, self.upper, self.outer
        lefts, rights = self.sides
        unmatched = self.unmatched
        pairs: list[tuple[Any, tuple[Any, Any]]] = []
        for s, kid, t, i, key, ref in zip(
            side.tolist(), adm.kid.tolist(), adm.ts.tolist(), id_list, keys, refs
        ):
            if s == LEFT:
                other, mine = rights.get(kid), lefts
                if other is not None:
                    ots = other.ts
                    a, b = bisect_left(ots, t + lower), bisect_right(ots, t + upper)
                    if a < b:
                        pairs.extend([(key, (ref, r)) for r in other.refs[a:b]])
                    elif outer:
                        unmatched[i] = (key, ref)
                elif outer:
                    unmatched[i] = (key, ref)
            else:
                other, mine = lefts.get(kid), rights
                if other is not None:
                    ots = other.ts
                    a, b = bisect_left(ots, t - upper), bisect_right(ots, t - lower)
                    if a < b:
                        pairs.extend([(key, (left, ref)) for left in other.refs[a:b]])
                        if outer and unmatched:
                            for j in other.ids[a:b]:
                                unmatched.pop(j, None)
            own = mine.get(kid)
            if own is None:
                own = mine[kid] = _Side()
            if not own.ts or own.ts[-1] <= t:
                own.ts.append(t)
                own.ids.append(i)
                own.refs.append(ref)
            else:
                j = bisect_right(own.ts, t)
                own.ts.insert(j, t)
                own.ids.insert(j, i)
                own.refs.insert(j, ref)
        due = np.where(side == LEFT, adm.ts + (upper + 1), adm.ts - (lower - 1))
        self.et.hold(None, adm.kid, due, np.column_stack([ids, side]).astype(np.float64))
        return adm, ids, pairs

    def release(self, *, eof: bool = False) -> tuple[np.ndarray, list[tuple[Any, Any]]]:
        """Evict what no row can match any more: ``(ids evicted, (key, ref) of unmatched lefts)``."""
        released = self.et.release(eof=eof)
        held = released.held
        lost: list[tuple[Any, Any]] = []
        if len(held):
            ids = held.data[:, 0].astype(np.int64)
            side = held.data[:, 1].astype(np.int64)
            # A key's released rows of a side are the oldest it has (they are
            # due in time order): drop that many from the front.
            uniq, counts = np.unique(held.kid * 2 + side, return_counts=True)
            for c, n in zip(uniq.tolist(), counts.tolist()):
                k, s = divmod(c, 2)
                stored = self.sides[s].get(k)
                if stored is None:
                    continue
                if n >= len(stored.ids):
                    del self.sides[s][k]
                else:
                    del stored.ts[:n], stored.ids[:n], stored.refs[:n]
            if self.outer and self.unmatched:
                pop = self.unmatched.pop
                for i in ids[side == LEFT].tolist():
                    got = pop(i, None)
                    if got is not None:
                        lost.append(got)
        else:
            ids = np.zeros(0, dtype=np.int64)
        for k in released.gone.tolist():  # forgotten keys: every row was released above
            self.sides[0].pop(k, None)
            self.sides[1].pop(k, None)
        if eof:
            self.et.close()
        return ids, lost

    def size(self) -> int:
        """Rows stored (for tests of bounded state)."""
        return sum(len(s.ids) for side in self.sides for s in side.values())

    def snapshot_data(self) -> dict[str, Any]:
        return {
            "time": self.et.snapshot_data(),
            "sides": [
                [(k, list(s.ts), list(s.ids), list(s.refs)) for k, s in side.items()]
                for side in self.sides
            ],
            "unmatched": list(self.unmatched.items()),
            "next_id": self.next_id,
        }


def _from_legacy(state: _IntervalState, lower: int, upper: int) -> dict[str, Any]:
    """The previous release's shard state as the version-1 record of a row join.

    The old state kept one watermark per shard; each of its keys gets that
    shard's newest time as its own (no row it held becomes late), and the
    stored rows keep their order and their matched flags.
    """
    keys: list[str] = []
    kid_of: dict[str, int] = {}
    sides: list[list] = [[], []]
    unmatched: list[tuple[int, tuple[str, Any]]] = []
    next_id = 0
    held_kid, held_ts, held_data = [], [], []
    for s, buffers in enumerate((state.lefts, state.rights)):
        for key, buf in buffers.items():
            kid = kid_of.setdefault(key, len(keys))
            if kid == len(keys):
                keys.append(key)
            ids = list(range(next_id, next_id + len(buf.ts)))
            next_id += len(ids)
            sides[s].append((kid, list(buf.ts), ids, list(buf.items)))
            for i, t, item, matched in zip(ids, buf.ts, buf.items, buf.matched, strict=True):
                if s == LEFT and not matched:
                    unmatched.append((i, (key, item)))
                held_kid.append(kid)
                held_ts.append(t + upper + 1 if s == LEFT else t - lower + 1)
                held_data.append((float(i), float(s)))
    newest = state.max_seen
    time_data = {
        "keys": keys,
        "kmax": np.full(len(keys), newest, dtype=np.int64),
        "forgotten_max": None,
        "newest": newest if keys else np.iinfo(np.int64).min,
        "swept": np.iinfo(np.int64).min,
        "held_frame": None,
        "held_kid": np.array(held_kid, dtype=np.int64),
        "held_ts": np.array(held_ts, dtype=np.int64),
        "held_arrived": np.full(len(held_kid), time.time()),
        "held_data": np.array(held_data, dtype=np.float64).reshape(-1, 2),
    }
    order = np.argsort(time_data["held_ts"], kind="stable")
    for name in ("held_kid", "held_ts", "held_arrived", "held_data"):
        time_data[name] = time_data[name][order]
    core = {"time": time_data, "sides": sides, "unmatched": unmatched, "next_id": next_id}
    return {"path": "rows", "core": core}


class _Logic(StatefulBatchLogic):
    """One shard's Bytewax state: an :class:`IntervalCore` and how batches are read and written."""

    path = ""

    def __init__(self, cfg: _Config, resume: Any) -> None:
        self.cfg = cfg
        data: dict[str, Any] | None = None
        if resume is not None:
            if is_legacy(resume):
                resume = snapshot(_KIND, 0, resume)
            upgrades = {0: lambda old: _from_legacy(old, cfg.lower, cfg.upper)}
            data = restore(resume, kind=_KIND, version=_VERSION, upgrades=upgrades)
            if data["path"] != self.path:
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

    def _write(self, pairs: list, lost: list, evicted: np.ndarray) -> list:
        raise NotImplementedError

    def _out(self, pairs: list, errs: list, late: list, eof: bool = False) -> list:
        evicted, lost = self.core.release(eof=eof)
        oks = self._write(pairs, lost, evicted)
        return [(oks, errs, late)] if oks or errs or late else []

    def notify_at(self) -> datetime | None:
        return self.core.et.notify_at()

    def on_notify(self) -> tuple[list, bool]:
        return self._out([], [], []), False

    def on_eof(self) -> tuple[list, bool]:
        return self._out([], [], [], eof=True), False

    def snapshot(self) -> dict[str, Any]:
        data = {"path": self.path, "core": self.core.snapshot_data(), **self._extra()}
        return snapshot(_KIND, _VERSION, data)


class _RowLogic(_Logic):
    """``(side, key, event)`` rows in, ``(key, (left, right))`` out (the legacy path)."""

    path = "rows"

    def on_batch(self, values: list[tuple[int, str, Any]]) -> tuple[list, bool]:
        cfg = self.cfg
        errs: list[Rejected] = []
        rows, ts = row_times(cfg.step_id, values, cfg.getters, errs)
        late: list[Rejected] = []
        pairs: list = []
        if rows:
            keys = [k for _, k, _ in rows]
            sides = np.fromiter((s for s, _, _ in rows), dtype=np.int64, count=len(rows))
            adm, _, pairs = self.core.add(sides, keys, ts, [v for _, _, v in rows])
            if len(adm.late):
                _, late = adm.rejected(cfg.step_id, lambda i: (rows[i][1], rows[i][2]))
        return self._out(pairs, errs, late), False

    def _write(self, pairs: list, lost: list, evicted: np.ndarray) -> list:
        if lost:
            pairs.extend([(key, (left, None)) for key, left in lost])
        return pairs


class _FrameLogic(_Logic):
    """``(side, frame)`` in, joined frames out."""

    path = "frames"

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
        pairs: list = []
        for side, frame in values:
            store = self.stores[side]
            why = store.fits(frame)
            if why is not None:
                errs.extend(Rejected(cfg.step_id, "BadItem", why, r) for r in frame.to_dicts())
                continue
            frame, ts = frame_times(cfg.step_id, frame, cfg.timestamps[side], errs)
            if not frame.height:
                continue
            sides = np.full(frame.height, side, dtype=np.int64)
            adm, ids, new = self.core.add(sides, frame.get_column(cfg.key), ts)
            if len(adm.late):
                _, more = adm.rejected(cfg.step_id, lambda i, f=frame: f.row(i, named=True))
                late += more
            if len(adm.ok) < frame.height:
                frame = frame[adm.ok]
            if frame.height:
                store.add(frame, ids)
            pairs += new
        return self._out(pairs, errs, late), False

    def _write(self, pairs: list, lost: list[int], evicted: np.ndarray) -> list:
        cfg = self.cfg
        lefts, rights = self.stores
        out = []
        if pairs:
            ids = np.array([p for _, p in pairs], dtype=np.int64)
            left, right = lefts.gather(ids[:, 0]), rights.gather(ids[:, 1])
            out.append(joined_frame(left, right, cfg.key, cfg.suffix))
        if lost:
            out.append(lefts.gather([i for _, i in lost]))
        if len(evicted):
            lefts.drop(evicted)
            rights.drop(evicted)
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
    check_shards(shards)
    if upper < lower:
        raise ValueError(f"upper must be >= lower; got lower={lower}, upper={upper}")
    if lateness < timedelta(0):
        raise ValueError(f"lateness must be >= 0; got {lateness}")
    if how not in ("inner", "left"):
        raise ValueError(f"how must be 'inner' or 'left'; got {how!r}")
    least = max(upper, -lower, timedelta(0)) + lateness
    if ttl is None:
        ttl = _default_ttl(lower, upper, lateness)
    if ttl <= timedelta(0) or ttl < least:
        raise ValueError(
            f"ttl must be > 0 and >= the interval's reach plus lateness ({least}); got {ttl}"
        )
    if idle_release is not None and idle_release <= timedelta(0):
        raise ValueError(f"idle_release must be > 0 or None; got {idle_release}")
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
        tagged = tag_sides("shard", left, right, shards)
        joined = op.stateful_batch("join", tagged.chunks, lambda r: Chunked(_RowLogic(cfg, r)))
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
