"""Window aggregates: one feature row per key per closed tumbling, sliding or session window.

Built on :func:`bytewax.operators.windowing.window` with an
:class:`~bytewax.operators.windowing.EventClock` per key, so the windowers,
watermarks and recovery are Bytewax's own. Values are validated in batches
first (bad ones to ``errs``); each window keeps its ``(timestamp, values)``
rows and computes every aggregate with NumPy when it closes, so the result
equals a group-by over the same events (in timestamp order, ties in arrival
order).

State and eviction: per key, the rows of its open windows; a window's rows
are dropped when the watermark passes its close. Bytewax drops a key's
state once it has no open window (session windowers keep a small id
counter per key).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream
from bytewax.operators.windowing import (
    EventClock,
    SessionWindower,
    SlidingWindower,
    TumblingWindower,
    WindowLogic,
    window,
)
from streamml.operators._core.columns import check_frame, ts_micros
from streamml.operators._core.keys import bad_key_rows
from streamml.operators._time import from_micros, micros
from streamml.operators.featurize._batch import extract
from streamml.operators.featurize.outputs import TimedFeaturesOut

from streamml.errors import Rejected

__all__ = ["WINDOW_AGGREGATES", "window_agg"]

WINDOW_AGGREGATES = ("count", "sum", "mean", "std", "var", "min", "max", "first", "last", "rate")
"""Aggregate names for :func:`window_agg`, plus quantiles ``p<percent>``."""

_QUANTILE = re.compile(r"^p(\d{1,2}(\.\d+)?|100)$")


@dataclass(frozen=True)
class _Row:
    """A validated event on its way into a window."""

    at: datetime
    us: int
    values: tuple[float, ...]
    original: tuple[str, Any]


@dataclass
class _Spec:
    step_id: str
    fields: tuple[str, ...]
    plan: list[tuple[int, str]]
    names: list[str]
    length_s: float  # 0 for session windows


class _RowsLogic(WindowLogic):
    """The rows of one window; aggregates computed at close (eviction: at close)."""

    def __init__(self, spec: _Spec, rows: list[tuple[int, tuple[float, ...]]]) -> None:
        self.spec = spec
        self.rows = rows

    def on_value(self, value: _Row) -> list[Any]:
        self.rows.append((value.us, value.values))
        return []

    def on_merge(self, original: _RowsLogic) -> list[Any]:
        self.rows.extend(original.rows)
        self.rows.sort(key=lambda r: r[0])
        return []

    def on_close(self) -> list[dict[str, Any]]:
        spec = self.spec
        ts = np.array([t for t, _ in self.rows], dtype=np.int64)
        x = np.array([v for _, v in self.rows], dtype=np.float64).reshape(len(ts), -1)
        n = len(ts)
        cols: dict[str, Callable[[np.ndarray], float]] = {
            "count": lambda c: float(n),
            "sum": lambda c: float(np.sum(c)),
            "mean": lambda c: float(np.mean(c)),
            "std": lambda c: float(np.std(c)),
            "var": lambda c: float(np.var(c)),
            "min": lambda c: float(np.min(c)),
            "max": lambda c: float(np.max(c)),
            "first": lambda c: float(c[0]),
            "last": lambda c: float(c[-1]),
            "rate": lambda c: n / spec.length_s,
        }
        row: dict[str, Any] = {"_first": int(ts[0]), "_last": int(ts[-1])}
        for name, (f, agg) in zip(spec.names, spec.plan):
            col = x[:, f]
            if agg in cols:
                row[name] = cols[agg](col)
            else:
                row[name] = float(np.quantile(col, float(agg[1:]) / 100.0))
        return [row]

    def snapshot(self) -> list[tuple[int, tuple[float, ...]]]:
        return list(self.rows)


class _Numbering:
    """How a tumbling or sliding window's id maps to its span: window ``k`` opens at ``align_to + k * offset``.

    Bytewax hands a closed window's rows and its late events to the next
    step with the window's id only; its public ``WindowOut.meta`` stream
    reports each closed window's open and close times under that id, but as
    a separate stream (pairing the two would take a join). The numbering is
    therefore ours, written down here: window ``k`` spans ``[align_to + k *
    offset, align_to + k * offset + length)`` (``offset = length`` for
    tumbling windows), which is what ``meta`` reports for every id — pinned
    by ``tests/operators/test_featurize_windows.py``, so a Bytewax release
    that numbered windows otherwise fails that test instead of mislabelling
    windows. The first window an event at ``t`` falls in is then the smallest
    ``k`` with ``align_to + k * offset + length > t``.

    Examples:
        >>> from bytewax.operators.windowing import SlidingWindower
        >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> n = _Numbering(SlidingWindower(timedelta(seconds=3), timedelta(seconds=1), t0))
        >>> [t.second for t in n.span(2)]
        [2, 5]
        >>> n.first_id(t0 + timedelta(seconds=4.5))
        2
    """

    def __init__(self, windower: TumblingWindower | SlidingWindower) -> None:
        self.length = windower.length
        self.offset = getattr(windower, "offset", windower.length)
        self.align_to = windower.align_to

    def span(self, wid: int) -> tuple[datetime, datetime]:
        start = self.align_to + self.offset * wid
        return start, start + self.length

    def first_id(self, at: datetime) -> int:
        return (at - self.align_to - self.length) // self.offset + 1


_TS = "__streamml_ts"
"""The field the frame adapter puts each row's event time in (a ``datetime``)."""


