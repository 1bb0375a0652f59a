"""The :func:`anomaly_windows` operator: anomalous points grouped into windows with a start, an end and a peak."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from streamml.operators.anomaly._clock import (
    _MIN,
    Event,
    TimestampGetter,
    _admit,
    _check_common,
    _dt,
    _field_values,
    _Gate,
    _NonFiniteError,
    _plain_reader,
    _positive,
    _Reject,
    _us,
)
from streamml.operators.anomaly._shard import per_key_in_shards
from streamml.operators.anomaly.scorers import Ewma, Scorer, ZScore
from streamml.operators.anomaly.thresholds import FixedThreshold, QuantileThreshold, Threshold

from streamml.errors import Rejected

__all__ = ["AnomalyWindowsOut", "anomaly_windows"]

_score = itemgetter(2)  # the score of a released (timestamp, event, score) point


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
    )

    def __init__(self, rules: _WindowRules) -> None:
        self.rules = rules
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

    def push(
        self, ts: int, s: float, lv: tuple[float, float] | None, ev: Event, fld: Any, out: list
    ) -> None:
        r = self.rules
        if self.open:
            if ts >= self.deadline():
                self._close(self._reason(), out)
            elif ts - self.start >= r.max_duration:
                self._close("max_duration", out)
                if lv is not None and s >= lv[1]:
                    self.last = ts
                    self._open([(ts, s, ev, fld)], out)
                    return
            else:
                self.last = ts
                if lv is not None and s >= lv[1]:
                    self.n += self.tail_n + 1
                    self.total += self.tail_total + s
                    self.tail_n, self.tail_total = 0, 0.0
                    self.end = ts
                    if s > self.peak:
                        self.peak, self.peak_ts, self.peak_ev, self.peak_field = s, ts, ev, fld
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
            cand.append((ts, s, ev, fld))
            if len(cand) >= r.min_points and ts - cand[0][0] >= r.min_duration:
                self.cand = []
                self._open(cand, out)
        elif self.cand:
            self.cand = []
        self.last = ts

    def snapshot(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__[1:-1]) + (tuple(self.cand),)

    def restore(self, snap: tuple) -> None:
        for name, value in zip(self.__slots__[1:-1], snap[:-1], strict=True):
            setattr(self, name, value)
        self.cand = list(snap[-1])


@dataclass(frozen=True)
class AnomalyWindowsOut:
    """Streams returned by :func:`anomaly_windows`.

    A window record (on ``windows``) is a dict: ``window_id``, ``key``,
    ``start``, ``end`` (first and last point at or above ``close_below``),
    ``points``, ``peak_score``, ``peak_time``, ``mean_score``, ``field`` (the
    field that drove the peak score, or None), ``peak_event`` (the event, i.e.
    the features, at the peak) and ``closed_by`` (``"cooldown"``, ``"gap"``,
    ``"max_duration"`` or ``"eof"``). An alert (on ``opened``) is a dict:
    ``window_id``, ``key``, ``start``, ``opened_at`` (the time of the point that
    opened it), ``score`` and ``field``; it carries the same ``window_id`` as
    the record on close.
    """

    windows: KeyedStream[dict[str, Any]]
    opened: KeyedStream[dict[str, Any]]
    errs: Stream[Rejected]
    late: Stream[Rejected]


@dataclass(frozen=True)
class _WindowsConfig:
    rules: _WindowRules
    threshold: Threshold
    scorer: Scorer | None
    timestamp: TimestampGetter
    lateness: int
    extract: Callable[[Event], Any]
    driver: str
    read_all: Callable[[list[Event]], list[Any]] | None = None  # ``extract`` for a plain batch


class _WindowsLogic(StatefulBatchLogic):
    """The windows state of one key: its gate, threshold levels, scorer and windows.

    It is a complete keyed logic (what a keyed ``stateful_batch`` would run);
    the operator runs many of them inside each :class:`._shard._ShardLogic`.
    Eviction: dropped once nothing is pending, no window or candidate run is
    open and the scorer's and levels' history has expired (see ``_settle``).
    """

    def __init__(self, cfg: _WindowsConfig, resume: tuple | None) -> None:
        self.cfg = cfg
        self.gate = _Gate(cfg.lateness)
        self.levels = cfg.threshold._state()
        th = cfg.threshold
        self.fixed = (th.open_above, th.close_below) if isinstance(th, FixedThreshold) else None
        self.scorer = cfg.scorer._state() if cfg.scorer is not None else None
        self.windows = _Windows(cfg.rules)
        self.wake = _MIN  # event time of the next deadline (see _settle)
        if resume is not None:
            gate, levels, scorer, windows = resume
            self.gate.restore(gate)
            self.levels.restore(levels)
            if self.scorer is not None:
                self.scorer.restore(scorer)
            self.windows.restore(windows)
            self._settle()

    def _run(self, ready: list[tuple], out: list) -> None:
        windows, scorer, fixed = self.windows, self.scorer, self.fixed
        if ready:
            if scorer is not None:
                stamps, events, xs = zip(*ready)
                scored = scorer.update_many(stamps, xs)
                top = max(scored)[0]
            else:
                top = max(map(_score, ready))
            if fixed is not None and top <= fixed[0] and not windows.open:
                windows.quiet(ready[-1][0])
            elif scorer is not None:
                push, levels, names = windows.push, self.levels.levels, self.cfg.scorer.fields
                for ts, ev, (s, f) in zip(stamps, events, scored):
                    push(ts, s, fixed or levels(ts, s), ev, names[f], out)
            else:
                push, levels, driver = windows.push, self.levels.levels, self.cfg.driver
                for ts, ev, s in ready:
                    push(ts, s, fixed or levels(ts, s), ev, ev.get(driver), out)
        windows.close_by(self.gate.wm, out)

    def _expiry(self) -> int:
        due = max(self.windows.deadline(), self.levels.expires_at())
        if self.scorer is not None:
            due = max(due, self.scorer.expires_at())
        return due

    def _settle(self) -> bool:
        """Note the event time to wake at; True when the key's state can be dropped."""
        gate, windows = self.gate, self.windows
        if windows.open:
            due = windows.deadline()
            if gate.pending and gate.pending[0][0] < due:
                due = gate.pending[0][0]
        elif gate.pending:
            due = gate.pending[0][0]
        else:
            due = self._expiry()
            self.wake = due
            return due <= gate.wm
        self.wake = due
        return False

    def on_batch(self, values: list) -> tuple[list, bool]:
        cfg = self.cfg
        out = _admit(self.gate, values, cfg.timestamp, cfg.extract, cfg.read_all)
        self._run(self.gate.release(), out)
        return out, self._settle()

    def on_notify(self) -> tuple[list, bool]:
        self.gate.idle_watermark()
        out: list = []
        self._run(self.gate.release(), out)
        return out, self._settle()

    def on_eof(self) -> tuple[list, bool]:
        out: list = []
        self._run(self.gate.release(everything=True), out)
        if self.windows.open:
            self.windows._close("eof", out)
        self._settle()
        return out, False

    def due_us(self) -> int | None:
        """System time (µs) at which the idle watermark reaches the next deadline, or None."""
        return self.gate.system_us_of(self.wake) if self.wake > _MIN else None

    def notify_at(self) -> datetime | None:
        due = self.due_us()
        return _dt(due) if due is not None else None

    def snapshot(self) -> tuple:
        return (
            self.gate.snapshot(),
            self.levels.snapshot(),
            self.scorer.snapshot() if self.scorer is not None else None,
            self.windows.snapshot(),
        )


