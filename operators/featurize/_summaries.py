"""Per-(key, window) summaries: ``window_agg``'s state when every aggregate is mergeable.

A window's rows are only needed by aggregates that cannot be folded in a
piece at a time: exact quantiles ``p<q>``, ``distinct`` and ``top<k>``.
When none of them is asked for, a :class:`Summaries` keeps one summary per
open window instead of its rows, so a window's memory does not grow with
its number of rows:

- ``count``, ``sum``, ``min``, ``max``, ``first``, ``last``, ``rate`` and
  ``bin<lo>_<hi>``: running values;
- ``mean``, ``var``, ``std``: count, sum, mean and sum of squared
  deviations, merged by Chan et al.'s formula (as stable as the two-pass
  computation over the rows; equal to it to rounding);
- ``approx_distinct``: the window's 4,096 HyperLogLog registers (4 KB,
  :func:`._frequency.hll_registers`): the same estimate as from its rows;
- ``approx_p<q>``: a :class:`._kll.KLL` sketch (``k=200``, about 600 values
  at most) per field, fed the window's values in event-time order, so it is
  the very sketch the rows would give (:func:`kll_quantiles`).

Windows are identified by ``(key id, wid)``: a fixed window's number, or a
session's start time. Values arrive grouped by window in event-time order
(:meth:`Summaries.fold`); a closed window's aggregates come out of
:meth:`Summaries.close`, which drops its summary (the eviction rule).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from streamml.operators._core.arrays import highest, lowest
from streamml.operators.featurize._frequency import (
    bin_edges,
    hll_estimate,
    hll_registers,
    is_frequency,
)
from streamml.operators.featurize._kll import KLL, pack, unpack

__all__ = ["APPROX_QUANTILE", "Summaries", "kll_quantiles", "mergeable"]

APPROX_QUANTILE = re.compile(r"^approx_p(\d{1,2}(\.\d+)?|100)$")
"""``approx_p<percent>``: a quantile from a KLL sketch."""

KLL_K = 200
_ROWLESS = {"count", "sum", "mean", "std", "var", "min", "max", "first", "last", "rate"}
_REGISTERS = 4096
_EMPTY_I = np.zeros(0, dtype=np.int64)


def mergeable(agg: str) -> bool:
    """Whether ``agg`` can be kept as a summary rather than from the window's rows.

    Examples:
        >>> [mergeable(a) for a in ("std", "approx_p99", "approx_distinct", "bin0_5", "p99")]
        [True, True, True, True, False]
    """
    if agg in _ROWLESS or agg == "approx_distinct" or APPROX_QUANTILE.match(agg):
        return True
    return agg.startswith("bin") and is_frequency(agg)


def _percent(agg: str) -> float:
    return float(agg[len("approx_p") :]) / 100.0


def kll_quantiles(values: np.ndarray, qs: list[float]) -> list[float]:
    """The quantiles ``qs`` of the KLL sketch of ``values`` (in order): what a window's
    summary gives for ``approx_p<q>``, computed from its rows.

    Examples:
        >>> kll_quantiles(np.arange(1.0, 101.0), [0.5, 0.99])
        [50.0, 99.0]
    """
    sketch = KLL(KLL_K)
    sketch.update(values)
    return [float(v) for v in sketch.quantile(np.array(qs))]


class Summaries:
    """The summaries of the open windows of one state, one row of arrays per window.

    Args:
        plan: ``(field index, aggregate)`` per feature; every aggregate mergeable.
        width: The number of fields.
        length_s: Fixed windows' length in seconds (``rate``), or 0.
        resume: :meth:`snapshot_data` of an earlier state.

    Examples:
        >>> s = Summaries(((0, "mean"), (0, "approx_p50"), (0, "last")), 1, 0.0)
        >>> x = np.array([[1.0], [2.0], [3.0], [10.0]])
        >>> s.fold(np.array([0, 0, 0, 1]), np.array([5, 5, 5, 5]), np.zeros(4, int), x[:, :])
        >>> s.fold(np.array([0]), np.array([5]), np.zeros(1, int), np.array([[6.0]]))
        >>> kid, wid, end, cols = s.close(np.array([True, False]))
        >>> kid.tolist(), [c.tolist() for c in cols], len(s.kid)
        ([0], [[3.0], [2.0], [6.0]], 1)
    """

    def __init__(
        self, plan: tuple[tuple[int, str], ...], width: int, length_s: float, resume: Any = None
    ) -> None:
        self.plan = plan
        self.width = width
        self.length_s = length_s
        self.bins = sorted({(f, a) for f, a in plan if a.startswith("bin")})
        self.hll_fields = sorted({f for f, a in plan if a == "approx_distinct"})
        self.kll_fields = sorted({f for f, a in plan if APPROX_QUANTILE.match(a)})
        self.kid = _EMPTY_I
        self.wid = _EMPTY_I
        self.end = _EMPTY_I  # the time of the window's last row
        aggs = {a for _, a in plan}
        need = {
            "s": bool(aggs & {"sum", "mean"}),
            "mu": bool(aggs & {"var", "std"}),
            "m2": bool(aggs & {"var", "std"}),
            "lo": "min" in aggs,
            "hi": "max" in aggs,
            "first": "first" in aggs,
            "last": "last" in aggs,
        }
        # one row of running values per window: its count, then the moments the plan needs
        # (``width`` columns each), then its bins' counts
        self.cols: dict[str, slice] = {}
        at = 1
        for name in (name for name, needed in need.items() if needed):
            self.cols[name] = slice(at, at + width)
            at += width
        self.cols["bins"] = slice(at, at + len(self.bins))
        self.values = np.zeros((0, at + len(self.bins)))
        self.sketched = bool(self.hll_fields or self.kll_fields)
        self.handle = _EMPTY_I  # each window's row in the registers and sketches below, if any
        self.registers = [np.zeros((0, _REGISTERS), dtype=np.uint8) for _ in self.hll_fields]
        self.sketches: list[list[KLL | None]] = [[] for _ in self.kll_fields]
        self.free: list[int] = []
        if resume is not None:
            self._restore(resume)

    # -- folding rows in -------------------------------------------------------

    def fold(
        self,
        kid: np.ndarray,
        wid: np.ndarray,
        ts: np.ndarray,
        x: np.ndarray,
        *,
        by_key: bool = False,
    ) -> None:
        """Fold rows into their windows ``(kid, wid)``: a window's rows in event-time order
        here, and after the rows of earlier calls. ``by_key``: each key's wids do not
        decrease in the rows' order (one window per row, each key's rows in event-time
        order), so a stable sort by key groups the windows."""
        if not len(kid):
            return
        n = len(kid)
        # stable: a window's rows keep their order
        order = kid.argsort(kind="stable") if by_key else np.lexsort((wid, kid))
        k, w = kid.take(order), wid.take(order)
        cut = np.flatnonzero((k[1:] != k[:-1]) | (w[1:] != w[:-1])) + 1
        x = x.take(order, axis=0)
        bounds = np.concatenate(([0], cut, [n]))
        starts, ends, size = bounds[:-1], bounds[1:], np.diff(bounds)
        kid, wid, ts = k[starts], w[starts], ts[order[ends - 1]]
        sizes = size.astype(np.float64)
        c = self.cols
        part = np.empty((len(starts), self.values.shape[1]))
        part[:, 0] = sizes
        if "s" in c or "mu" in c:
            total = np.add.reduceat(x, starts, axis=0)
            if "s" in c:
                part[:, c["s"]] = total
        if "mu" in c:
            mu = part[:, c["mu"]] = total / sizes[:, None]
            dev = x - mu.repeat(size, axis=0)
            part[:, c["m2"]] = np.add.reduceat(dev * dev, starts, axis=0)
        if "lo" in c:
            part[:, c["lo"]] = np.minimum.reduceat(x, starts, axis=0)
        if "hi" in c:
            part[:, c["hi"]] = np.maximum.reduceat(x, starts, axis=0)
        if "first" in c:
            part[:, c["first"]] = x[starts]
        if "last" in c:
            part[:, c["last"]] = x[ends - 1]
        for j, (f, agg) in enumerate(self.bins):
            lo, hi = bin_edges(agg)
            inside = ((x[:, f] >= lo) & (x[:, f] < hi)) * 1.0
            part[:, c["bins"].start + j] = np.add.reduceat(inside, starts)
        slot = self._find(kid, wid)
        old = slot >= 0
        if old.all():
            self._merge(slot, part)
        else:
            if old.any():
                self._merge(slot[old], part[old])
            new = ~old
            slot[new] = self._append(kid[new], wid[new], part[new])
        self.end[slot] = ts
        if not self.sketched:
            return
        handle = self.handle[slot]
        for j, f in enumerate(self.hll_fields):
            reg, rho = hll_registers(x[:, f])
            key = handle.repeat(size) * _REGISTERS + reg
            order = np.argsort(key, kind="stable")
            key, rho = key[order], rho[order]
            first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
            flat = self.registers[j].reshape(-1)
            at = key[first]
            flat[at] = np.maximum(flat[at], np.maximum.reduceat(rho, first).astype(np.uint8))
        for j, f in enumerate(self.kll_fields):
            sketches, column = self.sketches[j], x[:, f]
            for h, a, b in zip(handle.tolist(), starts.tolist(), ends.tolist()):
                sketches[h].update(column[a:b])

    def _find(self, kid: np.ndarray, wid: np.ndarray) -> np.ndarray:
        """The slot of each window ``(kid, wid)`` (distinct), -1 for one not open."""
        out = np.full(len(kid), -1, dtype=np.int64)
        have = len(self.kid)
        if not have:
            return out
        base = min(lowest(self.wid), lowest(wid))
        span = max(highest(self.wid), highest(wid)) - base
        if span < 1 << 31 and max(highest(self.kid), highest(kid)) < 1 << 31:
            # one int64 per window: a sorted search instead of a sort of both
            mine = self.kid << 32 | (self.wid - base)
            code = kid << 32 | (wid - base)
            order = np.argsort(mine)
            mine = mine[order]
            at = np.minimum(np.searchsorted(mine, code), have - 1)
            hit = mine[at] == code
            out[hit] = order[at[hit]]
            return out
        keys = np.concatenate([self.kid, kid])
        wids = np.concatenate([self.wid, wid])
        tag = np.concatenate([np.zeros(have, dtype=np.int8), np.ones(len(kid), dtype=np.int8)])
        order = np.lexsort((tag, wids, keys))
        a, b = order[:-1], order[1:]
        hit = (keys[a] == keys[b]) & (wids[a] == wids[b]) & (a < have) & (b >= have)
        out[b[hit] - have] = a[hit]
        return out

    def _merge(self, slot: np.ndarray, part: np.ndarray) -> None:
        """Merge partial summaries into the open windows ``slot`` (distinct)."""
        c = self.cols
        cur = self.values.take(slot, axis=0)
        na, nb = cur[:, 0], part[:, 0]
        total = na + nb
        if "mu" in c:
            delta = part[:, c["mu"]] - cur[:, c["mu"]]
            cur[:, c["m2"]] += part[:, c["m2"]] + delta * delta * (na * nb / total)[:, None]
            cur[:, c["mu"]] += delta * (nb / total)[:, None]
        if "s" in c:
            cur[:, c["s"]] += part[:, c["s"]]
        if self.bins:
            cur[:, c["bins"]] += part[:, c["bins"]]
        if "lo" in c:
            np.minimum(cur[:, c["lo"]], part[:, c["lo"]], out=cur[:, c["lo"]])
        if "hi" in c:
            np.maximum(cur[:, c["hi"]], part[:, c["hi"]], out=cur[:, c["hi"]])
        if "last" in c:
            cur[:, c["last"]] = part[:, c["last"]]
        cur[:, 0] = total
        self.values[slot] = cur

    def _append(self, kid: np.ndarray, wid: np.ndarray, part: np.ndarray) -> np.ndarray:
        at = len(self.kid)
        self.kid = np.concatenate([self.kid, kid])
        self.wid = np.concatenate([self.wid, wid])
        self.end = np.concatenate([self.end, np.zeros(len(kid), dtype=np.int64)])
        self.values = np.concatenate([self.values, part])
        if self.sketched:
            self.handle = np.concatenate([self.handle, self._handles(len(kid))])
        return np.arange(at, at + len(kid))

    def _handles(self, count: int) -> np.ndarray:
        """Rows for ``count`` new windows in the registers and sketches (freed ones first)."""
        reuse = self.free[len(self.free) - min(count, len(self.free)) :]
        del self.free[len(self.free) - len(reuse) :]
        size = len(self.sketches[0]) if self.kll_fields else len(self.registers[0])
        need = count - len(reuse)
        fresh = list(range(size, size + need))
        if need:  # grow by doubling; the rows beyond this call's are free
            grow = max(need, size)
            self.registers = [
                np.concatenate([r, np.zeros((grow, _REGISTERS), dtype=np.uint8)])
                for r in self.registers
            ]
            for sketches in self.sketches:
                sketches.extend([None] * grow)
            self.free.extend(range(size + grow - 1, size + need - 1, -1))
        handles = reuse + fresh
        for sketches in self.sketches:
            for h in handles:
                sketches[h] = KLL(KLL_K)
        return np.array(handles, dtype=np.int64)

    # -- closing ---------------------------------------------------------------

    def close(self, shut: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
        """The windows marked ``shut``, in (key id, wid) order: their key ids, wids, last
        times and one float64 column per feature of the plan; their summaries are dropped."""
        idx = np.flatnonzero(shut)
        idx = idx[np.lexsort((self.wid[idx], self.kid[idx]))]
        v, c = self.values.take(idx, axis=0), self.cols
        n = v[:, 0]

        def moment(name: str, f: int) -> np.ndarray:
            return v[:, c[name].start + f]

        quantiles = {}  # per approx field: each window's quantiles, all of them in one query
        for j, f in enumerate(self.kll_fields):
            qs = np.array(
                [_percent(a) for g, a in self.plan if g == f and APPROX_QUANTILE.match(a)]
            )
            sketches = self.sketches[j]
            got = [sketches[h].quantile(qs) for h in self.handle[idx].tolist()]
            quantiles[f] = dict(zip(qs.tolist(), np.array(got).reshape(len(idx), len(qs)).T))
        columns = []
        for f, agg in self.plan:
            if agg == "count":
                col = n.copy()
            elif agg == "sum":
                col = moment("s", f)
            elif agg == "mean":
                col = moment("s", f) / n
            elif agg in ("var", "std"):
                col = moment("m2", f) / n
                col = np.sqrt(col) if agg == "std" else col
            elif agg in ("min", "max", "first", "last"):
                col = moment({"min": "lo", "max": "hi"}.get(agg, agg), f)
            elif agg == "rate":
                col = n / self.length_s
            elif agg == "approx_distinct":
                regs = self.registers[self.hll_fields.index(f)][self.handle[idx]]
                seen = regs > 0
                z_sum = np.where(seen, np.exp2(-regs.astype(np.float64)), 0.0).sum(axis=1)
                col = hll_estimate(z_sum, _REGISTERS - seen.sum(axis=1).astype(np.float64))
            elif agg.startswith("bin"):
                col = v[:, c["bins"].start + self.bins.index((f, agg))]
            else:  # approx_p<q>
                col = quantiles[f][_percent(agg)]
            columns.append(np.asarray(col, dtype=np.float64))
        out = self.kid[idx], self.wid[idx], self.end[idx], columns
        self._drop(shut)
        return out

    def _drop(self, shut: np.ndarray) -> None:
        if self.sketched:
            gone = self.handle[shut].tolist()
            for r in self.registers:
                r[gone] = 0
            for sketches in self.sketches:
                for h in gone:
                    sketches[h] = None
            self.free.extend(gone)
            self.handle = self.handle[~shut]
        keep = ~shut
        self.kid, self.wid, self.end = self.kid[keep], self.wid[keep], self.end[keep]
        self.values = self.values.compress(keep, axis=0)

    def latest(self, kids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each key id: the wid and last time of its latest open window (by wid), or
        ``-1`` and the smallest int64 where it has none."""
        none = np.iinfo(np.int64).min
        wid = np.full(len(kids), -1, dtype=np.int64)
        end = np.full(len(kids), none, dtype=np.int64)
        if len(self.kid):
            order = np.lexsort((self.wid, self.kid))
            k = self.kid[order]
            last = order[np.concatenate([k[1:] != k[:-1], [True]])]
            pos = np.searchsorted(self.kid[last], kids)
            pos = np.minimum(pos, len(last) - 1)
            hit = self.kid[last][pos] == kids
            wid[hit] = self.wid[last][pos[hit]]
            end[hit] = self.end[last][pos[hit]]
        return wid, end

    # -- snapshots ---------------------------------------------------------------

    def _shape(self) -> list:
        """What the summaries hold, beyond the moments: a resume needs the same."""
        return [
            self.width,
            [name for name in self.cols if name != "bins"],
            [list(b) for b in self.bins],
            self.hll_fields,
            self.kll_fields,
        ]

    def snapshot_data(self) -> dict[str, Any]:
        """The summaries as NumPy arrays and builtins, windows in slot order."""
        handles = self.handle.tolist()
        return {
            "shape": self._shape(),
            "kid": self.kid.copy(),
            "wid": self.wid.copy(),
            "end": self.end.copy(),
            "values": self.values.copy(),
            "registers": [r[self.handle] for r in self.registers],
            "sketches": [pack([s[h] for h in handles]) for s in self.sketches],
        }

    def _restore(self, data: dict[str, Any]) -> None:
        if data["shape"] != self._shape():
            raise ValueError(
                "the recovery store holds window_agg summaries of other fields or aggregates "
                f"({data['shape']} where this step keeps {self._shape()}: width, moments, "
                "bins, approx_distinct and approx quantile fields); use a new recovery store"
            )
        self.kid = np.asarray(data["kid"], dtype=np.int64)
        self.wid = np.asarray(data["wid"], dtype=np.int64)
        self.end = np.asarray(data["end"], dtype=np.int64)
        self.values = np.asarray(data["values"], dtype=np.float64)
        self.handle = np.arange(len(self.kid)) if self.sketched else _EMPTY_I
        self.registers = [np.asarray(r, dtype=np.uint8) for r in data["registers"]]
        self.sketches = [list(unpack(p)) for p in data["sketches"]]
