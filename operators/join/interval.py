"""Interval join (Flink's): same-key events whose timestamps are within a bound of each other."""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from streamml.operators.join._shards import (
    LEFT,
    NEVER,
    Chunked,
    check_shards,
    late_record,
    micros,
    never,
    split_outputs,
    tag_sides,
    timestamps,
)

from streamml.errors import Rejected

__all__ = ["JoinOut", "interval_join"]

_LATEST = 2**62


@dataclass(frozen=True)
class JoinOut:
    """The streams of a time-based join."""

    oks: KeyedStream[Any]
    """Joined items ``(key, (left, right))``."""

    errs: Stream[Rejected]
    """Items whose timestamp could not be read."""

    late: Stream[Rejected]
    """Items older than the watermark on arrival (``error_type="Late"``)."""


class _Buffer:
    """One key's stored events of one side, sorted by timestamp (parallel lists)."""

    __slots__ = ("ts", "items", "matched")

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.items: list[Any] = []
        self.matched: list[bool] = []

    def insert(self, t: int, item: Any, matched: bool) -> None:
        ts = self.ts
        if not ts or ts[-1] <= t:
            ts.append(t)
            self.items.append(item)
            self.matched.append(matched)
        else:
            i = bisect_right(ts, t)
            ts.insert(i, t)
            self.items.insert(i, item)
            self.matched.insert(i, matched)

    def copy(self) -> _Buffer:
        new = _Buffer()
        new.ts, new.items, new.matched = list(self.ts), list(self.items), list(self.matched)
        return new


class _IntervalState:
    """One shard of an interval join.

    Eviction: a left event leaves once the watermark passes ``ts + upper``
    (no right event that is not late can match it any more), a right event
    once it passes ``ts - lower``; a key leaves with its last event. ``timers``
    holds at most one live entry per key: its earliest eviction time.
    """

    def __init__(self) -> None:
        self.lefts: dict[str, _Buffer] = {}
        self.rights: dict[str, _Buffer] = {}
        self.timers: list[tuple[int, str]] = []
        self.scheduled: dict[str, int] = {}
        self.max_seen = NEVER
        self.watermark = NEVER

    def copy(self) -> _IntervalState:
        new = _IntervalState()
        new.lefts = {k: b.copy() for k, b in self.lefts.items()}
        new.rights = {k: b.copy() for k, b in self.rights.items()}
        new.timers = list(self.timers)
        new.scheduled = dict(self.scheduled)
        new.max_seen, new.watermark = self.max_seen, self.watermark
        return new

    def size(self) -> int:
        """Events held (for tests of bounded state)."""
        return sum(len(b.ts) for b in self.lefts.values()) + sum(
            len(b.ts) for b in self.rights.values()
        )


