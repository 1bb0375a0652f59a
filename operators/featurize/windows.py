"""Window aggregates: one feature row per key per closed tumbling, sliding or session window.

Built on the core, as ``rolling`` is: rows are admitted by the one lateness
rule of :class:`~streamml.operators._core.event_time.KeyedEventTime` (per-key
watermarks), held until their key's watermark reaches them, then released
in event-time order into their windows; a window's aggregates are computed
with NumPy when it closes, so the result equals a group-by over the same
events (in timestamp order, ties in arrival order). See
:mod:`._window_core` for when each kind of window closes.

Keys are spread over ``shards`` states: frames by
:func:`~streamml.operators._core.keys.frame_sharder`, ``(key, event)`` rows
by the same rule (:func:`._shard.shards_of`) after a pass through a by-key
step at the step id the previous release's windowing operator kept its
state at, which hands any such state over to the key's shard first
(:mod:`._window_legacy`), so those recovery stores resume. Each shard state
is snapshot as a versioned record (``streamml.featurize.window_agg`` v1).

State and eviction: per key, rows held for the watermark and the rows of
its open windows (a row leaves when its last window closes) — or, when
every aggregate is mergeable (no exact ``p<q>``, ``distinct`` or
``top<k>``), one summary per open window (:mod:`._summaries`), dropped when
it closes, so a window's memory does not grow with its rate (fixed windows'
newest rows wait to be folded in together until one of their windows
closes: at most 16 per open window, or 1,024 a shard). A shard
forgets a key idle for ``ttl`` of its event time, closing its windows
first. The by-key step keeps nothing. Snapshots of version 1 (rows only)
still resume, folded into summaries where the step now keeps them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

import bytewax.operators as op
import polars as pl
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from bytewax.operators.windowing import SessionWindower, SlidingWindower, TumblingWindower
from streamml.operators import _validate
from streamml.operators._core.columns import ts_micros, values
from streamml.operators._core.state import restore, snapshot
from streamml.operators._time import from_micros, micros, to_micros
from streamml.operators.featurize import _window_legacy
from streamml.operators.featurize._batch import extract
from streamml.operators.featurize._frame_flow import frame_features
from streamml.operators.featurize._frequency import is_frequency
from streamml.operators.featurize._shard import shards_of
from streamml.operators.featurize._summaries import APPROX_QUANTILE
from streamml.operators.featurize._window_core import Closed, Fixed, Sessions, Spec, Windows
from streamml.operators.featurize.outputs import TimedFeaturesOut, split_chunks

from streamml.errors import Rejected
from streamml.metrics import instrumented

__all__ = ["WINDOW_AGGREGATES", "window_agg"]

WINDOW_AGGREGATES = (
    "count",
    "sum",
    "mean",
    "std",
    "var",
    "min",
    "max",
    "first",
    "last",
    "rate",
    "distinct",
    "approx_distinct",
)
"""Aggregate names for :func:`window_agg`, plus quantiles ``p<percent>`` (exact) and
``approx_p<percent>`` (KLL sketch), ``top<k>``, ``top<k>_count`` and histogram bins
``bin<lo>_<hi>`` (see :mod:`._frequency`)."""

_QUANTILE = re.compile(r"^p(\d{1,2}(\.\d+)?|100)$")
_KIND = "streamml.featurize.window_agg"
_VERSION = 2
# v1 -> v2: summaries (None: the state kept rows, as every v1 state did)
_UPGRADES = {1: lambda data: {**data, "summaries": None}}
_HANDOVER_VERSION = 1
# the pickled class queued events of stores written before versioned snapshots hold (read only)
_Row = _window_legacy.Row


class _Logic(StatefulBatchLogic):
    """One state's Bytewax logic: a :class:`Windows` and how its input and output look.

    Eviction: see :class:`~streamml.operators.featurize._window_core.Windows`.
    """

    path = ""

    def __init__(self, spec: Spec, resume: Any) -> None:
        data = None
        if resume is not None:
            data = restore(resume, kind=_KIND, version=_VERSION, upgrades=_UPGRADES)
            if data["path"] != self.path:
                raise ValueError(
                    f"the recovery store holds the {data['path']} path's state of this "
                    f"window_agg step; it now reads {self.path}: use a new recovery store"
                )
        self.spec = spec
        self.core = Windows(spec, resume=data)

    def _emit(self, closed: Closed) -> list[Any]:
        raise NotImplementedError

    def _step(self, errs: list, lates: list, eof: bool = False) -> tuple[list, list, list]:
        closed = self.core.step(eof=eof)
        return (self._emit(closed) if len(closed) else []), errs, lates

    def notify_at(self) -> datetime | None:
        """When the wall clock will close a window or release a held row (``idle_advance``)."""
        at = self.core.notify_at()
        return None if at is None else datetime.fromtimestamp(at, tz=timezone.utc)

    def on_notify(self) -> tuple[list[Any], bool]:
        self.core.tick()
        return [self._step([], [])], False

    def on_eof(self) -> tuple[list[Any], bool]:
        self.core.tick()
        return [self._step([], [], eof=True)], False

    def snapshot(self) -> dict[str, Any]:
        return snapshot(_KIND, _VERSION, {"path": self.path, **self.core.snapshot_data()})


class _FrameLogic(_Logic):
    """A shard of keys: checked frames in, one frame of closed windows per step out."""

    path = "frames"

    def __init__(self, spec: Spec, key: str, timestamp: str, resume: Any) -> None:
        self.key = key
        self.timestamp = timestamp
        super().__init__(spec, resume)

    def on_batch(self, frames: list[pl.DataFrame]) -> tuple[list[Any], bool]:
        core, step_id = self.core, self.spec.step_id
        core.tick()
        errs: list[Rejected] = []
        lates: list[Rejected] = []
        for frame in frames:
            adm = core.admit(frame.get_column(self.key), ts_micros(frame, self.timestamp))
            if len(adm.future) or len(adm.late):
                more, late = adm.rejected(step_id, partial(frame.row, named=True))
                errs += more
                lates += late
            x = values(frame, self.spec.fields)
            core.hold(adm.kid, adm.ts, x if len(adm.ok) == frame.height else x[adm.ok])
        return [self._step(errs, lates)], False

    def _emit(self, closed: Closed) -> list[pl.DataFrame]:
        names = self.core.names
        when = pl.Datetime("us", "UTC")
        columns = {
            # as text: a shard may hold keys of a String column and of an integer one
            "key": pl.Series([str(names[k]) for k in closed.kid.tolist()], dtype=pl.String),
            "window_start": pl.Series(closed.start).cast(when),
            "window_end": pl.Series(closed.end).cast(when),
        }
        columns.update(zip(self.spec.names, closed.columns))
        return [pl.DataFrame(columns)]


class _RowLogic(_Logic):
    """A shard of keys: ``(key, event)`` rows in, ``(key, aggregates)`` per closed window out."""

    path = "rows"

    def __init__(self, spec: Spec, ts_getter: Callable[[Any], datetime], resume: Any) -> None:
        self.ts_getter = ts_getter
        super().__init__(spec, resume)

    def on_batch(self, parts: list[tuple[list, list]]) -> tuple[list[Any], bool]:
        core, step_id = self.core, self.spec.step_id
        core.tick()
        for handovers, _ in parts:  # a key's handover comes before any row of it
            for key, handover in handovers:
                core.adopt(key, handover.data)
        items = parts[0][1] if len(parts) == 1 else [x for _, rows in parts for x in rows]
        cols, errs = extract(step_id, items, self.spec.fields, self.ts_getter)
        lates: list[Rejected] = []
        keys, events = cols.keys, cols.events
        if keys:
            adm = core.admit(keys, cols.ts)
            if len(adm.future) or len(adm.late):
                more, lates = adm.rejected(step_id, lambda i: (keys[i], events[i]))
                errs += more
            x = cols.values if len(adm.ok) == len(keys) else cols.values[adm.ok]
            core.hold(adm.kid, adm.ts, x)
        return [self._step(errs, lates)], False

    def _emit(self, closed: Closed) -> list[tuple[Any, dict[str, Any]]]:
        names = self.core.names
        keys = [names[k] for k in closed.kid.tolist()]
        starts = list(map(from_micros, closed.start.tolist()))
        ends = list(map(from_micros, closed.end.tolist()))
        features = [c.tolist() for c in closed.columns]
        spec_names = self.spec.names
        return [
            (k, {"key": k, "window_start": a, "window_end": b, **dict(zip(spec_names, vals))})
            for k, a, b, *vals in zip(keys, starts, ends, *features)
        ]


class _ByKey(StatefulBatchLogic):
    """A key's rows on their way to its shard, at the step id where the previous release kept
    the key's windows: a state found there is handed over to the shard first, then dropped.

    Keeps nothing (discarded after each call); the handover's record is only ever snapshot if
    Bytewax keeps a loaded state to an epoch's end before waking it.
    """

    def __init__(self, spec: Spec, resume: Any) -> None:
        self.handover = None
        if resume is not None:
            if _window_legacy.is_legacy(resume):
                data = _window_legacy.upgrade(resume, spec)
            else:
                data = restore(resume, kind=_KIND + ".handover", version=_HANDOVER_VERSION)
            self.handover = _window_legacy.Handover(data)

    def _flush(self, out: list[Any]) -> tuple[list[Any], bool]:
        if self.handover is not None:
            out.insert(0, self.handover)
            self.handover = None
        return out, True

    def on_batch(self, items: list[Any]) -> tuple[list[Any], bool]:
        return self._flush([items])

    def notify_at(self) -> datetime | None:
        return None if self.handover is None else datetime.now(timezone.utc)

    def on_notify(self) -> tuple[list[Any], bool]:
        return self._flush([])

    def on_eof(self) -> tuple[list[Any], bool]:
        return self._flush([])

    def snapshot(self) -> dict[str, Any] | None:
        data = None if self.handover is None else self.handover.data
        return None if data is None else snapshot(_KIND + ".handover", _HANDOVER_VERSION, data)


@operator
def _keyed(step_id: str, up: KeyedStream[Any], builder: Callable[[Any], _ByKey]) -> Stream:
    """The by-key step; named ``window`` by :func:`window_agg`, so it lives at
    ``<step>.window.stateful_batch``, where the previous release's windowing operator did."""
    return op.stateful_batch("stateful_batch", up, builder)


