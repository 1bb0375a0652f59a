"""Rolling aggregates per key, "as of" each event: over event-time windows and over the last N events.

For each row of a key, :func:`rolling` adds the aggregates over that key's
rows with timestamps in ``(t - window, t]`` (a time window), and over the
key's last ``N`` rows up to and including it (a count window, ``last=N``)
— point-in-time correct: a row's features use only the rows at or before
it, in event-time order (ties in arrival order, as pandas' time-based
``rolling`` does on a sorted index), even when rows arrive out of order
within ``max_delay``.

The unit is a frame: a stream of ``polars.DataFrame`` batches in, the same
rows with one ``Float64`` column per feature out. ``(key, event)`` rows —
the legacy path, ``key=None`` — go through the same implementation: each
Bytewax batch of rows is read into columns, computed on exactly as a frame
is, and written back into new dicts.

How: event time is :class:`~streamml.operators._core.event_time.KeyedEventTime`
— per-key watermarks (newest time seen minus ``max_delay``), the one
lateness rule, rows held until their key's watermark reaches them, TTL and
idle release. A late row goes to the ``late`` stream, so no emitted
feature ever changes. With ``max_delay=0`` nothing is held. At end of input
every held row is emitted.

One step can compute several windows (``window=[1 min, 10 min]``,
``last=[10, 100]``): the watermarks, held rows and window rows are shared,
and each window is one more range per released row over the same rows.

Speed: keys are hashed into ``shards`` states
(:func:`~streamml.operators._core.keys.route`); each state receives whole
frames and computes every aggregate of every released row with NumPy (see
:mod:`._rolling_core` and :mod:`._kernels`).

State and eviction (per shard): the rows of each key still inside some
future window, held rows, and one watermark per key. Rows leave when their
key's watermark passes them by the longest time window and they are not
among the key's last ``N - 1`` rows for the longest count window; keys
whose newest row is ``ttl`` older than the shard's newest event time are
forgotten with all their rows. Each batch computes on the rows of the keys
it has rows for, not on the whole state.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from streamml.operators import _validate
from streamml.operators._core.columns import ts_micros, values
from streamml.operators._core.state import restore, snapshot
from streamml.operators._time import micros
from streamml.operators.featurize import _legacy
from streamml.operators.featurize._batch import extract
from streamml.operators.featurize._frame_flow import frame_features
from streamml.operators.featurize._frequency import is_frequency
from streamml.operators.featurize._rolling_core import Config, Rolling, plan_names
from streamml.operators.featurize._shard import shard_grouper
from streamml.operators.featurize.outputs import TimedFeaturesOut, split_chunks

from streamml.errors import Rejected
from streamml.metrics import instrumented

__all__ = ["AGGREGATES", "rolling", "window_label"]

AGGREGATES = (
    "count",
    "sum",
    "mean",
    "std",
    "var",
    "min",
    "max",
    "first",
    "last",
    "delta",
    "since",
    "rate",
    "ewma",
    "distinct",
    "approx_distinct",
)
"""Aggregate names, plus quantiles written ``p<percent>`` (``p50``, ``p95``, ``p99.9``),
``top<k>``, ``top<k>_count`` and histogram bins ``bin<lo>_<hi>`` (see :mod:`._frequency`)."""

_QUANTILE = re.compile(r"^p(\d{1,2}(\.\d+)?|100)$")
_KIND = "streamml.featurize.rolling"
_VERSION = 1
# the pickled classes of stores written before versioned snapshots (read, never written)
_Snapshot = _legacy.Snapshot
_Held = _legacy.Held


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
    if isinstance(fields, str):
        _validate.names("fields", fields)  # refuses it, naming the list meant
    spec = {f: tuple(default) for f in fields} if not isinstance(fields, Mapping) else dict(fields)
    if not spec:
        raise ValueError("fields must name at least one numeric field")
    for name, aggs in spec.items():
        if isinstance(aggs, str):
            raise ValueError(f"aggregates of {name!r} must be a list, e.g. [{aggs!r}]")
        for agg in aggs:
            if agg not in AGGREGATES and not _QUANTILE.match(agg) and not is_frequency(agg):
                raise ValueError(
                    f"unknown aggregate {agg!r} for field {name!r}; use one of "
                    f"{', '.join(AGGREGATES)}, a quantile like 'p95', top<k> or top<k>_count "
                    "(k from 1 to 99), or a bin like 'bin0_10' (lo < hi)"
                )
    return {name: tuple(aggs) for name, aggs in spec.items()}


def _windows(
    window: timedelta | Sequence[timedelta] | None, label: str | Sequence[str] | None
) -> tuple[list[timedelta], list[str]]:
    """The time windows of :func:`rolling` as a list, each with its name suffix."""
    if not isinstance(window, (timedelta, Sequence, type(None))) or isinstance(window, str):
        _validate.duration("window", window)  # refuses it: a number of what?
    if window is None:
        if label is not None:
            raise ValueError("label names time windows; give window= too, or drop label")
        return [], []
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


def _counts(last: int | Sequence[int] | None) -> list[int]:
    """The count windows of :func:`rolling` as a list."""
    if last is None:
        return []
    counts = [last] if isinstance(last, int) and not isinstance(last, bool) else last
    if isinstance(counts, (str, bytes)) or not isinstance(counts, Sequence) or not counts:
        raise ValueError(f"last must be an int >= 1 or a non-empty list of them; got {last!r}")
    for n in counts:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"last must be an int >= 1 or a non-empty list of them; got {last!r}")
    return list(counts)


def _config(
    step_id: str,
    *,
    window: timedelta | Sequence[timedelta] | None = None,
    last: int | Sequence[int] | None = None,
    fields: Sequence[str] | Mapping[str, Sequence[str]],
    aggregates: Sequence[str] = ("count", "mean", "std", "min", "max"),
    max_delay: timedelta = timedelta(0),
    half_life: timedelta | None = None,
    ttl: timedelta | None = None,
    max_future: timedelta | None = timedelta(days=1),
    label: str | Sequence[str] | None = None,
    idle_release: timedelta | None = None,
) -> Config:
    """Validate :func:`rolling`'s arguments into the shard states' config."""
    windows, labels = _windows(window, label)
    counts = _counts(last)
    if not windows and not counts:
        raise ValueError("give window= (a time window), last= (a count window), or both")
    longest = max(windows, default=timedelta(0))
    _validate.duration("max_delay", max_delay, minimum="any")
    if max_delay < timedelta(0):
        raise ValueError(f"max_delay must be >= 0; got {max_delay}")
    spec = _check_aggs(fields, aggregates)
    wants_ewma = any("ewma" in aggs for aggs in spec.values())
    if wants_ewma and (half_life is None or half_life <= timedelta(0)):
        raise ValueError("ewma needs half_life > 0, e.g. half_life=timedelta(seconds=10)")
    if counts and any("rate" in aggs for aggs in spec.values()):
        raise ValueError(
            "rate is a count per second of a time window; a count window (last=) has no "
            "length in time: drop rate, or compute it in a step with window= only"
        )
    if ttl is None:
        ttl = longest + max_delay + timedelta(hours=1)
    if ttl < longest + max_delay or ttl <= timedelta(0):
        raise ValueError(f"ttl must be >= window + max_delay ({longest + max_delay}); got {ttl}")
    if idle_release is not None and idle_release <= timedelta(0):
        raise ValueError(f"idle_release must be > 0 or None; got {idle_release}")
    if max_future is not None and max_future < timedelta(0):
        raise ValueError(f"max_future must be >= 0 or None; got {max_future}")
    names = list(spec)
    plan = [(names.index(f), a) for f, aggs in spec.items() for a in aggs]
    cfg = Config(
        step_id=step_id,
        fields=tuple(names),
        plan=plan,
        names=plan_names(names, plan, [*labels, *(f"last{n}" for n in counts)]),
        windows=tuple(map(micros, windows)),
        counts=tuple(counts),
        delay=max_delay,
        ttl=ttl,
        half_life=half_life.total_seconds() if half_life else 0.0,
        max_future=max_future,
        idle_release=idle_release,
    )
    if len(set(cfg.names)) != len(cfg.names):
        raise ValueError(
            f"duplicate feature names {cfg.names}; list each aggregate and each window once"
        )
    return cfg


class _Logic(StatefulBatchLogic):
    """One shard's Bytewax state: a :class:`Rolling` and how batches are read and written.

    Eviction: see :class:`~streamml.operators.featurize._rolling_core.Rolling`.
    """

    path = ""

    def __init__(self, cfg: Config, resume: Any, clock: Callable[[], float]) -> None:
        self.cfg = cfg
        data = None
        if isinstance(resume, _legacy.Snapshot):  # a store from before versioned snapshots
            data = _legacy.upgrade(resume, len(cfg.fields))
        elif resume is not None:
            data = restore(resume, kind=_KIND, version=_VERSION)
            if data["path"] != self.path:
                raise ValueError(
                    f"the recovery store holds the {data['path']} path's state of this "
                    f"rolling step; it now reads {self.path}: use a new recovery store"
                )
        parts = Rolling.parts(data, len(cfg.fields)) if data else {}
        self.core = Rolling(cfg, clock=clock, **parts)
        self._restore_extra(data)

    def _restore_extra(self, data: dict[str, Any] | None) -> None:
        pass

    def _extra(self) -> dict[str, Any]:
        return {}

    def _emit(self, held: Any, columns: list[np.ndarray]) -> list[Any]:
        raise NotImplementedError

    def _release(self, errs: list, lates: list, eof: bool = False) -> tuple[list, list, list]:
        held, columns = self.core.release(eof=eof)
        return (self._emit(held, columns) if len(held) else []), errs, lates

    def notify_at(self) -> datetime | None:
        """When the oldest held row has waited ``idle_release`` (if set)."""
        return self.core.et.notify_at()

    def on_notify(self) -> tuple[list[Any], bool]:
        return [self._release([], [])], False

    def on_eof(self) -> tuple[list[Any], bool]:
        return [self._release([], [], eof=True)], False

    def snapshot(self) -> dict[str, Any]:
        data = {"path": self.path, **self.core.snapshot_data(), **self._extra()}
        return snapshot(_KIND, _VERSION, data)


class _FrameLogic(_Logic):
    """Frames in (checked and routed), frames out: the input columns plus the features."""

    path = "frames"

    def __init__(
        self,
        cfg: Config,
        key: str,
        timestamp: str,
        resume: Any,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.timestamp = timestamp
        super().__init__(cfg, resume, clock)

    def on_batch(self, frames: list[pl.DataFrame]) -> tuple[list[Any], bool]:
        cfg, et = self.cfg, self.core.et
        errs: list[Rejected] = []
        lates: list[Rejected] = []
        for frame in frames:
            why = et.holdable(frame)
            if why is not None:
                errs.extend(Rejected(cfg.step_id, "BadItem", why, row) for row in frame.to_dicts())
                continue
            adm = et.admit(frame.get_column(self.key), ts_micros(frame, self.timestamp))
            if len(adm.future) or len(adm.late):
                more, late = adm.rejected(cfg.step_id, partial(frame.row, named=True))
                errs += more
                lates += late
            x = values(frame, cfg.fields)
            if len(adm.ok) < frame.height:
                frame, x = frame[adm.ok], x[adm.ok]
            et.hold(frame, adm.kid, adm.ts, x)
        return [self._release(errs, lates)], False

    def _emit(self, held: Any, columns: list[np.ndarray]) -> list[pl.DataFrame]:
        features = [pl.Series(name, col) for name, col in zip(self.cfg.names, columns)]
        return [held.frame.with_columns(features)]


class _RowLogic(_Logic):
    """``(key, event)`` rows in, new event dicts with the features out (the legacy path)."""

    path = "rows"

    def __init__(
        self,
        cfg: Config,
        ts_getter: Callable[[Any], datetime],
        resume: Any,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ts_getter = ts_getter
        # the held events: row id i is events[i - base] (key: keys[i - base]); the held
        # frame's "row" column has the ids
        self.keys: list[str] = []
        self.events: list[Any] = []
        self.base = 0
        super().__init__(cfg, resume, clock)

    def _restore_extra(self, data: dict[str, Any] | None) -> None:
        if data is not None:  # the snapshot keeps the held events in held order
            self.keys = list(data["pending_keys"])
            self.events = list(data["pending_events"])
            held = self.core.et.held
            if held.frame is not None:
                ids = pl.Series("row", np.arange(len(self.keys)), dtype=pl.Int64)
                held.frame = held.frame.with_columns(ids)

    def _extra(self) -> dict[str, Any]:
        keys, events = self._held_events()
        return {"pending_keys": keys, "pending_events": events}

    def _held_events(self) -> tuple[list[str], list[Any]]:
        frame = self.core.et.held.frame
        if frame is None or not frame.height:
            return [], []
        at = (frame.get_column("row").to_numpy() - self.base).tolist()
        return list(map(self.keys.__getitem__, at)), list(map(self.events.__getitem__, at))

    def _release(self, errs: list, lates: list, eof: bool = False) -> tuple[list, list, list]:
        out = super()._release(errs, lates, eof)
        held = self.core.et.held
        if not len(held):
            self.base += len(self.keys)
            self.keys, self.events = [], []
        elif len(self.keys) > 4 * len(held) + 4096:  # compact: keep the held events only
            keys, events = self._held_events()
            self.base += len(self.keys)
            ids = pl.Series("row", np.arange(self.base, self.base + len(keys)), dtype=pl.Int64)
            held.frame = held.frame.with_columns(ids)
            self.keys, self.events = keys, events
        return out

    def on_batch(self, values: list[list[Any]]) -> tuple[list[Any], bool]:
        items = values[0] if len(values) == 1 else [x for part in values for x in part]
        cfg, et = self.cfg, self.core.et
        cols, errs = extract(cfg.step_id, items, cfg.fields, self.ts_getter)
        lates: list[Rejected] = []
        keys, events = cols.keys, cols.events
        if keys:
            adm = et.admit(keys, cols.ts)
            ok = adm.ok
            if len(adm.future) or len(adm.late):
                more, lates = adm.rejected(cfg.step_id, lambda i: (keys[i], events[i]))
                errs += more
                ok_list = ok.tolist()
                keys = [keys[i] for i in ok_list]
                events = [events[i] for i in ok_list]
            first = self.base + len(self.keys)
            self.keys.extend(keys)
            self.events.extend(events)
            ids = np.arange(first, first + len(keys), dtype=np.int64)
            frame = pl.DataFrame({"row": ids})
            x = cols.values if len(ok) == len(cols.keys) else cols.values[ok]
            et.hold(frame, adm.kid, adm.ts, x)
        return [self._release(errs, lates)], False

    def _emit(self, held: Any, columns: list[np.ndarray]) -> list[tuple[str, dict]]:
        at = (held.frame.get_column("row").to_numpy() - self.base).tolist()
        outputs = list(map(dict, map(self.events.__getitem__, at)))
        for name, col in zip(self.cfg.names, columns):
            for event, value in zip(outputs, col.tolist()):
                event[name] = value
        return list(zip(map(self.keys.__getitem__, at), outputs))


@operator
@instrumented
def rolling(
    step_id: str,
    up: Stream[pl.DataFrame] | KeyedStream[Mapping[str, Any]],
    *,
    key: str | None = None,
    timestamp: str | Callable[[Mapping[str, Any]], datetime],
    window: timedelta | Sequence[timedelta] | None = None,
    last: int | Sequence[int] | None = None,
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
    """Add rolling aggregates of each key's recent rows to every row, as of its event time.

    Use it for per-entity features that must be exactly what the model would
    have seen at that moment: a sensor's mean and spread over the last
    minute or its last 10 readings, a user's transaction count and rate
    over the last hour.

    Frames are the unit: give ``up`` a stream of ``polars.DataFrame``
    batches, ``key`` the key column and ``timestamp`` the event-time column
    (a time-zone-aware ``pl.Datetime`` of any unit, or integer epoch
    milliseconds). Each output frame holds the released rows with their
    input columns plus one ``Float64`` column per (field, aggregate,
    window), in event-time order (so each key's rows come out in event-time
    order; ties in arrival order). The legacy path, ``key=None``: ``up`` is
    a keyed stream of ``(key, event)`` pairs, ``timestamp`` a function
    returning an event's time-zone-aware ``datetime``, and each output is
    ``(key, new dict)``: the event plus the features. Both paths run the
    same implementation.

    Features are named ``{field}_{aggregate}_{label}`` for a time window
    (``temperature_mean_60s``) and ``{field}_{aggregate}_last{N}`` for a
    count window (``temperature_mean_last10``). Over the window's rows up
    to this one (time: timestamps in ``(t - window, t]``; count: the key's
    last ``N`` rows in event-time order, fewer at first):

    - ``count``, ``sum``, ``mean``, ``std`` and ``var`` (population,
      ``ddof=0``; computed stably), ``min``, ``max``;
    - ``last`` (this row's value), ``delta`` (value minus the previous
      row's in the window) and ``since`` (seconds since it) — NaN when
      this is the only row in the window;
    - ``first``: the oldest value in the window;
    - ``rate``: ``count`` per second of ``window`` (time windows only);
    - ``distinct`` (exact) and ``approx_distinct`` (HyperLogLog, 1.6 %
      standard error: the window's rows are kept anyway, so it saves no
      state), ``top<k>`` / ``top<k>_count`` (the k-th most frequent value,
      ties to the smaller, and its count; NaN and 0 past the distinct
      values) and ``bin<lo>_<hi>`` (values in ``[lo, hi)``: one bin of a
      fixed-edge histogram), see
      :mod:`streamml.operators.featurize._frequency`;
    - ``ewma``: mean weighted by ``0.5 ** (age / half_life)``;
    - quantiles ``p50``, ``p95``, ``p99`` (any ``p<percent>``): exact over
      the window, NumPy's linear interpolation.

    Several windows at once: give ``window`` a list (and ``label``, if
    given, a list of the same length) and/or ``last`` a list. Every window
    gets every (field, aggregate): time windows first, in the order given,
    then count windows — the same values as one step per window with the
    same ``max_delay`` would add, for a fraction of the cost. Rows are
    kept, and ``ttl`` defaults and is checked, for the longest time window.

    Results do not depend on batch sizes, frame cut points, ``shards`` or
    worker counts, except in the last bits of ``sum``/``mean``/``std``/
    ``var`` (sums are centred on rows of the current batch). Lateness does
    not depend on them at all (see
    :mod:`streamml.operators._core.event_time`), short of ``ttl``: a key
    forgotten after ``ttl`` of its shard's event time starts afresh (its
    count windows too), and its stale rows are late.

    Bad rows never stop the flow and never take the rest of their frame
    with them: a bad key (``BadKey``, see
    :func:`~streamml.operators._core.keys.route`), a missing, null,
    non-numeric or non-finite field, a bad timestamp (see
    :mod:`._columns`; for rows :mod:`._batch`), a timestamp more than
    ``max_future`` beyond the wall clock (``FutureTimestamp``), and an item
    that is not a frame (``BadItem``) go to ``errs``, each row as a dict
    (``frame.row(i, named=True)``; for rows, the ``(key, event)`` pair);
    rows before their key's watermark go to ``late``.

    Args:
        step_id: Unique ID.
        up: Frames (with ``key``), or a keyed stream of ``(key, event)``
            (with ``key=None``).
        key: The key column of the frames; ``None`` for ``(key, event)`` rows.
        timestamp: The event-time column of the frames; for rows, a
            function giving an event's time-zone-aware time.
        window: Length of a look-back time window (``> 0``), or a list of
            lengths.
        last: A count window: the key's last ``N`` rows (``N >= 1``), or a
            list of counts. At least one of ``window`` and ``last``.
        fields: Numeric fields, each with ``aggregates``; or a mapping
            ``{field: [aggregates]}``.
        aggregates: Default aggregates (see above).
        max_delay: Bound on out-of-orderness: rows up to this much older
            than their key's newest are accepted (and features wait that
            long); older ones are late.
        half_life: Half-life for ``ewma`` (required when asked for).
        ttl: Forget keys idle this long in event time (measured against the
            newest row of their shard); at least ``window + max_delay``
            (the longest time window's). Defaults to
            ``window + max_delay + 1h``. After keys are forgotten, rows of
            unknown keys older than the newest forgotten row plus
            ``window`` are sent to ``late``.
        max_future: Reject timestamps further than this beyond the wall
            clock (``None`` accepts any): one far-future row would
            otherwise make every later row of its key late.
        shards: Number of state shards (keys are spread over them by a
            stable hash; each shard lives on one worker). Use about twice
            the number of workers; on a single worker ``shards=1`` is
            fastest.
        label: Name suffix of a time window; defaults to
            :func:`window_label` of ``window``. With several windows, a
            list of suffixes, one per window.
        idle_release: Emit a held row once it has waited this long in
            wall-clock time, even if its key's watermark has not reached it
            (a key that goes quiet would otherwise hold its last rows until
            it speaks again or input ends). Its key's watermark then moves
            up to it, so older rows arriving afterwards are late: results
            never change, but which rows are late then depends on timing.
            ``None`` (default): only event time decides.

    Returns:
        ``oks``: frames of released rows with their features (rows:
        ``(key, event with features)``), emitted when the key's watermark
        passes them; ``errs`` and ``late``:
        :class:`~streamml.errors.Rejected` records.

    Examples:
        A frame in, the same rows with a count window and a time window out:

        >>> from datetime import datetime, timedelta, timezone
        >>> import bytewax.operators as op
        >>> import polars as pl
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> frame = pl.DataFrame({
        ...     "id": ["s1", "s2", "s1", "s1", "s1"],
        ...     "ts": [0, 5_000, 30_000, 20_000, 80_000],  # epoch milliseconds
        ...     "temp": [20.0, 7.0, 22.0, 21.0, 30.0],
        ... })
        >>> flow = Dataflow("rolling_frames_doc")
        >>> frames = op.input("in", flow, TestingSource([frame]))
        >>> feats = rolling("temp", frames, key="id", timestamp="ts", fields=["temp"],
        ...                 window=timedelta(seconds=60), last=2, aggregates=["mean"],
        ...                 max_delay=timedelta(seconds=15))
        >>> out = []
        >>> op.output("oks", feats.oks, TestingSink(out))
        >>> run_main(flow)
        >>> result = pl.concat(out)
        >>> result.columns
        ['id', 'ts', 'temp', 'temp_mean_60s', 'temp_mean_last2']
        >>> for row in result.sort("id", "ts").iter_rows():
        ...     print(row)
        ('s1', 0, 20.0, 20.0, 20.0)
        ('s1', 20000, 21.0, 20.5, 20.5)
        ('s1', 30000, 22.0, 21.0, 21.5)
        ('s1', 80000, 30.0, 26.0, 26.0)
        ('s2', 5000, 7.0, 7.0, 7.0)

        The legacy path, ``(key, event)`` rows, with a late and a bad event:

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

        Two time windows in one step:

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
    if isinstance(shards, bool) or not isinstance(shards, int):
        _validate.count("shards", shards)
    if shards < 1:
        raise ValueError(f"shards must be >= 1; got {shards}")
    cfg = _config(
        step_id,
        window=window,
        last=last,
        fields=fields,
        aggregates=aggregates,
        max_delay=max_delay,
        half_life=half_life,
        ttl=ttl,
        max_future=max_future,
        label=label,
        idle_release=idle_release,
    )
    if key is None:
        if not callable(timestamp):
            raise ValueError(
                "with key=None, up is a keyed stream of (key, event) rows and timestamp must "
                f"be a function of an event; got {timestamp!r}. For frames, give key= the "
                "key column's name"
            )
        sharded: Stream[Any] = op.flat_map_batch("shard", up, shard_grouper(shards))
        chunks = op.stateful_batch(
            "state", sharded, lambda resume: _RowLogic(cfg, timestamp, resume)
        )
        return split_chunks(chunks)
    return frame_features(
        step_id,
        up,
        key=key,
        timestamp=timestamp,
        shards=shards,
        fields=cfg.fields,
        logic=lambda resume: _FrameLogic(cfg, key, timestamp, resume),
    )
