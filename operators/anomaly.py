"""Anomaly windows: streaming anomaly scores, and anomalies reported as windows.

An operator watching a fleet of sensors does not want ten thousand red points;
they want "pump 17 was anomalous from 10:02:13 to 10:04:50, peak score 9.3, on
vibration". This module turns a keyed stream of events into exactly that.

Two operators, both per key and in event time:

- :func:`score` adds an anomaly score to every event with one of the scorers
  :class:`ZScore` (rolling mean and standard deviation over a time window),
  :class:`RobustZScore` (rolling median and MAD) or :class:`Ewma` (an EWMA
  control chart with a half-life).
- :func:`anomaly_windows` groups consecutive anomalous points of a key into
  windows with hysteresis (``open_above`` / ``close_below``, ``min_points``,
  ``cooldown``, ``gap``, ``max_duration``) and emits one record per window,
  plus an optional "opened" alert. Its ``score`` is either the name of a field
  already on the events (a model's score from the inference operator, or the
  output of :func:`score`) or a scorer, which then runs inside the same step.

Thresholds are a :class:`FixedThreshold` or a per-key adaptive
:class:`QuantileThreshold` with a warm-up period.

Event time: each key has a watermark, the largest timestamp seen minus
``lateness``; events are released to the scorer and the windows in timestamp
order once the watermark passes them, so results do not depend on the arrival
order within the lateness bound. Events older than the watermark go to the
``late`` stream. When a key receives nothing, its watermark advances with the
system clock (as Bytewax's ``EventClock`` does), so a quiet key's window
closes and the key's state is evicted; at the end of input every open window
is closed with ``closed_by="eof"``.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from operator import itemgetter
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from streamml.errors import Rejected

__all__ = [
    "AnomalyWindowsOut",
    "Ewma",
    "FixedThreshold",
    "QuantileThreshold",
    "RobustZScore",
    "ScoreOut",
    "ZScore",
    "anomaly_windows",
    "score",
]

Event = Mapping[str, Any]
TimestampGetter = Callable[[Event], datetime]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
_NEVER = 1 << 62  # "no deadline", in microseconds
_MIN = -(1 << 62)
_MAD_TO_SIGMA = 1.4826
_first = itemgetter(0)


def _us(td: timedelta) -> int:
    return td // _US


def _dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _positive(name: str, td: timedelta | None) -> None:
    if td is not None and td <= timedelta(0):
        raise ValueError(f"{name} must be a positive timedelta; got {td!r}")


def _fields(fields: str | Sequence[str]) -> tuple[str, ...]:
    out = (fields,) if isinstance(fields, str) else tuple(fields)
    if not out or not all(isinstance(f, str) for f in out):
        raise ValueError(
            f"fields must be a field name or a non-empty list of names; got {fields!r}"
        )
    return out


# --------------------------------------------------------------------------
# Scorers: configuration (frozen, public) and per-key state (private).
# Each state's update(ts, xs) returns (score, index of the driving field)
# using only points strictly before this one, then learns the point.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ZScore:
    """Rolling z-score: deviation from the mean of the key's last ``window`` of time, in sigmas.

    With several fields, each field is scored on its own and the event's score
    is the largest absolute z-score; that field is reported as the driver.
    A key scores 0.0 until it has ``min_points`` points in its window.

    State per key: the points of the last ``window`` (at most ``max_points``);
    the key is evicted once its window is empty.

    Examples:
        >>> ZScore("temperature", window=timedelta(minutes=10)).fields
        ('temperature',)
    """

    fields: str | Sequence[str]
    window: timedelta
    min_points: int = 10
    max_points: int = 10_000
    min_std: float = 1e-9

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", _fields(self.fields))
        _positive("window", self.window)
        if self.min_points < 2 or self.max_points < self.min_points:
            raise ValueError(
                f"need 2 <= min_points <= max_points; got {self.min_points}, {self.max_points}"
            )
        if not self.min_std > 0:
            raise ValueError(f"min_std must be > 0; got {self.min_std}")

    def _state(self) -> _RollingState | _RobustState:
        return _RollingState(self)


@dataclass(frozen=True)
class RobustZScore(ZScore):
    """Robust rolling z-score: ``|x - median| / (1.4826 * MAD)`` over the key's last ``window``.

    Use it when the signal has outliers or heavy tails that would inflate a
    plain standard deviation and hide the next anomaly. Median and MAD are
    exact (kept in sorted order, O(log n) per point for the MAD).

    Examples:
        >>> RobustZScore(["vibration", "temperature"], window=timedelta(hours=1)).fields
        ('vibration', 'temperature')
    """

    def _state(self) -> _RollingState | _RobustState:
        return _RobustState(self)


@dataclass(frozen=True)
class Ewma:
    """EWMA control chart: deviation from an exponentially weighted mean, in sigmas.

    Mean and variance decay with ``half_life`` of event time, so irregular
    sampling is handled; state is two numbers per field. The first points
    are weighted equally (a plain mean and variance) until the decay weighs
    more, so the chart starts calibrated. A key scores 0.0
    for its first ``min_points`` points. A key with no point for ``ttl``
    (default 20 half-lives) is evicted.

    Examples:
        >>> Ewma("load", half_life=timedelta(minutes=5)).ttl
        datetime.timedelta(seconds=6000)
    """

    fields: str | Sequence[str]
    half_life: timedelta
    min_points: int = 10
    ttl: timedelta | None = None
    min_std: float = 1e-9

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", _fields(self.fields))
        _positive("half_life", self.half_life)
        _positive("ttl", self.ttl)
        if self.ttl is None:
            object.__setattr__(self, "ttl", self.half_life * 20)
        if self.min_points < 2:
            raise ValueError(f"min_points must be >= 2; got {self.min_points}")
        if not self.min_std > 0:
            raise ValueError(f"min_std must be > 0; got {self.min_std}")

    def _state(self) -> _EwmaState:
        return _EwmaState(self)


Scorer = ZScore | Ewma


def _kth_distance(s: list[float], h: int, m: float, k: int) -> float:
    """The k-th smallest (0-based) of ``|x - m|`` over sorted ``s``, split at ``h``.

    ``s[:h]`` are below ``m`` (distances ascending leftwards), ``s[h:]`` at or
    above it (ascending rightwards): the k-th of two sorted sequences.
    """
    la, lb = h, len(s) - h
    lo, hi = max(0, k + 1 - lb), min(k + 1, la)
    while lo < hi:
        i = (lo + hi) // 2
        j = k + 1 - i
        if m - s[h - 1 - i] < s[h + j - 1] - m:
            lo = i + 1
        else:
            hi = i
    i, j = lo, k + 1 - lo
    a = m - s[h - i] if i > 0 else -math.inf
    b = s[h + j - 1] - m if j > 0 else -math.inf
    return a if a > b else b


def _median_mad(s: list[float]) -> tuple[float, float]:
    n = len(s)
    mid = n // 2
    if n % 2:
        m = s[mid]
        h = bisect.bisect_left(s, m)
        return m, _kth_distance(s, h, m, mid)
    m = (s[mid - 1] + s[mid]) / 2
    h = bisect.bisect_left(s, m)
    return m, (_kth_distance(s, h, m, mid - 1) + _kth_distance(s, h, m, mid)) / 2


class _RollingState:
    """Points of the last ``window`` per key, with running sums (mean and std).

    Eviction: points older than ``window`` (or beyond ``max_points``) are
    dropped on every update; the key is discardable once it has no point.
    """

    __slots__ = (
        "window",
        "min_points",
        "max_points",
        "min_std",
        "points",
        "s1",
        "s2",
        "ref",
        "since_exact",
    )

    def __init__(self, cfg: ZScore) -> None:
        self.window = _us(cfg.window)
        self.min_points, self.max_points, self.min_std = cfg.min_points, cfg.max_points, cfg.min_std
        self.points: deque[tuple[int, tuple[float, ...]]] = deque()
        self.s1: list[float] = []
        self.s2: list[float] = []
        self.ref: tuple[float, ...] = ()  # values are summed relative to this, for precision
        self.since_exact = 0

    def expires_at(self) -> int:
        return self.points[-1][0] + self.window if self.points else _MIN

    def _evict(self, horizon: int) -> None:
        points, s1, s2, ref, cap = self.points, self.s1, self.s2, self.ref, self.max_points
        while points and (points[0][0] <= horizon or len(points) >= cap):
            for f, x in enumerate(points.popleft()[1]):
                d = x - ref[f]
                s1[f] -= d
                s2[f] -= d * d

    def update(self, ts: int, xs: tuple[float, ...]) -> tuple[float, int]:
        points = self.points
        if points and (points[0][0] <= ts - self.window or len(points) >= self.max_points):
            self._evict(ts - self.window)
        n = len(points)
        if n == 0:
            self.ref, self.s1, self.s2 = xs, [0.0] * len(xs), [0.0] * len(xs)
        s1, s2, ref = self.s1, self.s2, self.ref
        best, best_f = 0.0, 0
        if n >= self.min_points:
            min_std = self.min_std
            for f, x in enumerate(xs):
                mean = s1[f] / n
                var = (s2[f] - mean * mean * n) / (n - 1)
                # below 1e-12 of the second moment, a variance is rounding noise
                std = math.sqrt(var) if var > 1e-12 * s2[f] / n else 0.0
                z = abs(x - ref[f] - mean) / (std if std > min_std else min_std)
                if z > best:
                    best, best_f = z, f
        points.append((ts, xs))
        for f, x in enumerate(xs):
            d = x - ref[f]
            s1[f] += d
            s2[f] += d * d
        self.since_exact += 1
        if self.since_exact >= 4096:  # running sums drift: recompute them exactly
            self.since_exact = 0
            for f in range(len(xs)):
                ds = [p[1][f] - ref[f] for p in points]
                s1[f] = math.fsum(ds)
                s2[f] = math.fsum(d * d for d in ds)
        return best, best_f

    def snapshot(self) -> tuple:
        return (tuple(self.points), tuple(self.s1), tuple(self.s2), self.ref, self.since_exact)

    def restore(self, snap: tuple) -> None:
        points, s1, s2, self.ref, self.since_exact = snap
        self.points = deque(points)
        self.s1, self.s2 = list(s1), list(s2)


class _RobustState:
    """Points of the last ``window`` per key, and each field's values in sorted order.

    Eviction: as :class:`_RollingState`.
    """

    __slots__ = ("window", "min_points", "max_points", "min_std", "points", "sorted")

    def __init__(self, cfg: ZScore) -> None:
        self.window = _us(cfg.window)
        self.min_points, self.max_points, self.min_std = cfg.min_points, cfg.max_points, cfg.min_std
        self.points: deque[tuple[int, tuple[float, ...]]] = deque()
        self.sorted: list[list[float]] = [[] for _ in cfg.fields]

    def expires_at(self) -> int:
        return self.points[-1][0] + self.window if self.points else _MIN

    def update(self, ts: int, xs: tuple[float, ...]) -> tuple[float, int]:
        points, srt = self.points, self.sorted
        horizon = ts - self.window
        while points and (points[0][0] <= horizon or len(points) >= self.max_points):
            for f, x in enumerate(points.popleft()[1]):
                s = srt[f]
                del s[bisect.bisect_left(s, x)]
        best, best_f = 0.0, 0
        if len(points) >= self.min_points:
            min_std = self.min_std
            for f, x in enumerate(xs):
                m, mad = _median_mad(srt[f])
                scale = _MAD_TO_SIGMA * mad
                z = abs(x - m) / (scale if scale > min_std else min_std)
                if z > best:
                    best, best_f = z, f
        points.append((ts, xs))
        for f, x in enumerate(xs):
            bisect.insort(srt[f], x)
        return best, best_f

    def snapshot(self) -> tuple:
        return (tuple(self.points), tuple(tuple(s) for s in self.sorted))

    def restore(self, snap: tuple) -> None:
        points, srt = snap
        self.points = deque(points)
        self.sorted = [list(s) for s in srt]


class _EwmaState:
    """Exponentially weighted mean and variance per field. Eviction: ``ttl`` after the last point."""

    __slots__ = ("cfg", "n", "last", "mean", "var")

    def __init__(self, cfg: Ewma) -> None:
        self.cfg = cfg
        self.n = 0
        self.last = _MIN
        self.mean: list[float] = []
        self.var: list[float] = []

    def expires_at(self) -> int:
        return self.last + _us(self.cfg.ttl) if self.n else _MIN

    def update(self, ts: int, xs: tuple[float, ...]) -> tuple[float, int]:
        cfg = self.cfg
        if self.n == 0 or ts - self.last >= _us(cfg.ttl):
            self.n, self.last = 1, ts
            self.mean, self.var = list(xs), [0.0] * len(xs)
            return 0.0, 0
        # equal weights (a plain mean and variance) until the decay takes over
        a = max(1.0 - 2.0 ** (-max(ts - self.last, 1) / _us(cfg.half_life)), 1.0 / (self.n + 1))
        best, best_f = 0.0, 0
        scoring = self.n >= cfg.min_points
        mean, var, min_std = self.mean, self.var, cfg.min_std
        for f, x in enumerate(xs):
            d = x - mean[f]
            if scoring:
                v = var[f]
                z = abs(d) / max(math.sqrt(v) if v > 0 else 0.0, min_std)
                if z > best:
                    best, best_f = z, f
            incr = a * d
            mean[f] += incr
            var[f] = (1.0 - a) * (var[f] + d * incr)
        self.n += 1
        self.last = ts
        return best, best_f

    def snapshot(self) -> tuple:
        return (self.n, self.last, tuple(self.mean), tuple(self.var))

    def restore(self, snap: tuple) -> None:
        self.n, self.last, mean, var = snap
        self.mean, self.var = list(mean), list(var)


# --------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class FixedThreshold:
    """A window opens when the score is above ``open_above`` and stays open while it is at or above ``close_below``.

    ``close_below`` defaults to ``open_above`` (no hysteresis); set it lower
    so a score flapping around ``open_above`` makes one window, not many.

    Examples:
        >>> FixedThreshold(4.0, close_below=2.0)
        FixedThreshold(open_above=4.0, close_below=2.0)
    """

    open_above: float
    close_below: float | None = None

    def __post_init__(self) -> None:
        if self.close_below is None:
            object.__setattr__(self, "close_below", self.open_above)
        if not (math.isfinite(self.open_above) and math.isfinite(self.close_below)):
            raise ValueError("open_above and close_below must be finite numbers")
        if self.close_below > self.open_above:
            raise ValueError(
                f"close_below must be <= open_above; got {self.close_below} > {self.open_above}"
            )

    def _state(self) -> _FixedLevels:
        return _FixedLevels(self.open_above, self.close_below)


@dataclass(frozen=True)
class QuantileThreshold:
    """Adaptive per-key levels: high quantiles of the key's own recent scores.

    A point opens a window when its score is above the ``open_q`` quantile of
    the key's scores of the last ``window`` (and above ``min_open``); the
    window stays open while scores are at or above the ``close_q`` quantile.
    For its first ``warmup`` of event time a key raises nothing.

    State per key: the scores of the last ``window`` (at most ``max_points``);
    evicted once the window is empty. After eviction a key warms up again.

    Examples:
        >>> QuantileThreshold(0.995, close_q=0.95, window=timedelta(hours=6)).warmup
        datetime.timedelta(seconds=3600)
    """

    open_q: float = 0.99
    close_q: float = 0.95
    window: timedelta = timedelta(hours=6)
    warmup: timedelta = timedelta(hours=1)
    min_open: float = 0.0
    max_points: int = 10_000

    def __post_init__(self) -> None:
        if not 0.0 < self.close_q <= self.open_q < 1.0:
            raise ValueError(
                f"need 0 < close_q <= open_q < 1; got close_q={self.close_q}, open_q={self.open_q}"
            )
        _positive("window", self.window)
        if self.warmup < timedelta(0) or self.warmup > self.window:
            raise ValueError(f"warmup must be between 0 and window; got {self.warmup!r}")
        if self.max_points < 1:
            raise ValueError(f"max_points must be >= 1; got {self.max_points}")

    def _state(self) -> _QuantileLevels:
        return _QuantileLevels(self)


Threshold = FixedThreshold | QuantileThreshold


class _FixedLevels:
    __slots__ = ("open", "close")

    def __init__(self, open_above: float, close_below: float) -> None:
        self.open, self.close = open_above, close_below

    def levels(self, ts: int, s: float) -> tuple[float, float]:
        return self.open, self.close

    def expires_at(self) -> int:
        return _MIN

    def snapshot(self) -> None:
        return None

    def restore(self, snap: None) -> None:
        pass


class _QuantileLevels:
    """Recent scores in arrival and sorted order. Eviction: older than ``window`` or beyond ``max_points``."""

    __slots__ = ("cfg", "first", "points", "sorted")

    def __init__(self, cfg: QuantileThreshold) -> None:
        self.cfg = cfg
        self.first = _MIN
        self.points: deque[tuple[int, float]] = deque()
        self.sorted: list[float] = []

    def expires_at(self) -> int:
        return self.points[-1][0] + _us(self.cfg.window) if self.points else _MIN

    def levels(self, ts: int, s: float) -> tuple[float, float] | None:
        cfg, points, srt = self.cfg, self.points, self.sorted
        horizon = ts - _us(cfg.window)
        while points and (points[0][0] <= horizon or len(points) >= cfg.max_points):
            del srt[bisect.bisect_left(srt, points.popleft()[1])]
        if not points:
            self.first = ts
        out = None
        if ts - self.first >= _us(cfg.warmup) and srt:
            last = len(srt) - 1
            hi = max(srt[int(cfg.open_q * last)], cfg.min_open)
            out = (hi, min(srt[int(cfg.close_q * last)], hi))
        points.append((ts, s))
        bisect.insort(srt, s)
        return out

    def snapshot(self) -> tuple:
        return (self.first, tuple(self.points), tuple(self.sorted))

    def restore(self, snap: tuple) -> None:
        self.first, points, srt = snap
        self.points, self.sorted = deque(points), list(srt)


# --------------------------------------------------------------------------
# Event-time gate: per-key watermark, lateness, release in timestamp order.
# --------------------------------------------------------------------------


class _Gate:
    """Per-key watermark (max timestamp - lateness) and the buffer of not-yet-released events.

    Eviction: the buffer empties as the watermark passes; the watermark
    advances with system time while the key is idle (see ``idle_watermark``).
    """

    __slots__ = ("lateness", "max_ts", "wm", "sys_at_max", "pending")

    def __init__(self, lateness: int) -> None:
        self.lateness = lateness
        self.max_ts = _MIN
        self.wm = _MIN
        self.sys_at_max = 0
        self.pending: list[tuple] = []

    def idle_watermark(self, now_us: int) -> None:
        if self.max_ts > _MIN:
            wm = self.max_ts - self.lateness + (now_us - self.sys_at_max)
            if wm > self.wm:
                self.wm = wm

    def release(self, everything: bool = False) -> list[tuple]:
        pending = self.pending
        if not pending:
            return pending
        pending.sort(key=_first)
        if everything or pending[-1][0] <= self.wm:
            self.pending = []
            return pending
        cut = bisect.bisect_right(pending, self.wm, key=_first)
        out, self.pending = pending[:cut], pending[cut:]
        return out

    def system_time_of(self, event_us: int) -> datetime:
        """When, in system time, the idle watermark will reach ``event_us``."""
        return _dt(self.sys_at_max + (event_us - (self.max_ts - self.lateness)))

    def snapshot(self) -> tuple:
        return (self.max_ts, self.wm, self.sys_at_max, tuple(self.pending))

    def restore(self, snap: tuple) -> None:
        self.max_ts, self.wm, self.sys_at_max, pending = snap
        self.pending = list(pending)


def _now_us() -> int:
    return (datetime.now(timezone.utc) - _EPOCH) // _US


class _Reject(tuple):
    """(error_type, reason, event): a rejection whose key is added downstream."""

    __slots__ = ()


class _Late(tuple):
    """(reason, event): a late event whose key is added downstream."""

    __slots__ = ()


class _NonFiniteError(ValueError):
    pass


def _field_values(fields: tuple[str, ...]) -> Callable[[Event], tuple[float, ...]]:
    """Extract the scored fields of an event as floats; raise on missing or non-finite."""
    if len(fields) == 1:
        (name,) = fields

        def one(event: Event) -> tuple[float, ...]:
            x = event[name]
            if type(x) is not float:
                x = float(x)
            if x - x != 0.0:
                raise _NonFiniteError(x)
            return (x,)

        return one

    def many(event: Event) -> tuple[float, ...]:
        xs = tuple(float(event[f]) for f in fields)
        for x in xs:
            if x - x != 0.0:
                raise _NonFiniteError(x)
        return xs

    return many


def _admit(
    gate: _Gate, values: list[Event], stamp: TimestampGetter, extract: Callable[[Event], Any]
) -> list[tuple]:
    """Timestamp and validate a batch into the gate; returns rejections and late records."""
    problems: list[tuple] = []
    append = gate.pending.append
    max_ts, wm, lateness = gate.max_ts, gate.wm, gate.lateness
    moved = False
    for ev in values:
        try:
            td = stamp(ev) - _EPOCH
            ts = (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds
            x = extract(ev)
        except KeyError as e:
            problems.append(_Reject(("MissingField", f"missing field {e}", ev)))
            continue
        except _NonFiniteError as e:
            problems.append(_Reject(("NonFinite", f"non-finite value {e}", ev)))
            continue
        except Exception as e:  # noqa: BLE001 - bad data never raises; it is routed
            problems.append(_Reject((type(e).__name__, str(e) or repr(e), ev)))
            continue
        if ts > max_ts:
            max_ts = ts
            if ts - lateness > wm:
                wm, moved = ts - lateness, True
        if ts >= wm:
            append((ts, ev, x))
        else:
            behind = f"{_dt(ts).isoformat()} is behind the watermark {_dt(wm).isoformat()}"
            problems.append(_Late((f"event time {behind}", ev)))
    gate.max_ts, gate.wm = max_ts, wm
    if moved:
        gate.sys_at_max = _now_us()
    return problems


# --------------------------------------------------------------------------
# score
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreOut:
    """Streams returned by :func:`score`."""

    oks: KeyedStream[dict[str, Any]]
    """Each event with ``into`` (the score) and ``into + "_field"`` (the field with the largest deviation)."""
    errs: Stream[Rejected]
    """Events with a missing, non-numeric or non-finite field, or a bad timestamp."""
    late: Stream[Rejected]
    """Events older than the key's watermark (``error_type="Late"``)."""


