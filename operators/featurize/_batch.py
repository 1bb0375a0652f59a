"""Turning a batch of ``(key, event)`` items into NumPy columns, rejecting what does not fit.

One pass in C-speed builtins for the common case (every field present and a
plain ``int``/``float``, every timestamp an aware ``datetime``); only a batch
with a bad item falls back to checking item by item, so the outcome is the
same either way:

========================================  ===================
input                                     ``error_type``
========================================  ===================
item not a ``(str, Mapping)`` pair        ``BadItem``
field missing                             ``MissingField``
not a real number (``str``, ``None``,     ``NotANumber``
``bool``, ...)
NaN or +/-Inf                             ``NonFinite``
timestamp getter raised, or not a         ``BadTimestamp``
``datetime``, or naive
timestamp beyond ``max_future`` of the    ``FutureTimestamp``
wall clock
========================================  ===================

Timestamps of 0 (the epoch) or before 1970 are valid instants: they pass here
and are judged for lateness like any other time.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from operator import attrgetter
from typing import Any

import numpy as np
from streamml.operators._time import EPOCH, micros, to_micros

from streamml.errors import Rejected

__all__ = ["Columns", "extract"]

_TZINFO = attrgetter("tzinfo")
_PLAIN = {int, float}
_STR = {str}
_DATETIME = {datetime}
# float seconds carry whole microseconds exactly while |us| < 2**53 (about 1685..2255)
_EXACT_SECONDS = 2.0**53 / 1e6


@dataclass
class Columns:
    """The accepted part of a batch, column-wise."""

    keys: list[str]
    events: list[Mapping[str, Any]]
    ts: np.ndarray  # int64 microseconds (empty when no timestamp getter)
    values: np.ndarray  # float64, shape (n, len(fields))


def _check_value(name: str, v: Any) -> tuple[str, str] | None:
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return "NotANumber", f"field {name!r} is {type(v).__name__} {v!r}, not a number"
    try:
        finite = math.isfinite(v)
    except OverflowError:  # an int beyond float range
        return "NotANumber", f"field {name!r} is int {str(v)[:20]}..., beyond float range"
    if not finite:
        return "NonFinite", f"field {name!r} is {v!r}"
    return None


def _check_item(
    item: Any,
    fields: Sequence[str],
    ts_getter: Callable[[Any], datetime] | None,
    future_limit: int | None,
) -> tuple[str, str] | tuple[int | None, list[float]]:
    """Either ``(error_type, reason)`` or ``(ts_us, values)``."""
    if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
        return "BadItem", f"expected a (str key, event) pair; got {type(item).__name__}"
    event = item[1]
    if not isinstance(event, Mapping):
        return "BadItem", f"event must be a mapping; got {type(event).__name__}"
    values = []
    for name in fields:
        if name not in event:
            return "MissingField", f"field {name!r} is missing"
        problem = _check_value(name, event[name])
        if problem:
            return problem
        values.append(float(event[name]))
    ts = None
    if ts_getter is not None:
        try:
            ts = to_micros(ts_getter(event))
        except Exception as exc:
            return "BadTimestamp", f"timestamp: {type(exc).__name__}: {exc}"
        if future_limit is not None and ts > future_limit:
            return "FutureTimestamp", (
                f"timestamp {ts_getter(event).isoformat()} is beyond the allowed future"
            )
    return ts, values


def extract(
    step_id: str,
    items: list[Any],
    fields: Sequence[str],
    ts_getter: Callable[[Any], datetime] | None = None,
    max_future_us: int | None = None,
) -> tuple[Columns, list[Rejected]]:
    """Split ``(key, event)`` items into accepted columns and rejections (see the module table).

    Examples:
        >>> cols, errs = extract("s", [("k", {"x": 1}), ("k", {"x": "1"})], ["x"])
        >>> cols.keys, cols.values.tolist(), [(r.error_type, r.reason) for r in errs]
        (['k'], [[1.0]], [('NotANumber', "field 'x' is str '1', not a number")])
    """
    future_limit = None
    if ts_getter is not None and max_future_us is not None:
        future_limit = micros(datetime.now(timezone.utc) - EPOCH) + max_future_us
    try:
        return _fast(items, fields, ts_getter, future_limit), []
    except (TypeError, KeyError, ValueError, AttributeError, IndexError, OverflowError, _Slow):
        pass
    keys, events, ts, values, errs = [], [], [], [], []
    for item in items:
        res = _check_item(item, fields, ts_getter, future_limit)
        if isinstance(res[0], str):
            errs.append(Rejected(step_id, res[0], res[1], item))
            continue
        keys.append(item[0])
        events.append(item[1])
        ts.append(res[0])
        values.append(res[1])
    cols = Columns(
        keys,
        events,
        np.array(ts if ts_getter is not None else [], dtype=np.int64),
        np.array(values, dtype=np.float64).reshape(len(values), len(fields)),
    )
    return cols, errs


class _Slow(Exception):
    """The batch needs the item-by-item path."""


def _fast(
    items: list[Any],
    fields: Sequence[str],
    ts_getter: Callable[[Any], datetime] | None,
    future_limit: int | None,
) -> Columns:
    keys = [item[0] for item in items]
    events = [item[1] for item in items]
    if items and set(map(type, keys)) != _STR:
        raise _Slow
    values = np.empty((len(events), len(fields)))
    for j, name in enumerate(fields):
        column = [e[name] for e in events]
        if not set(map(type, column)) <= _PLAIN:
            raise _Slow
        values[:, j] = column
    if not np.isfinite(values).all():
        raise _Slow
    ts = np.empty(0, dtype=np.int64)
    if ts_getter is not None:
        stamps = list(map(ts_getter, events))
        if items and (set(map(type, stamps)) != _DATETIME or None in set(map(_TZINFO, stamps))):
            raise _Slow
        seconds = np.fromiter(map(datetime.timestamp, stamps), np.float64, len(stamps))
        if len(seconds) and np.abs(seconds).max() >= _EXACT_SECONDS:
            raise _Slow
        ts = np.rint(seconds * 1e6).astype(np.int64)
        if future_limit is not None and len(ts) and ts.max() > future_limit:
            raise _Slow
    return Columns(keys, events, ts, values)
