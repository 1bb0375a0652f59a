"""Temporal (as-of) join: each event with the table version valid at the event's timestamp."""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from streamml.operators.join._shards import (
    LEFT,
    MISSING,
    NEVER,
    Chunked,
    check_shards,
    late_record,
    micros,
    never,
    split_outputs,
    tag_sides,
    timestamps,
)
from streamml.operators.join.enrich import merge_fields
from streamml.operators.join.interval import JoinOut

from streamml.errors import Rejected, reject

__all__ = ["asof_join"]


def _identity(row: Any) -> Any:
    return row


class _Versions:
    """One key's versions, sorted by valid-from time (parallel lists)."""

    __slots__ = ("ts", "values")

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.values: list[Any] = []

    def copy(self) -> _Versions:
        new = _Versions()
        new.ts, new.values = list(self.ts), list(self.values)
        return new


class _AsofState:
    """One shard of an as-of join.

    Eviction: a version is dropped once a newer version of its key is valid
    at the watermark (no event that is not late can need it); a key whose
    only version is a tombstone leaves once the watermark passes it, and with
    ``ttl`` a key leaves once its newest version is older than the watermark
    by ``ttl``; at most ``max_versions`` are kept per key. Events wait in
    ``pending`` until the watermark passes their timestamp.
    """

    def __init__(self) -> None:
        self.versions: dict[str, _Versions] = {}
        self.pending: list[tuple[int, int, str, Any]] = []
        self.timers: list[tuple[int, str]] = []
        self.seq = 0
        self.max_seen = NEVER
        self.watermark = NEVER

    def copy(self) -> _AsofState:
        new = _AsofState()
        new.versions = {k: v.copy() for k, v in self.versions.items()}
        new.pending = list(self.pending)
        new.timers = list(self.timers)
        new.seq, new.max_seen, new.watermark = self.seq, self.max_seen, self.watermark
        return new

    def size(self) -> int:
        """Versions and events held (for tests of bounded state)."""
        return sum(len(v.ts) for v in self.versions.values()) + len(self.pending)


class _AsofLogic(StatefulBatchLogic[Any, Any, _AsofState]):
    def __init__(
        self,
        step_id: str,
        state: _AsofState,
        getters: tuple[Callable[[Any], datetime], Callable[[Any], datetime]],
        value: Callable[[Any], Any],
        merge: Callable[[Any, Any], Any],
        default: Any,
        lateness: int,
        max_versions: int,
        ttl: int | None,
    ) -> None:
        self.step_id = step_id
        self.state = state
        self.getters = getters
        self.value = value
        self.merge = merge
        self.default = default
        self.lateness = lateness
        self.max_versions = max_versions
        self.ttl = ttl

    def on_batch(self, values: list[tuple[int, str, Any]]) -> tuple[list, bool]:
        state = self.state
        oks: list = []
        errs: list = []
        late: list = []
        pending, versions = state.pending, state.versions
        max_seen, watermark, lateness = state.max_seen, state.watermark, self.lateness
        seq = state.seq
        for side, key, item, t in timestamps(self.step_id, values, self.getters, never, errs):
            if t < watermark and side == LEFT:
                late.append(late_record(self.step_id, t, watermark, (key, item)))
                continue
            if t > max_seen:
                max_seen = t
                watermark = t - lateness
            if side == LEFT:
                seq += 1
                heapq.heappush(pending, (t, seq, key, item))
                continue
            # A table row, late or not, is kept: it can only make later lookups right.
            try:
                row = self.value(item)
            except Exception as exc:  # noqa: BLE001 - bad data goes to errs
                errs.append(reject(self.step_id, exc, (key, item)))
                continue
            vs = versions.get(key)
            if vs is None:
                vs = versions[key] = _Versions()
            if not vs.ts or vs.ts[-1] <= t:
                vs.ts.append(t)
                vs.values.append(row)
            else:
                i = bisect_right(vs.ts, t)
                vs.ts.insert(i, t)
                vs.values.insert(i, row)
            if row is None or self.ttl is not None:
                heapq.heappush(state.timers, (t if row is None else t + self.ttl, key))
            # Events still waiting may need versions older than the watermark.
            self._prune(vs, min(watermark, pending[0][0]) if pending else watermark)
        state.seq, state.max_seen, state.watermark = seq, max_seen, watermark
        self._release(watermark, oks, errs)
        self._expire(watermark)
        return ([(oks, errs, late)] if oks or errs or late else []), False

    def _prune(self, vs: _Versions, oldest_needed: int) -> None:
        # Keep the version valid at ``oldest_needed`` and every newer one.
        drop = bisect_right(vs.ts, oldest_needed) - 1
        drop = max(drop, len(vs.ts) - self.max_versions)
        if drop > 0:
            del vs.ts[:drop], vs.values[:drop]

    def _expire(self, watermark: int) -> None:
        state = self.state
        timers = state.timers
        while timers and timers[0][0] < watermark:
            _, key = heapq.heappop(timers)
            vs = state.versions.get(key)
            if vs is None:
                continue
            self._prune(vs, watermark)
            newest = vs.ts[-1]
            gone = vs.values[-1] is None and len(vs.ts) == 1 and newest < watermark
            if gone or (self.ttl is not None and newest + self.ttl < watermark):
                del state.versions[key]

    def _release(self, watermark: int, oks: list, errs: list) -> None:
        pending, versions = self.state.pending, self.state.versions
        while pending and pending[0][0] < watermark:
            t, _, key, event = heapq.heappop(pending)
            vs = versions.get(key)
            row = MISSING
            if vs is not None:
                i = bisect_right(vs.ts, t) - 1
                if i >= 0 and vs.values[i] is not None:
                    row = vs.values[i]
            if row is MISSING:
                if self.default is MISSING:
                    errs.append(
                        Rejected(
                            self.step_id,
                            "MissingRow",
                            f"no table row for key {key!r} valid at the event's time",
                            (key, event),
                        )
                    )
                    continue
                row = self.default
            try:
                oks.append((key, self.merge(event, row)))
            except Exception as exc:  # noqa: BLE001 - bad data goes to errs
                errs.append(reject(self.step_id, exc, (key, event)))

    def on_eof(self) -> tuple[list, bool]:
        # Both sides ended: every waiting event can be looked up now.
        oks: list = []
        errs: list = []
        self._release(2**62, oks, errs)
        return ([(oks, errs, [])] if oks or errs else []), False

    def snapshot(self) -> _AsofState:
        return self.state.copy()


