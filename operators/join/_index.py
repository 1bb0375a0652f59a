"""One side's stored rows of a join shard, searchable by key and time range in NumPy.

A time-based join asks, for a batch of rows, "which stored rows of the other
side have the same key and a time in ``[lo, hi]``?". :class:`TimeIndex`
answers it for the whole batch with two ``np.searchsorted`` calls: rows are
kept sorted by ``(key id, time, id)`` and each has one int64 code,
``kid * width + (ts - base)``, so the codes sort like the rows and a range
of one key is a range of codes. ``base`` and ``width`` are chosen again
(every code rewritten) when a new row does not fit; when the stored times
span more than the codes can hold (a shard with ~1,000 keys: 70 years), the
search runs per key group instead (one ``searchsorted`` per key of the
batch, never per row).

Rows leave lazily: the join marks released ids dead and the arrays are
compacted once half of them are dead, or at once when a key is forgotten
(its id may be reused). A dead row can never match a row that is not late:
it left because its key's watermark passed the last time it could match.

Examples:
    >>> ix = TimeIndex()
    >>> ix.insert(np.array([0, 1, 0]), np.array([10, 10, 30]), np.array([0, 1, 2]))
    >>> q, pos = ix.search(np.array([0, 1]), np.array([[5, 0], [30, 9]]))
    >>> q.tolist(), ix.ids[pos].tolist()
    ([0, 0], [0, 2])
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["IdSet", "TimeIndex", "expand"]

_EMPTY = np.zeros(0, dtype=np.int64)
_TOP = (1 << 63) - 1
_MAX, _MIN = np.maximum.reduce, np.minimum.reduce
_RANGE = np.arange(4096)
_RANGE.flags.writeable = False


def expand(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(i, j)`` for every ``j`` in ``range(starts[i], stops[i])``, in order of ``i`` then ``j``.

    Examples:
        >>> i, j = expand(np.array([2, 5, 0]), np.array([4, 5, 1]))
        >>> i.tolist(), j.tolist()
        ([0, 0, 2], [2, 3, 0])
    """
    counts = stops - starts
    total = int(np.add.reduce(counts))
    if not total:
        return _EMPTY, _EMPTY
    m = len(starts)
    i = (_RANGE[:m] if m <= len(_RANGE) else np.arange(m)).repeat(counts)
    shift = starts - counts.cumsum()
    shift += counts
    j = shift[i]
    j += _RANGE[:total] if total <= len(_RANGE) else np.arange(total)
    return i, j