def _window_id(key: str, start: int) -> str:
    return f"{key}@{_dt(start).isoformat()}"


def _records(step_id: str) -> Callable[[tuple[str, Any]], list]:
    def to_record(kv: tuple[str, Any]) -> list:
        key, v = kv
        t = type(v)
        if t is _Closed:
            start, end, n, peak, peak_ts, mean, fld, peak_ev, reason = v
            rec = {
                "window_id": _window_id(key, start),
                "key": key,
                "start": _dt(start),
                "end": _dt(end),
                "points": n,
                "peak_score": peak,
                "peak_time": _dt(peak_ts),
                "mean_score": mean,
                "field": fld,
                "peak_event": peak_ev,
                "closed_by": reason,
            }
            return [("closed", (key, rec))]
        if t is _Opened:
            start, at, s, fld = v
            alert = {
                "window_id": _window_id(key, start),
                "key": key,
                "start": _dt(start),
                "opened_at": _dt(at),
                "score": s,
                "field": fld,
            }
            return [("opened", (key, alert))]
        if t is _Reject:  # key None: the item was not a (key, event) pair
            original = (key, v[2]) if key is not None else v[2]
            return [("errs", Rejected(step_id, v[0], v[1], original))]
        return [("late", Rejected(step_id, "Late", v[0], (key, v[1])))]

    return to_record


