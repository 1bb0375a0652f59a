"""The :func:`anomaly_windows` operator: anomalous points grouped into windows with a start, an end and a peak."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream
from streamml.operators import _validate
from streamml.operators._time import from_micros
from streamml.operators.anomaly import _engine, _legacy
from streamml.operators.anomaly._units import _MIN, _positive, _us
from streamml.operators.anomaly.combine import Combined
from streamml.operators.anomaly.scorers import Ewma, RobustZScore, Scorer, ZScore, score_runs
from streamml.operators.anomaly.thresholds import FixedThreshold, QuantileThreshold, Threshold

from streamml.errors import Rejected
from streamml.metrics import instrumented

__all__ = ["AnomalyWindowsOut", "anomaly_windows"]

_KIND = "streamml.anomaly.windows"


def _no_point(i: int) -> tuple[Any, Any]:
    raise LookupError("no run of points is being pushed")


class _Opened(tuple):
    """(start, opened_at, score, field): a window just opened; key and id added downstream."""

    __slots__ = ()


class _Closed(tuple):
    """(start, end, points, peak, peak_ts, mean, field, peak_event, closed_by)."""

    __slots__ = ()


@dataclass(frozen=True)
class _WindowRules:
    min_points: int
    min_duration: int
    cooldown: int
    gap: int
    max_duration: int
    alerts: bool


class _Windows:
    """The open window (or the run of points that may open one) of one key.

    Eviction: a window closes when its points have stayed below
    ``close_below`` for ``cooldown`` (from the first such point), ``gap``
    after the key's last point, or when it reaches ``max_duration`` (a new
    window continues); a candidate run is dropped after ``gap`` without
    points. Nothing else is kept.
    """

    __slots__ = (
        "rules",
        "last",
        "open",
        "start",
        "end",
        "n",
        "total",
        "peak",
        "peak_ts",
        "peak_ev",
        "peak_field",
        "tail_n",
        "tail_total",
        "tail_start",
        "cand",
        "point",
    )

    def __init__(self, rules: _WindowRules) -> None:
        self.rules = rules
        # (ts index in the current run) -> (event, driving field): read only for points kept
        self.point: Callable[[int], tuple[Any, Any]] = _no_point
        self.last = _MIN  # timestamp of the key's last point
        self.open = False
        self.cand: list[tuple] = []  # points above open_above not yet opening a window
        self._reset()

    def _reset(self) -> None:
        self.start = self.end = self.peak_ts = self.tail_start = 0
        self.n = self.tail_n = 0
        self.total = self.tail_total = self.peak = 0.0
        self.peak_ev = self.peak_field = None

    def deadline(self) -> int:
        """Event time by which the open window closes, or the candidate run and key expire."""
        r = self.rules
        if self.open:
            quiet = self.last + r.gap
            return min(self.tail_start + r.cooldown, quiet) if self.tail_n else quiet
        return self.last + r.gap if self.last > _MIN else _MIN

    def _reason(self) -> str:
        r = self.rules
        if self.tail_n and self.tail_start + r.cooldown <= self.last + r.gap:
            return "cooldown"
        return "gap"

    def _close(self, reason: str, out: list) -> None:
        out.append(
            _Closed(
                (
                    self.start,
                    self.end,
                    self.n,
                    self.peak,
                    self.peak_ts,
                    self.total / self.n,
                    self.peak_field,
                    self.peak_ev,
                    reason,
                )
            )
        )
        self.open = False
        self._reset()

    def _open(self, points: list[tuple], out: list) -> None:
        """Open a window on a candidate run (split at ``max_duration`` if the run is longer)."""
        r = self.rules
        at, at_score, _, at_field = points[-1]  # the point that completed the opening rule
        for ts, s, ev, fld in points:
            if not self.open or ts - self.start >= r.max_duration:
                if self.open:
                    self._close("max_duration", out)
                self.open, self.start = True, ts
                if r.alerts:
                    out.append(_Opened((ts, at, at_score, at_field)))
            self.n += 1
            self.total += s
            if s > self.peak or self.n == 1:
                self.peak, self.peak_ts, self.peak_ev, self.peak_field = s, ts, ev, fld
            self.end = ts

    def close_by(self, wm: int, out: list) -> None:
        """Close the open window if the watermark passed its deadline."""
        if self.open and wm >= self.deadline():
            self._close(self._reason(), out)
        if not self.open and self.cand and wm >= self.last + self.rules.gap:
            self.cand = []

    def quiet(self, ts: int) -> None:
        """:meth:`push` of a run of points, the last at ``ts``, none above ``open_above``, no window open."""
        if self.cand:
            self.cand = []
        self.last = ts

    def push(self, ts: int, s: float, lv: tuple[float, float] | None, i: int, out: list) -> None:
        """Take point ``i`` of the current run (its event and field from :attr:`point` if kept)."""
        r = self.rules
        if self.open:
            if ts >= self.deadline():
                self._close(self._reason(), out)
            elif ts - self.start >= r.max_duration:
                self._close("max_duration", out)
                if lv is not None and s >= lv[1]:
                    self.last = ts
                    self._open([(ts, s, *self.point(i))], out)
                    return
            else:
                self.last = ts
                if lv is not None and s >= lv[1]:
                    self.n += self.tail_n + 1
                    self.total += self.tail_total + s
                    self.tail_n, self.tail_total = 0, 0.0
                    self.end = ts
                    if s > self.peak:
                        self.peak, self.peak_ts = s, ts
                        self.peak_ev, self.peak_field = self.point(i)
                else:
                    if not self.tail_n:
                        self.tail_start = ts
                    self.tail_n += 1
                    self.tail_total += s
                return
        if lv is not None and s > lv[0]:
            cand = self.cand
            if cand and ts - self.last >= r.gap:
                cand.clear()
            cand.append((ts, s, *self.point(i)))
            if len(cand) >= r.min_points and ts - cand[0][0] >= r.min_duration:
                self.cand = []
                self._open(cand, out)
        elif self.cand:
            self.cand = []
        self.last = ts

    def snapshot(self) -> dict[str, Any]:
        """The window state by name (plain values; the events as they came)."""
        out = {name: getattr(self, name) for name in self.__slots__[1:-2]}
        out["cand"] = list(self.cand)
        return out

    def restore(self, snap: dict[str, Any]) -> None:
        for name in self.__slots__[1:-2]:
            setattr(self, name, snap[name])
        self.cand = [tuple(c) for c in snap["cand"]]


@dataclass(frozen=True)
class AnomalyWindowsOut:
    """Streams returned by :func:`anomaly_windows`.

    A window record (on ``windows``) is a dict: ``window_id``, ``key``,
    ``start``, ``end`` (first and last point at or above ``close_below``),
    ``points``, ``peak_score``, ``peak_time``, ``mean_score``, ``field`` (the
    field that drove the peak score, or None), ``peak_event`` (the event, i.e.
    the features, at the peak; for frames, the row as a dict) and
    ``closed_by`` (``"cooldown"``, ``"gap"``, ``"max_duration"`` or
    ``"eof"``). An alert (on ``opened``) is a dict: ``window_id``, ``key``,
    ``start``, ``opened_at`` (the time of the point that opened it),
    ``score`` and ``field``; it carries the same ``window_id`` as the record
    on close.

    Records stay dicts on the frame path too: there are few of them (one
    per episode, not per event), each holds an event, and whoever reads them
    (a person, an alerting sink) wants them one by one. On the frame path
    each item is the record; on the ``(key, event)`` path it is ``(key,
    record)``. :func:`streamml.frames.to_frames` turns records into frames.
    """

    windows: Stream[dict[str, Any]] | KeyedStream[dict[str, Any]]
    opened: Stream[dict[str, Any]] | KeyedStream[dict[str, Any]]
    errs: Stream[Rejected]
    late: Stream[Rejected]


class _KeyState:
    """One key's threshold levels, scorer and windows. Eviction: see :meth:`_Family.wake`."""

    __slots__ = ("key", "levels", "scorer", "windows")

    def __init__(self, key: Any, levels: Any, scorer: Any, windows: _Windows) -> None:
        self.key, self.levels, self.scorer, self.windows = key, levels, scorer, windows


