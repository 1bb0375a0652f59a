"""Vectorised window arithmetic over key-grouped, time-sorted arrays.

The rolling operator keeps each key's recent events as contiguous rows of
one array, sorted by key and then event time, and asks for aggregates over
row ranges ``[start, end]`` (inclusive). These kernels answer many ranges at
once:

- sums by compensated prefix sums (TwoSum error terms), so a range sum is
  accurate to a few ulps of itself unless far smaller than what precedes it;
- variance from centred sums, with ranges whose sums are ill-conditioned
  recomputed exactly by a two-pass over the gathered range;
- min/max by a sparse table (O(n log w) build, O(1) per range);
- several sets of ranges over the same rows (one set per window length)
  share the prefix sums and the sparse table (``range_variances``,
  ``range_reduce``);
- anything else (quantiles, decayed means) by gathering the ranges.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "MAX_CELLS",
    "chunks",
    "gather",
    "group_rows",
    "group_range_starts",
    "range_max",
    "range_min",
    "range_reduce",
    "range_starts",
    "range_sums",
    "range_sums_centred",
    "range_variance",
    "range_variances",
    "segment_quantile",
]

# Upper bound on the cells of any temporary a kernel builds (64 MB of float64).
MAX_CELLS = 1 << 23
# Centred variance loses about eps * (mean - centre)**2 / var of relative
# precision; past this ratio a range is recomputed by a two-pass.
_ILL_CONDITIONED = 1e4
# Integers from -2**53 to 2**53 are exact in a float64.
_EXACT = 1 << 53
# A range whose prefix of squares is this much larger than its own sum of
# squares is recomputed too (compensated sums keep about eps**2 * prefix).
_LARGER_BEFORE = 1e13


def group_rows(group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row of a grouped array, the first and the middle row of its group.

    Examples:
        >>> group_rows(np.array([3, 3, 5, 5, 5, 7]))
        (array([0, 0, 2, 2, 2, 5]), array([1, 1, 3, 3, 3, 5]))
    """
    n = len(group)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(group[1:], group[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    lengths = np.diff(np.append(starts, n))
    which = np.cumsum(first) - 1
    return starts[which], (starts + lengths // 2)[which]


def range_starts(ts: np.ndarray, lo: np.ndarray, end: np.ndarray, after: np.ndarray) -> np.ndarray:
    """First row ``i`` in ``[lo, end]`` with ``ts[i] > after`` (``ts`` sorted within each range).

    Examples:
        >>> range_starts(np.array([1, 2, 3, 10, 11]), np.array([0, 3]), np.array([2, 4]),
        ...              np.array([1, 10]))
        array([1, 4])
    """
    lo = lo.copy()
    hi = end.copy()  # answer is in [lo, hi]; ts[end] > after always holds for our callers
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        right = ts[mid] > after
        hi = np.where(active & right, mid, hi)
        lo = np.where(active & ~right, mid + 1, lo)


def group_range_starts(
    group: np.ndarray, ts: np.ndarray, end: np.ndarray, afters: Sequence[np.ndarray]
) -> list[np.ndarray] | None:
    """For each array of ``afters``: the first row ``i`` of row ``end``'s group with ``ts[i] > after``.

    Rows must be sorted by ``group`` (small non-negative integers) and then
    ``ts``, and ``ts[end] > after``. The same answers as :func:`range_starts`
    from each group's first row, found by one binary search in C per
    array: the ``(group, ts)`` pairs as complex numbers, which NumPy orders
    lexicographically. ``None`` when a time or bound does not fit a
    float64 exactly (``|t| >= 2**53``); use :func:`range_starts` then.

    Examples:
        >>> group_range_starts(np.array([0, 0, 0, 1, 1]), np.array([1, 2, 3, 10, 11]),
        ...                    np.array([2, 4]), [np.array([1, 10]), np.array([0, 0])])
        [array([1, 4]), array([0, 3])]
    """
    if any(len(a) and max(int(a.max()), -int(a.min())) >= _EXACT for a in (ts, *afters)):
        return None
    pairs = np.empty(len(ts), dtype=np.complex128)
    pairs.real = group
    pairs.imag = ts
    query = np.empty(len(end), dtype=np.complex128)
    query.real = group[end]
    out = []
    for after in afters:
        query.imag = after
        out.append(np.searchsorted(pairs, query, side="right"))
    return out


def range_sums(x: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums of ``x[start:end + 1]`` along axis 0, and the prefix sum through ``end``.

    Prefix sums are compensated (each addition's exact rounding error, by
    TwoSum, is summed alongside), so a range sum keeps its own precision
    unless everything before it is more than ~1e13 times larger; callers
    use the returned prefix to spot those ranges.

    Examples:
        >>> sums, upto = range_sums(np.array([[1e16], [1.0], [1.0], [3.0]]), np.array([1, 0]),
        ...                         np.array([2, 0]))
        >>> sums.ravel().tolist(), upto.ravel().tolist()
        ([2.0, 1e+16], [1e+16, 1e+16])
    """
    return _sums_from(_prefix_sums(x), start, end)


def _prefix_sums(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prefix sums of ``x`` along axis 0 (with a leading zero row) and their compensation terms."""
    n = len(x)
    s = np.empty((n + 1,) + x.shape[1:])
    s[0] = 0.0
    np.cumsum(x, axis=0, out=s[1:])
    # TwoSum: the exact rounding error of s[i + 1] = s[i] + x[i]
    bb = s[1:] - s[:-1]
    err = s[1:] - bb
    np.subtract(s[:-1], err, out=err)
    np.subtract(x, bb, out=bb)
    err += bb
    e = np.empty_like(s)
    e[0] = 0.0
    np.cumsum(err, axis=0, out=e[1:])
    return s, e


def _sums_from(
    prefix: tuple[np.ndarray, np.ndarray], start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`range_sums` from the prefix sums of :func:`_prefix_sums`."""
    s, e = prefix
    return (s[end + 1] - s[start]) + (e[end + 1] - e[start]), s[end + 1]


def gather(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of every range laid end to end, and the offset of each range in them.

    Examples:
        >>> gather(np.array([2, 0]), np.array([3, 0]))
        (array([2, 3, 0]), array([0, 2]))
    """
    lengths = end - start + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    idx = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(start - offsets, lengths)
    return idx, offsets


def chunks(start: np.ndarray, end: np.ndarray, width: int) -> list[slice]:
    """Consecutive slices of the ranges whose gathered rows (times ``width``) stay under
    ``MAX_CELLS``, so temporaries stay bounded however long the windows (one range at least).

    Examples:
        >>> chunks(np.array([0, 0, 0]), np.array([9, 9, 9]), MAX_CELLS // 20)
        [slice(0, 2, None), slice(2, 3, None)]
    """
    total = np.cumsum(end - start + 1) * width
    out, i, n = [], 0, len(start)
    while i < n:
        base = int(total[i - 1]) if i else 0
        j = max(int(np.searchsorted(total, base + MAX_CELLS, side="right")), i + 1)
        out.append(slice(i, j))
        i = j
    return out


def range_variance(
    x: np.ndarray, centre: np.ndarray, start: np.ndarray, end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Population variance and sum of each range of ``x`` (shape ``(n, f)``).

    ``centre`` (per row, shape ``(n, f)``) should be a typical value of the
    row's group; sums are taken of ``x - centre``. Ranges where that is not
    accurate to about 1e-11 — the centred mean far from the centre relative
    to the spread, or the rows before the range (other keys' included) far
    larger than the range — are recomputed exactly by a two-pass over it.

    Examples:
        >>> x = np.array([[1e9], [1e9 + 1], [1e9 + 2], [5.0]])
        >>> var, total = range_variance(x, np.zeros_like(x), np.array([0, 0]), np.array([2, 3]))
        >>> var[0], float(total[1, 0])
        (array([0.66666667]), 3000000008.0)
    """
    return range_variances(x, centre, [(start, end)])[0]


def range_variances(
    x: np.ndarray, centre: np.ndarray, ranges: Sequence[tuple[np.ndarray, np.ndarray]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`range_variance` for several sets of ``(start, end)`` ranges over the same rows.

    The prefix sums are built once and shared, so each set gives exactly
    what :func:`range_variance` gives it alone.

    Examples:
        >>> x = np.array([[1.0], [2.0], [3.0]])
        >>> [(v.ravel().tolist(), t.ravel().tolist()) for v, t in
        ...  range_variances(x, np.full_like(x, 2.0), [(np.array([0]), np.array([2])),
        ...                                            (np.array([1]), np.array([2]))])]
        [([0.6666666666666666], [6.0]), ([0.25], [5.0])]
    """
    d = x - centre
    p1, p2 = _prefix_sums(d), _prefix_sums(d * d)
    out = []
    for start, end in ranges:
        n = (end - start + 1).astype(np.float64)[:, None]
        s1, _ = _sums_from(p1, start, end)
        s2, upto2 = _sums_from(p2, start, end)
        m1 = s1 / n
        var = np.maximum(s2 / n - m1 * m1, 0.0)
        total = s1 + n * centre[end]
        suspect = (m1 * m1 > _ILL_CONDITIONED * var) | (upto2 > _LARGER_BEFORE * s2)
        bad = np.flatnonzero(suspect.any(axis=1))
        for part in chunks(start[bad], end[bad], x.shape[1]):
            rows = bad[part]
            idx, offsets = gather(start[rows], end[rows])
            vals = x[idx]
            exact_total = np.add.reduceat(vals, offsets, axis=0)
            mean = exact_total / n[rows]
            dev = vals - np.repeat(mean, (end[rows] - start[rows] + 1), axis=0)
            var[rows] = np.add.reduceat(dev * dev, offsets, axis=0) / n[rows]
            total[rows] = exact_total
        out.append((var, total))
    return out


def range_sums_centred(
    x: np.ndarray, centre: np.ndarray, ranges: Sequence[tuple[np.ndarray, np.ndarray]]
) -> list[np.ndarray]:
    """Sums of each range of ``x`` (shape ``(n, f)``), for several sets of ranges: the sums of
    :func:`range_variances` without the variances (half the prefix sums), for steps that ask
    for ``sum`` or ``mean`` only. Sums are of ``x - centre`` (compensated), so a range keeps
    its own precision next to much larger rows of other keys.

    Examples:
        >>> x = np.array([[1e16], [1.0], [2.0], [3.0]])
        >>> [t.ravel().tolist() for t in range_sums_centred(
        ...     x, np.array([[1e16], [2.0], [2.0], [2.0]]), [(np.array([1]), np.array([3]))])]
        [[6.0]]
    """
    d = x - centre
    prefix = _prefix_sums(d)
    out = []
    for start, end in ranges:
        n = (end - start + 1).astype(np.float64)[:, None]
        s1, _ = _sums_from(prefix, start, end)
        out.append(s1 + n * centre[end])
    return out


def range_reduce(
    x: np.ndarray, ranges: Sequence[tuple[np.ndarray, np.ndarray]], fn: np.ufunc
) -> list[np.ndarray]:
    """``fn``-reduction (``np.minimum``/``np.maximum``) of each range along axis 0, for several
    sets of ``(start, end)`` ranges over the same rows, sharing one sparse table (level k
    reduces 2**k rows; O(n log w) to build, O(1) per range).

    Examples:
        >>> x = np.array([5.0, 1.0, 4.0, 2.0])
        >>> range_reduce(x, [(np.array([0]), np.array([3])), (np.array([2]), np.array([3]))],
        ...              np.minimum)
        [array([1.]), array([2.])]
    """
    lengths = [int((end - start).max()) + 1 for start, end in ranges if len(start)]
    if not lengths:
        return [np.zeros((0,) + x.shape[1:]) for _ in ranges]
    top = int(np.log2(max(lengths)))
    if (top + 1) * x.size > MAX_CELLS:  # long windows over many rows: gather range by range
        out = []
        for start, end in ranges:
            reduced = np.empty((len(start),) + x.shape[1:])
            for part in chunks(start, end, x[0].size):
                idx, offsets = gather(start[part], end[part])
                reduced[part] = fn.reduceat(x[idx], offsets, axis=0)
            out.append(reduced)
        return out
    table = np.empty((top + 1,) + x.shape)
    table[0] = x
    for k in range(1, top + 1):
        half = 1 << (k - 1)
        fn(table[k - 1, :-half], table[k - 1, half:], out=table[k, :-half])
    out = []
    for start, end in ranges:
        level = np.log2(end - start + 1).astype(np.int64)  # floor; exact for lengths < 2**50
        out.append(fn(table[level, start], table[level, end - (1 << level) + 1]))
    return out


def range_min(x: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Minimum of each range ``x[start:end + 1]`` along axis 0.

    Examples:
        >>> range_min(np.array([5.0, 1.0, 4.0, 2.0]), np.array([0, 2, 3]), np.array([3, 3, 3]))
        array([1., 2., 2.])
    """
    return range_reduce(x, [(start, end)], np.minimum)[0]


def range_max(x: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Maximum of each range ``x[start:end + 1]`` along axis 0.

    Examples:
        >>> range_max(np.array([5.0, 1.0, 4.0, 2.0]), np.array([0, 1]), np.array([3, 3]))
        array([5., 4.])
    """
    return range_reduce(x, [(start, end)], np.maximum)[0]


def segment_quantile(
    values: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, q: float
) -> np.ndarray:
    """The ``q`` quantile (NumPy's default linear method) of each segment of a 1-D array.

    Examples:
        >>> segment_quantile(np.array([3.0, 1.0, 2.0, 10.0]), np.array([0, 3]), np.array([3, 1]), 0.5)
        array([ 2., 10.])
    """
    seg = np.repeat(np.arange(len(offsets)), lengths)
    ordered = values[np.lexsort((values, seg))]
    pos = q * (lengths - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, lengths - 1)
    frac = pos - lo
    a = ordered[offsets + lo]
    b = ordered[offsets + hi]
    diff = b - a
    # NumPy's lerp: a + diff * t, or b - diff * (1 - t) for t >= 0.5
    return np.where(frac >= 0.5, b - diff * (1 - frac), a + diff * frac)
