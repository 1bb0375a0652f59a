"""Temporal (as-of) join: each event with the table version valid at the event's timestamp.

Event time is the core's (:class:`~streamml.operators._core.event_time.KeyedEventTime`,
one per shard): lateness per key, events held until their key's watermark
passes them, keys forgotten after ``ttl``. The shard state is a versioned
record (``streamml.join.asof``), upgraded from the previous release's pickled
``_AsofState``.
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from streamml.operators._core.admission import _NONE
from streamml.operators._core.event_time import KeyedEventTime
from streamml.operators._core.held import Held
from streamml.operators._core.state import snapshot
from streamml.operators.join._legacy import _AsofState, _Versions
from streamml.operators.join._resume import resumed
from streamml.operators.join._shards import (
    LEFT,
    MISSING,
    check_shards,
    late_records,
    read_groups,
    split_outputs,
    tag_sides,
)
from streamml.operators.join.enrich import merge_fields
from streamml.operators.join.interval import JoinOut

from streamml.errors import Rejected, reject
from streamml.metrics import instrumented

__all__ = ["asof_join"]

# Kept importable here for recovery stores of the previous release (see _legacy).
_LEGACY = (_AsofState, _Versions)

_PRUNE_EVERY = 16
"""A key's versions are pruned once it holds this many (or gets a tombstone): a prune per
insertion cost ~0.4 us a row, and a few versions more per key cost only memory."""

_KIND = "streamml.join.asof"
_VERSION = 1


def _identity(row: Any) -> Any:
    return row


@dataclass(frozen=True)
class _Config:
    step_id: str
    getters: tuple[Callable[[Any], datetime], Callable[[Any], datetime]]
    value: Callable[[Any], Any] = _identity
    merge: Callable[[Any, Any], Any] = merge_fields
    default: Any = MISSING
    lateness: timedelta = timedelta(0)
    max_versions: int = 64
    ttl: timedelta | None = None
    clock: Callable[[], float] = time.time


class _AsofLogic(StatefulBatchLogic):
    """One shard of an as-of join.

    ``versions`` maps a key id to its versions, ``[times, values]`` sorted
    by valid-from time; ``events`` maps an event id to its ``(key, event)``
    while the event is held in :attr:`et` (due one microsecond after its
    time: released once its key's watermark passes it).

    Eviction: a version is dropped once a newer version of its key is valid
    at the key's watermark (no event that is not late can need it); a key
    whose only version is a tombstone leaves once its watermark passes it;
    at most ``max_versions`` are kept per key; with ``ttl``, a key idle that
    long (event time of its shard) is forgotten with its versions. An event
    leaves when released.
    """

    def __init__(self, cfg: _Config, resume: Any) -> None:
        self.cfg = cfg
        data = resumed(resume, kind=_KIND, version=_VERSION, upgrades={0: _from_legacy})
        self.et = KeyedEventTime(
            max_delay=cfg.lateness,
            ttl=cfg.ttl,
            width=1,
            clock=cfg.clock,
            resume=None if data is None else data["time"],
        )
        self.versions: dict[int, list[list]] = {}
        self.events: dict[int, tuple[str, Any]] = {}
        self.next_id = 0
        if data is not None:
            stored = data["versions"]
            self.versions = {
                k: [list(t), list(v)]
                for k, t, v in zip(stored["kid"], stored["ts"], stored["values"])
            }
            held = data["events"]
            self.events = dict(zip(held["ids"], zip(held["keys"], held["items"])))
            self.next_id = data["next_id"]

    def size(self) -> int:
        """Versions and events held (for tests of bounded state)."""
        return sum(len(v[0]) for v in self.versions.values()) + len(self.events)

    def on_batch(self, values: list[tuple[int, list[tuple[str, Any]]]]) -> tuple[list, bool]:
        cfg = self.cfg
        errs: list[Rejected] = []
        late: list[Rejected] = []
        pairs, ts, sides = read_groups(cfg.step_id, values, cfg.getters, errs)
        rows = None  # the table rows' values (None: the rows themselves)
        if pairs and cfg.value is not _identity and sides.any():
            pairs, ts, sides, rows = self._values(pairs, ts, sides, errs)
        if not pairs:
            return ([([], errs, [])] if errs else []), False
        adm = self.et.admit([k for k, _ in pairs], ts)
        if len(adm.late):
            late = late_records(cfg.step_id, adm, ts, pairs.__getitem__)
            if not len(adm.ok):
                return [([], errs, late)], False
            ok = adm.ok.tolist()
            pairs, sides = [pairs[i] for i in ok], sides[adm.ok]
            rows = None if rows is None else [rows[i] for i in ok]
        touched: set[int] = set()
        n_right = int(np.count_nonzero(sides))  # RIGHT is 1
        if not n_right:  # events only: held as they are
            self._hold(pairs, adm.kid, adm.ts)
        elif n_right == len(pairs):
            self._add_versions(pairs, rows, adm.kid.tolist(), adm.ts.tolist(), touched)
        elif len(values) == 2 and len(pairs) == len(values[0][1]) + len(values[1][1]):
            # one chunk a side (the usual call), no row dropped: each side is a slice
            cut = len(values[0][1])
            kid, t = adm.kid, adm.ts
            if values[0][0] == LEFT:
                self._hold(pairs[:cut], kid[:cut], t[:cut])
                rest = None if rows is None else rows[cut:]
                self._add_versions(pairs[cut:], rest, kid[cut:].tolist(), t[cut:].tolist(), touched)
            else:
                rest = None if rows is None else rows[:cut]
                self._add_versions(pairs[:cut], rest, kid[:cut].tolist(), t[:cut].tolist(), touched)
                self._hold(pairs[cut:], kid[cut:], t[cut:])
        else:
            left = np.flatnonzero(sides == LEFT)
            self._hold([pairs[i] for i in left.tolist()], adm.kid[left], adm.ts[left])
            right = np.flatnonzero(sides).tolist()
            kid_l, t_l = adm.kid.tolist(), adm.ts.tolist()
            self._add_versions(
                [pairs[i] for i in right],
                None if rows is None else [rows[i] for i in right],
                [kid_l[i] for i in right],
                [t_l[i] for i in right],
                touched,
            )
        oks = self._release(errs)
        if touched:
            self._prune(touched)
        return ([(oks, errs, late)] if oks or errs or late else []), False

    def _values(
        self, pairs: list, ts: np.ndarray, sides: np.ndarray, errs: list[Rejected]
    ) -> tuple[list, np.ndarray, np.ndarray, list]:
        """``value(row)`` of each table row, read before the row can move its key's
        watermark: a row whose value cannot be read goes to ``errs`` and is dropped."""
        cfg = self.cfg
        value, rows, bad = cfg.value, [], []
        for i, ((key, item), side) in enumerate(zip(pairs, sides.tolist())):
            if side == LEFT:
                rows.append(None)
                continue
            try:
                rows.append(value(item))
            except Exception as exc:  # noqa: BLE001 - bad data goes to errs
                errs.append(reject(cfg.step_id, exc, (key, item)))
                bad.append(i)
                rows.append(None)
        if not bad:
            return pairs, ts, sides, rows
        keep = np.ones(len(pairs), dtype=bool)
        keep[bad] = False
        idx = np.flatnonzero(keep)
        ok = idx.tolist()
        return [pairs[i] for i in ok], ts[idx], sides[idx], [rows[i] for i in ok]

    def _hold(self, pairs: list, kid: np.ndarray, ts: np.ndarray) -> None:
        """Hold events until their key's watermark passes them (due one microsecond later)."""
        n = len(pairs)
        first = self.next_id
        self.next_id += n
        self.events.update(zip(range(first, first + n), pairs))
        ids = np.arange(first, first + n, dtype=np.float64).reshape(n, 1)
        self.et.hold(None, kid, ts + 1, ids)

    def _add_versions(
        self, pairs: list, rows: list | None, kids: list[int], ts: list[int], touched: set[int]
    ) -> None:
        """Insert table rows into their key's versions; ``touched`` gets the keys to prune."""
        versions = self.versions
        get = versions.get
        every = min(_PRUNE_EVERY, self.cfg.max_versions + 1)
        values = [item for _, item in pairs] if rows is None else rows
        for row, kid, t in zip(values, kids, ts):
            vs = get(kid)
            if vs is None:
                versions[kid] = vs = [[t], [row]]
            elif vs[0][-1] <= t:
                vs[0].append(t)
                vs[1].append(row)
            else:
                i = bisect_right(vs[0], t)
                vs[0].insert(i, t)
                vs[1].insert(i, row)
            if row is None or len(vs[0]) >= every:
                touched.add(kid)

    def _release(self, errs: list[Rejected], eof: bool = False) -> list:
        """Look up the events whose key's watermark passed them, in event-time order."""
        released = self.et.release(eof=eof)
        oks = self._lookup(released.held, errs) if len(released.held) else []
        if len(released.gone):
            for kid in released.gone.tolist():
                self.versions.pop(kid, None)
        return oks

    def _lookup(self, held: Held, errs: list[Rejected]) -> list:
        cfg = self.cfg
        get, pop, default, merge = self.versions.get, self.events.pop, cfg.default, cfg.merge
        oks: list = []
        append = oks.append
        ids = held.data[:, 0].astype(np.int64).tolist()  # int keys pop faster than floats
        for eid, kid, due in zip(ids, held.kid.tolist(), held.ts.tolist()):
            key, event = pop(eid)
            row = None
            vs = get(kid)
            if vs is not None:
                i = bisect_left(vs[0], due)  # versions before due: the newest is valid at due - 1
                if i:
                    row = vs[1][i - 1]
            if row is None:  # no version at the event's time, or the key deleted then
                if default is MISSING:
                    errs.append(
                        Rejected(
                            cfg.step_id,
                            "MissingRow",
                            f"no table row for key {key!r} valid at the event's time",
                            (key, event),
                        )
                    )
                    continue
                row = default
            try:
                append((key, merge(event, row)))
            except Exception as exc:  # noqa: BLE001 - bad data goes to errs
                errs.append(reject(cfg.step_id, exc, (key, event)))
        return oks

    def _prune(self, kids: set[int]) -> None:
        """Keep, per key, the version valid at its watermark and every newer one."""
        versions, cap = self.versions, self.cfg.max_versions
        # each key's watermark (et.marks without idle advance, which asof_join does not use; every
        # key here had a row accepted in this call): a few keys a call, cheaper one by one
        kmax, delay = self.et.kmax, self.et.delay
        for kid in kids:
            vs = versions.get(kid)
            if vs is None:  # forgotten by the TTL in this very call
                continue
            mark = int(kmax[kid]) - delay
            times = vs[0]
            drop = max(bisect_right(times, mark) - 1, len(times) - cap)
            if drop > 0:
                del times[:drop], vs[1][:drop]
            if len(times) == 1 and vs[1][0] is None and times[0] < mark:
                del versions[kid]  # deleted, and no event that is not late can be before it

    def on_eof(self) -> tuple[list, bool]:
        # Both sides ended: every waiting event can be looked up now.
        errs: list[Rejected] = []
        oks = self._release(errs, eof=True)
        self.et.close()
        return ([(oks, errs, [])] if oks or errs else []), False

    def snapshot(self) -> dict[str, Any]:
        kids = list(self.versions)
        ids = list(self.events)
        data = {
            "time": self.et.snapshot_data(),
            "versions": {
                "kid": kids,
                "ts": [list(self.versions[k][0]) for k in kids],
                "values": [list(self.versions[k][1]) for k in kids],
            },
            "events": {
                "ids": ids,
                "keys": [self.events[i][0] for i in ids],
                "items": [self.events[i][1] for i in ids],
            },
            "next_id": self.next_id,
        }
        return snapshot(_KIND, _VERSION, data)


def _from_legacy(state: _AsofState) -> dict[str, Any]:
    """The previous release's shard state as a version-1 record.

    The old state kept one watermark per shard; each of its keys gets that
    shard's newest time as its own, so its watermark is the old one: no
    waiting event becomes due or late by the upgrade.
    """
    keys: list[str] = list(state.versions)
    kid_of = {k: i for i, k in enumerate(keys)}
    pending = sorted(state.pending, key=lambda p: (p[0], p[1]))
    for _, _, key, _ in pending:
        if key not in kid_of:
            kid_of[key] = len(keys)
            keys.append(key)
    n = len(pending)
    newest = state.max_seen if keys else _NONE
    time_data = {
        "keys": keys,
        "kmax": np.full(len(keys), newest, dtype=np.int64),
        "forgotten_max": None,
        "newest": newest,
        "swept": _NONE,
        "held_frame": None,
        "held_kid": np.array([kid_of[p[2]] for p in pending], dtype=np.int64),
        "held_ts": np.array([p[0] + 1 for p in pending], dtype=np.int64),
        "held_arrived": np.full(n, time.time()),
        "held_data": np.arange(n, dtype=np.float64).reshape(n, 1),
    }
    return {
        "time": time_data,
        "versions": {
            "kid": [kid_of[k] for k in state.versions],
            "ts": [list(v.ts) for v in state.versions.values()],
            "values": [list(v.values) for v in state.versions.values()],
        },
        "events": {
            "ids": list(range(n)),
            "keys": [p[2] for p in pending],
            "items": [p[3] for p in pending],
        },
        "next_id": n,
    }


@operator
@instrumented
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

    Time is event time, per key (see
    :mod:`streamml.operators._core.event_time`): a key's watermark is the
    newest timestamp of its events and rows minus ``lateness``. An event
    waits until its key's watermark passes its timestamp (so every version
    that can still apply has arrived), then is merged with the newest
    version at or before it. An event or a table row older than its key's
    watermark on arrival goes to ``late``: whether it is late depends only
    on its key's own items in arrival order, not on ``shards=``, workers or
    batch boundaries (before this release the watermark was one per shard,
    and a late table row was still added). An event of a key that gets no
    later item waits until the end of input, or until ``ttl`` forgets its
    key; when both inputs end, waiting events are joined with the history
    as it is.

    A miss (no version at the event's time, the key deleted then, or history
    older than the event already dropped) is merged with ``default`` when one
    is given, else sent to ``errs`` as ``Rejected(error_type="MissingRow")``.
    A bad key (not a ``str``), an item that is not a ``(key, item)`` pair
    (``BadKey``) and an unreadable timestamp (``BadTimestamp``) go to
    ``errs``; nothing raises.

    Args:
        step_id: Unique step id.
        up: Keyed events ``(key, event)``.
        table: Keyed versioned rows ``(key, row)``.
        ts: Timestamp of an event (aware UTC datetime).
        table_ts: Time from which a row is valid.
        value: The part of a row to merge; the row itself by default.
        merge: ``merge(event, value) -> output``; a new dict by default.
        default: Value used for misses; omit to send misses to ``errs``.
        lateness: How far out of order items of a key may arrive (the
            join's latency).
        max_versions: Most versions kept per key; older ones are dropped even
            if an event might still need them.
        ttl: Forget a key (its versions and watermark; its waiting events
            are looked up first) once it has had no item for this long, in
            its shard's event time; its very old items are late afterwards.
            ``None`` keeps every key (the table's size).
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
    cfg = _Config(
        step_id=f"{step_id}.join",
        getters=(ts, table_ts),
        value=value,
        merge=merge,
        default=default,
        lateness=lateness,
        max_versions=max_versions,
        ttl=ttl,
    )
    tagged = tag_sides("shard", up, table, shards, grouped=True)
    joined = op.stateful_batch("join", tagged.chunks, lambda r: _AsofLogic(cfg, r))
    out = split_outputs("split", joined)
    return JoinOut(oks=out.oks, errs=op.merge("all_errs", tagged.errs, out.errs), late=out.late)
