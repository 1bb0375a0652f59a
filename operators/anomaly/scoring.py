"""The :func:`score` operator: a per-key anomaly score on every row, in event time."""

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
from streamml.operators.anomaly import _engine, _legacy
from streamml.operators.anomaly.combine import Combined
from streamml.operators.anomaly.scorers import Ewma, RobustZScore, Scorer, ZScore, score_runs

from streamml.errors import Rejected
from streamml.metrics import instrumented

__all__ = ["ScoreOut", "score"]

_KIND = "streamml.anomaly.score"


@dataclass(frozen=True)
class ScoreOut:
    """Streams returned by :func:`score`."""

    oks: Stream[pl.DataFrame] | KeyedStream[dict[str, Any]]
    """Frames of the released rows with ``into`` (the score) and ``into + "_field"`` (the field
    with the largest deviation) added; on the ``(key, event)`` path, ``(key, event with both)``."""
    errs: Stream[Rejected]
    """Rows with a bad key, a missing, non-numeric or non-finite field, or a bad timestamp;
    items that are not frames or ``(str key, event)`` pairs (``BadItem``)."""
    late: Stream[Rejected]
    """Rows older than the key's watermark (``error_type="Late"``)."""


class _KeyState:
    """One key's scorer. Eviction: dropped once its history has expired (see :meth:`_Family.wake`)."""

    __slots__ = ("key", "scorer")

    def __init__(self, key: Any, scorer: Any) -> None:
        self.key, self.scorer = key, scorer


class _Family:
    """score on the shard engine: each released row scored against its key's history before it."""

    kind = _KIND
    streams = 3  # oks, errs, late
    errs = 1
    late = 2

    def __init__(self, scorer: Scorer | Combined, into: str) -> None:
        self.scorer, self.into, self.into_field = scorer, into, into + "_field"
        self.names = pl.Series(self.into_field, scorer.fields, dtype=pl.String)
        self.name_list = list(scorer.fields)
        if isinstance(scorer, Combined):
            self.scorer_kind = "combined"  # newer than version 0: no store to upgrade
        elif isinstance(scorer, RobustZScore):
            self.scorer_kind = "robust"
        elif isinstance(scorer, ZScore):
            self.scorer_kind = "rolling"
        else:
            self.scorer_kind = "ewma"

    def new_state(self, key: Any) -> _KeyState:
        return _KeyState(key, self.scorer._state())

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
        scorers = [st.scorer for st in states]
        z, zf = score_runs(scorers, held.ts[order], held.data[order], bounds)
        wakes = [sc.expires_at() for sc in scorers]
        s = np.empty(len(order))
        f = np.empty(len(order), dtype=np.int64)
        s[order] = z
        f[order] = zf
        if isinstance(io, _engine.FrameInput):
            columns = [pl.Series(self.into, s), self.names.gather(f)]
            out[0].append(held.frame.with_columns(columns))
        else:
            into, into_field, names = self.into, self.into_field, self.name_list
            out[0].extend(
                (k, {**ev, into: x, into_field: names[j]})
                for k, ev, x, j in zip(rows.keys, rows.events, s.tolist(), f.tolist())
            )
        return wakes

    def wake(self, st: _KeyState, mark: int, io: Any, out: list[list]) -> tuple[int, bool]:
        """The key can go once its scorer's history has expired (a returning key starts afresh)."""
        at = st.scorer.expires_at()
        return at, at <= mark

    def eof(self, st: _KeyState, io: Any, out: list[list]) -> None:
        pass

    def record(self, st: _KeyState) -> dict[str, Any]:
        return {"scorer": st.scorer.snapshot()}

    def restore(self, key: Any, rec: dict[str, Any]) -> _KeyState:
        st = self.new_state(key)
        st.scorer.restore(rec["scorer"])
        return st

    def upgrade_v0(self, snap: tuple) -> tuple[_legacy.GateV0, dict[str, Any]]:
        return _legacy.per_key_v0(snap, windows=False, scorer=self.scorer_kind)


def _span(scorer: Scorer | Combined) -> timedelta:
    if isinstance(scorer, Combined):
        return scorer.span
    return scorer.window if isinstance(scorer, ZScore) else scorer.ttl