class TimeIndex:
    """Stored rows of one side (key id, time, id), sorted by ``(kid, ts, id)``.

    While the codes fit, only ``code`` and ``ids`` are kept (key id and time
    are read back from the code); otherwise ``kid``, ``ts`` and ``ids``.

    Eviction: :meth:`kill` marks released ids; :meth:`compact` (automatic
    once half the rows are dead, forced when keys are forgotten) drops them.
    """

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self.ids = _EMPTY
        self.code = _EMPTY  # while width > 0
        self._kid = _EMPTY  # while width == 0
        self._ts = _EMPTY
        self.base = 0
        self.width = 0
        self.kcap = 0  # every stored kid is below it
        self.dead: list[np.ndarray] = []
        self.n_dead = 0
        if data is not None and len(data["ids"]):
            kid = np.asarray(data["kid"], dtype=np.int64)
            ts = np.asarray(data["ts"], dtype=np.int64)
            ids = np.asarray(data["ids"], dtype=np.int64)
            order = np.lexsort((ids, ts, kid))
            self._set(kid[order], ts[order], ids[order])

    def __len__(self) -> int:
        """Live rows."""
        return len(self.ids) - self.n_dead

    @property
    def kid(self) -> np.ndarray:
        return self.code // self.width if self.width else self._kid

    def ts_at(self, pos: np.ndarray) -> np.ndarray:
        """The times of the rows at ``pos``."""
        if self.width:
            return self.code[pos] % self.width + self.base
        return self._ts[pos]

    @property
    def ts(self) -> np.ndarray:
        return self.code % self.width + self.base if self.width else self._ts

    # -- codes ------------------------------------------------------------

    def _set(self, kid: np.ndarray, ts: np.ndarray, ids: np.ndarray) -> None:
        """Store sorted rows, coded if ``base``/``width`` (with room to grow) can hold them."""
        self.ids, self.width = ids, 0
        self.code, self._kid, self._ts = _EMPTY, kid, ts
        if not len(ids):
            return
        self.kcap = 1 << (int(kid.max()) + 1).bit_length()  # room for twice the key ids
        lo, hi = int(ts.min()), int(ts.max())
        span = hi - lo + 3  # offsets 1 .. span-2: 0 and width-1 stay free for clipped bounds
        limit = _TOP // (self.kcap + 1)
        if span > limit:
            return  # too wide for one code: per-key searches
        width = min(1 << (span.bit_length() + 2), limit)  # about 4x the span
        self.base = lo - 1 - (width - span) // 4  # a quarter of the room before, the rest after
        self.width = width
        self.code = kid * width + (ts - self.base)
        self._kid = self._ts = _EMPTY

    def _fits(self, kid: np.ndarray, ts: np.ndarray) -> bool:
        return (
            self.width > 0
            and int(_MAX(kid)) < self.kcap
            and int(_MIN(ts)) > self.base
            and int(_MAX(ts)) < self.base + self.width - 1
        )

    # -- rows in, rows out --------------------------------------------------

    def insert(self, kid: np.ndarray, ts: np.ndarray, ids: np.ndarray) -> None:
        """Store new rows (``ids`` ascending and above every stored id)."""
        m = len(ids)
        if not m:
            return
        if self._fits(kid, ts):
            code = kid * self.width
            code += ts
            code -= self.base
            if m > 1:
                order = code.argsort(kind="stable")
                code, ids = code[order], ids[order]
            # ties after the older rows; new row j lands at its place plus j
            at = self.code.searchsorted(code, "right")
            at += _RANGE[:m] if m <= len(_RANGE) else np.arange(m)
            n = len(self.ids) + m
            old = np.ones(n, dtype=bool)
            old[at] = False
            merged_code = np.empty(n, dtype=np.int64)
            merged_code[at] = code
            merged_code[old] = self.code
            merged_ids = np.empty(n, dtype=np.int64)
            merged_ids[at] = ids
            merged_ids[old] = self.ids
            self.code, self.ids = merged_code, merged_ids
            return
        kid = np.concatenate([self.kid, kid])
        ts = np.concatenate([self.ts, ts])
        ids = np.concatenate([self.ids, ids])
        order = np.lexsort((ids, ts, kid))
        self._set(kid[order], ts[order], ids[order])

    def search(self, kid: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every stored row of the same key with ``lo <= ts <= hi``: ``(query index, position)``.

        ``bounds`` is ``[lo, hi]``, a C-ordered ``(2, queries)`` int64 array
        (overwritten). Query key ids are at most one above the largest
        stored one (a join stores a batch's rows before it searches with
        them). Pairs are in query order, then in stored order (time, then
        arrival).
        """
        m = len(kid)
        if not len(self.ids) or not m:
            return _EMPTY, _EMPTY
        if self.width:
            # bounds clipped to the free offsets 0 and width-1 (a key id above
            # every stored one searches past them all); one search for both:
            # the first row >= lo is the first row > lo - 1
            base = self.base
            np.maximum(bounds, base, out=bounds)
            np.minimum(bounds, base + self.width - 1, out=bounds)
            bounds[0] -= 1
            key = kid * self.width  # kid <= kcap: (kcap + 1) * width fits in int64
            key -= base
            bounds += key
            found = self.code.searchsorted(bounds.reshape(-1), "right")
            starts, stops = found[:m], found[m:]
        else:
            lo, hi = bounds
            starts = np.zeros(m, dtype=np.int64)
            stops = np.zeros(m, dtype=np.int64)
            for k in np.unique(kid).tolist():  # one search per key group
                rows = np.flatnonzero(kid == k)
                a, b = np.searchsorted(self._kid, [k, k + 1])
                group = self._ts[a:b]
                starts[rows] = a + np.searchsorted(group, lo[rows], side="left")
                stops[rows] = a + np.searchsorted(group, hi[rows], side="right")
        return expand(starts, stops)

    def kill(self, ids: np.ndarray) -> None:
        """Mark released rows dead; compact once half the rows are."""
        if not len(ids):
            return
        self.dead.append(ids)
        self.n_dead += len(ids)
        if self.n_dead * 2 > len(self.ids):
            self.compact()

    def compact(self) -> None:
        """Drop the dead rows."""
        if not self.n_dead:
            return
        keep = ~np.isin(self.ids, np.concatenate(self.dead))
        self.ids = self.ids[keep]
        if self.width:
            self.code = self.code[keep]
        else:
            self._kid, self._ts = self._kid[keep], self._ts[keep]
        self.dead, self.n_dead = [], 0

    def live_kids(self) -> np.ndarray:
        """The distinct key ids with live rows."""
        self.compact()
        return np.unique(self.kid)

    def snapshot_data(self) -> dict[str, Any]:
        self.compact()
        return {"kid": self.kid.copy(), "ts": self.ts.copy(), "ids": self.ids.copy()}


class IdSet:
    """A set of ids added in ascending order (a join's unmatched left rows), in NumPy.

    Eviction: :meth:`discard` and :meth:`pop` remove; the arrays compact
    once half their ids are gone.

    Examples:
        >>> s = IdSet()
        >>> s.add(np.array([1, 4, 6]))
        >>> s.discard(np.array([4, 9]))
        >>> s.pop(np.array([6, 4, 2])).tolist(), s.ids().tolist()
        ([6], [1])
    """

    def __init__(self, ids: np.ndarray | None = None) -> None:
        self._ids = _EMPTY if ids is None else np.asarray(ids, dtype=np.int64)
        self._alive = np.ones(len(self._ids), dtype=bool)
        self._gone = 0

    def __len__(self) -> int:
        return len(self._ids) - self._gone

    def add(self, ids: np.ndarray) -> None:
        """Add ids, ascending and above every id added before."""
        if len(ids):
            self._ids = np.concatenate([self._ids, ids])
            self._alive = np.concatenate([self._alive, np.ones(len(ids), dtype=bool)])

    def _where(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(mask over ids, positions)`` of the ids present."""
        pos = np.searchsorted(self._ids, ids)
        found = pos < len(self._ids)
        found[found] = self._ids[pos[found]] == ids[found]
        found[found] = self._alive[pos[found]]
        return found, pos[found]

    def pop(self, ids: np.ndarray) -> np.ndarray:
        """Remove ``ids``; the ones that were present, in the order given."""
        if not len(ids) or not len(self):
            return _EMPTY
        found, pos = self._where(np.asarray(ids, dtype=np.int64))
        if len(pos):
            self._alive[pos] = False
            self._gone += len(np.unique(pos))
            if self._gone * 2 > len(self._ids):
                self._ids, self._alive, self._gone = self.ids(), np.ones(len(self), bool), 0
        return np.asarray(ids, dtype=np.int64)[found]

    def discard(self, ids: np.ndarray) -> None:
        """Remove ``ids`` (absent ones are ignored)."""
        self.pop(ids)

    def ids(self) -> np.ndarray:
        """The ids present, ascending."""
        return self._ids[self._alive]