def _by_key(items: list[Any]) -> list[tuple[str, Any]]:
    """Each ``(key, event)`` item keyed by its key. An item without a text key, or whose key
    Bytewax cannot route (a lone surrogate: not UTF-8), goes to the state of key ``""``: on to
    its shard, where a bad item is rejected (``BadItem``) and an odd key is a key like any."""
    keyed = [
        (item[0], item)
        if type(item) is tuple and len(item) == 2 and type(item[0]) is str
        else ("", item)
        for item in items
    ]
    odd = set()
    for key in {key for key, _ in keyed}:
        try:
            key.encode()
        except UnicodeEncodeError:
            odd.add(key)
    return [("", item) if key in odd else (key, item) for key, item in keyed] if odd else keyed


def _row_sharder(shards: int) -> Callable[[list[Any]], list[tuple[str, tuple[list, list]]]]:
    """``(key, rows)`` and ``(key, Handover)`` items to ``(shard id, (handovers, rows))``, by
    the one key router's rule (:func:`~streamml.operators.featurize._shard.shards_of`)."""
    memo: dict[Any, int] = {}

    def group(items: list[tuple[str, Any]]) -> list[tuple[str, tuple[list, list]]]:
        ids = shards_of([key for key, _ in items], shards, memo) if shards > 1 else None
        parts: dict[int, tuple[list, list]] = {}
        for n, (key, value) in enumerate(items):
            handovers, rows = parts.setdefault(ids[n] if ids else 0, ([], []))
            if type(value) is list:
                rows.extend(value)
            else:
                handovers.append((key, value))
        return [(str(shard), part) for shard, part in parts.items()]

    return group