class _ScoreLogic(StatefulBatchLogic):
    def __init__(self, cfg: _ScoreConfig, resume: tuple | None) -> None:
        self.cfg = cfg
        self.gate = _Gate(cfg.lateness)
        self.state = cfg.scorer._state()
        if resume is not None:
            self.gate.restore(resume[0])
            self.state.restore(resume[1])

    def _run(self, ready: list[tuple], out: list) -> None:
        update = self.state.update
        into, into_field, names = self.cfg.into, self.cfg.into_field, self.cfg.scorer.fields
        for ts, ev, xs in ready:
            s, f = update(ts, xs)
            out.append({**ev, into: s, into_field: names[f]})

    def _discard(self) -> bool:
        return not self.gate.pending and self.state.expires_at() <= self.gate.wm

    def on_batch(self, values: list) -> tuple[list, bool]:
        out = _admit(self.gate, values, self.cfg.timestamp, self.cfg.extract)
        self._run(self.gate.release(), out)
        return out, self._discard()

    def on_notify(self) -> tuple[list, bool]:
        self.gate.idle_watermark(_now_us())
        out: list = []
        self._run(self.gate.release(), out)
        return out, self._discard()

    def on_eof(self) -> tuple[list, bool]:
        out: list = []
        self._run(self.gate.release(everything=True), out)
        return out, False

    def notify_at(self) -> datetime | None:
        gate = self.gate
        due = gate.pending[0][0] if gate.pending else self.state.expires_at()
        return gate.system_time_of(due) if due > _MIN else None

    def snapshot(self) -> tuple:
        return (self.gate.snapshot(), self.state.snapshot())


