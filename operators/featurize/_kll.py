"""A KLL quantile sketch: approximate quantiles of a stream in bounded memory, mergeable.

:class:`KLL` keeps a few hundred of the values it saw, each standing for
``2**h`` of them (its *level* ``h``), instead of every value (Karnin, Lang and
Liberty, "Optimal quantile approximation in streams", 2016):

- level 0 is a buffer of ``k`` raw values; each time it fills, it is sorted
  and every other value (odd or even positions, by a coin) moves up to level
  1 with twice the weight;
- level ``h >= 1`` has capacity ``k * (2/3)**(top - h)`` (at least 8; the
  top level ``k``); when levels 1 and up hold their capacities in all, the
  lowest level at or over its own is compacted the same way into ``h + 1``
  (a largest odd one out staying behind).

Memory: fewer than ``k`` raw values plus ``3k`` (plus 8 for each level more
than ``log(k/8) / log(3/2)`` below the top): about 600 values, 5 KB, at
``k=200`` whatever the number of values seen.

Rank error: one compaction of ``s`` sorted values of weight ``w`` changes
the weight counted below any query value by ``+w``, ``0`` or ``-w``, by a
fair coin — a martingale with steps bounded by ``w``. So by Azuma's
inequality, for any one query, with probability at least ``1 - delta`` the
estimated rank is within ``sqrt(2 * V * ln(2 / delta))`` of the true one,
where ``V`` is the sum of ``w**2`` over the compactions done
(:attr:`KLL.variance`); :meth:`KLL.rank_error` gives that bound. The value
:meth:`KLL.quantile` returns for ``q`` then has a true rank (anywhere from
the number of values below it to the number at or below it) within that of
``q * n``. ``V`` depends only on ``n`` and ``k``, never on the values: at
``k=200`` the bound is at most 2.0 % of ``n`` for ``delta = 0.01`` (at most 1.4 %
from ``n = 1,000`` on; :func:`worst_rank_error`); the largest error over 99
quantiles of random data is about 0.5 %.

Determinism: the coins come from a hash of ``(seed, level, compaction
number)``, and level 0 compacts exactly each time it reaches ``k`` values,
so the sketch is a function of the sequence of values alone — not of how it
was cut into :meth:`KLL.update` calls. A window's sketch therefore comes out
the same whether its values arrived in one batch or many, before or after a
restore from a snapshot (:func:`pack`, :func:`unpack`).

Examples:
    >>> import numpy as np
    >>> x = np.random.default_rng(1).normal(size=100_000)
    >>> sketch = KLL(k=200)
    >>> for part in np.array_split(x, 7):
    ...     sketch.update(part)
    >>> sketch.n, sketch.size() < 1000
    (100000, True)
    >>> true_rank = (x <= sketch.quantile(0.99)).mean()
    >>> bool(abs(true_rank - 0.99) <= sketch.rank_error(0.01) / sketch.n)
    True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["KLL", "pack", "unpack", "worst_rank_error"]

_DECAY = 2.0 / 3.0
_MIN_CAP = 8
_EMPTY = np.zeros(0)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _coins(seed: int, level: int, first: int, count: int) -> np.ndarray:
    """``count`` fair bits (0 or 1) for compactions ``first, first + 1, ...`` of ``level``:
    splitmix64's finaliser of the three numbers, so no generator state is kept."""
    z = np.arange(first, first + count, dtype=np.uint64)
    z += np.uint64(((seed & 0xFFFFFFFF) << 32 | (level & 0xFF) << 24) & 0xFFFFFFFFFFFFFFFF)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(63)).astype(np.int64)


