"""One shard of an anomaly operator on the core: input, event time, per-key state, wake-ups, snapshots.

Both :func:`~streamml.operators.anomaly.score` and
:func:`~streamml.operators.anomaly.anomaly_windows` run one :class:`Shard`
per state shard. Keys are spread over shards by the one key router
(:func:`~streamml.operators._core.keys.route` for frames; for ``(key,
event)`` rows the same CRC-32 of the key, :func:`~streamml.operators._core.keys.shard_ids`),
and every shard judges time with one
:class:`~streamml.operators._core.event_time.KeyedEventTime`, with the
wall-clock idle advance on (a quiet key's watermark moves on with the wall
clock, so its open window closes and its state is dropped).

A shard:

1. reads its input into columns (:class:`FrameInput` or :class:`RowInput`:
   frames and rows differ only here and in how outputs are written);
2. admits the rows (late and future rows are rejected), holds them, and
   releases those its keys' watermarks passed, in event-time order;
3. hands the released rows to the family (:class:`Family`), key by key in
   one pass over rows grouped by key id;
4. wakes the keys whose own deadline (a window's cooldown or gap, a
   state's expiry) their watermark has reached: the family closes what is
   due, and a key whose state has expired, with no row held, is dropped.

Eviction: a key's family state is dropped when its expiry passes (see the
family), its event time when the core forgets it (``ttl`` of its shard's
event time without a row, :class:`~streamml.operators._core.event_time.KeyedEventTime`).

Snapshots are versioned records (:mod:`streamml.operators._core.state`):
``{"path", "time" (the core's state), "keys" ({key: the family's per-key
record}), and for rows "pending"/"seq"}``. Records of the release before
(version 0) are upgraded by :func:`upgrade_v0`.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, Protocol

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic
from streamml.operators import _validate
from streamml.operators._core.columns import check_frame, ts_micros
from streamml.operators._core.columns import values as frame_values
from streamml.operators._core.event_time import Held, KeyedEventTime
from streamml.operators._core.keys import frame_sharder, shard_ids
from streamml.operators._core.state import restore, snapshot
from streamml.operators.anomaly import _legacy
from streamml.operators.featurize._batch import extract

from streamml.errors import Rejected

__all__: list[str] = []

_NONE = np.iinfo(np.int64).min
_VERSION = 1
_MEMO_LIMIT = 1 << 16
"""Keys whose shard a row router remembers (cleared when full)."""


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Timing:
    """The event-time settings every anomaly operator shares."""

    step_id: str
    lateness: timedelta
    ttl: timedelta
    guard: timedelta
    max_future: timedelta | None
    fields: tuple[str, ...]  # the numeric columns read from each row

    def event_time(self, clock: Callable[[], float], resume: Any = None) -> KeyedEventTime:
        return KeyedEventTime(
            max_delay=self.lateness,
            guard=self.guard,
            ttl=self.ttl,
            max_future=self.max_future,
            idle_advance=True,
            width=len(self.fields),
            clock=clock,
            resume=resume,
        )


def check_timing(
    step_id: str,
    *,
    lateness: timedelta,
    span: timedelta,
    ttl: timedelta | None,
    max_future: timedelta | None,
    fields: tuple[str, ...],
) -> Timing:
    """Validate the shared settings; ``span`` is the longest history a key's state keeps."""
    _validate.duration("lateness", lateness)
    _validate.duration("ttl", ttl, minimum="positive", optional=True)
    _validate.duration("max_future", max_future, optional=True)
    if ttl is None:
        ttl = span + lateness + timedelta(hours=1)
    if ttl < span + lateness or ttl <= timedelta(0):
        raise ValueError(
            f"ttl must be >= the longest history kept plus lateness ({span + lateness}); got {ttl}"
        )
    return Timing(step_id, lateness, ttl, span, max_future, fields)


# ---------------------------------------------------------------- input