@dataclass(frozen=True)
class _ScoreConfig:
    scorer: Scorer
    timestamp: TimestampGetter
    lateness: int
    into: str
    into_field: str
    extract: Callable[[Event], tuple[float, ...]] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extract", _field_values(self.scorer.fields))


def _unwrap(step_id: str) -> Callable[[tuple[str, Any]], list]:
    def split(kv: tuple[str, Any]) -> list:
        key, v = kv
        if type(v) is _Reject:
            return [Rejected(step_id, v[0], v[1], (key, v[2]))]
        if type(v) is _Late:
            return [Rejected(step_id, "Late", v[0], (key, v[1]))]
        return []

    return split


def _is_event(kv: tuple[str, Any]) -> bool:
    t = type(kv[1])
    return t is not _Reject and t is not _Late


def _check_common(timestamp: Any, lateness: timedelta) -> None:
    if not callable(timestamp):
        raise ValueError("timestamp must be a function event -> timezone-aware datetime")
    if lateness < timedelta(0):
        raise ValueError(f"lateness must be >= 0; got {lateness!r}")


@operator
def score(
    step_id: str,
    up: KeyedStream[Event],
    *,
    scorer: Scorer,
    timestamp: TimestampGetter,
    lateness: timedelta = timedelta(0),
    into: str = "score",
) -> ScoreOut:
    """Add a per-key anomaly score to every event, in event time.

    Use it when you want the scored events themselves (a dashboard, a model
    input, an :func:`anomaly_windows` step elsewhere). To go straight to
    windows, pass the scorer to :func:`anomaly_windows` instead: one step
    instead of two, and faster.

    Each event is scored against the key's history strictly before it, so a
    spike does not dampen its own score. Events are held until the key's
    watermark (largest timestamp minus ``lateness``) passes them and scored in
    timestamp order: the result does not depend on arrival order within the
    lateness bound.

    Args:
        step_id: Unique id.
        up: Keyed stream of ``(key, event)``; events are mappings.
        scorer: :class:`ZScore`, :class:`RobustZScore` or :class:`Ewma`.
        timestamp: Function from an event to its timezone-aware datetime.
        lateness: Allowed out-of-orderness; events older than the watermark go to ``late``.
        into: Name of the score field added to each event; the driving field's
            name goes to ``into + "_field"``.

    Returns:
        :class:`ScoreOut` with ``oks``, ``errs`` and ``late``.

    Examples:
        >>> from datetime import datetime, timedelta, timezone
        >>> import bytewax.operators as op
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
        >>> temps = [20.0, 21.0, 20.0, 21.0, 35.0, float("nan")]
        >>> events = [{"t": t0 + timedelta(seconds=i), "temp": x} for i, x in enumerate(temps)]
        >>> flow = Dataflow("score_eg")
        >>> s = op.key_on("key", op.input("in", flow, TestingSource(events)), lambda e: "pump-1")
        >>> scored = score("score", s, scorer=ZScore("temp", window=timedelta(minutes=1), min_points=3),
        ...                timestamp=lambda e: e["t"])
        >>> oks, errs = [], []
        >>> op.output("oks", scored.oks, TestingSink(oks))
        >>> op.output("errs", scored.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> [round(e["score"], 1) for _, e in oks]
        [0.0, 0.0, 0.0, 1.2, 25.1]
        >>> errs[0].error_type
        'NonFinite'
    """
    if not isinstance(scorer, ZScore | Ewma):
        raise ValueError(f"scorer must be a ZScore, RobustZScore or Ewma; got {scorer!r}")
    _check_common(timestamp, lateness)
    cfg = _ScoreConfig(scorer, timestamp, _us(lateness), into, into + "_field")
    out = op.stateful_batch("score", up, lambda resume: _ScoreLogic(cfg, resume))
    split = op.branch("split", out, _is_event)
    problems = op.flat_map("rejections", split.falses, _unwrap(step_id))
    late = op.branch("late_or_error", problems, lambda r: r.error_type == "Late")
    return ScoreOut(split.trues, late.falses, late.trues)