def _score_field(name: str) -> Callable[[Event], float]:
    def extract(ev: Event) -> float:
        s = ev[name]
        if type(s) is not float:
            s = float(s)
        if s - s != 0.0:
            raise _NonFiniteError(s)
        return s

    return extract


@operator
def anomaly_windows(
    step_id: str,
    up: KeyedStream[Event],
    *,
    timestamp: TimestampGetter,
    threshold: Threshold,
    score: str | Scorer = "score",
    min_points: int = 1,
    min_duration: timedelta = timedelta(0),
    cooldown: timedelta = timedelta(minutes=1),
    gap: timedelta = timedelta(minutes=5),
    max_duration: timedelta = timedelta(hours=1),
    lateness: timedelta = timedelta(0),
    alerts: bool = False,
    shards: int = 8,
) -> AnomalyWindowsOut:
    """Group each key's anomalous points into windows with a start, an end and a peak.

    Use it to turn a stream of per-point anomaly scores into what a person
    can act on: one record per episode ("pump 17, 10:02:13 to 10:04:50, peak
    9.3 on vibration"), and optionally an alert the moment an episode starts.

    Rules, per key, in event time (points taken in timestamp order):

    - a window opens when ``min_points`` consecutive points score above the
      threshold's ``open_above`` and span at least ``min_duration``; it starts
      at the first of them;
    - it stays open while points score at or above ``close_below``; it ends
      at the last such point;
    - it closes when its points have stayed below ``close_below`` for
      ``cooldown`` (counted from the first point below), when the key has no
      point at all for ``gap``, or when the watermark passes either of those
      deadlines; windows of a key never overlap;
    - a window reaching ``max_duration`` is closed and, if the point that
      reached it is still anomalous, a new window continues from it.

    Args:
        step_id: Unique id.
        up: Keyed stream of ``(key, event)``.
        timestamp: Function from an event to its timezone-aware datetime.
        threshold: :class:`FixedThreshold` or :class:`QuantileThreshold`.
        score: Name of a numeric score field already on the events (for
            example a model's score), or a scorer (:class:`ZScore`,
            :class:`RobustZScore`, :class:`Ewma`) run inside this step.
            With a field name, the field named ``score + "_field"`` (if
            present) is reported as the window's driving field.
        min_points: Consecutive points above ``open_above`` needed to open.
        min_duration: Time those points must span to open.
        cooldown: Time points must stay below ``close_below`` to close a window.
        gap: Time without any point that closes a window.
        max_duration: Longest window; longer episodes are split.
        lateness: Allowed out-of-orderness; events older than the key's
            watermark go to ``late``. Points wait up to this long before they
            are scored, so alerts come ``lateness`` after the event.
        alerts: Emit an "opened" alert on ``opened`` as soon as a window opens.
        shards: Number of state shards. Keys are spread over them by a
            stable hash and each shard's state (one per shard, on one
            worker) holds many keys, so the step costs one call per shard
            per batch instead of one per key. Results do not depend on it.
            Use about twice the number of workers; on a single worker
            ``shards=1`` is fastest (one large batch instead of several
            smaller ones).

    Returns:
        :class:`AnomalyWindowsOut` with ``windows``, ``opened``, ``errs``, ``late``.
        Events with a missing, non-numeric or non-finite score or a bad
        timestamp go to ``errs`` with their ``(key, event)``; items that are
        not ``(str key, event)`` pairs go there too (``BadItem``, with the item).

    Examples:
        >>> from datetime import datetime, timedelta, timezone
        >>> import bytewax.operators as op
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> t0 = datetime(2026, 1, 1, 10, 0, tzinfo=timezone.utc)
        >>> scores = [0.1, 5.0, 6.0, 2.5, 9.3, 0.2, 0.1, 0.3, 0.1]
        >>> events = [{"t": t0 + timedelta(seconds=10 * i), "score": s, "score_field": "vibration"}
        ...           for i, s in enumerate(scores)]
        >>> flow = Dataflow("windows_eg")
        >>> s = op.key_on("key", op.input("in", flow, TestingSource(events)), lambda e: "pump-17")
        >>> found = anomaly_windows("anomalies", s, timestamp=lambda e: e["t"],
        ...                         threshold=FixedThreshold(4.0, close_below=2.0),
        ...                         min_points=2, cooldown=timedelta(seconds=30), alerts=True)
        >>> windows, opened = [], []
        >>> op.output("windows", found.windows, TestingSink(windows))
        >>> op.output("opened", found.opened, TestingSink(opened))
        >>> run_main(flow)
        >>> [(a["window_id"], a["opened_at"].time()) for _, a in opened]
        [('pump-17@2026-01-01T10:00:10+00:00', datetime.time(10, 0, 20))]
        >>> w = windows[0][1]
        >>> w["start"].time(), w["end"].time(), w["points"], w["peak_score"], w["field"], w["closed_by"]
        (datetime.time(10, 0, 10), datetime.time(10, 0, 40), 4, 9.3, 'vibration', 'cooldown')
    """
    _check_common(timestamp, lateness)
    if shards < 1:
        raise ValueError(f"shards must be >= 1; got {shards}")
    if not isinstance(threshold, FixedThreshold | QuantileThreshold):
        raise ValueError(
            f"threshold must be a FixedThreshold or QuantileThreshold; got {threshold!r}"
        )
    if min_points < 1:
        raise ValueError(f"min_points must be >= 1; got {min_points}")
    if min_duration < timedelta(0):
        raise ValueError(f"min_duration must be >= 0; got {min_duration!r}")
    for name, td in (("cooldown", cooldown), ("gap", gap), ("max_duration", max_duration)):
        _positive(name, td)
    if min_duration >= max_duration:
        raise ValueError(
            f"min_duration must be shorter than max_duration; got {min_duration!r} >= {max_duration!r}"
        )
    if isinstance(score, str):
        scorer, extract, driver = None, _score_field(score), score + "_field"
        read_all = _plain_reader((score,), rows=False)
    elif isinstance(score, ZScore | Ewma):
        scorer, extract, driver = score, _field_values(score.fields), ""
        read_all = _plain_reader(score.fields, rows=True)
    else:
        raise ValueError(
            f"score must be a field name or a scorer (ZScore, RobustZScore, Ewma); got {score!r}"
        )
    rules = _WindowRules(
        min_points, _us(min_duration), _us(cooldown), _us(gap), _us(max_duration), alerts
    )
    cfg = _WindowsConfig(
        rules, threshold, scorer, timestamp, _us(lateness), extract, driver, read_all
    )
    out = per_key_in_shards(up, shards, lambda snap: _WindowsLogic(cfg, snap))
    routed = op.flat_map("records", out, _records(step_id))
    closed = op.branch("split_closed", routed, lambda t: t[0] == "closed")
    opened = op.branch("split_opened", closed.falses, lambda t: t[0] == "opened")
    errs = op.branch("split_errs", opened.falses, lambda t: t[0] == "errs")
    return AnomalyWindowsOut(
        windows=op.map("windows_out", closed.trues, itemgetter(1)),
        opened=op.map("opened_out", opened.trues, itemgetter(1)),
        errs=op.map("errs_out", errs.trues, itemgetter(1)),
        late=op.map("late_out", errs.falses, itemgetter(1)),
    )