def _window_id(key: Any, start: int) -> str:
    return f"{key}@{from_micros(start).isoformat()}"


class _Family:
    """anomaly_windows on the shard engine: per key, score (or read the score), threshold, windows."""

    kind = _KIND
    streams = 4  # windows, opened, errs, late
    errs = 2
    late = 3

    def __init__(
        self,
        rules: _WindowRules,
        threshold: Threshold,
        scorer: Scorer | Combined | None,
        driver: str,
    ) -> None:
        self.rules, self.threshold, self.scorer, self.driver = rules, threshold, scorer, driver
        th = threshold
        self.fixed = (th.open_above, th.close_below) if isinstance(th, FixedThreshold) else None
        self.names = scorer.fields if scorer is not None else ()
        if scorer is None:
            self.scorer_kind = None
        elif isinstance(scorer, Combined):
            self.scorer_kind = "combined"  # newer than version 0: no store to upgrade
        elif isinstance(scorer, RobustZScore):
            self.scorer_kind = "robust"
        elif isinstance(scorer, ZScore):
            self.scorer_kind = "rolling"
        else:
            self.scorer_kind = "ewma"

    def new_state(self, key: Any) -> _KeyState:
        scorer = self.scorer._state() if self.scorer is not None else None
        return _KeyState(key, self.threshold._state(), scorer, _Windows(self.rules))

    def _emit(self, key: Any, emitted: list, io: Any, out: list[list]) -> None:
        for v in emitted:
            if type(v) is _Closed:
                start, end, n, peak, peak_ts, mean, fld, peak_ev, reason = v
                rec = {
                    "window_id": _window_id(key, start),
                    "key": key,
                    "start": from_micros(start),
                    "end": from_micros(end),
                    "points": n,
                    "peak_score": peak,
                    "peak_time": from_micros(peak_ts),
                    "mean_score": mean,
                    "field": fld,
                    "peak_event": peak_ev,
                    "closed_by": reason,
                }
                out[0].append(io.key_out(key, rec))
            else:
                start, at, s, fld = v
                alert = {
                    "window_id": _window_id(key, start),
                    "key": key,
                    "start": from_micros(start),
                    "opened_at": from_micros(at),
                    "score": s,
                    "field": fld,
                }
                out[1].append(io.key_out(key, alert))

    def run(
        self,
        states: list[_KeyState],
        bounds: list[tuple[int, int]],
        held: Any,
        order: np.ndarray,
        marks: list[int],
        rows: Any,
        io: Any,
        out: list[list],
    ) -> list[int]:
        fixed, scorer, driver, names = self.fixed, self.scorer, self.driver, self.names
        ts_sorted = held.ts[order]
        rank = order.tolist()  # grouped position -> released row
        event = rows.event
        if scorer is not None:
            z, zf = score_runs([st.scorer for st in states], ts_sorted, held.data[order], bounds)
        else:
            z = held.data[order, 0]
        # a key whose run stays at or below open_above with no window open only moves its
        # last time on (see _Windows.quiet): found for all keys at once, one mask per frame
        if fixed is not None:
            calm = (np.maximum.reduceat(z, [a for a, _ in bounds]) <= fixed[0]).tolist()
        else:
            calm = [False] * len(states)
        last_ts = ts_sorted[[b - 1 for _, b in bounds]].tolist()
        ts_all = s_all = zf_all = None
        wakes = []
        wake_at = self._wake_at
        for st, (a, b), mark, quiet, last in zip(states, bounds, marks, calm, last_ts):
            w = st.windows
            if quiet and not w.open:  # _Windows.quiet, then close_by: nothing to emit
                w.last = last
                if w.cand:
                    w.cand = []
                wakes.append(wake_at(st))
                continue
            if ts_all is None:  # the per-point rules, for keys with a window or a high point
                ts_all, s_all = ts_sorted.tolist(), z.tolist()
                zf_all = zf.tolist() if scorer is not None else None
            emitted: list = []
            ts, scores = ts_all[a:b], s_all[a:b]
            push, levels = w.push, st.levels.levels
            if scorer is not None:

                def point(i: int, a: int = a, zf: list = zf_all) -> tuple[Any, Any]:
                    return event(rank[a + i]), names[zf[a + i]]
            else:

                def point(i: int, a: int = a) -> tuple[Any, Any]:
                    ev = event(rank[a + i])
                    return ev, ev.get(driver) if isinstance(ev, Mapping) else None

            w.point = point
            for i, (t, s) in enumerate(zip(ts, scores)):
                push(t, s, fixed or levels(t, s), i, emitted)
            w.point = _no_point
            w.close_by(mark, emitted)
            if emitted:
                self._emit(st.key, emitted, io, out)
            wakes.append(wake_at(st))
        return wakes

    def _wake_at(self, st: _KeyState) -> int:
        """The event time to look at the key again: its window's end, or its state's expiry."""
        w = st.windows
        if w.open:
            return w.deadline()
        due = max(w.deadline(), st.levels.expires_at())
        if st.scorer is not None:
            due = max(due, st.scorer.expires_at())
        return due

    def wake(self, st: _KeyState, mark: int, io: Any, out: list[list]) -> tuple[int, bool]:
        """Close what ``mark`` passed; the key can go once no window or run is open and its
        scorer's and levels' history has expired (a returning key starts afresh)."""
        w = st.windows
        emitted: list = []
        w.close_by(mark, emitted)
        if emitted:
            self._emit(st.key, emitted, io, out)
        at = self._wake_at(st)
        return at, not w.open and not w.cand and at <= mark

    def eof(self, st: _KeyState, io: Any, out: list[list]) -> None:
        if st.windows.open:
            emitted: list = []
            st.windows._close("eof", emitted)
            self._emit(st.key, emitted, io, out)

    def record(self, st: _KeyState) -> dict[str, Any]:
        return {
            "scorer": None if st.scorer is None else st.scorer.snapshot(),
            "levels": st.levels.snapshot(),
            "windows": st.windows.snapshot(),
        }

    def restore(self, key: Any, rec: dict[str, Any]) -> _KeyState:
        st = self.new_state(key)
        if st.scorer is not None:
            st.scorer.restore(rec["scorer"])
        st.levels.restore(rec["levels"])
        st.windows.restore(rec["windows"])
        return st

    def upgrade_v0(self, snap: tuple) -> tuple[_legacy.GateV0, dict[str, Any]]:
        return _legacy.per_key_v0(snap, windows=True, scorer=self.scorer_kind)


