"""The :func:`inactivity` operator: a per-key "no data for T" alert, in event time and by the wall clock.

Frames and ``(key, event)`` rows take the same road: each frame goes whole
to the one state (:func:`_select`; a late row is reported with all its
columns), and each batch of rows as its keys, times and items
(:func:`_row_times`, which rejects what is not a ``(str key, event)`` pair
with a time); the state (:class:`_Silences`) reads the key and time columns
or those lists, and keeps only keys and times, so its snapshot is the same
record on both paths.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from streamml.operators import _validate
from streamml.operators._core.columns import check_frame, ts_micros
from streamml.operators._core.event_time import KeyedEventTime
from streamml.operators._core.keys import frame_sharder
from streamml.operators._core.state import restore, snapshot
from streamml.operators._time import from_micros, micros, to_micros

from streamml.errors import Rejected
from streamml.metrics import instrumented

__all__ = ["InactivityOut", "inactivity"]

_KIND = "streamml.anomaly.inactivity"
_VERSION = 1
_NONE = np.iinfo(np.int64).min


@dataclass(frozen=True)
class InactivityOut:
    """Streams returned by :func:`inactivity`.

    An alert (on ``alerts``) is a dict: ``key``, ``last_seen`` (the time of
    the key's last row) and ``silent_at`` (``last_seen + after``: from then
    on the key had no row for ``after``). On the frame path each item is
    the alert; on the ``(key, event)`` path it is ``(key, alert)``.
    """

    alerts: Stream[dict[str, Any]] | KeyedStream[dict[str, Any]]
    errs: Stream[Rejected]
    late: Stream[Rejected]


class _Silences(StatefulBatchLogic):
    """All keys' newest times and whether their silence was reported.

    Eviction: a key is forgotten by the core ``ttl`` after its newest row
    (against the flow's newest row); its silence is reported before that
    (``ttl >= after + lateness``).
    """

    def __init__(
        self,
        step_id: str,
        timestamp: str | None,
        key: str | None,
        after: int,
        event_time: Callable[[Any], KeyedEventTime],
        resume: Any,
        rows: bool = False,
    ) -> None:
        # the key and time columns of frames (None for rows); the alerts of rows are (key, alert)
        self.step_id, self.timestamp, self.key, self.after = step_id, timestamp, key, after
        self.rows = rows
        # key id -> newest released time (gaps are found between released rows), newest
        # accepted time, and the last seen time whose silence was reported
        self.last, self.seen, self.told = (np.full(16, _NONE, dtype=np.int64) for _ in range(3))
        # key id -> the last seen times whose silence was reported at or after its newest
        # released row (their gaps are still to be released): few, pruned as rows are released
        self.early: dict[int, set[int]] = {}
        data = None if resume is None else restore(resume, kind=_KIND, version=_VERSION)
        self.et = event_time(None if data is None else data["time"])
        if data is not None:
            n = len(data["last"])
            self._grow(n)
            self.last[:n], self.seen[:n], self.told[:n] = data["last"], data["seen"], data["told"]
            self.early = {k: set(v) for k, v in data["early"].items()}

    def _grow(self, n: int) -> None:
        if n > len(self.last):
            size = max(n, 2 * len(self.last))
            grown = []
            for old in (self.last, self.seen, self.told):
                new = np.full(size, _NONE, dtype=np.int64)
                new[: len(old)] = old
                grown.append(new)
            self.last, self.seen, self.told = grown

    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
        """Admit each frame (key and time columns) or rows part (``(keys, times, items)``)."""
        out: tuple[list, list, list] = ([], [], [])
        et = self.et
        for part in values:
            if isinstance(part, pl.DataFrame):
                keys, ts = part.get_column(self.key), ts_micros(part, self.timestamp)
                original = partial(part.row, named=True)
            else:
                keys, ts, original = part[0], part[1], part[2].__getitem__
            adm = et.admit(keys, ts)
            if len(adm.future) or len(adm.late):
                errs, late = adm.rejected(self.step_id, original)
                out[1].extend(errs)
                out[2].extend(late)
            et.hold(None, adm.kid, adm.ts)
            self._grow(len(et.keys))
            np.maximum.at(self.seen, adm.kid, adm.ts)
        self._step(out[0])
        return [out], False

    def on_notify(self) -> tuple[list[Any], bool]:
        out: tuple[list, list, list] = ([], [], [])
        self._step(out[0])
        return [out], False

    def on_eof(self) -> tuple[list[Any], bool]:
        out: tuple[list, list, list] = ([], [], [])
        self._step(out[0], eof=True)
        return [out], False

    def _alert(self, kid: np.ndarray, last: np.ndarray, gone: dict, alerts: list) -> None:
        key_of, after, rows = self.et.key_of, self.after, self.rows
        for k, t in zip(kid.tolist(), last.tolist()):
            key = gone[k] if k in gone else key_of(k)
            alert = {"key": key, "last_seen": from_micros(t), "silent_at": from_micros(t + after)}
            alerts.append((key, alert) if rows else alert)

    def _step(self, alerts: list, eof: bool = False) -> None:
        """Gaps of the released rows, then keys whose watermark passed their last row + after."""
        et, after = self.et, self.after
        rel = et.release(eof=eof)
        held = rel.held
        self._grow(len(et.keys))
        gone = dict(zip(rel.gone.tolist(), rel.gone_keys))  # forgotten by the core just now
        if len(held):
            order = np.argsort(held.kid, kind="stable")  # by key, in time within a key
            kid, ts = held.kid[order], held.ts[order]
            first = np.ones(len(kid), dtype=bool)
            first[1:] = kid[1:] != kid[:-1]
            prev = np.empty_like(ts)
            prev[1:] = ts[:-1]
            prev[first] = self.last[kid[first]]
            # a gap is reported unless its silence was already (noticed before the row came)
            gap = np.flatnonzero((prev != _NONE) & (ts - prev > after))
            if len(gap):
                early = self.early
                new = [
                    i
                    for i, k, p in zip(gap.tolist(), kid[gap].tolist(), prev[gap].tolist())
                    if p not in early.get(k, ())
                ]
                self._alert(kid[new], prev[new], gone, alerts)
            lastrow = np.ones(len(kid), dtype=bool)
            lastrow[:-1] = kid[1:] != kid[:-1]
            self.last[kid[lastrow]] = ts[lastrow]
            for k in set(self.early) & set(kid[lastrow].tolist()):
                kept = {t for t in self.early[k] if t >= self.last[k]}
                if kept:
                    self.early[k] = kept
                else:
                    del self.early[k]
        n = len(et.keys)
        known = self._unreported(n)
        if len(known):
            # each key's own watermark (its rows, and the wall clock while it is quiet), or the
            # flow's event-time progress: its newest row minus lateness. Past the key's newest
            # row (held or not) plus `after`, no row of it can come any more in between
            mark = np.maximum(et.marks(known), et.newest - et.delay)
            silent = known[mark > self.seen[known] + after]
            if len(silent):
                self._alert(silent, self.seen[silent], gone, alerts)
                self.told[silent] = self.seen[silent]
                for k, t in zip(silent.tolist(), self.seen[silent].tolist()):
                    self.early.setdefault(k, set()).add(t)
        if gone:
            for arr in (self.last, self.seen, self.told):
                arr[rel.gone] = _NONE
            for k in gone:
                self.early.pop(k, None)

    def _unreported(self, n: int) -> np.ndarray:
        """Key ids with a row whose silence after their newest row is not reported yet."""
        seen = self.seen[:n]
        return np.flatnonzero((seen != _NONE) & (seen != self.told[:n]))

    def notify_at(self) -> datetime | None:
        due = self.et.notify_at()
        known = self._unreported(len(self.et.keys))
        if len(known):
            at = float(self.et.wall_time_of(known, self.seen[known] + self.after + 1).min())
            if at < np.inf:
                when = datetime.fromtimestamp(at, tz=timezone.utc)
                due = when if due is None else min(due, when)
        return due

    def snapshot(self) -> dict[str, Any]:
        n = len(self.et.keys)
        data = {
            "time": self.et.snapshot_data(),
            "last": self.last[:n].copy(),
            "seen": self.seen[:n].copy(),
            "told": self.told[:n].copy(),
            "early": {k: sorted(v) for k, v in self.early.items()},
        }
        return snapshot(_KIND, _VERSION, data)


def _select(items: list[Any]) -> list[Any]:
    """Each frame whole to the one state: a late row is reported as it came, all its columns."""
    return [x if isinstance(x, Rejected) else ("all", x[1]) for x in items]


def _row_times(step_id: str, timestamp: Callable[[Any], datetime]) -> Callable[[list], list]:
    """Each batch of ``(key, event)`` items as one ``("all", (keys, times, items))`` part.

    An item that is not a pair is a ``BadItem``, a pair whose key is not
    text a ``BadKey``, and an event whose time cannot be read (the getter
    raised, or gave no time-zone-aware ``datetime``) a ``BadTimestamp``.
    Events may be anything the getter reads: nothing else of them is used.

    Examples:
        >>> t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
        >>> split = _row_times("s", lambda e: e["t"])(
        ...     [("a", {"t": t0}), ("b", {}), (None, {"t": t0}), "x"])
        >>> [x.error_type for x in split[:-1]]
        ['BadTimestamp', 'BadKey', 'BadItem']
        >>> name, (keys, ts, items) = split[-1]
        >>> name, keys, ts.tolist() == [to_micros(t0)], items[0][1] == {"t": t0}
        ('all', ['a'], True, True)
    """

    def select(items: list[Any]) -> list[Any]:
        out: list[Any] = []
        keys, ts, kept = [], [], []
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2):
                why = f"expected a (str key, event) pair; got {type(item).__name__}: "
                out.append(Rejected(step_id, "BadItem", why + _validate.UNKEYED_HINT, item))
                continue
            key = item[0]
            if not isinstance(key, str):
                what = "None" if key is None else type(key).__name__
                why = f"key is {what}; a key of a (key, event) pair must be text"
                out.append(Rejected(step_id, "BadKey", why, item))
                continue
            try:
                t = to_micros(timestamp(item[1]))
            except Exception as exc:  # noqa: BLE001 - a user's getter: any error is the row's
                why = f"timestamp: {type(exc).__name__}: {exc}"
                out.append(Rejected(step_id, "BadTimestamp", why, item))
                continue
            keys.append(key)
            ts.append(t)
            kept.append(item)
        if kept:
            out.append(("all", (keys, np.array(ts, dtype=np.int64), kept)))
        return out

    return select


@operator
@instrumented
def inactivity(
    step_id: str,
    up: Stream[pl.DataFrame] | KeyedStream[Any],
    *,
    timestamp: str | Callable[[Any], datetime],
    after: timedelta,
    key: str | None = None,
    lateness: timedelta = timedelta(0),
    ttl: timedelta | None = None,
    max_future: timedelta | None = None,
    clock: Callable[[], float] = time.time,
) -> InactivityOut:
    """Alert when a key has had no row for ``after``: a silent sensor is often the anomaly.

    A key is silent at ``last_seen + after`` when none of its rows falls
    in ``(last_seen, last_seen + after]``. That is known once the event
    time has passed ``last_seen + after``; event time moves on three ways:

    - the key's own rows: a row after the gap reports it (when data comes
      back, e.g. on a replay);
    - the flow's: its newest row of any key minus ``lateness``. Other keys'
      data say the time has passed, so a replayed stream reports a key that
      fell silent for good. ``lateness`` must then bound how far rows of
      different keys arrive out of order, as for a Bytewax ``EventClock``
      on one input;
    - the wall clock, while the key is quiet (the core's idle advance,
      :class:`~streamml.operators._core.event_time.KeyedEventTime`): live,
      a key silent for ``after`` is reported ``after`` (plus ``lateness``)
      of wall-clock time after its last row arrived, even if every key went
      quiet.

    Each silence is reported once, whichever way it was noticed; a key that
    comes back and goes quiet again is reported again. End of input is not
    silence. Rows older than their key's watermark go to ``late``.

    The event time of the whole flow lives in one state: each frame is cut
    to its key and time columns (each batch of rows to its keys and times,
    with the items kept for ``late``), and those (not whole frames) meet in
    one step, which then works on all keys column-wise.

    Frames are the unit: ``key`` names the key column and ``timestamp`` the
    event-time column. The ``(key, event)`` path, ``key=None``: ``up`` is a
    keyed stream, ``timestamp`` a function from an event to its
    time-zone-aware ``datetime`` (events may be any type it reads), and
    each alert comes out as ``(key, alert)``. Both paths share the state,
    its snapshot and every rule above.

    Args:
        step_id: Unique id.
        up: Frames with ``key`` and ``timestamp`` columns, or a keyed stream
            of ``(key, event)``.
        timestamp: The event-time column of the frames (time-zone-aware
            ``pl.Datetime``, or integer epoch milliseconds); for rows, a
            function from an event to its time-zone-aware ``datetime``.
        after: How long without a row is a silence.
        key: The key column of the frames (text or integers); ``None`` for
            ``(key, event)`` rows.
        lateness: Allowed out-of-orderness, of a key's rows and across keys.
        ttl: Forget a key this long after its newest row (against the
            flow's newest row); at least ``after + lateness`` (default plus
            one hour), so its silence is reported first.
        max_future: Reject rows further than this beyond the wall clock
            (``FutureTimestamp``); ``None`` accepts any time.
        clock: The wall clock (seconds since the epoch); tests inject one.

    Returns:
        :class:`InactivityOut` with ``alerts``, ``errs`` (bad keys
        (``BadKey``), bad timestamps (``BadTimestamp``), items that are not
        frames or not ``(key, event)`` pairs (``BadItem``), rows beyond
        ``max_future`` (``FutureTimestamp``)) and ``late``.

    Examples:
        Pump 2 stops sending at 10:00:20; pump 1's readings move the event
        time on past 10:01:20:

        >>> import bytewax.operators as op
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> t0 = datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc)
        >>> frame = pl.DataFrame({
        ...     "pump": ["pump-1", "pump-2"] * 3 + ["pump-1"] * 8,
        ...     "t": [t0 + timedelta(seconds=10 * (i // 2)) for i in range(6)]
        ...          + [t0 + timedelta(seconds=30 + 10 * i) for i in range(8)],
        ... })
        >>> flow = Dataflow("inactivity_eg")
        >>> frames = op.input("in", flow, TestingSource([frame]))
        >>> quiet = inactivity("silent", frames, key="pump", timestamp="t",
        ...                    after=timedelta(minutes=1))
        >>> alerts = []
        >>> op.output("alerts", quiet.alerts, TestingSink(alerts))
        >>> run_main(flow)
        >>> [(a["key"], a["last_seen"].time(), a["silent_at"].time()) for a in alerts]
        [('pump-2', datetime.time(10, 0, 20), datetime.time(10, 1, 20))]

        The same on ``(key, event)`` rows:

        >>> flow = Dataflow("inactivity_rows_eg")
        >>> rows = op.key_on("key", op.input("in", flow, TestingSource(frame.to_dicts())),
        ...                  lambda e: e["pump"])
        >>> quiet = inactivity("silent", rows, timestamp=lambda e: e["t"],
        ...                    after=timedelta(minutes=1))
        >>> alerts = []
        >>> op.output("alerts", quiet.alerts, TestingSink(alerts))
        >>> run_main(flow)
        >>> [(k, a["last_seen"].time()) for k, a in alerts]
        [('pump-2', datetime.time(10, 0, 20))]
    """
    _validate.event_time(key, timestamp)
    _validate.duration("after", after, minimum="positive")
    _validate.duration("lateness", lateness)
    _validate.duration("ttl", ttl, minimum="positive", optional=True)
    _validate.duration("max_future", max_future, optional=True)
    if ttl is None:
        ttl = after + lateness + timedelta(hours=1)
    if ttl < after + lateness:
        raise ValueError(f"ttl must be >= after + lateness ({after + lateness}); got {ttl}")
    if not callable(clock):
        raise ValueError(f"clock must be a function returning seconds; got {clock!r}")
    if key is None:
        # "select" as on the frame path: the steps that follow, and their state, are the same
        selected = op.flat_map_batch("select", up, _row_times(step_id, timestamp))
    else:
        check = partial(check_frame, step_id=step_id, timestamp=timestamp, fields=())
        route = frame_sharder(step_id, key=key, shards=1, check=check)
        mixed = op.flat_map_batch("shard", up, route)
        selected = op.flat_map_batch("select", mixed, _select)
    split = op.branch("split", selected, lambda x: isinstance(x, Rejected))

    event_time = partial(
        KeyedEventTime,
        max_delay=lateness,
        ttl=ttl,
        max_future=max_future,
        idle_advance=True,
        clock=clock,
    )

    columns = (None, None) if key is None else (timestamp, key)

    def build(resume: Any) -> _Silences:
        return _Silences(
            step_id,
            *columns,
            micros(after),
            lambda r: event_time(resume=r),
            resume,
            rows=key is None,
        )

    chunks = op.stateful_batch("silences", split.falses, build)
    outs = op.map("unshard", chunks, lambda kv: kv[1])

    def pick(i: int) -> Callable[[list], list]:
        return lambda batch: [x for lists in batch for x in lists[i]]

    return InactivityOut(
        alerts=op.flat_map_batch("alerts", outs, pick(0)),
        errs=op.merge("all_errs", split.trues, op.flat_map_batch("errs", outs, pick(1))),
        late=op.flat_map_batch("late", outs, pick(2)),
    )