def _frames(
    step_id: str,
    up: Stream[Any],
    spec: _Spec,
    key: str,
    timestamp: str,
    windower: Any,
    max_delay: timedelta,
    idle_advance: bool,
    max_future: timedelta | None,
    label: str | None,
) -> TimedFeaturesOut:
    """Frames onto the row implementation: rows checked on columns, then ``(key, dict)`` pairs."""

    def to_rows(items: list[Any]) -> list[Any]:
        out: list[Any] = []
        for item in items:
            if not isinstance(item, pl.DataFrame):
                why = f"expected a polars DataFrame; got {type(item).__name__}"
                out.append(("", Rejected(step_id, "BadItem", why, item)))
                continue
            if not item.height:
                continue
            good, bad = bad_key_rows(item, key, step_id)
            out += [("", r) for r in bad]
            good, bad = check_frame(good, step_id=step_id, timestamp=timestamp, fields=spec.fields)
            out += [("", r) for r in bad]
            if not good.height:
                continue
            times = list(map(from_micros, ts_micros(good, timestamp).tolist()))
            keys = good.get_column(key).cast(pl.String).to_list()
            for k, t, row in zip(keys, times, good.iter_rows(named=True)):
                row[_TS] = t
                out.append((k, row))
        return out

    def original(rejected: Rejected) -> Rejected:
        """A rejection holding the frame row (without the adapter's time field)."""
        item = rejected.original
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], dict):
            row = {k: v for k, v in item[1].items() if k != _TS}
            return rejected._replace(original=row)
        return rejected

    pairs = op.flat_map_batch("rows", up, to_rows)
    split = op.branch("split", pairs, lambda kv: isinstance(kv[1], Rejected))
    inner = window_agg(
        "windows",
        split.falses,
        timestamp=lambda e: e[_TS],
        windower=windower,
        fields=_fields_of(spec),
        aggregates=(),
        max_delay=max_delay,
        idle_advance=idle_advance,
        max_future=max_future,
        label=label,
    )
    oks = op.flat_map_batch(
        "frames", inner.oks, lambda kvs: [pl.DataFrame([row for _, row in kvs])] if kvs else []
    )
    errs = op.merge(
        "all_errs",
        op.map("bad", split.trues, lambda kv: kv[1]),
        op.map("errs", inner.errs, original),
    )
    return TimedFeaturesOut(oks, errs, op.map("late", inner.late, original))