@dataclass
class Batch:
    """A call's accepted input, column-wise."""

    keys: pl.Series | list[Any]
    ts: np.ndarray  # int64 µs
    x: np.ndarray  # float64 (n, fields)
    payload: Callable[[np.ndarray | None], pl.DataFrame]  # what the core holds for the kept rows
    original: Callable[[int], Any]  # the original item of row i, for rejections
    columns: pl.DataFrame | None = None  # a frame's own columns, to check against the held rows


class Released(Protocol):
    """Released rows as the family reads them: the event of a row, and a column's values."""

    def event(self, i: int) -> Any: ...
    def column(self, name: str) -> list[Any] | None: ...


class FrameInput:
    """Frames in (checked and routed by :func:`~streamml.operators._core.keys.frame_sharder`); frames and dict records out."""

    path = "frames"

    def __init__(self, timing: Timing, key: str, timestamp: str) -> None:
        self.timing, self.key, self.timestamp = timing, key, timestamp

    def batches(self, values: list[pl.DataFrame]) -> tuple[list[Batch], list[Rejected]]:
        out = []
        for frame in values:
            out.append(
                Batch(
                    # a list: a dict look-up per row beats polars' replace_strict on a few
                    # hundred rows per shard (0.03 ms against 2 ms for 625 string keys)
                    frame.get_column(self.key).to_list(),
                    ts_micros(frame, self.timestamp),
                    frame_values(frame, self.timing.fields),
                    partial(_kept, frame),
                    partial(frame.row, named=True),
                    frame,
                )
            )
        return out, []

    def released(self, held: Held) -> _FrameRows:
        return _FrameRows(held.frame)

    def key_out(self, key: Any, record: dict[str, Any]) -> Any:
        return record

    def snapshot_extra(self) -> dict[str, Any]:
        return {}

    def restore_extra(self, data: dict[str, Any]) -> None:
        pass


def _kept(frame: pl.DataFrame, ok: np.ndarray | None) -> pl.DataFrame:
    return frame if ok is None else frame[ok]


class _FrameRows:
    def __init__(self, frame: pl.DataFrame) -> None:
        self.frame = frame

    def event(self, i: int) -> dict[str, Any]:
        return self.frame.row(i, named=True)

    def column(self, name: str) -> list[Any] | None:
        return self.frame.get_column(name).to_list() if name in self.frame.columns else None


class RowInput:
    """``(key, event)`` rows in (routed by :func:`shard_rows`); ``(key, dict)`` out.

    The events wait in ``pending`` (by row id) while the core holds their
    ids; everything else is the frame path's.
    """

    path = "rows"

    def __init__(self, timing: Timing, ts_getter: Callable[[Any], datetime]) -> None:
        self.timing, self.ts_getter = timing, ts_getter
        self.pending: dict[int, tuple[Any, Any]] = {}
        self.seq = 0

    def batches(self, values: list[list[Any]]) -> tuple[list[Batch], list[Rejected]]:
        items = values[0] if len(values) == 1 else [x for part in values for x in part]
        cols, errs = extract(self.timing.step_id, items, self.timing.fields, self.ts_getter)
        if not cols.keys:
            return [], errs
        keys, events = cols.keys, cols.events
        batch = Batch(
            keys,
            cols.ts,
            cols.values,
            partial(self._payload, keys, events),
            lambda i: (keys[i], events[i]),
        )
        return [batch], errs

    def _payload(self, keys: list, events: list, ok: np.ndarray | None) -> pl.DataFrame:
        """The kept rows' ids, their events waiting in ``pending`` until released."""
        if ok is not None:
            kept = ok.tolist()
            keys, events = [keys[i] for i in kept], [events[i] for i in kept]
        ids = range(self.seq, self.seq + len(keys))
        self.seq += len(keys)
        self.pending.update(zip(ids, zip(keys, events)))
        return pl.DataFrame({"row": pl.Series(ids, dtype=pl.Int64)})

    def released(self, held: Held) -> _EventRows:
        pop = self.pending.pop
        pairs = [pop(i) for i in held.frame.get_column("row").to_list()]
        return _EventRows([k for k, _ in pairs], [ev for _, ev in pairs])

    def key_out(self, key: Any, record: dict[str, Any]) -> Any:
        return key, record

    def snapshot_extra(self) -> dict[str, Any]:
        return {"pending": dict(self.pending), "seq": self.seq}

    def restore_extra(self, data: dict[str, Any]) -> None:
        self.pending = dict(data["pending"])
        self.seq = data["seq"]


