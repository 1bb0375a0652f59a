"""Stream–table enrichment: each event joined with the table row current when it is processed."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from streamml.operators.join._shards import (
    CONTROL,
    LEFT,
    MISSING,
    Chunked,
    check_shards,
    split_outputs,
    tag_sides,
)
from streamml.operators.join.table import TableReady

from streamml.errors import Rejected, reject

__all__ = ["EnrichOut", "enrich", "merge_fields"]


def merge_fields(event: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """The default merge: a new dict with the event's fields, then the row's.

    Examples:
        >>> merge_fields({"id": "d1", "t": 20.5}, {"site": "north"})
        {'id': 'd1', 't': 20.5, 'site': 'north'}
    """
    return {**event, **row}


@dataclass(frozen=True)
class EnrichOut:
    """The streams of :func:`enrich`."""

    oks: KeyedStream[Any]
    """``(key, merged event)`` for every event with a row (or the default)."""

    errs: Stream[Rejected]
    """Events with no row (``MissingRow``) and merges that raised."""


class _EnrichState:
    """One shard's table and the events it is holding.

    Eviction: ``table`` holds the live rows only (a tombstone deletes its
    key), so it is as large as the table itself; ``waiting`` misses leave after
    ``max_wait``; ``held`` events leave when the bootstrap completes.
    """

    def __init__(self, bootstrapping: bool) -> None:
        self.table: dict[str, Any] = {}
        self.waiting: dict[str, list[tuple[datetime, Any]]] = {}
        self.deadlines: deque[tuple[datetime, str]] = deque()
        self.held: list[tuple[str, Any]] | None = [] if bootstrapping else None
        self.ready: set[tuple[str, int]] = set()

    def copy(self) -> _EnrichState:
        new = _EnrichState(False)
        new.table = dict(self.table)
        new.waiting = {k: list(v) for k, v in self.waiting.items()}
        new.deadlines = deque(self.deadlines)
        new.held = None if self.held is None else list(self.held)
        new.ready = set(self.ready)
        return new


class _EnrichLogic(StatefulBatchLogic[Any, Any, _EnrichState]):
    def __init__(
        self,
        step_id: str,
        state: _EnrichState,
        merge: Callable[[Any, Any], Any],
        default: Any,
        max_wait: timedelta | None,
    ) -> None:
        self.step_id = step_id
        self.state = state
        self.merge = merge
        self.default = default
        self.max_wait = max_wait

    def _miss(self, key: str, event: Any, oks: list, errs: list) -> None:
        if self.default is MISSING:
            errs.append(
                Rejected(self.step_id, "MissingRow", f"no table row for key {key!r}", (key, event))
            )
        else:
            self._emit(key, event, self.default, oks, errs)

    def _emit(self, key: str, event: Any, row: Any, oks: list, errs: list) -> None:
        try:
            oks.append((key, self.merge(event, row)))
        except Exception as exc:  # noqa: BLE001 - bad data goes to errs
            errs.append(reject(self.step_id, exc, (key, event)))

    def _events(self, events: list[tuple[str, Any]], oks: list, errs: list) -> None:
        state = self.state
        get = state.table.get
        merge = self.merge
        fields = merge is merge_fields
        now = None
        for key, event in events:
            row = get(key, MISSING)
            if row is not MISSING:
                try:
                    oks.append((key, {**event, **row} if fields else merge(event, row)))
                except Exception as exc:  # noqa: BLE001 - bad data goes to errs
                    errs.append(reject(self.step_id, exc, (key, event)))
            elif self.max_wait is None:
                self._miss(key, event, oks, errs)
            else:
                if now is None:
                    now = datetime.now(timezone.utc)
                deadline = now + self.max_wait
                state.waiting.setdefault(key, []).append((deadline, event))
                state.deadlines.append((deadline, key))

    def on_batch(self, values: list[tuple[int, str, Any]]) -> tuple[list, bool]:
        state = self.state
        table = state.table
        get = table.get
        merge = self.merge
        fields = merge is merge_fields  # inline the default merge: no call per event
        oks: list = []
        errs: list = []
        append = oks.append
        held = state.held
        for side, key, value in values:
            if side == LEFT:
                if held is not None:
                    held.append((key, value))
                    continue
                row = get(key, MISSING)
                if row is MISSING:
                    self._events([(key, value)], oks, errs)
                    continue
                try:
                    append((key, {**value, **row} if fields else merge(value, row)))
                except Exception as exc:  # noqa: BLE001 - bad data goes to errs
                    errs.append(reject(self.step_id, exc, (key, value)))
            elif side == CONTROL:
                self._ready(value, oks, errs)
                held = state.held
            elif value is None:
                table.pop(key, None)
            else:
                table[key] = value
                if key in state.waiting:
                    for _, event in state.waiting.pop(key):
                        self._emit(key, event, value, oks, errs)
        return ([(oks, errs, [])] if oks or errs else []), False

    def _ready(self, marker: TableReady, oks: list, errs: list) -> None:
        state = self.state
        state.ready.add((marker.topic, marker.partition))
        if state.held is not None and len(state.ready) >= marker.partitions:
            held, state.held = state.held, None
            self._events(held, oks, errs)

    def on_notify(self) -> tuple[list, bool]:
        state = self.state
        now = datetime.now(timezone.utc)
        oks: list = []
        errs: list = []
        while state.deadlines and state.deadlines[0][0] <= now:
            _, key = state.deadlines.popleft()
            waiting = state.waiting.get(key)
            while waiting and waiting[0][0] <= now:
                self._miss(key, waiting.pop(0)[1], oks, errs)
            if waiting == []:
                del state.waiting[key]
        return ([(oks, errs, [])] if oks or errs else []), False

    def on_eof(self) -> tuple[list, bool]:
        # Both sides ended: no row can still arrive, so held events are
        # enriched from the table as it is and waiting misses are final.
        state = self.state
        oks: list = []
        errs: list = []
        if state.held is not None:
            held, state.held = state.held, None
            self._events(held, oks, errs)
        for key, waiting in state.waiting.items():
            for _, event in waiting:
                self._miss(key, event, oks, errs)
        state.waiting.clear()
        state.deadlines.clear()
        return ([(oks, errs, [])] if oks or errs else []), False

    def notify_at(self) -> datetime | None:
        return self.state.deadlines[0][0] if self.state.deadlines else None

    def snapshot(self) -> _EnrichState:
        return self.state.copy()


@operator
def enrich(
    step_id: str,
    up: KeyedStream[Any],
    table: Stream[tuple[str, Any] | TableReady],
    *,
    merge: Callable[[Any, Any], Any] = merge_fields,
    default: Any = MISSING,
    max_wait: timedelta | None = None,
    wait_for_bootstrap: bool = True,
    shards: int = 16,
) -> EnrichOut:
    """Join each event with the current table row of its key (stream–table join).

    Use it to add slowly changing context to events — device metadata,
    account profile, a feature table — from a changelog: ``table`` is a
    stream of ``(key, row)`` where a ``None`` row (tombstone) deletes the key,
    typically the ``changelog`` of :func:`~streamml.operators.join.kafka_table`. Each event
    is merged with the row that is current when the event is processed; the
    join keeps the last row per key itself, so an uncompacted topic works.

    A miss (no row for the key) is, by the two settings:

    - ``max_wait=None`` (default): resolved at once;
    - ``max_wait=timedelta(...)``: held up to that long (processing time) for
      the row to arrive, then resolved;

    and resolved means merged with ``default`` when one is given, else sent
    to ``errs`` as ``Rejected(error_type="MissingRow")``.

    With ``wait_for_bootstrap`` (default), events are held (not enriched)
    until the table stream has carried a
    :class:`~streamml.operators.join.TableReady` for every partition of the
    table topic, which :func:`~streamml.operators.join.kafka_table` emits once
    a partition is read up to where it ended at start. A hand-made changelog
    ends its initial load with ``TableReady(name, 0, 1)``, or passes
    ``wait_for_bootstrap=False`` to join from the first event. When both
    inputs end, held events are joined with the table as it is and waiting
    misses are resolved.

    Args:
        step_id: Unique step id.
        up: Keyed events ``(key, event)``.
        table: The changelog: ``(key, row)`` items and ``TableReady`` markers.
        merge: ``merge(event, row) -> output``; default :func:`merge_fields`
            (a new dict, row fields over event fields). If it raises, the
            event goes to ``errs``.
        default: Row used for misses; omit to send misses to ``errs``.
        max_wait: How long a miss waits for its row; ``None`` waits not at all.
        wait_for_bootstrap: Hold events until every partition's ``TableReady``.
        shards: Number of state shards (keys are spread over them by CRC32, so
            results do not depend on the number of workers); keep it a few
            times the number of workers.

    Returns:
        :class:`EnrichOut` with ``oks`` and ``errs``.

    Examples:
        >>> from bytewax.dataflow import Dataflow
        >>> import bytewax.operators as op
        >>> from bytewax.testing import TestingSource, TestingSink, run_main
        >>> flow = Dataflow("enrich_doc")
        >>> changelog = op.input("devices", flow, TestingSource([
        ...     ("d1", {"site": "north"}), ("d2", {"site": "south"}), ("d2", None),
        ...     TableReady("devices", partition=0, partitions=1)]))
        >>> events = op.input("events", flow, TestingSource([
        ...     ("d1", {"t": 20.5}), ("d2", {"t": 19.0}), ("d3", {"t": 7.0})]))
        >>> out = enrich("site", events, changelog, default={"site": None})
        >>> got = []
        >>> op.output("out", out.oks, TestingSink(got))
        >>> run_main(flow)
        >>> sorted(got, key=lambda kv: kv[0])
        [('d1', {'t': 20.5, 'site': 'north'}), ('d2', {'t': 19.0, 'site': None}),
         ('d3', {'t': 7.0, 'site': None})]
    """
    check_shards(shards)
    if max_wait is not None and max_wait <= timedelta(0):
        raise ValueError(f"max_wait must be > 0 or None; got {max_wait}")
    if not callable(merge):
        raise ValueError("merge must be a function merge(event, row) -> output")
    tagged = tag_sides("shard", up, table, shards, TableReady)
    bootstrapping = wait_for_bootstrap
    full_id = f"{step_id}.join"

    def build(resume: _EnrichState | None) -> Chunked:
        state = _EnrichState(bootstrapping) if resume is None else resume
        return Chunked(_EnrichLogic(full_id, state, merge, default, max_wait))

    joined = op.stateful_batch("join", tagged.chunks, build)
    out = split_outputs("split", joined)
    return EnrichOut(oks=out.oks, errs=op.merge("all_errs", tagged.errs, out.errs))
