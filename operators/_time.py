"""Event-time units: timestamps as integer microseconds, and the late-event record.

Operators take timezone-aware UTC ``datetime`` (rows) or ``pl.Datetime``
columns (frames) at their API and work on integer microseconds since the
Unix epoch inside (exact, sortable, NumPy friendly). Watermarks, the
lateness rule, held rows and TTL live in one place,
:mod:`streamml.operators._core.event_time`; this module has the unit
conversions and the :func:`late` record they share.

Examples:
    >>> from datetime import datetime, timezone
    >>> t = to_micros(datetime(2024, 1, 1, tzinfo=timezone.utc))
    >>> t, from_micros(t)
    (1704067200000000, datetime.datetime(2024, 1, 1, 0, 0, tzinfo=datetime.timezone.utc))
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from streamml.errors import Rejected

__all__ = [
    "EPOCH",
    "from_micros",
    "iso",
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


def iso(us: int) -> str:
    """An instant in microseconds as ISO 8601 text, for messages; beyond years 1-9999 (which
    ``datetime`` cannot hold) as the number of microseconds.

    Examples:
        >>> iso(0), iso(10**18)
        ('1970-01-01T00:00:00+00:00', '1000000000000000000 us since 1970-01-01 UTC')
    """
    try:
        return from_micros(us).isoformat()
    except OverflowError:
        return f"{int(us)} us since 1970-01-01 UTC"


def late(step_id: str, original: Any, ts_us: int, watermark_us: int, why: str = "") -> Rejected:
    """The :class:`~streamml.errors.Rejected` record (``error_type="Late"``) of a late event.

    Examples:
        >>> late("roll", ("k", {}), 0, 1_000_000).reason
        'event time 1970-01-01T00:00:00+00:00 is before the watermark 1970-01-01T00:00:01+00:00'
    """
    reason = f"event time {iso(ts_us)} is before the watermark {iso(watermark_us)}"
    return Rejected(step_id, "Late", reason + (f" ({why})" if why else ""), original)


class WatermarkSnapshot:
    """Only for reading recovery stores written before versioned snapshots (see
    :mod:`streamml.operators.featurize._legacy`): the per-key watermarks of a ``rolling``
    shard then, ``max_seen`` and ``forgotten_max``, as pickle restores them."""
