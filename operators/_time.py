"""Event time for operators: timestamps as integer microseconds, per-key watermarks, lateness.

Operators take timezone-aware UTC ``datetime`` at their API and work on
integer microseconds since the Unix epoch inside (exact, sortable, NumPy
friendly). :class:`KeyedWatermarks` is the bounded-out-of-orderness clock of
a keyed operator: each key's watermark is the largest timestamp seen for that
key minus ``max_delay``; an event older than its key's watermark is late.
Keys idle past a TTL are forgotten, and the tracker remembers just enough
(one number) so that forgetting a key never lets a stale event slip in as if
it were new.

Examples:
    >>> from datetime import datetime, timedelta, timezone
    >>> t = to_micros(datetime(2024, 1, 1, tzinfo=timezone.utc))
    >>> t, from_micros(t)
    (1704067200000000, datetime.datetime(2024, 1, 1, 0, 0, tzinfo=datetime.timezone.utc))
    >>> marks = KeyedWatermarks(max_delay=timedelta(seconds=5))
    >>> s = 1_000_000  # one second in microseconds
    >>> marks.observe(["a", "a", "a", "b"], [t + 10 * s, t + 7 * s, t + 2 * s, t])
    [None, None, (1704067205000000, "key 'a' has seen 2024-01-01T00:00:10+00:00"), None]
    >>> from_micros(marks.watermark("a"))
    datetime.datetime(2024, 1, 1, 0, 0, 5, tzinfo=datetime.timezone.utc)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from streamml.errors import Rejected

__all__ = [
    "EPOCH",
    "KeyedWatermarks",
    "WatermarkSnapshot",
    "from_micros",
    "late",
    "micros",
    "to_micros",
]

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)


def micros(delta: timedelta) -> int:
    """A ``timedelta`` as whole microseconds.

    Examples:
        >>> micros(timedelta(seconds=1, microseconds=5))
        1000005
    """
    return delta // _ONE_US


def to_micros(ts: datetime) -> int:
    """Microseconds since the Unix epoch of a timezone-aware ``datetime``.

    Raises:
        TypeError: ``ts`` is not a ``datetime``.
        ValueError: ``ts`` is naive (no timezone): its instant is unknown.

    Examples:
        >>> to_micros(datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc))
        1000000
        >>> to_micros(datetime(1970, 1, 1))
        Traceback (most recent call last):
        ...
        ValueError: naive datetime 1970-01-01 00:00:00: give timestamps a timezone (UTC)
    """
    if not isinstance(ts, datetime):
        raise TypeError(f"timestamp must be a datetime; got {type(ts).__name__} {ts!r}")
    if ts.utcoffset() is None:
        raise ValueError(f"naive datetime {ts}: give timestamps a timezone (UTC)")
    return (ts - EPOCH) // _ONE_US


def from_micros(us: int) -> datetime:
    """The UTC ``datetime`` of microseconds since the Unix epoch.

    Examples:
        >>> from_micros(1_500_000)
        datetime.datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=datetime.timezone.utc)
    """
    return EPOCH + timedelta(microseconds=int(us))


def late(step_id: str, original: Any, ts_us: int, watermark_us: int, why: str = "") -> Rejected:
    """The :class:`~streamml.errors.Rejected` record (``error_type="Late"``) of a late event.

    Examples:
        >>> late("roll", ("k", {}), 0, 1_000_000).reason
        'event time 1970-01-01T00:00:00+00:00 is before the watermark 1970-01-01T00:00:01+00:00'
    """
    reason = (
        f"event time {from_micros(ts_us).isoformat()} is before the watermark "
        f"{from_micros(watermark_us).isoformat()}"
    )
    return Rejected(step_id, "Late", reason + (f" ({why})" if why else ""), original)


@dataclass(frozen=True)
class WatermarkSnapshot:
    """Picklable state of a :class:`KeyedWatermarks` (copies; never mutated)."""

    max_seen: dict[str, int]
    forgotten_max: int | None


class KeyedWatermarks:
    """Per-key bounded-out-of-orderness watermarks over integer-microsecond event times.

    A key's watermark is the largest timestamp seen for it minus
    ``max_delay``; an event with a timestamp before its key's watermark is
    late (an event *at* the watermark is not). Late events do not move the
    watermark.

    Eviction: :meth:`forget_idle` drops keys whose newest event is older
    than a horizon. The largest forgotten timestamp is kept; afterwards an
    event of an unknown key is late if it is before that timestamp plus
    ``guard`` (the span of history the operator would have needed, e.g. its
    window), because the key may have been forgotten with events that would
    have counted.

    Args:
        max_delay: Allowed out-of-orderness (``>= 0``).
        guard: Extra protection after forgetting keys (``>= 0``).

    Examples:
        >>> marks = KeyedWatermarks(max_delay=timedelta(0), guard=timedelta(microseconds=10))
        >>> marks.observe(["a", "b"], [100, 5])
        [None, None]
        >>> marks.forget_idle(older_than=50)
        ['b']
        >>> marks.observe(["b", "c", "c"], [14, 15, 20])
        [(15, 'key unknown, older than the TTL horizon'), None, None]
    """

    def __init__(
        self,
        *,
        max_delay: timedelta,
        guard: timedelta = timedelta(0),
        resume: WatermarkSnapshot | None = None,
    ) -> None:
        if max_delay < timedelta(0):
            raise ValueError(f"max_delay must be >= 0; got {max_delay}")
        if guard < timedelta(0):
            raise ValueError(f"guard must be >= 0; got {guard}")
        self.delay = micros(max_delay)
        self.guard = micros(guard)
        self.max_seen: dict[str, int] = dict(resume.max_seen) if resume else {}
        self.forgotten_max: int | None = resume.forgotten_max if resume else None

    def observe(self, keys: Sequence[str], ts: Sequence[int]) -> list[tuple[int, str] | None]:
        """Advance the watermarks with events in arrival order.

        Returns, per event, ``None`` if it is on time, else the watermark it
        fell behind and why (for the late record, see :func:`late`).
        """
        max_seen = self.max_seen
        delay = self.delay
        floor = None if self.forgotten_max is None else self.forgotten_max + self.guard
        out: list[tuple[int, str] | None] = []
        append = out.append
        for k, t in zip(keys, ts):
            m = max_seen.get(k)
            if m is None:
                if floor is not None and t < floor:
                    append((floor, "key unknown, older than the TTL horizon"))
                    continue
                max_seen[k] = t
                append(None)
            elif t > m:
                max_seen[k] = t
                append(None)
            elif t < m - delay:
                append((m - delay, f"key {k!r} has seen {from_micros(m).isoformat()}"))
            else:
                append(None)
        return out

    def watermark(self, key: str) -> int | None:
        """The key's watermark in microseconds, or ``None`` for an unknown key."""
        m = self.max_seen.get(key)
        return None if m is None else m - self.delay

    def advance(self, key: str, ts: int) -> None:
        """Raise ``key``'s watermark to at least ``ts`` (results up to ``ts`` were emitted early)."""
        floor = ts + self.delay
        if self.max_seen.get(key, floor) <= floor:
            self.max_seen[key] = floor

    def close_all(self) -> None:
        """Make every key's watermark its newest timestamp (after flushing at end of input)."""
        delay = self.delay
        for k in self.max_seen:
            self.max_seen[k] += delay

    def forget_idle(self, older_than: int) -> list[str]:
        """Forget keys whose newest timestamp is before ``older_than``; return them."""
        gone = [k for k, m in self.max_seen.items() if m < older_than]
        for k in gone:
            m = self.max_seen.pop(k)
            if self.forgotten_max is None or m > self.forgotten_max:
                self.forgotten_max = m
        return gone

    def snapshot(self) -> WatermarkSnapshot:
        """A picklable copy of the state."""
        return WatermarkSnapshot(dict(self.max_seen), self.forgotten_max)