class _EventRows:
    def __init__(self, keys: list[Any], events: list[Any]) -> None:
        self.keys, self.events = keys, events

    def event(self, i: int) -> Any:
        return self.events[i]

    def column(self, name: str) -> list[Any] | None:
        return None  # read from each event when needed (rows have no columns)


def _not_a_pair(step_id: str, item: Any) -> Rejected:
    if type(item) is tuple and len(item) == 2:
        why = f"expected a (str key, event) pair; the key is {type(item[0]).__name__}"
    else:
        why = (
            f"expected a (str key, event) pair; got {type(item).__name__}: {_validate.UNKEYED_HINT}"
        )
    return Rejected(step_id, "BadItem", why, item)


def shard_rows(step_id: str, shards: int) -> Callable[[list], list]:
    """The batch function before the state: ``(key, event)`` items into ``(shard id, items)``.

    The shard of a key is :func:`~streamml.operators._core.keys.shard_ids`'
    (CRC-32 of its text), as for frames. An item that is not a ``(str key,
    event)`` pair becomes a ``BadItem`` rejection here.

    Examples:
        >>> split = shard_rows("s", 4)([("a", 1), ("b", 2), ("a", 3), 7])
        >>> [x.error_type if isinstance(x, Rejected) else x for x in split]
        ['BadItem', ('1', [('b', 2)]), ('3', [('a', 1), ('a', 3)])]
    """
    names = [str(i) for i in range(shards)]
    memo: dict[str, int] = {}  # the shard of recent keys

    def shard(items: list[Any]) -> list[Any]:
        out: list[Any] = []
        try:
            if set(map(type, items)) - {tuple} or set(map(len, items)) - {2}:
                raise TypeError
            keys = [item[0] for item in items]
            if set(map(type, keys)) - {str}:
                raise TypeError
            good = items
        except TypeError:
            good = []
            for item in items:
                if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                    good.append(item)
                else:
                    out.append(_not_a_pair(step_id, item))
            keys = [item[0] for item in good]
        if not good:
            return out
        if shards == 1:
            out.append((names[0], good))
            return out
        if len(memo) > _MEMO_LIMIT:
            memo.clear()
        get = memo.get
        ids = [get(k) for k in keys]
        if None in ids:  # keys not seen lately: hashed once each, by the one router's rule
            new = list({k for k, i in zip(keys, ids) if i is None})
            try:
                found = shard_ids(pl.Series(new, dtype=pl.String), shards).tolist()
            except Exception:  # noqa: BLE001 - a key polars cannot hold (a lone surrogate)
                # the same CRC-32 of the key's UTF-8 text, surrogates passed through as they are
                crc = zlib.crc32
                found = [crc(k.encode("utf-8", "surrogatepass")) % shards for k in new]
            memo.update(zip(new, found))
            ids = [memo[k] for k in keys]
        parts: list[list[Any]] = [[] for _ in names]
        for item, s in zip(good, ids):
            parts[s].append(item)
        out.extend((names[i], part) for i, part in enumerate(parts) if part)
        return out

    return shard


# ---------------------------------------------------------------- the family