class _IntervalLogic(StatefulBatchLogic[Any, Any, _IntervalState]):
    def __init__(
        self,
        step_id: str,
        state: _IntervalState,
        getters: tuple[Callable[[Any], datetime], Callable[[Any], datetime]],
        lower: int,
        upper: int,
        lateness: int,
        outer: bool,
    ) -> None:
        self.step_id = step_id
        self.state = state
        self.getters = getters
        self.lower = lower
        self.upper = upper
        self.lateness = lateness
        self.outer = outer
        # Timers fire on a grid, so one visit to a key evicts several events.
        self.tick = max((upper - lower) // 4, 1000)

    def _schedule(self, key: str, at: int) -> None:
        at += self.tick - at % self.tick
        if at < self.state.scheduled.get(key, _LATEST):
            self.state.scheduled[key] = at
            heapq.heappush(self.state.timers, (at, key))

    def on_batch(self, values: list[tuple[int, str, Any]]) -> tuple[list, bool]:
        state = self.state
        lefts, rights = state.lefts, state.rights
        timers, scheduled, heappush = state.timers, state.scheduled, heapq.heappush
        lower, upper, lateness, tick = self.lower, self.upper, self.lateness, self.tick
        oks: list = []
        errs: list = []
        late: list = []
        max_seen, watermark = state.max_seen, state.watermark
        for side, key, item, t in timestamps(self.step_id, values, self.getters, never, errs):
            if t < watermark:
                late.append(late_record(self.step_id, t, watermark, (key, item)))
                continue
            if t > max_seen:
                max_seen = t
                watermark = t - lateness
            if side == LEFT:
                matched = False
                buf = rights.get(key)
                if buf is not None:
                    ts = buf.ts
                    i, j = bisect_left(ts, t + lower), bisect_right(ts, t + upper)
                    if i < j:
                        matched = True
                        oks.extend([(key, (item, r)) for r in buf.items[i:j]])
                buf = lefts.get(key)
                if buf is None:
                    buf = lefts[key] = _Buffer()
                buf.insert(t, item, matched)
                at = t + upper
                at += tick - at % tick
                if at < scheduled.get(key, _LATEST):
                    scheduled[key] = at
                    heappush(timers, (at, key))
            else:
                buf = lefts.get(key)
                if buf is not None:
                    ts = buf.ts
                    i, j = bisect_left(ts, t - upper), bisect_right(ts, t - lower)
                    if i < j:
                        oks.extend([(key, (left, item)) for left in buf.items[i:j]])
                        buf.matched[i:j] = [True] * (j - i)
                buf = rights.get(key)
                if buf is None:
                    buf = rights[key] = _Buffer()
                buf.insert(t, item, True)
                at = t - lower
                at += tick - at % tick
                if at < scheduled.get(key, _LATEST):
                    scheduled[key] = at
                    heappush(timers, (at, key))
        state.max_seen, state.watermark = max_seen, watermark
        self._evict(oks)
        return ([(oks, errs, late)] if oks or errs or late else []), False

    def _evict(self, oks: list) -> None:
        state = self.state
        timers, scheduled = state.timers, state.scheduled
        watermark = state.watermark
        while timers and timers[0][0] < watermark:
            at, key = heapq.heappop(timers)
            if scheduled.get(key) != at:
                continue  # superseded by an earlier timer for the key
            del scheduled[key]
            nxt = []
            buf = state.lefts.get(key)
            if buf is not None:
                n = bisect_left(buf.ts, watermark - self.upper)
                if self.outer:
                    oks.extend(
                        [
                            (key, (item, None))
                            for item, m in zip(buf.items[:n], buf.matched[:n], strict=True)
                            if not m
                        ]
                    )
                if n == len(buf.ts):
                    del state.lefts[key]
                else:
                    del buf.ts[:n], buf.items[:n], buf.matched[:n]
                    nxt.append(buf.ts[0] + self.upper)
            buf = state.rights.get(key)
            if buf is not None:
                n = bisect_left(buf.ts, watermark + self.lower)
                if n == len(buf.ts):
                    del state.rights[key]
                else:
                    del buf.ts[:n], buf.items[:n], buf.matched[:n]
                    nxt.append(buf.ts[0] - self.lower)
            if nxt:
                self._schedule(key, min(nxt))

    def on_eof(self) -> tuple[list, bool]:
        # Both sides ended: no event can match any more.
        oks: list = []
        if self.outer:
            for key, buf in self.state.lefts.items():
                oks.extend(
                    [
                        (key, (item, None))
                        for item, m in zip(buf.items, buf.matched, strict=True)
                        if not m
                    ]
                )
        self.state = _IntervalState()
        return ([(oks, [], [])] if oks else []), True

    def snapshot(self) -> _IntervalState:
        return self.state.copy()


@operator
def interval_join(
    step_id: str,
    left: KeyedStream[Any],
    right: KeyedStream[Any],
    *,
    left_ts: Callable[[Any], datetime],
    right_ts: Callable[[Any], datetime] | None = None,
    lower: timedelta,
    upper: timedelta,
    lateness: timedelta = timedelta(0),
    how: Literal["inner", "left"] = "inner",
    shards: int = 16,
) -> JoinOut:
    """Join same-key events with ``left.ts + lower <= right.ts <= left.ts + upper``.

    Use it to pair events of two streams that belong together in time — a
    click with the purchase that followed within 30 minutes, a sensor alarm
    with the maintenance ticket opened around it. Every matching pair is
    emitted once, as soon as its second event arrives. With ``how="left"``, a
    left event that matched nothing is emitted once as ``(left, None)`` when
    the watermark passes ``left.ts + upper``.

    Time is event time: the watermark of a shard is the largest timestamp it
    has seen (either side) minus ``lateness``; an event older than the
    watermark on arrival goes to ``late``. State is dropped as the watermark
    passes: a left event after ``ts + upper``, a right event after
    ``ts - lower``. When both inputs end, unmatched left events are emitted
    (``how="left"``) and the state is dropped.

    Args:
        step_id: Unique step id.
        left: Keyed left events ``(key, event)``.
        right: Keyed right events.
        left_ts: Timestamp of a left event (aware UTC datetime).
        right_ts: Timestamp of a right event; ``left_ts`` when omitted.
        lower: Lower bound of ``right.ts - left.ts`` (may be negative).
        upper: Upper bound of ``right.ts - left.ts``; ``>= lower``.
        lateness: How far out of order events may arrive.
        how: ``"inner"`` or ``"left"`` (left outer).
        shards: Number of state shards (see
            :func:`~streamml.operators.join.enrich`).

    Returns:
        :class:`JoinOut`: ``oks`` of ``(key, (left, right))`` (``right`` is
        ``None`` for an unmatched left event), ``errs`` and ``late``.

    Examples:
        >>> from datetime import datetime, timedelta, timezone
        >>> from bytewax.dataflow import Dataflow
        >>> import bytewax.operators as op
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
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
    getters = (left_ts, right_ts or left_ts)
    lo, hi, late_us = micros(lower), micros(upper), micros(lateness)
    full_id = f"{step_id}.join"

    def build(resume: _IntervalState | None) -> Chunked:
        state = _IntervalState() if resume is None else resume
        return Chunked(_IntervalLogic(full_id, state, getters, lo, hi, late_us, how == "left"))

    tagged = tag_sides("shard", left, right, shards)
    out = split_outputs("split", op.stateful_batch("join", tagged, build))
    return JoinOut(oks=out.oks, errs=out.errs, late=out.late)
