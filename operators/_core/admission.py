"""Admission of rows by event time: the verdict on a batch and the lateness computation.

:meth:`~streamml.operators._core.event_time.KeyedEventTime.admit` judges each
batch into an :class:`Admission` (accepted, late, beyond the future limit);
:func:`_distinct` numbers a key column's values and :func:`_prior_max` gives
each row its key's newest earlier time, the running maximum the one lateness
rule compares against.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from streamml.operators._core.held import _EMPTY_I
from streamml.operators._time import iso, late

from streamml.errors import Rejected

__all__ = ["Admission", "MIN_TS", "MAX_TS"]

_NONE = np.iinfo(np.int64).min
"""``kmax`` of a key with no accepted row (and of a free key id)."""
MIN_TS = -(1 << 62)
"""The earliest event time an operator accepts (about 146,000 years before 1970)."""
MAX_TS = 1 << 62
"""The latest event time an operator accepts (about 146,000 years after 1970)."""
_EMPTY_B = np.zeros(0, dtype=bool)


@dataclass
class Admission:
    """The verdict on a batch of rows (indices refer to the batch, in arrival order).

    Attributes:
        ok: Indices of the accepted rows.
        kid: Their key ids.
        ts: Their event times.
        late: Indices of the late rows.
        late_mark: The watermark each late row fell behind.
        late_unknown: Whether that was the TTL horizon of an unknown key.
        future: Indices of rows beyond ``max_future`` of the wall clock.
    """

    ok: np.ndarray
    kid: np.ndarray
    ts: np.ndarray
    late: np.ndarray
    late_mark: np.ndarray
    late_unknown: np.ndarray
    future: np.ndarray
    _seen: np.ndarray  # per late row, the newest time its key had (for the reason)
    _keys: Sequence[Any]
    _all_ts: np.ndarray

    def rejected(
        self, step_id: str, original: Callable[[int], Any]
    ) -> tuple[list[Rejected], list[Rejected]]:
        """``(errs, lates)``: the ``FutureTimestamp`` and ``Late`` records of this batch.

        ``original(i)`` gives the original item of batch row ``i``.
        """
        errs = [
            Rejected(
                step_id,
                "FutureTimestamp",
                f"timestamp {iso(int(self._all_ts[i]))} is beyond the allowed future",
                original(i),
            )
            for i in self.future.tolist()
        ]
        lates = []
        for i, mark, unknown, seen in zip(
            self.late.tolist(),
            self.late_mark.tolist(),
            self.late_unknown.tolist(),
            self._seen.tolist(),
        ):
            why = (
                "key unknown, older than the TTL horizon"
                if unknown
                else f"key {self._keys[i]!r} has seen {iso(seen)}"
            )
            lates.append(late(step_id, original(i), int(self._all_ts[i]), mark, why))
        return errs, lates


def _distinct(keys: pl.Series) -> tuple[pl.Series, np.ndarray]:
    """The distinct values of a non-null column and, per row, the index of its value.

    By a 64-bit hash of each value, checked: if two distinct values ever
    share a hash, the answer comes from comparing values instead (slower,
    same result). About 1.5x faster than ``unique`` + ``replace_strict``
    on 5,000 rows of 1,000 keys (measured 540 vs 730-930 µs).

    Examples:
        >>> uniq, inverse = _distinct(pl.Series(["b", "a", "b"]))
        >>> uniq.gather(inverse).to_list()
        ['b', 'a', 'b']
    """
    n = len(keys)
    if n == 0:
        return keys, _EMPTY_I
    h = keys.hash().to_numpy()
    order = np.argsort(h, kind="stable")
    sh = h[order]
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(sh[1:], sh[:-1], out=first[1:])
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.cumsum(first) - 1
    uniq = keys.gather(order[first])
    if (uniq.gather(inverse) == keys).all():
        return uniq, inverse
    uniq = keys.unique()  # a hash collision: by value
    codes = keys.replace_strict(uniq, np.arange(len(uniq)), return_dtype=pl.Int64)
    return uniq, codes.to_numpy()


def _prior_max(kid: np.ndarray, ts: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """For each row, the largest of its key's ``seed`` and the times of its key's earlier rows.

    Vectorised: rows grouped by key (stable), a running maximum per group
    (by rank, so one ``maximum.accumulate`` over all groups), shifted by one.

    Examples:
        >>> m = np.iinfo(np.int64).min
        >>> _prior_max(np.array([0, 1, 0, 0]), np.array([5, 9, 3, 7]), np.array([m, 4, m, m])).tolist()
        [-9223372036854775808, 4, 5, 5]
    """
    n = len(kid)
    if n == 0:
        return _EMPTY_I
    order = np.argsort(kid, kind="stable")
    sk, st = kid[order], ts[order]
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(sk[1:], sk[:-1], out=first[1:])
    if (ts[1:] >= ts[:-1]).all():
        running = st  # times in order: each row is its group's running maximum
    else:
        by_t = np.argsort(st, kind="stable")
        rank = np.empty(n, dtype=np.int64)
        rank[by_t] = np.arange(n)
        combined = sk * n + rank  # groups ascend, so the running max never crosses a group
        np.maximum.accumulate(combined, out=combined)
        running = st[by_t[combined - sk * n]]
    prev = np.empty(n, dtype=np.int64)
    prev[0] = _NONE
    prev[1:] = running[:-1]
    prev[first] = _NONE
    out = np.empty(n, dtype=np.int64)
    out[order] = np.maximum(prev, seed[order])
    return out
