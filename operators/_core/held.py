"""Held rows of a keyed event-time operator, column-wise: :class:`Held` and :class:`Released`.

:class:`~streamml.operators._core.event_time.KeyedEventTime` keeps the rows it
holds as one :class:`Held` (the operator's payload frame plus the key id, event
time, arrival and data arrays) and gives released rows back as a
:class:`Released`. The frame helpers here join and slice the payload frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

__all__ = ["Held", "Released"]

_EMPTY_I = np.zeros(0, dtype=np.int64)


def _concat(a: pl.DataFrame | None, b: pl.DataFrame | None) -> pl.DataFrame | None:
    """Rows of ``a`` then ``b`` (either may be ``None``); columns unified to supertypes."""
    if a is None or not a.height:
        return b
    if b is None or not b.height:
        return a
    if a.schema == b.schema:
        return pl.concat([a, b], rechunk=False)
    return pl.concat([a, b], how="diagonal_relaxed", rechunk=False)


def _take(frame: pl.DataFrame | None, idx: np.ndarray) -> pl.DataFrame | None:
    if frame is None:
        return None
    return frame.filter(pl.Series(idx)) if idx.dtype == bool else frame[idx]


@dataclass
class Held:
    """Rows in arrival order, column-wise: the operator's payload frame and the time arrays.

    Attributes:
        frame: The operator's own columns for these rows (``None`` when it
            keeps none).
        kid: Key id of each row (see :meth:`KeyedEventTime.key_of`).
        ts: Event time, int64 microseconds.
        arrived: Wall-clock seconds when the row was held.
        data: Float64 ``(n, k)`` numbers the operator computes on.
    """

    frame: pl.DataFrame | None
    kid: np.ndarray
    ts: np.ndarray
    arrived: np.ndarray
    data: np.ndarray

    @classmethod
    def empty(cls, width: int = 0) -> Held:
        return cls(None, _EMPTY_I, _EMPTY_I, np.zeros(0), np.zeros((0, width)))

    def __len__(self) -> int:
        return len(self.kid)

    def extend(self, more: Held) -> Held:
        if not len(self):
            return more
        if not len(more):
            return self
        cat = np.concatenate
        return Held(
            _concat(self.frame, more.frame),
            cat([self.kid, more.kid]),
            cat([self.ts, more.ts]),
            cat([self.arrived, more.arrived]),
            cat([self.data, more.data]),
        )

    @classmethod
    def concat(cls, parts: list[Held]) -> Held:
        """The rows of ``parts`` in order (one concatenation per column)."""
        if len(parts) == 2:  # the held rows and one batch (most calls): no lists built
            return parts[0].extend(parts[1])
        parts = [p for p in parts if len(p)]
        if len(parts) <= 1:
            return parts[0] if parts else cls.empty()
        frame = None
        for p in parts:
            frame = _concat(frame, p.frame)
        cat = np.concatenate
        return cls(
            frame,
            cat([p.kid for p in parts]),
            cat([p.ts for p in parts]),
            cat([p.arrived for p in parts]),
            cat([p.data for p in parts]),
        )

    def take(self, idx: np.ndarray) -> Held:
        """The rows at ``idx`` (an index array, in that order; or a Boolean mask)."""
        return Held(
            _take(self.frame, idx), self.kid[idx], self.ts[idx], self.arrived[idx], self.data[idx]
        )


@dataclass
class Released:
    """What :meth:`KeyedEventTime.release` gives back.

    Attributes:
        held: The released rows, in event-time order (ties in arrival order).
        gone: Key ids forgotten by the TTL sweep (their rows are in
            ``held``): drop the operator's own state of them now; the ids
            are reused from the next :meth:`KeyedEventTime.admit`.
        gone_keys: The keys of ``gone``, in the same order (an operator
            that keeps its state by key drops it by these).
    """

    held: Held
    gone: np.ndarray
    gone_keys: list = field(default_factory=list)