@operator
def asof_join(
    step_id: str,
    up: KeyedStream[Any],
    table: KeyedStream[Any],
    *,
    ts: Callable[[Any], datetime],
    table_ts: Callable[[Any], datetime],
    value: Callable[[Any], Any] = _identity,
    merge: Callable[[Any, Any], Any] = merge_fields,
    default: Any = MISSING,
    lateness: timedelta = timedelta(0),
    max_versions: int = 64,
    ttl: timedelta | None = None,
    shards: int = 16,
) -> JoinOut:
    """Join each event with the table row that was valid at the event's timestamp.

    Use it where features must be point-in-time correct — a feature-store
    style join: a back-filled or replayed stream of transactions gets the
    account limit that applied at each transaction's time, not the one
    current when the replay runs. ``table`` is a versioned changelog: each
    row ``(key, row)`` is valid from ``table_ts(row)`` until the next version
    of its key; ``value(row)`` is what is merged into the event, and a row
    whose ``value`` is ``None`` deletes the key from its time on.

    Time is event time, per shard: the watermark is the largest timestamp
    seen on either side minus ``lateness``. An event waits until the watermark
    passes its timestamp (so every version that can still apply has arrived),
    then is merged with the newest version at or before it; an event older
    than the watermark on arrival goes to ``late``. A table row arriving late
    is still added to the history. When both inputs end, waiting events are
    joined with the history as it is.

    A miss (no version at the event's time, the key deleted then, or history
    older than the event already dropped) is merged with ``default`` when one
    is given, else sent to ``errs`` as ``Rejected(error_type="MissingRow")``.

    Args:
        step_id: Unique step id.
        up: Keyed events ``(key, event)``.
        table: Keyed versioned rows ``(key, row)``.
        ts: Timestamp of an event (aware UTC datetime).
        table_ts: Time from which a row is valid.
        value: The part of a row to merge; the row itself by default.
        merge: ``merge(event, value) -> output``; a new dict by default.
        default: Value used for misses; omit to send misses to ``errs``.
        lateness: How far out of order items may arrive (latency of the join).
        max_versions: Most versions kept per key; older ones are dropped even
            if an event might still need them.
        ttl: Drop a key whose newest version is older than this at the
            watermark; ``None`` keeps live keys (the table's size).
        shards: Number of state shards (see
            :func:`~streamml.operators.join.enrich`).

    Returns:
        :class:`~streamml.operators.join.JoinOut` with ``oks`` of
        ``(key, merged event)``, ``errs`` and ``late``.

    Examples:
        >>> from datetime import datetime, timedelta, timezone
        >>> from bytewax.dataflow import Dataflow
        >>> import bytewax.operators as op
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
        >>> at = lambda h: t0 + timedelta(hours=h)
        >>> flow = Dataflow("asof_doc")
        >>> limits = op.input("limits", flow, TestingSource([
        ...     ("acct1", {"limit": 100, "from": at(0)}),
        ...     ("acct1", {"limit": 500, "from": at(10)})]))
        >>> txns = op.input("txns", flow, TestingSource([
        ...     ("acct1", {"amount": 80, "ts": at(5)}),
        ...     ("acct1", {"amount": 300, "ts": at(12)})]))
        >>> out = asof_join("limit_at_time", txns, limits, ts=lambda e: e["ts"],
        ...                 table_ts=lambda r: r["from"], value=lambda r: {"limit": r["limit"]},
        ...                 lateness=timedelta(days=1))
        >>> got = []
        >>> op.output("out", out.oks, TestingSink(got))
        >>> run_main(flow)
        >>> [(e["amount"], e["limit"]) for _, e in got]
        [(80, 100), (300, 500)]
    """
    check_shards(shards)
    if lateness < timedelta(0):
        raise ValueError(f"lateness must be >= 0; got {lateness}")
    if max_versions < 1:
        raise ValueError(f"max_versions must be >= 1; got {max_versions}")
    if ttl is not None and ttl <= timedelta(0):
        raise ValueError(f"ttl must be > 0 or None; got {ttl}")
    getters = (ts, table_ts)
    late_us, ttl_us = micros(lateness), None if ttl is None else micros(ttl)
    full_id = f"{step_id}.join"

    def build(resume: _AsofState | None) -> Chunked:
        state = _AsofState() if resume is None else resume
        return Chunked(
            _AsofLogic(
                full_id, state, getters, value, merge, default, late_us, max_versions, ttl_us
            )
        )

    tagged = tag_sides("shard", up, table, shards)
    out = split_outputs("split", op.stateful_batch("join", tagged.chunks, build))
    errs = op.merge("all_errs", tagged.errs, out.errs)
    return JoinOut(oks=out.oks, errs=errs, late=out.late)
