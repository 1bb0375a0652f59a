"""Event-time plumbing shared by the anomaly operators: watermark, lateness, admission.

Each key has a :class:`_Gate`: its watermark is the largest timestamp seen minus
``lateness``; events wait in the gate until the watermark passes them and are then
released in timestamp order. Timestamps are integer microseconds inside.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from itertools import accumulate, chain, islice, repeat
from operator import add, itemgetter, le, sub
from typing import Any

__all__: list[str] = []

Event = Mapping[str, Any]
TimestampGetter = Callable[[Event], datetime]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_US = timedelta(microseconds=1)
_MIN = -(1 << 62)  # "no time", in microseconds
_first = itemgetter(0)


def _us(td: timedelta) -> int:
    return td // _US


def _dt(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _positive(name: str, td: timedelta | None) -> None:
    if td is not None and td <= timedelta(0):
        raise ValueError(f"{name} must be a positive timedelta; got {td!r}")


class _Gate:
    """Per-key watermark (max timestamp - lateness) and the buffer of not-yet-released events.

    Eviction: the buffer empties as the watermark passes; the watermark
    advances with system time while the key is idle (see ``idle_watermark``),
    so a key that goes quiet still has its events released and its windows
    closed.

    An event is late only when it is older than ``max timestamp - lateness``
    or than an event already released, never merely because the idle clock
    ran ahead: when processing lags event time (a backlog, a slow worker),
    the next in-order event of a key arrives later in system time than its
    event-time gap, and it is still on time.
    """

    __slots__ = ("lateness", "max_ts", "wm", "sys_at_max", "pending", "released", "mixed")

    def __init__(self, lateness: int) -> None:
        self.lateness = lateness
        self.max_ts = _MIN
        self.wm = _MIN
        self.sys_at_max = 0
        self.pending: list[tuple] = []
        self.released = _MIN  # timestamp of the newest released event
        self.mixed = False  # pending may be out of timestamp order (else it is in order)

    def idle_watermark(self) -> None:
        """Advance the watermark by the system time passed since the newest event."""
        if self.max_ts > _MIN:
            wm = self.max_ts - self.lateness + (_now_us() - self.sys_at_max)
            if wm > self.wm:
                self.wm = wm

    def release(self, everything: bool = False) -> list[tuple]:
        pending = self.pending
        if not pending:
            return pending
        if self.mixed:
            pending.sort(key=_first)
            self.mixed = False
        if everything or pending[-1][0] <= self.wm:
            self.pending = []
            self.released = max(self.released, pending[-1][0])
            return pending
        cut = bisect.bisect_right(pending, self.wm, key=_first)
        out, self.pending = pending[:cut], pending[cut:]
        if out:
            self.released = max(self.released, out[-1][0])
        return out

    def system_us_of(self, event_us: int) -> int:
        """When, in system time (µs since the epoch), the idle watermark will reach ``event_us``."""
        return self.sys_at_max + (event_us - (self.max_ts - self.lateness))

    def snapshot(self) -> tuple:
        return (self.max_ts, self.wm, self.sys_at_max, tuple(self.pending), self.released)

    def restore(self, snap: tuple) -> None:
        self.max_ts, self.wm, _, pending = snap[:4]
        # A snapshot from before ``released`` was kept: its watermark is the safe floor.
        self.released = snap[4] if len(snap) > 4 else self.wm
        # Downtime is not idleness: the idle clock restarts on resume, or the
        # backlog that waited in Kafka during a crash would come out late.
        self.sys_at_max = _now_us()
        self.pending = list(pending)
        self.mixed = True


def _now_us() -> int:
    """System time (UTC wall clock), in microseconds since the epoch."""
    return time.time_ns() // 1000


class _Reject(tuple):
    """(error_type, reason, event): a rejection whose key is added downstream."""

    __slots__ = ()


class _Late(tuple):
    """(reason, event): a late event whose key is added downstream."""

    __slots__ = ()


class _NonFiniteError(ValueError):
    pass


def _field_values(fields: tuple[str, ...]) -> Callable[[Event], tuple[float, ...]]:
    """Extract the scored fields of an event as floats; raise on missing or non-finite."""
    if len(fields) == 1:
        (name,) = fields

        def one(event: Event) -> tuple[float, ...]:
            x = event[name]
            if type(x) is not float:
                x = float(x)
            if x - x != 0.0:
                raise _NonFiniteError(x)
            return (x,)

        return one

    get = itemgetter(*fields)

    def many(event: Event) -> tuple[float, ...]:
        try:
            xs = tuple(map(float, get(event)))
        except Exception:  # noqa: BLE001 - raise what the field-by-field reading raises first
            xs = tuple(float(event[f]) for f in fields)
        total = sum(xs)
        if total - total != 0.0:  # a non-finite value, or a sum that overflowed
            for x in xs:
                if x - x != 0.0:
                    raise _NonFiniteError(x)
        return xs

    return many


class _NotPlain(Exception):
    """A value in the batch is not a plain finite float: read the batch event by event."""


def _plain_reader(fields: tuple[str, ...], rows: bool) -> Callable[[list[Event]], list[Any]]:
    """Read ``fields`` of a whole batch at once, as the per-event readers would, or raise.

    The result equals ``[extract(e) for e in events]`` for the readers of
    :func:`_field_values` (``rows=True``: tuples) and of a score field
    (``rows=False``, one field: floats) whenever every value is a plain
    finite ``float``; anything else (a missing field, an int, a string, a
    NaN, a sum that overflows) raises, and the batch is read event by event.

    Examples:
        >>> read = _plain_reader(("x", "y"), rows=True)
        >>> read([{"x": 1.0, "y": 2.0}, {"x": 3.0, "y": 4.0}])
        [(1.0, 2.0), (3.0, 4.0)]
        >>> _plain_reader(("x",), rows=False)([{"x": 1.5}])
        [1.5]
        >>> _plain_reader(("x",), rows=False)([{"x": 1}])
        Traceback (most recent call last):
        ...
        streamml.operators.anomaly._clock._NotPlain
    """
    get = itemgetter(*fields)
    floats = {float}

    def read_one(values: list[Event]) -> list[Any]:
        xs = list(map(get, values))
        if set(map(type, xs)) != floats or not math.isfinite(sum(xs)):
            raise _NotPlain
        return list(zip(xs)) if rows else xs

    def read_many(values: list[Event]) -> list[Any]:
        got = list(map(get, values))
        flat = list(chain.from_iterable(got))
        if set(map(type, flat)) != floats or not math.isfinite(sum(flat)):
            raise _NotPlain
        return got

    return read_many if len(fields) > 1 else read_one


_SMALL_BATCH = 8
"""Below this many events, :func:`_admit` reads event by event: per event, one
score field took 470 ns event by event vs 505 ns whole-batch at 8 events
(426 vs 401 at 16); three fields 866 vs 663 at 8 (timeit on this machine)."""


def _admit(
    gate: _Gate,
    values: list[Event],
    stamp: TimestampGetter,
    extract: Callable[[Event], Any],
    read_all: Callable[[list[Event]], list[Any]] | None = None,
) -> list[tuple]:
    """Timestamp and validate a batch into the gate; returns rejections and late records.

    ``read_all``, if given, reads the values of the whole batch as
    ``extract`` would, or raises (see :func:`_plain_reader`).

    Whole-batch fast path: timestamps and values are read in one pass each
    and lateness is checked with ``min``/``max``; a batch with any event that
    fails either is taken again event by event by :func:`_admit_each`, which
    routes the failures. Batches under ``_SMALL_BATCH`` events go event by
    event at once (the fast path's fixed cost is larger there).
    """
    if len(values) < _SMALL_BATCH:
        return _admit_each(gate, values, stamp, extract)
    try:
        xs = read_all(values) if read_all is not None else list(map(extract, values))
        stamps = [
            (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds  # faster than td // _US
            for td in map(sub, map(stamp, values), repeat(_EPOCH))
        ]
    except Exception:  # noqa: BLE001 - a bad event somewhere: the careful path says which
        return _admit_each(gate, values, stamp, extract)
    max_ts, lateness = gate.max_ts, gate.lateness
    floor = max(max_ts - lateness, gate.released)  # older than this is late
    top = max(stamps)
    low = min(stamps)
    ordered = all(map(le, stamps, islice(stamps, 1, None)))
    if low >= floor and (
        ordered
        or low >= top - lateness  # no event more than `lateness` behind any other
        or all(map(le, accumulate(stamps, max), map(add, stamps, repeat(lateness))))
    ):
        pending = gate.pending
        if not ordered or (pending and stamps[0] < pending[-1][0]):
            gate.mixed = True
        pending.extend(zip(stamps, values, xs))
        problems: list[tuple] = []
    else:
        problems = _admit_ordered(gate, stamps, values, xs, floor)
    _advance(gate, top)
    return problems


def _advance(gate: _Gate, top: int) -> None:
    """Move the key's newest time (and with it the watermark and its idle clock) up to ``top``."""
    if top > gate.max_ts:
        gate.max_ts = top
        if top - gate.lateness > gate.wm:
            gate.wm = top - gate.lateness
            gate.sys_at_max = _now_us()


def _admit_ordered(
    gate: _Gate, stamps: list[int], values: list[Event], xs: list[Any], floor: int
) -> list[tuple]:
    """Admit timestamped events one by one, in arrival order, sending the late ones away."""
    problems: list[tuple] = []
    append = gate.pending.append
    last = gate.pending[-1][0] if gate.pending else _MIN
    max_ts, lateness = gate.max_ts, gate.lateness
    for ts, ev, x in zip(stamps, values, xs):
        if ts > max_ts:
            max_ts = ts
            if ts - lateness > floor:
                floor = ts - lateness
        if ts >= floor:
            append((ts, ev, x))
            if ts < last:
                gate.mixed = True
            last = ts
        else:
            behind = f"{_dt(ts).isoformat()} is behind the watermark {_dt(floor).isoformat()}"
            problems.append(_Late((f"event time {behind}", ev)))
    return problems


def _admit_each(
    gate: _Gate, values: list[Event], stamp: TimestampGetter, extract: Callable[[Event], Any]
) -> list[tuple]:
    """:func:`_admit`, event by event: failures to read an event are routed as rejections."""
    problems: list[tuple] = []
    stamps: list[int] = []
    kept: list[Event] = []
    xs: list[Any] = []
    for ev in values:
        try:
            td = stamp(ev) - _EPOCH
            ts = (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds
            x = extract(ev)
        except KeyError as e:
            problems.append(_Reject(("MissingField", f"missing field {e}", ev)))
            continue
        except _NonFiniteError as e:
            problems.append(_Reject(("NonFinite", f"non-finite value {e}", ev)))
            continue
        except Exception as e:  # noqa: BLE001 - bad data never raises; it is routed
            problems.append(_Reject((type(e).__name__, str(e) or repr(e), ev)))
            continue
        stamps.append(ts)
        kept.append(ev)
        xs.append(x)
    if stamps:
        floor = max(gate.max_ts - gate.lateness, gate.released)  # older than this is late
        problems += _admit_ordered(gate, stamps, kept, xs, floor)
        _advance(gate, max(stamps))
    return problems


def _check_common(timestamp: Any, lateness: timedelta) -> None:
    if not callable(timestamp):
        raise ValueError("timestamp must be a function event -> timezone-aware datetime")
    if lateness < timedelta(0):
        raise ValueError(f"lateness must be >= 0; got {lateness!r}")