def _windows(windower: Any) -> Fixed | Sessions:
    """The windows of a Bytewax windower, in microseconds."""
    if isinstance(windower, SessionWindower):
        if windower.gap <= timedelta(0):
            raise ValueError(f"the session gap must be > 0; got {windower.gap}")
        return Sessions(micros(windower.gap))
    length = micros(windower.length)
    offset = micros(getattr(windower, "offset", windower.length))
    if length <= 0 or offset <= 0:
        raise ValueError(f"window length and offset must be > 0; got {length} µs, {offset} µs")
    return Fixed(length, offset, to_micros(windower.align_to))


@operator
@instrumented
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
    ttl: timedelta | None = None,
    shards: int = 8,
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
    only), quantiles ``p<percent>`` (exact: NumPy's linear interpolation)
    and ``approx_p<percent>`` (a KLL sketch of ``k=200``: a value whose
    rank is within 2 % of the window's count of the quantile's, w.p. 99 %,
    about 0.5 % typically; see :mod:`streamml.operators.featurize._kll`);
    ``distinct`` (exact) and ``approx_distinct`` (HyperLogLog, 1.6 %
    standard error), ``top<k>`` / ``top<k>_count`` (the k-th most frequent
    value and its count) and ``bin<lo>_<hi>`` (values in ``[lo, hi)``: a
    histogram's bin), as in :mod:`streamml.operators.featurize._frequency`.

    State: with exact quantiles, ``distinct`` or ``top<k>`` among the
    aggregates, every row of an open window is kept until it closes; with
    none of them, each open window keeps a fixed-size summary instead
    (moments, HyperLogLog registers, KLL sketches), so a long window at a
    high rate — an hour of a busy sensor — costs a few KB, not its rows.
    Results are the same either way (exact aggregates to rounding), and
    short windows lose no speed: with 1,000 keys, 10 s windows and the
    default aggregates, summaries ran at 1.05x the row state per CPU-second
    (``python -m benchmarks.sketch``, 1,000,000 events on frames).

    Bad events go to ``errs`` exactly as for
    :func:`~streamml.operators.featurize.rolling`. An event older than its
    key's watermark (newest timestamp seen minus ``max_delay``) goes to
    ``late`` once, whatever the number of windows it falls in: the one
    lateness rule of :mod:`streamml.operators._core.event_time`, so which
    events are late depends neither on ``shards`` nor on batch boundaries.
    With ``idle_advance``, a window the wall clock closed also moves its
    key's watermark to the clock's: an event that would have fallen in it
    is late, never a second row for the same window.

    Frames (``key`` and ``timestamp`` name columns; the timestamp a
    time-zone-aware ``Datetime`` or integer epoch milliseconds): each row is
    checked on the frame's columns (a bad key is ``BadKey``, see
    :func:`~streamml.operators._core.keys.route`; bad values and times as
    in :func:`~streamml.operators._core.columns.check_frame`; a non-frame
    item ``BadItem``), keys are spread over ``shards`` states, and ``oks``
    carries one frame per state and step with the closed windows, with the
    columns of a row above (``key`` as text, ``window_start`` and
    ``window_end`` UTC ``Datetime``). Rejections hold the row as a dict.
    Rows (``key=None``) are spread over ``shards`` states by the same rule;
    recovery stores of the previous release resume.

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
        ttl: Forget a key idle this long in its shard's event time, closing
            its windows first (at least the window length, or the session
            gap, plus ``max_delay``; by default that plus an hour).
            Afterwards its stale rows are late.
        shards: The number of states keys are spread over (by a stable hash
            of the key); about twice the number of workers.

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
    for arg, value in (("max_delay", max_delay), ("max_future", max_future), ("ttl", ttl)):
        _validate.duration(arg, value, minimum="any", optional=arg != "max_delay")
    if max_delay < timedelta(0):
        raise ValueError(f"max_delay must be >= 0; got {max_delay}")
    if isinstance(shards, bool) or not isinstance(shards, int):
        _validate.count("shards", shards)
    if shards < 1:
        raise ValueError(f"shards must be >= 1; got {shards}")
    if max_future is not None and max_future < timedelta(0):
        raise ValueError(f"max_future must be >= 0 or None; got {max_future}")
    if isinstance(fields, str):
        _validate.names("fields", fields)  # refuses it, naming the list meant
    spec_fields = (
        {f: tuple(aggregates) for f in fields} if not isinstance(fields, Mapping) else dict(fields)
    )
    if not spec_fields:
        raise ValueError("fields must name at least one numeric field")
    for name, aggs in spec_fields.items():
        if isinstance(aggs, str):
            raise ValueError(f"aggregates of {name!r} must be a list, e.g. [{aggs!r}]")
        for agg in aggs:
            known = _QUANTILE.match(agg) or APPROX_QUANTILE.match(agg) or is_frequency(agg)
            if agg not in WINDOW_AGGREGATES and not known:
                raise ValueError(
                    f"unknown window aggregate {agg!r} for {name!r}; use one of "
                    f"{', '.join(WINDOW_AGGREGATES)}, a quantile like 'p95' or 'approx_p95', "
                    "top<k> or top<k>_count (k from 1 to 99), or a bin like 'bin0_10' (lo < hi)"
                )
            if agg == "rate" and isinstance(windower, SessionWindower):
                raise ValueError("rate needs a fixed window length; sessions have none")
    windows = _windows(windower)
    span = timedelta(microseconds=windows.gap if isinstance(windows, Sessions) else windows.length)
    if ttl is None:
        ttl = span + max_delay + timedelta(hours=1)
    if ttl < span + max_delay:
        raise ValueError(
            f"ttl must be >= the window (or session gap) + max_delay ({span + max_delay}); "
            f"got {ttl}"
        )
    names = list(spec_fields)
    plan = tuple((names.index(f), a) for f, aggs in spec_fields.items() for a in aggs)
    suffix = f"_{label}" if label else ""
    spec = Spec(
        step_id=step_id,
        fields=tuple(names),
        plan=plan,
        names=tuple(f"{names[f]}_{a}{suffix}" for f, a in plan),
        windows=windows,
        max_delay=max_delay,
        ttl=ttl,
        max_future=max_future,
        idle_advance=idle_advance,
    )
    if key is not None:
        return frame_features(
            step_id,
            up,
            key=key,
            timestamp=timestamp,
            shards=shards,
            fields=spec.fields,
            logic=lambda resume: _FrameLogic(spec, key, timestamp, resume),
        )
    if not callable(timestamp):
        raise ValueError(
            "with key=None, up is a keyed stream of (key, event) rows and timestamp must be a "
            f"function of an event; got {timestamp!r}. For frames, give key= the key column"
        )
    keyed = op.flat_map_batch("route", up, _by_key)
    by_key = _keyed("window", keyed, lambda resume: _ByKey(spec, resume))
    sharded = op.flat_map_batch("shard", by_key, _row_sharder(shards))
    chunks = op.stateful_batch("state", sharded, lambda resume: _RowLogic(spec, timestamp, resume))
    return split_chunks(chunks)