@operator
@instrumented
def score(
    step_id: str,
    up: Stream[pl.DataFrame] | KeyedStream[Mapping[str, Any]],
    *,
    scorer: Scorer | Combined,
    timestamp: str | Callable[[Mapping[str, Any]], datetime],
    key: str | None = None,
    lateness: timedelta = timedelta(0),
    into: str = "score",
    shards: int = 8,
    ttl: timedelta | None = None,
    max_future: timedelta | None = None,
) -> ScoreOut:
    """Add a per-key anomaly score to every row, in event time.

    Use it when you want the scored rows themselves (a dashboard, a model
    input, an :func:`anomaly_windows` step elsewhere). To go straight to
    windows, pass the scorer to :func:`anomaly_windows` instead: one step
    instead of two, and faster.

    Frames are the unit: give ``up`` a stream of ``polars.DataFrame``
    batches, ``key`` the key column and ``timestamp`` the event-time column
    (a time-zone-aware ``pl.Datetime``, or integer epoch milliseconds); out
    come frames of the released rows, in event-time order, with the score
    columns added. The ``(key, event)`` path, ``key=None``: ``up`` is a
    keyed stream, ``timestamp`` a function returning an event's
    time-zone-aware ``datetime``, and each output is ``(key, new dict)``.
    Both paths run the same implementation.

    Each row is scored against the key's history strictly before it, so a
    spike does not dampen its own score. Rows are held until the key's
    watermark (newest time minus ``lateness``;
    :class:`~streamml.operators._core.event_time.KeyedEventTime`) passes
    them and scored in timestamp order: the result does not depend on
    arrival order within ``lateness``, on ``shards``, on workers or on batch
    boundaries. While a key is quiet its watermark moves on with the wall
    clock, so its held rows come out without new rows.

    Args:
        step_id: Unique id.
        up: Frames (with ``key``), or a keyed stream of ``(key, event)``.
        scorer: :class:`ZScore`, :class:`RobustZScore`, :class:`Ewma`, or
            several of them voting or pooling their scores (:class:`Combined`).
        timestamp: The event-time column of the frames; for rows, a function
            from an event to its timezone-aware datetime.
        key: The key column of the frames; ``None`` for ``(key, event)`` rows.
        lateness: Allowed out-of-orderness; rows older than the watermark go to ``late``.
        into: Name of the score column added to each row (``Float64``); the
            driving field's name goes to ``into + "_field"``.
        shards: Number of state shards. Keys are spread over them by a
            stable hash and each shard's state holds many keys, so the step
            costs one call per shard per batch instead of one per key.
            Results do not depend on it. Use about twice the number of
            workers; on a single worker ``shards=1`` is fastest.
        ttl: Forget a key's event time after this long without a row,
            measured against its shard's newest row; at least the scorer's
            history (``window``, or an ``Ewma``'s ``ttl``) plus
            ``lateness``, which plus one hour is the default.
        max_future: Reject rows further than this beyond the wall clock
            (``FutureTimestamp``); ``None`` (default) accepts any time.

    Returns:
        :class:`ScoreOut` with ``oks``, ``errs`` and ``late``.

    Examples:
        >>> from datetime import datetime, timedelta, timezone
        >>> import bytewax.operators as op
        >>> import polars as pl
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
        >>> temps = [20.0, 21.0, 20.0, 21.0, 35.0, float("nan")]
        >>> frame = pl.DataFrame({"pump": "pump-1", "t": [t0 + timedelta(seconds=i) for i in range(6)],
        ...                       "temp": temps})
        >>> flow = Dataflow("score_eg")
        >>> frames = op.input("in", flow, TestingSource([frame]))
        >>> scored = score("score", frames, key="pump", timestamp="t",
        ...                scorer=ZScore("temp", window=timedelta(minutes=1), min_points=3))
        >>> oks, errs = [], []
        >>> op.output("oks", scored.oks, TestingSink(oks))
        >>> op.output("errs", scored.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> pl.concat(oks)["score"].round(1).to_list()
        [0.0, 0.0, 0.0, 1.2, 25.1]
        >>> errs[0].error_type, errs[0].original["temp"]
        ('NonFinite', nan)

        The same on ``(key, event)`` rows:

        >>> flow = Dataflow("score_rows_eg")
        >>> s = op.key_on("key", op.input("in", flow, TestingSource(frame.to_dicts())),
        ...               lambda e: e["pump"])
        >>> scored = score("score", s, scorer=ZScore("temp", window=timedelta(minutes=1), min_points=3),
        ...                timestamp=lambda e: e["t"])
        >>> oks = []
        >>> op.output("oks", scored.oks, TestingSink(oks))
        >>> run_main(flow)
        >>> [round(e["score"], 1) for _, e in oks]
        [0.0, 0.0, 0.0, 1.2, 25.1]
    """
    _validate.event_time(key, timestamp)
    _validate.one_of(
        "scorer", scorer, (ZScore, Ewma, Combined), "RobustZScore('temperature', window=...)"
    )
    _validate.name("into", into, example="'score'")
    timing = _engine.check_timing(
        step_id,
        lateness=lateness,
        span=_span(scorer),
        ttl=ttl,
        max_future=max_future,
        fields=scorer.fields,
    )
    family = _Family(scorer, into)
    chunks, bad = _engine.shard_states(
        up, key=key, timestamp=timestamp, timing=timing, shards=shards, family=family
    )
    return ScoreOut(
        oks=op.flat_map_batch("oks", chunks, _engine.pick(0)),
        errs=op.merge("all_errs", bad, op.flat_map_batch("errs", chunks, _engine.pick(1))),
        late=op.flat_map_batch("late", chunks, _engine.pick(2)),
    )
