"""Running mean and variance per key, updated a batch at a time: the state of ``online_scale``.

Each key keeps its count, mean and sum of squared deviations (``m2``) of
every value so far. A batch updates them without a Python loop per row:
rows are grouped by key (arrival order kept within a key), each value is
shifted by its key's mean so far (by its first value for a new key), and
per-key cumulative sums of the shifted values and their squares give each
row's running count, mean and ``m2`` — the same numbers as Welford's
update row by row, up to rounding (the shift keeps the sums small, so the
difference stays in the last bits for any key whose values are not far
from their mean; tests compare with scikit-learn to 1e-9).

Eviction: a key whose last row is ``ttl`` of wall-clock time old is
dropped (:meth:`Moments.expire`, called on every batch and when Bytewax
wakes the state at :meth:`Moments.due`).

The state is snapshot as plain arrays (:meth:`Moments.data`) inside a
versioned record of ``online_scale``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

__all__ = ["Moments"]


class Moments:
    """Count, mean and ``m2`` of each key's values, per field.

    Examples:
        >>> m = Moments(1)
        >>> m.update(m.kids(["a", "a", "b", "a"]), np.array([[1.0], [3.0], [5.0], [5.0]]), now=0.0)[:, 0].round(6).tolist()
        [0.0, 1.0, 0.0, 1.224745]
        >>> m.n.tolist(), m.mean[:, 0].tolist()
        ([3, 1], [3.0, 5.0])
    """

    def __init__(self, width: int, data: dict[str, Any] | None = None) -> None:
        self.width = width
        if data is None:
            self.keys: list[Any] = []
            self.n = np.zeros(0, dtype=np.int64)
            self.mean = np.zeros((0, width))
            self.m2 = np.zeros((0, width))
            self.seen = np.zeros(0)
        else:
            self.keys = list(data["keys"])
            self.n = np.array(data["n"], dtype=np.int64)
            self.mean = np.array(data["mean"], dtype=np.float64).reshape(-1, width)
            self.m2 = np.array(data["m2"], dtype=np.float64).reshape(-1, width)
            self.seen = np.array(data["seen"], dtype=np.float64)
        self.kid_of = {k: i for i, k in enumerate(self.keys)}

    def __len__(self) -> int:
        return len(self.keys)

    def kids(self, keys: Sequence[Any] | pl.Series) -> np.ndarray:
        """The id of each key, adding new keys (in sorted order, so ids do not depend on timing)."""
        if isinstance(keys, pl.Series):
            if not keys.dtype.is_integer():
                keys = keys.cast(pl.String)
            codes = (keys.rank("dense").to_numpy() - 1).astype(np.int64)
            distinct = keys.unique().sort().to_list()
        else:
            distinct = sorted(set(keys))
            where = {k: i for i, k in enumerate(distinct)}
            codes = np.fromiter(map(where.__getitem__, keys), np.int64, len(keys))
        new = [k for k in distinct if k not in self.kid_of]
        if new:
            for k in new:
                self.kid_of[k] = len(self.keys)
                self.keys.append(k)
            grow = len(new)
            self.n = np.concatenate([self.n, np.zeros(grow, dtype=np.int64)])
            self.mean = np.concatenate([self.mean, np.zeros((grow, self.width))])
            self.m2 = np.concatenate([self.m2, np.zeros((grow, self.width))])
            self.seen = np.concatenate([self.seen, np.zeros(grow)])
        ids = np.fromiter(map(self.kid_of.__getitem__, distinct), np.int64, len(distinct))
        return ids[codes]

    def update(self, kid: np.ndarray, x: np.ndarray, now: float) -> np.ndarray:
        """Take in the rows ``x`` (``(n, width)``, arrival order) of keys ``kid``; each row scaled by
        its key's mean and population standard deviation up to and including it (a zero
        deviation scales by 1)."""
        n = len(kid)
        if not n:
            return np.zeros((0, self.width))
        order = np.argsort(kid, kind="stable")
        sk, sx = kid[order], x[order]
        first = np.empty(n, dtype=bool)
        first[0] = True
        np.not_equal(sk[1:], sk[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        group = np.cumsum(first) - 1
        g_kid = sk[starts]
        n0 = self.n[g_kid]
        shift = np.where((n0 > 0)[:, None], self.mean[g_kid], sx[starts])  # per group
        d = sx - shift[group]
        # per-key running sums (each key's own: a big key's sums never swamp a small one's)
        w = self.width
        if len(starts) == 1:  # one key (a row state always): plain cumulative sums
            s, q = np.cumsum(d, axis=0), np.cumsum(d * d, axis=0)
        else:
            cols = pl.DataFrame(np.hstack([d, d * d]), schema=[f"c{j}" for j in range(2 * w)])
            sums = cols.with_columns(pl.Series("g", group)).select(
                pl.exclude("g").cum_sum().over("g")
            )
            cs = sums.to_numpy()
            s, q = cs[:, :w], cs[:, w:]
        count = (n0[group] + (np.arange(n) - starts[group] + 1)).astype(np.float64)[:, None]
        # the old rows' deviations from the shift are 0 (shift = their mean) or absent (n0 = 0)
        mean = shift[group] + s / count
        m2 = np.maximum(self.m2[g_kid][group] + q - s * s / count, 0.0)
        std = np.sqrt(m2 / count)
        scaled = (sx - mean) / np.where(std > 0, std, 1.0)
        ends = np.r_[starts[1:], n] - 1
        self.n[g_kid] = count[ends, 0].astype(np.int64)
        self.mean[g_kid] = mean[ends]
        self.m2[g_kid] = m2[ends]
        self.seen[g_kid] = now
        out = np.empty_like(scaled)
        out[order] = scaled
        return out

    def due(self, ttl: float | None) -> float | None:
        """Wall-clock seconds when the stalest key expires (``None``: never, or no key)."""
        if ttl is None or not len(self.keys):
            return None
        if len(self.keys) == 1:  # a row state: an element, not a reduction (~10x cheaper)
            return float(self.seen[0]) + ttl
        return float(self.seen.min()) + ttl

    def expire(self, now: float, ttl: float | None) -> int:
        """Drop the keys idle for ``ttl`` seconds; how many were dropped."""
        if ttl is None or not len(self.keys):
            return 0
        if len(self.keys) == 1 and self.seen[0] + ttl > now:  # a row state's key, still fresh
            return 0
        keep = self.seen + ttl > now
        if keep.all():
            return 0
        self.keys = [k for k, kept in zip(self.keys, keep.tolist()) if kept]
        self.kid_of = {k: i for i, k in enumerate(self.keys)}
        self.n, self.mean, self.m2, self.seen = (
            self.n[keep],
            self.mean[keep],
            self.m2[keep],
            self.seen[keep],
        )
        return int((~keep).sum())

    def data(self) -> dict[str, Any]:
        """The state as builtins and NumPy arrays (copies)."""
        return {
            "keys": list(self.keys),
            "n": self.n.copy(),
            "mean": self.mean.copy(),
            "m2": self.m2.copy(),
            "seen": self.seen.copy(),
        }