class Family(Protocol):
    """What an operator adds on top of the shard: its per-key state and what it emits.

    Output lists are indexed by the family: ``streams`` names them, and
    ``errs``/``late`` are where rejections go.
    """

    kind: str
    streams: int
    errs: int
    late: int

    def new_state(self, key: Any) -> Any: ...
    def run(
        self,
        states: list[Any],
        bounds: list[tuple[int, int]],
        held: Held,
        order: np.ndarray,
        marks: list[int],
        rows: Released,
        io: Any,
        out: list[list],
    ) -> list[int]:
        """Process the released rows of each key; returns each key's wake time (or ``_NONE``)."""
        ...

    def wake(self, state: Any, mark: int, io: Any, out: list[list]) -> tuple[int, bool]:
        """Close what is due at ``mark``; returns ``(next wake, droppable)``."""
        ...

    def eof(self, state: Any, io: Any, out: list[list]) -> None: ...
    def record(self, state: Any) -> Any: ...
    def restore(self, key: Any, record: Any) -> Any: ...
    def upgrade_v0(self, snap: tuple) -> tuple[_legacy.GateV0, Any]: ...


class Shard(StatefulBatchLogic):
    """One shard's Bytewax state: the core's event time and the family's per-key states.

    Eviction: see the module doc.
    """

    def __init__(
        self,
        family: Family,
        timing: Timing,
        io: FrameInput | RowInput,
        resume: Any,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.family, self.timing, self.io, self.clock = family, timing, io, clock
        self.states: dict[int, Any] = {}  # key id -> the family's state of that key
        self.wake = np.full(16, _NONE, dtype=np.int64)  # key id -> event time to wake at
        self.snaps: dict[Any, Any] = {}  # key -> its last per-key record
        self.dirty: dict[Any, Any] = {}  # key -> its state (None: dropped) since the last snapshot
        data = None
        if resume is not None:
            if _legacy.is_v0(resume):
                resume = snapshot(family.kind, 0, resume)
            data = restore(
                resume, kind=family.kind, version=_VERSION, upgrades={0: self._upgrade_v0}
            )
            if data["path"] != io.path:
                raise ValueError(
                    f"the recovery store holds the {data['path']} path's state of this step; it "
                    f"now reads {io.path}: use a new recovery store"
                )
        self.et = timing.event_time(clock, None if data is None else data["time"])
        if data is not None:
            io.restore_extra(data)
            for key, rec in data["keys"].items():
                kid = int(self.et.kids([key])[0])
                self.states[kid] = family.restore(key, rec)
                self.snaps[key] = rec
            self._new_keys(np.array(sorted(self.states), dtype=np.int64))
            nothing: list[list] = [[] for _ in range(family.streams)]
            for kid, st in self.states.items():  # the wake times only: nothing is due before time
                self.wake[kid] = family.wake(st, _NONE, io, nothing)[0]

    # -- calls from Bytewax ----------------------------------------------

    def on_batch(self, values: list[Any]) -> tuple[list[Any], bool]:
        fam, et = self.family, self.et
        out: list[list] = [[] for _ in range(fam.streams)]
        batches, errs = self.io.batches(values)
        out[fam.errs].extend(errs)
        for b in batches:
            why = None if b.columns is None else et.holdable(b.columns)
            if why is not None:
                step_id = self.timing.step_id
                bad = [Rejected(step_id, "BadItem", why, b.original(i)) for i in range(len(b.ts))]
                out[fam.errs].extend(bad)
                continue
            adm = et.admit(b.keys, b.ts)
            if len(adm.future) or len(adm.late):
                more, late = adm.rejected(self.timing.step_id, b.original)
                out[fam.errs].extend(more)
                out[fam.late].extend(late)
            if len(adm.ok) < len(b.ts):
                payload, x = b.payload(adm.ok), b.x[adm.ok]
            else:
                payload, x = b.payload(None), b.x
            self._new_keys(adm.kid)
            et.hold(payload, adm.kid, adm.ts, x)
        self._step(out)
        return [out], False

    def on_notify(self) -> tuple[list[Any], bool]:
        out: list[list] = [[] for _ in range(self.family.streams)]
        self._step(out)
        return [out], False

    def on_eof(self) -> tuple[list[Any], bool]:
        out: list[list] = [[] for _ in range(self.family.streams)]
        self._step(out, eof=True)
        for st in self.states.values():
            self.family.eof(st, self.io, out)
            self.dirty[st.key] = st
        return [out], False

    def notify_at(self) -> datetime | None:
        due = self.et.notify_at()
        n = min(len(self.et.keys), len(self.wake))
        kids = np.flatnonzero(self.wake[:n] != _NONE)
        if len(kids):
            at = float(self.et.wall_time_of(kids, self.wake[kids]).min())
            if at < np.inf:
                when = datetime.fromtimestamp(at, tz=timezone.utc)
                due = when if due is None else min(due, when)
        return due

    def snapshot(self) -> dict[str, Any]:
        record = self.family.record
        for key, st in self.dirty.items():
            if st is None:
                self.snaps.pop(key, None)
            else:
                self.snaps[key] = record(st)
        self.dirty.clear()
        data = {
            "path": self.io.path,
            "time": self.et.snapshot_data(),
            "keys": dict(self.snaps),
            **self.io.snapshot_extra(),
        }
        return snapshot(self.family.kind, _VERSION, data)

    # -- the steps ---------------------------------------------------------

    def _new_keys(self, kid: np.ndarray) -> None:
        """Give every key id with rows a state (a new key, or one whose state was dropped)."""
        if not len(kid):
            return
        top = int(kid.max())
        if top >= len(self.wake):
            grown = np.full(max(2 * len(self.wake), top + 1), _NONE, dtype=np.int64)
            grown[: len(self.wake)] = self.wake
            self.wake = grown
        states = self.states
        if len(states) == len(self.et.keys) - len(self.et.free):
            return  # every known key has a state
        for k in np.unique(kid).tolist():
            if k not in states:
                states[k] = self.family.new_state(self.et.key_of(k))

    def _step(self, out: list[list], eof: bool = False) -> None:
        rel = self.et.release(eof=eof)
        held = rel.held
        if len(held):
            kid = held.kid
            order = np.argsort(kid, kind="stable")
            sk = kid[order]
            cuts = np.flatnonzero(sk[1:] != sk[:-1]) + 1
            starts = [0, *cuts.tolist()]
            ends = [*cuts.tolist(), len(sk)]
            kids = sk[starts]
            states = self.states
            group_states = [states[k] for k in kids.tolist()]
            marks = self.et.marks(kids).tolist()
            rows = self.io.released(held)
            wakes = self.family.run(
                group_states, list(zip(starts, ends)), held, order, marks, rows, self.io, out
            )
            self.wake[kids] = wakes
            dirty = self.dirty
            for st in group_states:
                dirty[st.key] = st
        for k in rel.gone.tolist():  # forgotten by the core (ttl): close what is open, drop
            st = self.states.pop(k, None)
            self.wake[k] = _NONE
            if st is not None:
                self.family.eof(st, self.io, out)
                self.dirty[st.key] = None
        if not eof:
            n = min(len(self.et.keys), len(self.wake))
            kids = np.flatnonzero(self.wake[:n] != _NONE)
            if len(kids):
                due = kids[self.wake[kids] <= self.et.marks(kids)]
                if len(due):
                    self._settle(due, out)

    def _settle(self, kids: np.ndarray, out: list[list]) -> None:
        """Wake ``kids``: the family closes what their watermarks passed; expired states go."""
        if not len(kids):
            return
        if len(self.wake) <= int(kids.max()):
            self._new_keys(kids)
        held = self.et.held.kid
        busy = set(np.unique(held).tolist()) if len(held) else set()
        marks = self.et.marks(kids).tolist()
        wake, io = self.family.wake, self.io
        for k, mark in zip(kids.tolist(), marks):
            st = self.states[k]
            at, droppable = wake(st, mark, io, out)
            if droppable and k not in busy:
                del self.states[k]
                self.wake[k] = _NONE
                self.dirty[st.key] = None
                continue
            # a key with held rows wakes when they are released (the core's notify_at)
            self.wake[k] = _NONE if droppable else at
            self.dirty[st.key] = st

    # -- version 0 ---------------------------------------------------------

    def _upgrade_v0(self, old: dict[Any, tuple]) -> dict[str, Any]:
        """A version-0 shard snapshot (see :mod:`._legacy`) as version 1's data.

        Each key's newest time and newest released time become its
        watermark (later rows older than either are late, as before); its
        idle-advanced watermark becomes where its wall clock restarts; its
        pending rows are held again, with their events.
        """
        if self.io.path != "rows":
            raise ValueError(
                "the recovery store was written by the (key, event) row path of the release "
                "before; this step now reads frames: use a new recovery store"
            )
        delay = self.timing.lateness // timedelta(microseconds=1)
        et = self.timing.event_time(self.clock)
        io = RowInput(self.timing, self.io.ts_getter)
        keys: dict[Any, Any] = {}
        marks: dict[Any, int] = {}
        for key, snap in old.items():
            gate, rec = self.family.upgrade_v0(snap)
            keys[key] = rec
            newest = max(gate.newest, gate.released + delay)
            if newest > _legacy._MIN:
                et.admit([key], np.array([newest]))  # no row: the key's watermark is set
                marks[key] = gate.watermark
            if gate.pending:
                ts = np.array([p[0] for p in gate.pending], dtype=np.int64)
                x = np.array([p[2] for p in gate.pending], dtype=np.float64)
                x = x.reshape(len(ts), len(self.timing.fields))
                ids = range(io.seq, io.seq + len(ts))
                io.seq += len(ts)
                io.pending.update((i, (key, p[1])) for i, p in zip(ids, gate.pending))
                payload = pl.DataFrame({"row": pl.Series(ids, dtype=pl.Int64)})
                et.hold(payload, np.repeat(et.kids([key]), len(ts)), ts, x)
        data = et.snapshot_data()
        for key, mark in marks.items():
            kid = et.kid_of[key]
            data["adv_mark"][kid] = max(int(data["adv_mark"][kid]), mark)
        return {"path": "rows", "time": data, "keys": keys, **io.snapshot_extra()}


def shard_states(
    up: Stream[Any],
    *,
    key: str | None,
    timestamp: str | Callable[[Any], datetime],
    timing: Timing,
    shards: int,
    family: Any,
) -> tuple[Stream[list[list]], Stream[Rejected]]:
    """The steps every anomaly operator shares: route to shards, then the shard states.

    Returns each state call's output lists, and the rejections of routing.
    """
    _validate.count("shards", shards)
    if key is None:
        route = shard_rows(timing.step_id, shards)

        def build(resume: Any) -> Shard:
            return Shard(family, timing, RowInput(timing, timestamp), resume)
    else:
        check = partial(
            check_frame, step_id=timing.step_id, timestamp=timestamp, fields=timing.fields
        )
        route = frame_sharder(timing.step_id, key=key, shards=shards, check=check)

        def build(resume: Any) -> Shard:
            return Shard(family, timing, FrameInput(timing, key, timestamp), resume)

    mixed = op.flat_map_batch("shard", up, route)
    split = op.branch("split", mixed, lambda item: isinstance(item, Rejected))
    # "shard_state": the step id the release before used, so its recovery stores resume
    chunks = op.stateful_batch("shard_state", split.falses, build)
    return op.map("unshard", chunks, lambda kv: kv[1]), split.trues


def pick(i: int) -> Callable[[list[list[list]]], list]:
    """A batch function: stream ``i`` of the shard states' output lists."""

    def flatten(batch: list[list[list]]) -> list:
        if len(batch) == 1:
            return batch[0][i]
        return [x for lists in batch for x in lists[i]]

    return flatten