class KLL:
    """A KLL sketch of float64 values: :meth:`update`, :meth:`merge`, :meth:`quantile`.

    Args:
        k: Accuracy and memory: the top level's capacity and level 0's
            (an even number, at least 8); error about ``1/k``.
        seed: The coins' seed: the same values with the same seed give the
            same sketch.

    Examples:
        >>> s = KLL(k=8)
        >>> s.update(np.arange(100.0))
        >>> s.n, s.quantile(0.0), s.quantile(1.0), float(s.quantile(0.5))
        (100, 0.0, 99.0, 55.0)
        >>> t = KLL(k=8)
        >>> t.update(np.arange(100.0, 200.0))
        >>> s.merge(t)
        >>> s.n, float(s.quantile(0.5)), s.rank_error(0.01) < 0.25 * s.n
        (200, 99.0, True)
    """

    __slots__ = ("k", "seed", "n", "levels", "counts", "variance", "lo", "hi")

    def __init__(self, k: int = 200, seed: int = 0) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 8 or k % 2:
            raise ValueError(f"k must be an even int >= 8; got {k!r}")
        self.k = k
        self.seed = seed
        self.n = 0
        self.levels: list[np.ndarray] = [_EMPTY]  # level h: values of weight 2**h
        self.counts: list[int] = [0]  # compactions done at each level (the coins' counter)
        self.variance = 0.0  # sum of w**2 over the compactions
        self.lo = math.inf  # exact minimum and maximum
        self.hi = -math.inf

    def size(self) -> int:
        """How many values the sketch holds."""
        return sum(len(level) for level in self.levels)

    def _caps(self) -> list[int]:
        """The capacity of each level from 1 up, for the sketch's depth."""
        top = len(self.levels) - 1
        return [max(_MIN_CAP, math.ceil(self.k * _DECAY ** (top - h))) for h in range(1, top + 1)]

    def update(self, values: np.ndarray) -> None:
        """Add ``values`` (1-D float64, in stream order)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if not len(v):
            return
        self.n += len(v)
        self.lo = min(self.lo, float(v.min()))
        self.hi = max(self.hi, float(v.max()))
        k, buf = self.k, self.levels[0]
        room = k - len(buf)
        if len(v) < room:
            self.levels[0] = np.concatenate([buf, v])
            return
        full = (len(v) - room) // k
        tail = room + full * k
        blocks = np.concatenate([buf, v[:tail]]).reshape(full + 1, k)
        self.levels[0] = v[tail:].copy()
        blocks.sort(axis=1)
        coins = _coins(self.seed, 0, self.counts[0], full + 1)
        self.counts[0] += full + 1
        self.variance += full + 1.0
        picks = coins[:, None] + 2 * np.arange(k // 2)
        halves = np.take_along_axis(blocks, picks, axis=1)
        for half in halves:  # each block's compaction, in stream order, then what it triggers
            self._push(1, half)
            self._compress()

    def _push(self, h: int, values: np.ndarray) -> None:
        if h == len(self.levels):
            self.levels.append(_EMPTY)
            self.counts.append(0)
        self.levels[h] = np.concatenate([self.levels[h], values])

    def _compact(self, h: int) -> None:
        """Sort level ``h``; every other value, by a coin, goes up; an odd largest one stays."""
        items = np.sort(self.levels[h])
        keep = items[len(items) - len(items) % 2 :]
        coin = int(_coins(self.seed, h, self.counts[h], 1)[0])
        self.counts[h] += 1
        self.variance += 4.0**h
        self.levels[h] = keep
        self._push(h + 1, items[coin : len(items) - len(keep) : 2])

    def _compress(self) -> None:
        """While levels 1 and up hold their capacity in all, compact the lowest one at or over
        its own (lazily, as DataSketches does: a level may borrow room the others leave)."""
        caps = self._caps()
        total = sum(caps)
        while total and sum(map(len, self.levels)) - len(self.levels[0]) >= total:
            h = next(h for h, cap in enumerate(caps, 1) if len(self.levels[h]) >= cap)
            depth = len(self.levels)
            self._compact(h)
            if len(self.levels) != depth:
                caps = self._caps()
                total = sum(caps)

    def merge(self, other: KLL) -> None:
        """Fold ``other`` (same ``k``) into this sketch; its error adds to this one's."""
        if other.k != self.k:
            raise ValueError(f"cannot merge KLL sketches of k={self.k} and k={other.k}")
        if not other.n:
            return
        for h in range(1, len(other.levels)):
            self._push(h, other.levels[h])
        for h, count in enumerate(other.counts):
            self.counts[h] += count
        self.n += other.n
        self.variance += other.variance
        self.lo, self.hi = min(self.lo, other.lo), max(self.hi, other.hi)
        self.levels[0] = np.concatenate([self.levels[0], other.levels[0]])
        if len(self.levels[0]) >= self.k:
            self._compact(0)
        self._compress()

    def rank_error(self, delta: float = 0.01) -> float:
        """A bound on one query's rank error holding with probability ``1 - delta``."""
        return math.sqrt(2.0 * self.variance * math.log(2.0 / delta))

    def quantile(self, q: float | np.ndarray) -> Any:
        """The value of rank about ``q * n`` (``q`` in ``[0, 1]``; NaN when empty): the
        smallest held value whose weight at or below it reaches ``q * n``; ``q=0`` the
        exact minimum, ``q=1`` the exact maximum."""
        qs = np.asarray(q, dtype=np.float64)
        if not self.n:
            return np.full(qs.shape, np.nan) if qs.ndim else math.nan
        values = np.concatenate(self.levels)
        weights = np.concatenate(
            [np.full(len(level), float(1 << h)) for h, level in enumerate(self.levels)]
        )
        order = np.argsort(values, kind="stable")
        values, cum = values[order], np.cumsum(weights[order])
        at = np.minimum(np.searchsorted(cum, qs * self.n, side="left"), len(values) - 1)
        out = np.where(qs <= 0.0, self.lo, np.where(qs >= 1.0, self.hi, values[at]))
        return out if qs.ndim else float(out)


