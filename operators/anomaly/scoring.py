"""The :func:`score` operator: a per-key anomaly score on every event, in event time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
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
    _Late,
    _plain_reader,
    _Reject,
    _us,
)
from streamml.operators.anomaly._shard import per_key_in_shards
from streamml.operators.anomaly.scorers import Ewma, Scorer, ZScore

from streamml.errors import Rejected

__all__ = ["ScoreOut", "score"]


@dataclass(frozen=True)
class ScoreOut:
    """Streams returned by :func:`score`."""

    oks: KeyedStream[dict[str, Any]]
    """Each event with ``into`` (the score) and ``into + "_field"`` (the field with the largest deviation)."""
    errs: Stream[Rejected]
    """Events with a missing, non-numeric or non-finite field, or a bad timestamp; items that are not ``(str key, event)`` pairs (``BadItem``)."""
    late: Stream[Rejected]
    """Events older than the key's watermark (``error_type="Late"``)."""


class _ScoreLogic(StatefulBatchLogic):
    """The scoring state of one key: its gate and scorer.

    A complete keyed logic; :func:`score` runs many of them inside each
    :class:`._shard._ShardLogic`. Eviction: dropped once nothing is pending
    and the scorer's history has expired.
    """

    def __init__(self, cfg: _ScoreConfig, resume: tuple | None) -> None:
        self.cfg = cfg
        self.gate = _Gate(cfg.lateness)
        self.state = cfg.scorer._state()
        if resume is not None:
            self.gate.restore(resume[0])
            self.state.restore(resume[1])

    def _run(self, ready: list[tuple], out: list) -> None:
        if not ready:
            return
        into, into_field, names = self.cfg.into, self.cfg.into_field, self.cfg.scorer.fields
        stamps, events, xs = zip(*ready)
        for ev, (s, f) in zip(events, self.state.update_many(stamps, xs)):
            out.append({**ev, into: s, into_field: names[f]})

    def _discard(self) -> bool:
        return not self.gate.pending and self.state.expires_at() <= self.gate.wm

    def on_batch(self, values: list) -> tuple[list, bool]:
        cfg = self.cfg
        out = _admit(self.gate, values, cfg.timestamp, cfg.extract, cfg.read_all)
        self._run(self.gate.release(), out)
        return out, self._discard()

    def on_notify(self) -> tuple[list, bool]:
        self.gate.idle_watermark()
        out: list = []
        self._run(self.gate.release(), out)
        return out, self._discard()

    def on_eof(self) -> tuple[list, bool]:
        out: list = []
        self._run(self.gate.release(everything=True), out)
        return out, False

    def due_us(self) -> int | None:
        """System time (µs) at which the idle watermark reaches the next pending event or expiry."""
        gate = self.gate
        due = gate.pending[0][0] if gate.pending else self.state.expires_at()
        return gate.system_us_of(due) if due > _MIN else None

    def notify_at(self) -> datetime | None:
        due = self.due_us()
        return _dt(due) if due is not None else None

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
    read_all: Callable[[list[Event]], list[tuple[float, ...]]] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "extract", _field_values(self.scorer.fields))
        object.__setattr__(self, "read_all", _plain_reader(self.scorer.fields, rows=True))


def _rejections(step_id: str) -> Callable[[list[tuple[str | None, Any]]], list[Rejected]]:
    """A batch function: the rejected and late items of the shards' output, as ``Rejected``."""

    def rejections(batch: list[tuple[str | None, Any]]) -> list[Rejected]:
        out = []
        for key, v in batch:
            t = type(v)
            if t is _Reject:  # key None: the item was not a (key, event) pair
                out.append(Rejected(step_id, v[0], v[1], (key, v[2]) if key is not None else v[2]))
            elif t is _Late:
                out.append(Rejected(step_id, "Late", v[0], (key, v[1])))
        return out

    return rejections


def _events(batch: list[tuple[str | None, Any]]) -> list[tuple[str, Any]]:
    """A batch function: the scored events of the shards' output."""
    return [kv for kv in batch if type(kv[1]) is not _Reject and type(kv[1]) is not _Late]


@operator
def score(
    step_id: str,
    up: KeyedStream[Event],
    *,
    scorer: Scorer,
    timestamp: TimestampGetter,
    lateness: timedelta = timedelta(0),
    into: str = "score",
    shards: int = 8,
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
        shards: Number of state shards. Keys are spread over them by a
            stable hash and each shard's state holds many keys, so the step
            costs one call per shard per batch instead of one per key.
            Results do not depend on it. Use about twice the number of
            workers; on a single worker ``shards=1`` is fastest.

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
    if shards < 1:
        raise ValueError(f"shards must be >= 1; got {shards}")
    cfg = _ScoreConfig(scorer, timestamp, _us(lateness), into, into + "_field")
    out = per_key_in_shards(up, shards, lambda snap: _ScoreLogic(cfg, snap))
    # Batch steps: every scored event passes here, and op.branch calls a predicate per item.
    events = op.flat_map_batch("events", out, _events)
    problems = op.flat_map_batch("rejections", out, _rejections(step_id))
    late = op.branch("late_or_error", problems, lambda r: r.error_type == "Late")
    return ScoreOut(events, late.falses, late.trues)