def _fields_of(spec: _Spec) -> dict[str, list[str]]:
    """``{field: [aggregates]}`` of a spec, to build the row operator with the same features."""
    out: dict[str, list[str]] = {name: [] for name in spec.fields}
    for f, agg in spec.plan:
        out[spec.fields[f]].append(agg)
    return out


def _bounds(windower: Any) -> Callable[[int, dict[str, Any]], tuple[datetime, datetime]]:
    """How to get a closed window's start and end from its id (or, for sessions, its rows)."""
    if isinstance(windower, SessionWindower):
        return lambda _wid, row: (from_micros(row["_first"]), from_micros(row["_last"]))
    numbering = _Numbering(windower)
    return lambda wid, _row: numbering.span(wid)


def _first_window(windower: Any) -> Callable[[int, datetime], bool]:
    """Whether a late report for ``(window id, timestamp)`` is the event's first (one per event)."""
    if isinstance(windower, SlidingWindower):
        first_id = _Numbering(windower).first_id
        return lambda wid, at: wid == first_id(at)
    return lambda wid, at: True


@operator
def window_agg(
    step_id: str,
    up: Stream[pl.DataFrame] | KeyedStream[Mapping[str, Any]],
    *,
    timestamp: str | Callable[[Mapping[str, Any]], datetime],
    key: str | None = None,
    windower: TumblingWindower | SlidingWindower | SessionWindower,
    fields: Sequence[str] | Mapping[str, Sequence[str]],
    aggregates: Sequence[str] = ("count", "mean", "std", "min", "max"),
    max_delay: timedelta = timedelta(0),
    idle_advance: bool = True,
    max_future: timedelta | None = timedelta(days=1),
    label: str | None = None,
) -> TimedFeaturesOut:
    """Emit one row of aggregates per key per closed window.

    Use it when the model scores a whole window — a sensor's last full
    minute, a user's session — rather than each event.

    Each output is ``(key, row)`` with ``row = {"key", "window_start",
    "window_end", "{field}_{aggregate}"...}`` (``_{label}`` appended to the
    feature names when ``label`` is given). ``window_end`` is exclusive for
    tumbling and sliding windows and, for sessions, the time of the last
    event. Aggregates: ``count``, ``sum``, ``mean``, ``std`` and ``var``
    (population), ``min``, ``max``, ``first``, ``last`` (in event-time
    order), ``rate`` (events per second of window length; fixed windows
    only) and quantiles ``p<percent>`` (NumPy's linear interpolation).

    Bad events go to ``errs`` exactly as for
    :func:`~streamml.operators.featurize.rolling`. An event older than its
    key's watermark (newest timestamp seen minus ``max_delay``) goes to
    ``late`` once, whatever the number of windows it falls in.

    Frames (``key`` and ``timestamp`` name columns; the timestamp a
    time-zone-aware ``Datetime`` or integer epoch milliseconds): each row is
    checked on the frame's columns (a bad key is ``BadKey``, see
    :func:`~streamml.operators._core.keys.route`; bad values and times as
    in :func:`~streamml.operators._core.columns.check_frame`; a non-frame
    item ``BadItem``), and ``oks`` carries one frame per batch of closed
    windows, with the columns of a row above (``key`` as text). Rejections
    hold the row as a dict. *How, today:* the checked rows are handed, as
    ``(key, dict)`` pairs, to the row implementation below — Bytewax's
    windowing operator with its per-key ``EventClock`` — so lateness on
    frames follows Bytewax's clock exactly as on rows, not
    :class:`~streamml.operators._core.event_time.KeyedEventTime`, and a
    frame costs a dict per row inside this step (moving the windows onto
    the core's per-key event time is open work).

    Args:
        step_id: Unique ID.
        up: Frames (with ``key``), or a keyed stream of ``(key, event)``
            (``key=None``).
        timestamp: The frames' event-time column; for rows, a function
            giving an event's time-zone-aware event time.
        key: The key column of the frames; ``None`` for rows.
        windower: A Bytewax ``TumblingWindower``, ``SlidingWindower`` or
            ``SessionWindower``.
        fields: Numeric fields with ``aggregates``, or ``{field: [aggregates]}``.
        aggregates: Default aggregates.
        max_delay: Bound on out-of-orderness (Bytewax's ``wait_for_system_duration``).
        idle_advance: Let a key's watermark also advance with the wall clock
            while it is idle (Bytewax's ``EventClock`` behaviour), so windows of
            quiet keys close; ``False`` makes results depend on the events
            only (replays, tests): windows then close on newer events or at
            end of input.
        max_future: Reject timestamps further than this beyond the wall clock.
        label: Optional suffix of the feature names.

    Returns:
        ``oks`` rows, ``errs`` and ``late``
        :class:`~streamml.errors.Rejected` items with the ``(key, event)``.

    Examples:
        Frames:

        >>> from datetime import datetime, timedelta, timezone
        >>> import bytewax.operators as op
        >>> import polars as pl
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.operators.windowing import TumblingWindower
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> ms = int(t0.timestamp() * 1000)
        >>> frame = pl.DataFrame({"id": ["s1", "s1", "s1", "s2", None],
        ...                       "ts": [ms + 5_000, ms + 50_000, ms + 61_000, ms + 10_000, ms],
        ...                       "temp": [20.0, 22.0, 30.0, 5.0, 1.0]})
        >>> flow = Dataflow("window_frames_doc")
        >>> rows = window_agg("temp_1m", op.input("in", flow, TestingSource([frame])),
        ...                   key="id", timestamp="ts",
        ...                   windower=TumblingWindower(timedelta(minutes=1), align_to=t0),
        ...                   fields={"temp": ["count", "mean"]}, idle_advance=False)
        >>> out, errs = [], []
        >>> op.output("out", rows.oks, TestingSink(out))
        >>> op.output("errs", rows.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> for row in pl.concat(out).sort("key", "window_start").iter_rows():
        ...     print(row[0], row[1].time(), row[3], row[4])
        s1 00:00:00 2.0 21.0
        s1 00:01:00 1.0 30.0
        s2 00:00:00 1.0 5.0
        >>> [(r.error_type, r.original["temp"]) for r in errs]
        [('BadKey', 1.0)]

        ``(key, event)`` rows:

        >>> events = [("s1", {"s": 5, "temp": 20.0}), ("s1", {"s": 50, "temp": 22.0}),
        ...           ("s1", {"s": 61, "temp": 30.0}), ("s2", {"s": 10, "temp": 5.0})]
        >>> flow = Dataflow("window_doc")
        >>> rows = window_agg("temp_1m", op.input("in", flow, TestingSource(events)),
        ...                   timestamp=lambda e: t0 + timedelta(seconds=e["s"]),
        ...                   windower=TumblingWindower(timedelta(minutes=1), align_to=t0),
        ...                   fields={"temp": ["count", "mean", "max"]}, idle_advance=False)
        >>> out = []
        >>> op.output("out", rows.oks, TestingSink(out))
        >>> run_main(flow)
        >>> for _, row in sorted(out, key=lambda kv: (kv[0], kv[1]["window_start"])):
        ...     print(row["key"], row["window_start"].time(), row["temp_count"], row["temp_mean"])
        s1 00:00:00 2.0 21.0
        s1 00:01:00 1.0 30.0
        s2 00:00:00 1.0 5.0
    """
    if not isinstance(windower, (TumblingWindower, SlidingWindower, SessionWindower)):
        raise ValueError(
            "windower must be a bytewax TumblingWindower, SlidingWindower or SessionWindower; "
            f"got {type(windower).__name__}"
        )
    if max_delay < timedelta(0):
        raise ValueError(f"max_delay must be >= 0; got {max_delay}")
    spec_fields = (
        {f: tuple(aggregates) for f in fields} if not isinstance(fields, Mapping) else dict(fields)
    )
    if not spec_fields:
        raise ValueError("fields must name at least one numeric field")
    for name, aggs in spec_fields.items():
        if isinstance(aggs, str):
            raise ValueError(f"aggregates of {name!r} must be a list, e.g. [{aggs!r}]")
        for agg in aggs:
            if agg not in WINDOW_AGGREGATES and not _QUANTILE.match(agg):
                raise ValueError(
                    f"unknown window aggregate {agg!r} for {name!r}; use one of "
                    f"{', '.join(WINDOW_AGGREGATES)} or a quantile like 'p95'"
                )
            if agg == "rate" and isinstance(windower, SessionWindower):
                raise ValueError("rate needs a fixed window length; sessions have none")
    names = list(spec_fields)
    plan = [(names.index(f), a) for f, aggs in spec_fields.items() for a in aggs]
    suffix = f"_{label}" if label else ""
    length = getattr(windower, "length", timedelta(0))
    spec = _Spec(
        step_id,
        tuple(names),
        plan,
        [f"{names[f]}_{a}{suffix}" for f, a in plan],
        length.total_seconds(),
    )
    max_future_us = micros(max_future) if max_future is not None else None
    if key is not None:
        if not isinstance(key, str) or not isinstance(timestamp, str):
            raise ValueError(
                "for frames, key and timestamp name columns (e.g. key='sensor_id', "
                f"timestamp='ts'); got key={key!r}, timestamp={timestamp!r}"
            )
        return _frames(
            step_id, up, spec, key, timestamp, windower, max_delay, idle_advance, max_future, label
        )
    if not callable(timestamp):
        raise ValueError(
            "with key=None, up is a keyed stream of (key, event) rows and timestamp must be a "
            f"function of an event; got {timestamp!r}. For frames, give key= the key column"
        )

    def validate(batch: list[Any]) -> list[tuple[str, Any]]:
        cols, errs = extract(step_id, batch, spec.fields, timestamp, max_future_us)
        out: list[tuple[str, Any]] = [("", e) for e in errs]
        for k, e, t, v in zip(cols.keys, cols.events, cols.ts.tolist(), cols.values.tolist()):
            out.append((k, _Row(from_micros(t), t, tuple(v), (k, e))))
        return out

    checked = op.flat_map_batch("validate", up, validate)
    errs = op.filter_map("errs", checked, lambda kv: kv[1] if isinstance(kv[1], Rejected) else None)
    rows = op.filter("rows", checked, lambda kv: isinstance(kv[1], _Row))
    if idle_advance:
        clock = EventClock(lambda r: r.at, wait_for_system_duration=max_delay)
    else:
        frozen = datetime(1970, 1, 1, tzinfo=timezone.utc)
        clock = EventClock(
            lambda r: r.at,
            wait_for_system_duration=max_delay,
            now_getter=lambda: frozen,
            to_system_utc=lambda _t: None,
        )
    wout = window(
        "window",
        rows,
        clock,
        windower,
        lambda resume: _RowsLogic(spec, list(resume) if resume else []),
    )
    bounds = _bounds(windower)

    def finish(key_item: tuple[str, tuple[int, dict[str, Any]]]) -> tuple[str, dict[str, Any]]:
        key, (wid, row) = key_item
        start, end = bounds(wid, row)
        features = {k: v for k, v in row.items() if not k.startswith("_")}
        return key, {"key": key, "window_start": start, "window_end": end, **features}

    oks = op.map("rows_out", wout.down, finish)
    first = _first_window(windower)

    def late_once(key_item: tuple[str, tuple[int, _Row]]) -> Rejected | None:
        _key, (wid, r) = key_item
        if not first(wid, r.at):
            return None
        reason = (
            f"event time {r.at.isoformat()} is before its key's watermark "
            f"(newest timestamp seen minus max_delay {max_delay})"
        )
        return Rejected(step_id, "Late", reason, r.original)

    lates = op.filter_map("late", wout.late, late_once)
    return TimedFeaturesOut(oks, errs, lates)