def worst_rank_error(k: int = 200, delta: float = 0.01, n_max: int = 1 << 22) -> float:
    """The largest :meth:`KLL.rank_error` as a share of ``n`` over the multiples of ``k`` up
    to ``n_max`` (the bound only changes when level 0 compacts). The compactions depend on
    ``n`` alone, so this is exact, not an estimate; the ratio repeats with each new level.

    Examples:
        >>> round(worst_rank_error(200, n_max=20_000), 4)
        0.0199
    """
    sketch, worst, block = KLL(k), 0.0, np.zeros(k)
    while sketch.n + k <= n_max:
        sketch.update(block)
        worst = max(worst, sketch.rank_error(delta) / sketch.n)
    return worst


def pack(sketches: list[KLL]) -> dict[str, Any]:
    """Sketches (one ``k`` and seed) as a few flat arrays, for a snapshot.

    Examples:
        >>> a, b = KLL(k=8), KLL(k=8)
        >>> a.update(np.arange(30.0))
        >>> back = unpack(pack([a, b]))
        >>> [x.tolist() for x in back[0].levels] == [x.tolist() for x in a.levels]
        True
        >>> back[0].n, back[0].counts == a.counts, back[0].quantile(0.5) == a.quantile(0.5)
        (30, True, True)
        >>> back[1].n, back[1].size()
        (0, 0)
    """
    depth = [len(s.levels) for s in sketches]
    return {
        "k": sketches[0].k if sketches else 0,
        "seed": sketches[0].seed if sketches else 0,
        "n": np.array([s.n for s in sketches], dtype=np.int64),
        "variance": np.array([s.variance for s in sketches], dtype=np.float64),
        "lo": np.array([s.lo for s in sketches], dtype=np.float64),
        "hi": np.array([s.hi for s in sketches], dtype=np.float64),
        "depth": np.array(depth, dtype=np.int64),
        "sizes": np.array([len(v) for s in sketches for v in s.levels], dtype=np.int64),
        "counts": np.array([c for s in sketches for c in s.counts], dtype=np.int64),
        "values": np.concatenate([v for s in sketches for v in s.levels] or [_EMPTY]),
    }


def unpack(data: dict[str, Any]) -> list[KLL]:
    """The sketches :func:`pack` wrote."""
    out = []
    values = np.asarray(data["values"], dtype=np.float64)
    sizes, counts = data["sizes"].tolist(), data["counts"].tolist()
    at = level_at = 0
    for i, depth in enumerate(data["depth"].tolist()):
        s = KLL(int(data["k"]), int(data["seed"]))
        s.n, s.variance = int(data["n"][i]), float(data["variance"][i])
        s.lo, s.hi = float(data["lo"][i]), float(data["hi"][i])
        s.levels, s.counts = [], counts[level_at : level_at + depth]
        for size in sizes[level_at : level_at + depth]:
            s.levels.append(values[at : at + size].copy())
            at += size
        level_at += depth
        out.append(s)
    return out