# --------------------------------------------------------------------------
# anomaly_windows
# --------------------------------------------------------------------------


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
        self.open = True
        self.start = points[0][0]
        for ts, s, ev, fld in points:
            self.n += 1
            self.total += s
            if s > self.peak or self.n == 1:
                self.peak, self.peak_ts, self.peak_ev, self.peak_field = s, ts, ev, fld
        ts, s, _, fld = points[-1]
        self.end = ts
        if self.rules.alerts:
            out.append(_Opened((self.start, ts, s, fld)))

    def close_by(self, wm: int, out: list) -> None:
        """Close the open window if the watermark passed its deadline."""
        if self.open and wm >= self.deadline():
            self._close(self._reason(), out)
        if not self.open and self.cand and wm >= self.last + self.rules.gap:
            self.cand = []

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


class _WindowsLogic(StatefulBatchLogic):
    def __init__(self, cfg: _WindowsConfig, resume: tuple | None) -> None:
        self.cfg = cfg
        self.gate = _Gate(cfg.lateness)
        self.levels = cfg.threshold._state()
        th = cfg.threshold
        self.fixed = (th.open_above, th.close_below) if isinstance(th, FixedThreshold) else None
        self.scorer = cfg.scorer._state() if cfg.scorer is not None else None
        self.windows = _Windows(cfg.rules)
        if resume is not None:
            gate, levels, scorer, windows = resume
            self.gate.restore(gate)
            self.levels.restore(levels)
            if self.scorer is not None:
                self.scorer.restore(scorer)
            self.windows.restore(windows)

    def _run(self, ready: list[tuple], out: list) -> None:
        push, scorer = self.windows.push, self.scorer
        fixed = self.fixed
        levels = self.levels.levels
        if scorer is not None:
            update, names = scorer.update, self.cfg.scorer.fields
            for ts, ev, xs in ready:
                s, f = update(ts, xs)
                push(ts, s, fixed or levels(ts, s), ev, names[f], out)
        else:
            driver = self.cfg.driver
            for ts, ev, s in ready:
                push(ts, s, fixed or levels(ts, s), ev, ev.get(driver), out)
        self.windows.close_by(self.gate.wm, out)

    def _expiry(self) -> int:
        due = max(self.windows.deadline(), self.levels.expires_at())
        if self.scorer is not None:
            due = max(due, self.scorer.expires_at())
        return due

    def _discard(self) -> bool:
        return not self.gate.pending and not self.windows.open and self._expiry() <= self.gate.wm

    def on_batch(self, values: list) -> tuple[list, bool]:
        out = _admit(self.gate, values, self.cfg.timestamp, self.cfg.extract)
        self._run(self.gate.release(), out)
        return out, self._discard()

    def on_notify(self) -> tuple[list, bool]:
        self.gate.idle_watermark(_now_us())
        out: list = []
        self._run(self.gate.release(), out)
        return out, self._discard()

    def on_eof(self) -> tuple[list, bool]:
        out: list = []
        self._run(self.gate.release(everything=True), out)
        if self.windows.open:
            self.windows._close("eof", out)
        return out, False

    def notify_at(self) -> datetime | None:
        gate, windows = self.gate, self.windows
        if windows.open:
            due = windows.deadline()
            if gate.pending:
                due = min(due, gate.pending[0][0])
        else:
            due = gate.pending[0][0] if gate.pending else self._expiry()
        return gate.system_time_of(due) if due > _MIN else None

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
        if t is _Reject:
            return [("errs", Rejected(step_id, v[0], v[1], (key, v[2])))]
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

    Returns:
        :class:`AnomalyWindowsOut` with ``windows``, ``opened``, ``errs``, ``late``.

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
    if isinstance(score, str):
        scorer, extract, driver = None, _score_field(score), score + "_field"
    elif isinstance(score, ZScore | Ewma):
        scorer, extract, driver = score, _field_values(score.fields), ""
    else:
        raise ValueError(
            f"score must be a field name or a scorer (ZScore, RobustZScore, Ewma); got {score!r}"
        )
    rules = _WindowRules(
        min_points, _us(min_duration), _us(cooldown), _us(gap), _us(max_duration), alerts
    )
    cfg = _WindowsConfig(rules, threshold, scorer, timestamp, _us(lateness), extract, driver)
    out = op.stateful_batch("windows", up, lambda resume: _WindowsLogic(cfg, resume))
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
