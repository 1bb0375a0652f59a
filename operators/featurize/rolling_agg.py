"""Rolling aggregates per key over event time, "as of" each event.

For each event of a key, :func:`rolling` adds the aggregates over that key's
events with timestamps in ``(t - window, t]`` — point-in-time correct: an
event's features use only the events at or before it, in event-time order
(ties in arrival order, as pandas' time-based ``rolling`` does on a sorted
index), even when events arrive out of order within ``max_delay``.

How: each key has a watermark (newest timestamp seen minus ``max_delay``,
see :class:`streamml.operators._time.KeyedWatermarks`). An event is held
until its key's watermark reaches it, then its features are computed; an
event older than its key's watermark is late and goes to the ``late``
stream, so no emitted feature ever changes. With ``max_delay=0`` nothing is
held. At end of input every held event is emitted.

One step can compute several windows (``window=[1 min, 10 min]``): the
watermarks, held events and rows are shared, and each window is one more
range per released event over the same rows.

Speed: keys are hashed into ``shards`` states; each state receives whole
micro-batches and computes every aggregate of every released event with
NumPy (see :mod:`._kernels`).

State and eviction (per shard): the rows of each key's events still inside
some future window, held events, and one watermark per key. Rows leave when
their key's watermark passes them by the longest window (checked when the
key has events again); keys whose newest event is ``ttl`` older than the shard's
newest event time are forgotten with all their rows. Each batch computes on
the rows of the keys it has events for, not on the whole state.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from streamml.operators._time import KeyedWatermarks, WatermarkSnapshot, late, micros
from streamml.operators.featurize import _kernels as kern
from streamml.operators.featurize._batch import extract
from streamml.operators.featurize._shard import shard_grouper
from streamml.operators.featurize.outputs import TimedFeaturesOut, split_chunks

from streamml.errors import Rejected

__all__ = ["AGGREGATES", "rolling", "window_label"]

AGGREGATES = (
    "count",
    "sum",
    "mean",
    "std",
    "var",
    "min",
    "max",
    "last",
    "delta",
    "since",
    "rate",
    "ewma",
)
"""Aggregate names, plus quantiles written ``p<percent>`` (``p50``, ``p95``, ``p99.9``)."""

_QUANTILE = re.compile(r"^p(\d{1,2}(\.\d+)?|100)$")
_INT64_MIN = np.iinfo(np.int64).min


def window_label(window: timedelta) -> str:
    """The short label of a duration used in feature names.

    Examples:
        >>> [window_label(timedelta(seconds=s)) for s in (60, 90, 300, 3600, 86400, 0.25)]
        ['60s', '90s', '5m', '1h', '1d', '250ms']
    """
    us = micros(window)
    for unit, size in (("d", 86_400_000_000), ("h", 3_600_000_000), ("m", 60_000_000)):
        if us % size == 0 and us >= size and (unit != "m" or us // size % 60 != 0):
            if unit == "m" and us < 5 * size:
                break
            return f"{us // size}{unit}"
    if us % 1_000_000 == 0:
        return f"{us // 1_000_000}s"
    if us % 1000 == 0:
        return f"{us // 1000}ms"
    return f"{us}us"


def _check_aggs(
    fields: Sequence[str] | Mapping[str, Sequence[str]], default: Sequence[str]
) -> dict[str, tuple[str, ...]]:
    spec = {f: tuple(default) for f in fields} if not isinstance(fields, Mapping) else dict(fields)
    if not spec:
        raise ValueError("fields must name at least one numeric field")
    for name, aggs in spec.items():
        if isinstance(aggs, str):
            raise ValueError(f"aggregates of {name!r} must be a list, e.g. [{aggs!r}]")
        for agg in aggs:
            if agg not in AGGREGATES and not _QUANTILE.match(agg):
                raise ValueError(
                    f"unknown aggregate {agg!r} for field {name!r}; use one of "
                    f"{', '.join(AGGREGATES)} or a quantile like 'p95'"
                )
    return {name: tuple(aggs) for name, aggs in spec.items()}


@dataclass
class _Held:
    """Accepted events waiting for their key's watermark, column-wise.

    Eviction: an event leaves when its key's watermark reaches it, when its
    key is forgotten, after ``idle_release`` of wall-clock time, or at end
    of input — and is then emitted with its features.
    """

    kid: np.ndarray
    ts: np.ndarray  # events stay in arrival order (ties are ordered by it)
    vals: np.ndarray
    arrived: np.ndarray  # wall-clock seconds of the batch that brought it
    keys: list[str]
    events: list[Any]

    @classmethod
    def empty(cls, n_fields: int) -> _Held:
        i = np.zeros(0, dtype=np.int64)
        return cls(i, i, np.zeros((0, n_fields)), np.zeros(0), [], [])

    def __len__(self) -> int:
        return len(self.kid)

    def extend(self, more: _Held) -> _Held:
        if not len(self):
            return more
        cat = np.concatenate
        return _Held(
            cat([self.kid, more.kid]),
            cat([self.ts, more.ts]),
            cat([self.vals, more.vals]),
            cat([self.arrived, more.arrived]),
            self.keys + more.keys,
            self.events + more.events,
        )

    def split(self, mask: np.ndarray) -> tuple[_Held, _Held]:
        """The events where ``mask`` holds, and the others."""
        if mask.all():
            return self, _Held.empty(self.vals.shape[1])
        chosen, rest = np.flatnonzero(mask).tolist(), np.flatnonzero(~mask).tolist()

        def part(idx: list[int], m: np.ndarray) -> _Held:
            return _Held(
                self.kid[m],
                self.ts[m],
                self.vals[m],
                self.arrived[m],
                [self.keys[i] for i in idx],
                [self.events[i] for i in idx],
            )

        return part(chosen, mask), part(rest, ~mask)

    def copy(self) -> _Held:
        return _Held(
            self.kid.copy(),
            self.ts.copy(),
            self.vals.copy(),
            self.arrived.copy(),
            list(self.keys),
            list(self.events),
        )


@dataclass(frozen=True)
class _Snapshot:
    marks: WatermarkSnapshot
    kid_of: dict[str, int]
    free: list[int]
    kmax: np.ndarray
    clock: int
    swept: int
    rows: tuple[np.ndarray, np.ndarray, np.ndarray]  # kid, ts, values of window rows
    held: _Held


@dataclass
class _Config:
    step_id: str
    fields: tuple[str, ...]
    plan: list[tuple[int, str]]  # (field index, aggregate) per output column of one window
    names: list[str]  # output fields: every window (in the order given), each with the plan
    windows: tuple[int, ...]  # microseconds, in the order given
    delay: timedelta
    ttl: int
    half_life: float
    max_future: int | None
    ts_getter: Callable[[Any], datetime]
    idle_release: float | None = None  # wall-clock seconds
    window: int = field(init=False)  # the longest: rows, watermark guard and TTL follow it
    needed: set[str] = field(init=False)
    gathered: bool = field(init=False)

    def __post_init__(self) -> None:
        self.window = max(self.windows)
        self.needed = {a for _, a in self.plan}
        self.gathered = any(a == "ewma" or a.startswith("p") for a in self.needed)


def _config(
    step_id: str,
    *,
    timestamp: Callable[[Any], datetime],
    window: timedelta | Sequence[timedelta],
    fields: Sequence[str] | Mapping[str, Sequence[str]],
    aggregates: Sequence[str] = ("count", "mean", "std", "min", "max"),
    max_delay: timedelta = timedelta(0),
    half_life: timedelta | None = None,
    ttl: timedelta | None = None,
    max_future: timedelta | None = timedelta(days=1),
    label: str | Sequence[str] | None = None,
    idle_release: timedelta | None = None,
) -> _Config:
    """Validate :func:`rolling`'s arguments into the shard states' config."""
    windows, labels = _windows(window, label)
    window = max(windows)
    if max_delay < timedelta(0):
        raise ValueError(f"max_delay must be >= 0; got {max_delay}")
    spec = _check_aggs(fields, aggregates)
    wants_ewma = any("ewma" in aggs for aggs in spec.values())
    if wants_ewma and (half_life is None or half_life <= timedelta(0)):
        raise ValueError("ewma needs half_life > 0, e.g. half_life=timedelta(seconds=10)")
    if ttl is None:
        ttl = window + max_delay + timedelta(hours=1)
    if ttl < window + max_delay:
        raise ValueError(f"ttl must be >= window + max_delay ({window + max_delay}); got {ttl}")
    if idle_release is not None and idle_release <= timedelta(0):
        raise ValueError(f"idle_release must be > 0 or None; got {idle_release}")
    if max_future is not None and max_future < timedelta(0):
        raise ValueError(f"max_future must be >= 0 or None; got {max_future}")
    names = list(spec)
    plan = [(names.index(f), a) for f, aggs in spec.items() for a in aggs]
    cfg = _Config(
        step_id=step_id,
        fields=tuple(names),
        plan=plan,
        names=[f"{names[f]}_{a}_{suffix}" for suffix in labels for f, a in plan],
        windows=tuple(map(micros, windows)),
        delay=max_delay,
        ttl=micros(ttl),
        half_life=half_life.total_seconds() if half_life else 0.0,
        max_future=micros(max_future) if max_future is not None else None,
        ts_getter=timestamp,
        idle_release=idle_release.total_seconds() if idle_release is not None else None,
    )
    if len(set(cfg.names)) != len(cfg.names):
        raise ValueError(
            f"duplicate feature names {cfg.names}; list each aggregate and each window label once"
        )
    return cfg


def _windows(
    window: timedelta | Sequence[timedelta], label: str | Sequence[str] | None
) -> tuple[list[timedelta], list[str]]:
    """The windows of :func:`rolling` as a list, each with its name suffix."""
    if isinstance(window, timedelta):
        if label is not None and not isinstance(label, str):
            raise ValueError(f"label must be a str for a single window; got {label!r}")
        windows = [window]
        labels = None if label is None else [label]
    else:
        windows = list(window)
        if not windows or not all(isinstance(w, timedelta) for w in windows):
            raise ValueError(
                f"window must be a timedelta or a non-empty list of them; got {window!r}"
            )
        if isinstance(label, str):
            raise ValueError(
                f"label must be a list of {len(windows)} labels, one per window; got {label!r}"
            )
        labels = None if label is None else list(label)
        if labels is not None and len(labels) != len(windows):
            raise ValueError(
                f"label must give one label per window ({len(windows)}); got {len(labels)}"
            )
    for w in windows:
        if w <= timedelta(0):
            raise ValueError(f"window must be > 0; got {w}")
    return windows, labels if labels is not None else [window_label(w) for w in windows]


class _RollingLogic(StatefulBatchLogic):
    """One shard: the window rows, held events and watermarks of many keys.

    Eviction: rows older than their key's watermark minus the window are
    dropped every batch; keys idle for ``ttl`` of the shard's event time
    are forgotten (their held events are emitted first).
    """

    def __init__(self, cfg: _Config, resume: _Snapshot | None) -> None:
        self.cfg = cfg
        nf = len(cfg.fields)
        self.marks = KeyedWatermarks(
            max_delay=cfg.delay,
            guard=timedelta(microseconds=cfg.window),
            resume=resume.marks if resume else None,
        )
        if resume is None:
            self.kid_of: dict[str, int] = {}
            self.free: list[int] = []
            self.kmax = np.full(16, _INT64_MIN, dtype=np.int64)
            self.clock = _INT64_MIN
            self.swept = _INT64_MIN
            empty_i = np.zeros(0, dtype=np.int64)
            self.rows = (empty_i, empty_i, np.zeros((0, nf)))
            self.held = _Held.empty(nf)
        else:
            self.kid_of = dict(resume.kid_of)
            self.free = list(resume.free)
            self.kmax = resume.kmax.copy()
            self.clock, self.swept = resume.clock, resume.swept
            self.rows = tuple(a.copy() for a in resume.rows)
            self.held = resume.held.copy()

    # -- Bytewax hooks -------------------------------------------------

    def on_batch(self, values: list[list[Any]]) -> tuple[list[Any], bool]:
        items = values[0] if len(values) == 1 else [x for part in values for x in part]
        return [self._process(items)], False

    def notify_at(self) -> datetime | None:
        """When the oldest held event has waited ``idle_release`` (if set)."""
        if self.cfg.idle_release is None or not len(self.held):
            return None
        due = float(self.held.arrived.min()) + self.cfg.idle_release
        return datetime.fromtimestamp(due, tz=timezone.utc)

    def on_notify(self) -> tuple[list[Any], bool]:
        return [self._process([])], False

    def on_eof(self) -> tuple[list[Any], bool]:
        chunk = self._process([], eof=True)
        self.marks.close_all()
        self.kmax += self.marks.delay
        return [chunk], False

    def snapshot(self) -> _Snapshot:
        return _Snapshot(
            self.marks.snapshot(),
            dict(self.kid_of),
            list(self.free),
            self.kmax.copy(),
            self.clock,
            self.swept,
            tuple(a.copy() for a in self.rows),
            self.held.copy(),
        )

    # -- work ----------------------------------------------------------

    def _kid(self, key: str) -> int:
        kid = self.kid_of.get(key)
        if kid is None:
            if self.free:
                kid = self.free.pop()
            else:
                kid = len(self.kid_of)
                if kid >= len(self.kmax):
                    grown = np.full(2 * len(self.kmax), _INT64_MIN, dtype=np.int64)
                    grown[: len(self.kmax)] = self.kmax
                    self.kmax = grown
            self.kmax[kid] = _INT64_MIN
            self.kid_of[key] = kid
        return kid

    def _process(self, items: list[Any], eof: bool = False) -> tuple[list, list, list]:
        cfg = self.cfg
        now = time.time()
        cols, errs = extract(cfg.step_id, items, cfg.fields, cfg.ts_getter, cfg.max_future)
        lates: list[Rejected] = []
        keys, events, ts_arr, vals = cols.keys, cols.events, cols.ts, cols.values
        if keys:
            ts_list = ts_arr.tolist()
            flags = self.marks.observe(keys, ts_list)
            if any(flags):
                for i, verdict in enumerate(flags):
                    if verdict is not None:
                        original = (keys[i], events[i])
                        lates.append(late(cfg.step_id, original, ts_list[i], *verdict))
                ok = np.array([f is None for f in flags])
                idx = np.flatnonzero(ok).tolist()
                keys = [keys[i] for i in idx]
                events = [events[i] for i in idx]
                ts_arr, vals = ts_arr[ok], vals[ok]
        if keys:
            get = self.kid_of.get
            found = [get(k) for k in keys]
            if None in found:
                found = [self._kid(k) if v is None else v for k, v in zip(keys, found)]
            kids = np.array(found, dtype=np.int64)
            np.maximum.at(self.kmax, kids, ts_arr)
            self.clock = max(self.clock, int(ts_arr.max()))
            arrived = np.full(len(keys), now)
            self.held = self.held.extend(_Held(kids, ts_arr, vals, arrived, keys, events))
        gone = self._sweep()
        oks = self._release(eof, gone, now)
        if gone:
            for key in gone:
                self.free.append(self.kid_of.pop(key))
        return oks, errs, lates

    def _sweep(self) -> list[str]:
        """Forget keys idle for ``ttl`` (checked when the clock moved a quarter TTL)."""
        ttl = self.cfg.ttl
        if self.clock == _INT64_MIN or self.clock - self.swept < ttl // 4:
            return []
        self.swept = self.clock
        return self.marks.forget_idle(self.clock - ttl)

    def _release(self, eof: bool, gone: list[str], now: float) -> list[tuple[str, dict]]:
        held = self.held
        if not len(held) and not gone:
            return []
        delay = self.marks.delay
        gone_kids = np.array([self.kid_of[k] for k in gone], dtype=np.int64)
        if cfg_idle := self.cfg.idle_release:
            waited = held.arrived + cfg_idle <= now
            if waited.any():  # emit early; the key's watermark moves up to what was emitted
                for i in np.flatnonzero(waited).tolist():
                    self.marks.advance(held.keys[i], int(held.ts[i]))
                np.maximum.at(self.kmax, held.kid[waited], held.ts[waited] + delay)
        if eof or (delay == 0 and not gone):
            out = np.ones(len(held), dtype=bool)
        else:
            out = held.ts <= self.kmax[held.kid] - delay
            if gone:
                out |= np.isin(held.kid, gone_kids)
        released, self.held = held.split(out)
        results = self._compute(released) if len(released) else []
        if len(gone_kids):
            self._drop_rows(gone_kids)
        return results

    def _compute(self, released: _Held) -> list[tuple[str, dict]]:
        kids, ts, vals = released.kid, released.ts, released.vals
        keys, events = released.keys, released.events
        cfg = self.cfg
        order = np.lexsort((ts, kids))  # stable, so equal times keep arrival order
        kids, ts, vals = kids[order], ts[order], vals[order]
        # only the rows of keys with released events take part; the others wait as they are
        r_kid, r_ts, r_vals = self.rows
        present = np.zeros(len(self.kmax), dtype=bool)
        present[kids] = True
        mine = present[r_kid]
        rest = None
        if not mine.all():
            rest = (r_kid[~mine], r_ts[~mine], r_vals[~mine])
            r_kid, r_ts, r_vals = r_kid[mine], r_ts[mine], r_vals[mine]
        n_old = len(r_kid)
        all_kid = np.concatenate([r_kid, kids])
        merge = np.argsort(all_kid, kind="stable")  # groups keys, keeps each key's time order
        m_kid = all_kid[merge]
        m_ts = np.concatenate([r_ts, ts])[merge]
        m_x = np.concatenate([r_vals, vals])[merge]
        self.rows = self._recent(m_kid, m_ts, m_x, rest)
        end = np.flatnonzero(merge >= n_old)
        gstart, middle = kern.group_rows(m_kid)
        starts = self._starts(m_kid, m_ts, gstart, end)
        columns = self._aggregates(m_ts, m_x, middle, end, starts)
        order_list = order.tolist()
        outputs = list(map(dict, map(events.__getitem__, order_list)))
        for name, values in zip(cfg.names, columns):
            for event, value in zip(outputs, values.tolist()):
                event[name] = value
        return list(zip(map(keys.__getitem__, order_list), outputs))

    def _starts(
        self, m_kid: np.ndarray, m_ts: np.ndarray, gstart: np.ndarray, end: np.ndarray
    ) -> list[np.ndarray]:
        """Each window's first row for each released row ``end``, in the config's window order."""
        windows = self.cfg.windows
        t_end = m_ts[end]
        afters = [t_end - w for w in windows]
        found = kern.group_range_starts(m_kid, m_ts, end, afters)
        if found is not None:
            return found
        # times beyond float64's exact integers: a vectorised binary search per window
        return [kern.range_starts(m_ts, gstart[end], end, after) for after in afters]

    def _aggregates(
        self,
        m_ts: np.ndarray,
        m_x: np.ndarray,
        middle: np.ndarray,
        end: np.ndarray,
        starts: list[np.ndarray],
    ) -> list[np.ndarray]:
        """One column per output name: every window's aggregates over ``[start, end]``."""
        cfg = self.cfg
        needed = cfg.needed
        ranges = [(start, end) for start in starts]
        moments: list[tuple[np.ndarray, np.ndarray]] = []
        if needed & {"var", "std", "sum", "mean"}:
            moments = kern.range_variances(m_x, m_x[middle], ranges)
        mins = kern.range_reduce(m_x, ranges, np.minimum) if "min" in needed else []
        maxs = kern.range_reduce(m_x, ranges, np.maximum) if "max" in needed else []
        last = m_x[end]
        out = []
        for i, (start, window) in enumerate(zip(starts, cfg.windows)):
            count = (end - start + 1).astype(np.float64)
            columns: dict[str, np.ndarray] = {"count": count, "last": last}
            if moments:
                var, total = moments[i]
                columns.update(var=var, sum=total, std=np.sqrt(var), mean=total / count[:, None])
            if mins:
                columns["min"] = mins[i]
            if maxs:
                columns["max"] = maxs[i]
            if "delta" in needed or "since" in needed:
                has_prev = end > start
                prev = np.where(has_prev, end - 1, end)
                columns["delta"] = np.where(has_prev[:, None], last - m_x[prev], np.nan)
                columns["since"] = np.where(has_prev, (m_ts[end] - m_ts[prev]) / 1e6, np.nan)
            if "rate" in needed:
                columns["rate"] = count / (window / 1e6)
            if cfg.gathered:
                columns.update(self._gathered(m_ts, m_x, start, end))
            for f, agg in cfg.plan:
                col = columns[agg]
                out.append(col[:, f] if col.ndim == 2 else col)
        return out

    def _gathered(
        self, m_ts: np.ndarray, m_x: np.ndarray, start: np.ndarray, end: np.ndarray
    ) -> dict[str, np.ndarray]:
        """ewma and quantiles, from the gathered rows of each window (in bounded chunks)."""
        cfg = self.cfg
        quantiles = sorted({a for _, a in cfg.plan if a.startswith("p")})
        names = (["ewma"] if cfg.half_life > 0 else []) + quantiles
        cols = {name: np.empty((len(start), m_x.shape[1])) for name in names}
        for part in kern.chunks(start, end, m_x.shape[1]):
            s, e = start[part], end[part]
            idx, offsets = kern.gather(s, e)
            lengths = e - s + 1
            x = m_x[idx]
            if cfg.half_life > 0:
                age = (np.repeat(m_ts[e], lengths) - m_ts[idx]) / 1e6
                w = np.exp2(-age / cfg.half_life)[:, None]
                weighted = np.add.reduceat(w * x, offsets, axis=0)
                cols["ewma"][part] = weighted / np.add.reduceat(w, offsets, axis=0)
            for agg in quantiles:
                q = float(agg[1:]) / 100.0
                for f in range(x.shape[1]):
                    cols[agg][part, f] = kern.segment_quantile(x[:, f], offsets, lengths, q)
        return cols

    def _recent(
        self,
        m_kid: np.ndarray,
        m_ts: np.ndarray,
        m_x: np.ndarray,
        rest: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The new window rows: ``rest`` plus the merged rows some future window can still use."""
        keep = m_ts > self.kmax[m_kid] - self.marks.delay - self.cfg.window
        if not keep.all():
            m_kid, m_ts, m_x = m_kid[keep], m_ts[keep], m_x[keep]
        if rest is None:
            return m_kid, m_ts, m_x
        return tuple(np.concatenate([a, b]) for a, b in zip(rest, (m_kid, m_ts, m_x)))

    def _drop_rows(self, kids: np.ndarray) -> None:
        """Drop every window row of the given (forgotten) keys."""
        r_kid, r_ts, r_vals = self.rows
        gone = np.zeros(len(self.kmax), dtype=bool)
        gone[kids] = True
        keep = ~gone[r_kid]
        self.rows = (r_kid[keep], r_ts[keep], r_vals[keep])


@operator
def rolling(
    step_id: str,
    up: KeyedStream[Mapping[str, Any]],
    *,
    timestamp: Callable[[Mapping[str, Any]], datetime],
    window: timedelta | Sequence[timedelta],
    fields: Sequence[str] | Mapping[str, Sequence[str]],
    aggregates: Sequence[str] = ("count", "mean", "std", "min", "max"),
    max_delay: timedelta = timedelta(0),
    half_life: timedelta | None = None,
    ttl: timedelta | None = None,
    max_future: timedelta | None = timedelta(days=1),
    shards: int = 8,
    label: str | Sequence[str] | None = None,
    idle_release: timedelta | None = None,
) -> TimedFeaturesOut:
    """Add rolling aggregates of each key's recent events to every event, as of its event time.

    Use it for per-entity features that must be exactly what the model would
    have seen at that moment: a sensor's mean and spread over the last
    minute, a user's transaction count and rate over the last hour.

    Each output event is a new dict: the input event plus one field per
    (field, aggregate), named ``{field}_{aggregate}_{label}`` (e.g.
    ``temperature_mean_60s``), all floats. Over the key's events with
    timestamps in ``(t - window, t]`` up to this one:

    - ``count``, ``sum``, ``mean``, ``std`` and ``var`` (population,
      ``ddof=0``; computed stably), ``min``, ``max``;
    - ``last`` (this event's value), ``delta`` (value minus the previous
      event's in the window) and ``since`` (seconds since it) — NaN when
      this is the only event in the window;
    - ``rate``: ``count`` per second of ``window``;
    - ``ewma``: mean weighted by ``0.5 ** (age / half_life)``;
    - quantiles ``p50``, ``p95``, ``p99`` (any ``p<percent>``): exact over
      the window, NumPy's linear interpolation.

    Several windows at once: give ``window`` a list (and ``label``, if
    given, a list of the same length). Every window gets every (field,
    aggregate), named with its own label, in the order given — the same
    fields, with the same values, as one step per window with the same
    ``max_delay`` would add, for a fraction of the per-event cost (events
    are checked, copied and routed once). Rows are kept, and ``ttl``
    defaults and is checked, for the longest window; ``rate`` is per second
    of each window's own length.

    Results do not depend on batch sizes, ``shards``, worker counts or the
    other windows of the step, except in the last bits of
    ``sum``/``mean``/``std``/``var`` (sums are centred on rows of the
    current batch).

    Bad events never stop the flow: missing, non-numeric (``str``,
    ``bool``, ``None``) or non-finite fields, and timestamps that are not
    timezone-aware ``datetime`` or lie more than ``max_future`` beyond the
    wall clock, go to ``errs`` (see :mod:`._batch`); events before their
    key's watermark go to ``late``.

    Args:
        step_id: Unique ID.
        up: Keyed stream of ``(key, event)``; events are mappings.
        timestamp: Gets an event's timezone-aware event time.
        window: Length of the look-back window (``> 0``), or a list of
            lengths for several windows in one step.
        fields: Numeric fields, each with ``aggregates``; or a mapping
            ``{field: [aggregates]}``.
        aggregates: Default aggregates (see above).
        max_delay: Bound on out-of-orderness: events up to this much older
            than their key's newest are accepted (and features wait that
            long); older ones are late.
        half_life: Half-life for ``ewma`` (required when asked for).
        ttl: Forget keys idle this long in event time (measured against the
            newest event of their shard); must be at least
            ``window + max_delay`` (the longest window's).
            Defaults to ``window + max_delay + 1h``.
            After keys are forgotten, events of unknown keys older than the
            newest forgotten event plus ``window`` are sent to ``late``.
        max_future: Reject timestamps further than this beyond the wall
            clock (``None`` accepts any): one far-future event would
            otherwise make every later event of its key late.
        shards: Number of state shards (keys are spread over them by a
            stable hash; each shard lives on one worker). Use about twice
            the number of workers; on a single worker ``shards=1`` is
            fastest (one large batch instead of several smaller ones).
        label: Name suffix; defaults to :func:`window_label` of ``window``.
            With several windows, a list of suffixes, one per window.
        idle_release: Emit a held event once it has waited this long in
            wall-clock time, even if its key's watermark has not reached it
            (a key that goes quiet would otherwise hold its last events until
            it speaks again or input ends). Its key's watermark then moves up
            to it, so older events arriving afterwards are late: results
            never change, but which events are late then depends on timing.
            ``None`` (default): only event time decides.

    Returns:
        ``oks``: ``(key, event with features)``, emitted when the key's
        watermark passes the event; ``errs`` and ``late``:
        :class:`~streamml.errors.Rejected` items with the ``(key, event)``.

    Examples:
        >>> from datetime import datetime, timedelta, timezone
        >>> import bytewax.operators as op
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> events = [
        ...     {"id": "s1", "s": 0, "temp": 20.0},
        ...     {"id": "s1", "s": 30, "temp": 22.0},
        ...     {"id": "s1", "s": 20, "temp": 21.0},   # out of order, within max_delay
        ...     {"id": "s1", "s": 80, "temp": 30.0},
        ...     {"id": "s1", "s": 40, "temp": 99.0},   # late: s1 has seen 80 s
        ...     {"id": "s1", "s": 95, "temp": "hot"},  # not a number
        ... ]
        >>> flow = Dataflow("rolling_doc")
        >>> keyed = op.key_on("key", op.input("in", flow, TestingSource(events)), lambda e: e["id"])
        >>> feats = rolling("temp_1m", keyed, timestamp=lambda e: t0 + timedelta(seconds=e["s"]),
        ...                 window=timedelta(seconds=60), fields=["temp"],
        ...                 aggregates=["count", "mean", "max"], max_delay=timedelta(seconds=15))
        >>> oks, errs, lates = [], [], []
        >>> op.output("oks", feats.oks, TestingSink(oks))
        >>> op.output("errs", feats.errs, TestingSink(errs))
        >>> op.output("late", feats.late, TestingSink(lates))
        >>> run_main(flow)
        >>> for _, e in oks:
        ...     print(e["s"], e["temp_count_60s"], e["temp_mean_60s"], e["temp_max_60s"])
        0 1.0 20.0 20.0
        20 2.0 20.5 21.0
        30 3.0 21.0 22.0
        80 2.0 26.0 30.0
        >>> [(r.error_type, r.original[1]["s"]) for r in lates + errs]
        [('Late', 40), ('NotANumber', 95)]

        Two windows in one step:

        >>> flow = Dataflow("rolling_two_windows")
        >>> keyed = op.key_on("key", op.input("in", flow, TestingSource(events)), lambda e: e["id"])
        >>> feats = rolling("temp", keyed, timestamp=lambda e: t0 + timedelta(seconds=e["s"]),
        ...                 window=[timedelta(seconds=30), timedelta(minutes=2)],
        ...                 label=["30s", "2m"], fields=["temp"], aggregates=["count", "mean"],
        ...                 max_delay=timedelta(seconds=15))
        >>> oks = []
        >>> op.output("oks", feats.oks, TestingSink(oks))
        >>> run_main(flow)
        >>> for _, e in oks:
        ...     print(e["s"], {k: v for k, v in e.items() if k.startswith("temp_")})
        0 {'temp_count_30s': 1.0, 'temp_mean_30s': 20.0, 'temp_count_2m': 1.0, 'temp_mean_2m': 20.0}
        20 {'temp_count_30s': 2.0, 'temp_mean_30s': 20.5, 'temp_count_2m': 2.0, 'temp_mean_2m': 20.5}
        30 {'temp_count_30s': 2.0, 'temp_mean_30s': 21.5, 'temp_count_2m': 3.0, 'temp_mean_2m': 21.0}
        80 {'temp_count_30s': 1.0, 'temp_mean_30s': 30.0, 'temp_count_2m': 4.0, 'temp_mean_2m': 23.25}
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1; got {shards}")
    cfg = _config(
        step_id,
        timestamp=timestamp,
        window=window,
        fields=fields,
        aggregates=aggregates,
        max_delay=max_delay,
        half_life=half_life,
        ttl=ttl,
        max_future=max_future,
        label=label,
        idle_release=idle_release,
    )
    sharded: Stream[Any] = op.flat_map_batch("shard", up, shard_grouper(shards))
    chunks = op.stateful_batch("state", sharded, lambda resume: _RollingLogic(cfg, resume))
    return split_chunks(chunks)