def _span(scorer: Scorer | Combined | None, threshold: Threshold, gap: timedelta) -> timedelta:
    """The longest history a key's state keeps (its scorer's, its levels', a run's gap)."""
    span = gap
    if isinstance(scorer, Combined):
        span = max(span, scorer.span)
    elif isinstance(scorer, ZScore):
        span = max(span, scorer.window)
    elif isinstance(scorer, Ewma):
        span = max(span, scorer.ttl)
    if isinstance(threshold, QuantileThreshold):
        span = max(span, threshold.window)
    return span


@operator
@instrumented
def anomaly_windows(
    step_id: str,
    up: Stream[pl.DataFrame] | KeyedStream[Mapping[str, Any]],
    *,
    timestamp: str | Callable[[Mapping[str, Any]], datetime],
    threshold: Threshold,
    key: str | None = None,
    score: str | Scorer | Combined = "score",
    min_points: int = 1,
    min_duration: timedelta = timedelta(0),
    cooldown: timedelta = timedelta(minutes=1),
    gap: timedelta = timedelta(minutes=5),
    max_duration: timedelta = timedelta(hours=1),
    lateness: timedelta = timedelta(0),
    alerts: bool = False,
    shards: int = 8,
    ttl: timedelta | None = None,
    max_future: timedelta | None = None,
) -> AnomalyWindowsOut:
    """Group each key's anomalous points into windows with a start, an end and a peak.

    Use it to turn a stream of per-point anomaly scores into what a person
    can act on: one record per episode ("pump 17, 10:02:13 to 10:04:50, peak
    9.3 on vibration"), and optionally an alert the moment an episode starts.

    Frames are the unit: give ``up`` a stream of ``polars.DataFrame``
    batches, ``key`` the key column and ``timestamp`` the event-time column
    (a time-zone-aware ``pl.Datetime``, or integer epoch milliseconds). The
    ``(key, event)`` path, ``key=None``: ``up`` is a keyed stream and
    ``timestamp`` a function returning an event's time-zone-aware
    ``datetime``. Both paths run the same implementation; window records
    are dicts on both (see :class:`AnomalyWindowsOut`).

    Rules, per key, in event time (points taken in timestamp order):

    - a window opens when ``min_points`` consecutive points score above the
      threshold's ``open_above`` and span at least ``min_duration``; it starts
      at the first of them;
    - it stays open while points score at or above ``close_below``; it ends
      at the last such point;
    - it closes when its points have stayed below ``close_below`` for
      ``cooldown`` (counted from the first point below), when the key has no
      point at all for ``gap``, or when the key's watermark passes either of
      those deadlines; windows of a key never overlap;
    - a window reaching ``max_duration`` is closed and, if the point that
      reached it is still anomalous, a new window continues from it.

    Event time is :class:`~streamml.operators._core.event_time.KeyedEventTime`:
    a key's watermark is its newest time minus ``lateness``; rows wait until
    it passes them and are taken in timestamp order, so the result does not
    depend on arrival order within ``lateness``, on ``shards``, on workers
    or on batch boundaries. Rows behind the watermark go to ``late``. While
    a key is quiet its watermark moves on with the wall clock, so its open
    window closes without new rows (the clock alone never makes a row
    late). At end of input every open window closes with ``closed_by="eof"``.

    Args:
        step_id: Unique id.
        up: Frames (with ``key``), or a keyed stream of ``(key, event)``.
        timestamp: The event-time column of the frames; for rows, a function
            from an event to its timezone-aware datetime.
        threshold: :class:`FixedThreshold` or :class:`QuantileThreshold`.
        key: The key column of the frames; ``None`` for ``(key, event)`` rows.
        score: Name of a numeric score field already on the events (for
            example a model's score), or a scorer (:class:`ZScore`,
            :class:`RobustZScore`, :class:`Ewma`, or several of them
            voting or pooling their scores, :class:`Combined`) run inside
            this step.
            With a field name, the field named ``score + "_field"`` (if
            present) is reported as the window's driving field.
        min_points: Consecutive points above ``open_above`` needed to open.
        min_duration: Time those points must span to open.
        cooldown: Time points must stay below ``close_below`` to close a window.
        gap: Time without any point that closes a window.
        max_duration: Longest window; longer episodes are split.
        lateness: Allowed out-of-orderness; rows older than the key's
            watermark go to ``late``. Points wait up to this long before they
            are scored, so alerts come ``lateness`` after the event.
        alerts: Emit an "opened" alert on ``opened`` as soon as a window opens.
        shards: Number of state shards. Keys are spread over them by a
            stable hash (:func:`~streamml.operators._core.keys.route`) and
            each shard's state holds many keys, so the step costs one call
            per shard per batch instead of one per key. Results do not
            depend on it. Use about twice the number of workers; on a single
            worker ``shards=1`` is fastest.
        ttl: Forget a key's event time after this long without a row,
            measured against its shard's newest row (see
            :class:`~streamml.operators._core.event_time.KeyedEventTime`);
            at least the longest history kept (scorer window or TTL,
            quantile window, ``gap``) plus ``lateness``, which plus one
            hour is the default.
        max_future: Reject rows further than this beyond the wall clock
            (``FutureTimestamp``); ``None`` (default) accepts any time.

    Returns:
        :class:`AnomalyWindowsOut` with ``windows``, ``opened``, ``errs``,
        ``late``. Bad rows never stop the flow nor take the rest of their
        frame with them: a bad key (``BadKey``), a missing, non-numeric or
        non-finite score field (``MissingField``, ``NotANumber``,
        ``NonFinite``), a bad timestamp (``BadTimestamp``), and an item that
        is not a frame or not a ``(str key, event)`` pair (``BadItem``) go to
        ``errs``, each with its row (a frame's row as a dict; for rows, the
        ``(key, event)`` pair).

    Examples:
        Frames, a score column already computed (a model's, for example):

        >>> from datetime import datetime, timedelta, timezone
        >>> import bytewax.operators as op
        >>> import polars as pl
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> t0 = datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc)
        >>> scores = [0.1, 5.0, 6.0, 2.5, 9.3, 0.2, 0.1, 0.3, 0.1]
        >>> frame = pl.DataFrame({
        ...     "pump": ["pump-17"] * len(scores),
        ...     "t": [t0 + timedelta(seconds=10 * i) for i in range(len(scores))],
        ...     "score": scores,
        ...     "score_field": ["vibration"] * len(scores),
        ... })
        >>> flow = Dataflow("windows_eg")
        >>> frames = op.input("in", flow, TestingSource([frame]))
        >>> found = anomaly_windows("anomalies", frames, key="pump", timestamp="t",
        ...                         threshold=FixedThreshold(4.0, close_below=2.0),
        ...                         min_points=2, cooldown=timedelta(seconds=30), alerts=True)
        >>> windows, opened = [], []
        >>> op.output("windows", found.windows, TestingSink(windows))
        >>> op.output("opened", found.opened, TestingSink(opened))
        >>> run_main(flow)
        >>> [(a["window_id"], a["opened_at"].time()) for a in opened]
        [('pump-17@2026-01-01T10:00:10+00:00', datetime.time(10, 0, 20))]
        >>> w = windows[0]
        >>> w["start"].time(), w["end"].time(), w["points"], w["peak_score"], w["field"], w["closed_by"]
        (datetime.time(10, 0, 10), datetime.time(10, 0, 40), 4, 9.3, 'vibration', 'cooldown')

        The same on ``(key, event)`` rows:

        >>> events = frame.to_dicts()
        >>> flow = Dataflow("windows_rows_eg")
        >>> s = op.key_on("key", op.input("in", flow, TestingSource(events)), lambda e: e["pump"])
        >>> found = anomaly_windows("anomalies", s, timestamp=lambda e: e["t"],
        ...                         threshold=FixedThreshold(4.0, close_below=2.0),
        ...                         min_points=2, cooldown=timedelta(seconds=30))
        >>> windows = []
        >>> op.output("windows", found.windows, TestingSink(windows))
        >>> run_main(flow)
        >>> [(k, w["points"], w["peak_score"], w["closed_by"]) for k, w in windows]
        [('pump-17', 4, 9.3, 'cooldown')]
    """
    _validate.event_time(key, timestamp)
    _validate.one_of(
        "threshold", threshold, (FixedThreshold, QuantileThreshold), "FixedThreshold(4.0)"
    )
    _validate.count("min_points", min_points)
    _validate.duration("min_duration", min_duration)
    _validate.flag("alerts", alerts)
    for name, td in (("cooldown", cooldown), ("gap", gap), ("max_duration", max_duration)):
        _positive(name, td)
    if min_duration >= max_duration:
        raise ValueError(
            f"min_duration must be shorter than max_duration; got {min_duration!r} >= {max_duration!r}"
        )
    if isinstance(score, str):
        _validate.name("score", score, example="'score'")
        scorer, fields, driver = None, (score,), score + "_field"
    elif isinstance(score, ZScore | Ewma | Combined):
        scorer, fields, driver = score, score.fields, ""
    else:
        raise ValueError(
            "score must be a field name or a scorer (ZScore, RobustZScore, Ewma, Combined); "
            f"got {score!r}"
        )
    timing = _engine.check_timing(
        step_id,
        lateness=lateness,
        span=_span(scorer, threshold, gap),
        ttl=ttl,
        max_future=max_future,
        fields=fields,
    )
    rules = _WindowRules(
        min_points, _us(min_duration), _us(cooldown), _us(gap), _us(max_duration), alerts
    )
    family = _Family(rules, threshold, scorer, driver)
    chunks, bad = _engine.shard_states(
        up, key=key, timestamp=timestamp, timing=timing, shards=shards, family=family
    )
    return AnomalyWindowsOut(
        windows=op.flat_map_batch("windows", chunks, _engine.pick(0)),
        opened=op.flat_map_batch("opened", chunks, _engine.pick(1)),
        errs=op.merge("all_errs", bad, op.flat_map_batch("errs", chunks, _engine.pick(2))),
        late=op.flat_map_batch("late", chunks, _engine.pick(3)),
    )
