"""The state of :func:`~streamml.operators.featurize.window_agg`: closed windows from released rows.

One :class:`Windows` per state (a shard of keys for frames, one key for
rows) on :class:`~streamml.operators._core.event_time.KeyedEventTime`:
rows are admitted by the one lateness rule and held until their key's
watermark reaches them, then released in event-time order (ties in arrival
order) into the *open rows*: the rows of each key whose windows have not all
closed. A window is closed, and its aggregates computed with NumPy, once no
row that is not late can still fall in it:

- tumbling and sliding windows (:class:`Fixed`): window ``k`` spans
  ``[align + k * offset, align + k * offset + length)`` and closes when its
  key's watermark reaches its end;
- sessions (:class:`Sessions`): a key's released rows split wherever two
  consecutive times are more than ``gap`` apart; a session closes once a
  later session of its key began, or its key's watermark is more than
  ``gap`` past its last row.

With the wall clock advancing quiet keys' watermarks (``idle_advance``), a
window the clock closed moves its key's watermark up to the clock's, so a
row that would have fallen in it is late rather than making a second row
for the same window.

When every aggregate of the plan is mergeable (:func:`._summaries.mergeable`:
no exact quantile, ``distinct`` or ``top<k>``), released rows are folded
into a summary per open window (:class:`._summaries.Summaries`) instead of
kept: the same windows close at the same time with the same exact
aggregates (to rounding), and a window's memory no longer grows with its
rows. Sessions too: rows come out in event-time order per key, so a row
either extends its key's latest session (within ``gap`` of its last row)
or starts a new one, and sessions never need merging. Fixed windows' rows
wait in the open rows until one of their windows closes and are folded
then, all at once: with short windows that is one fold per closing step
rather than one per step, and a snapshot keeps the waiting rows, so a
resumed run folds the same rows together as an uninterrupted one. At most
16 rows per open window wait (or 1,024), so their memory stays
proportional to the summaries'.

Eviction: a row leaves the open rows when its last window closes (a summary
when its window closes; a waiting row when it is folded); keys idle for
``ttl`` of the state's event time are forgotten by the core, their windows
closed first. The state is snapshot as a plain record (see
:meth:`Windows.snapshot_data`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from streamml.operators._core.event_time import KeyedEventTime
from streamml.operators.featurize._frequency import frequency, is_frequency
from streamml.operators.featurize._summaries import (
    APPROX_QUANTILE,
    Summaries,
    kll_quantiles,
    mergeable,
)

__all__ = ["Closed", "Fixed", "Sessions", "Spec", "Windows", "aggregate"]

_EMPTY_I = np.zeros(0, dtype=np.int64)
# released rows waiting to be folded into summaries: at most this many a window, or in all
_PENDING_PER_WINDOW, _PENDING = 16, 1024


@dataclass(frozen=True)
class Fixed:
    """Tumbling (``offset == length``) or sliding windows, times in microseconds.

    Examples:
        >>> w = Fixed(length=3, offset=1, align=0)
        >>> w.first_id(np.array([4])).tolist(), w.last_id(np.array([4])).tolist()
        ([2], [4])
        >>> w.closed_upto(np.array([5])).tolist()  # window 2 = [2, 5) has closed
        [2]
    """

    length: int
    offset: int
    align: int

    def first_id(self, ts: np.ndarray) -> np.ndarray:
        """The first window holding each time."""
        return (ts - self.align - self.length) // self.offset + 1

    def last_id(self, ts: np.ndarray) -> np.ndarray:
        """The last window holding each time."""
        return (ts - self.align) // self.offset

    def closed_upto(self, marks: np.ndarray) -> np.ndarray:
        """The last window closed at each watermark (its end at or before it)."""
        return (marks - self.align - self.length) // self.offset

    def start(self, wid: np.ndarray) -> np.ndarray:
        return self.align + wid * self.offset


@dataclass(frozen=True)
class Sessions:
    """Session windows: a gap of more than ``gap`` microseconds between two rows ends one."""

    gap: int


@dataclass(frozen=True)
class Spec:
    """What a :class:`Windows` state computes (validated by ``window_agg``)."""

    step_id: str
    fields: tuple[str, ...]
    plan: tuple[tuple[int, str], ...]  # (field index, aggregate) per feature
    names: tuple[str, ...]  # feature names, in plan order
    windows: Fixed | Sessions
    max_delay: timedelta
    ttl: timedelta | None
    max_future: timedelta | None
    idle_advance: bool


@dataclass
class Closed:
    """Windows closed by one step: key ids, bounds (µs) and one float64 column per feature."""

    kid: np.ndarray
    start: np.ndarray
    end: np.ndarray
    columns: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.kid)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """NumPy's linear interpolation for quantiles (``np.quantile``'s default method)."""
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


def aggregate(
    plan: tuple[tuple[int, str], ...],
    x: np.ndarray,
    starts: np.ndarray,
    length_s: float,
) -> list[np.ndarray]:
    """Each feature of ``plan`` over groups of consecutive rows of ``x`` starting at ``starts``.

    Rows within a group are in event-time order (``first``, ``last``).
    Variances are population variances; quantiles NumPy's linear method,
    ``approx_p<q>`` the KLL sketch of the group's rows (:func:`._summaries.kll_quantiles`);
    distinct counts, top-k and bins as in :mod:`._frequency`.

    Examples:
        >>> x = np.array([[1.0], [3.0], [2.0], [10.0]])
        >>> plan = ((0, "count"), (0, "mean"), (0, "std"), (0, "last"), (0, "p50"))
        >>> [c.tolist() for c in aggregate(plan, x, np.array([0, 3]), 0.0)]
        [[3.0, 1.0], [2.0, 10.0], [0.816496580927726, 0.0], [2.0, 10.0], [2.0, 10.0]]
    """
    n = len(x)
    ends = np.r_[starts[1:], n]
    count = (ends - starts).astype(np.float64)
    group = np.repeat(np.arange(len(starts)), ends - starts)
    cache: dict[tuple[str, int], np.ndarray] = {}

    def total(f: int) -> np.ndarray:
        if ("sum", f) not in cache:
            cache["sum", f] = np.add.reduceat(x[:, f], starts)
        return cache["sum", f]

    def var(f: int) -> np.ndarray:
        if ("var", f) not in cache:
            dev = x[:, f] - (total(f) / count)[group]
            cache["var", f] = np.add.reduceat(dev * dev, starts) / count
        return cache["var", f]

    def ordered(f: int) -> np.ndarray:
        if ("sorted", f) not in cache:
            cache["sorted", f] = x[np.lexsort((x[:, f], group)), f]
        return cache["sorted", f]

    wanted = {a for _, a in plan if is_frequency(a)}

    def counted(f: int, agg: str) -> np.ndarray:
        if ("freq", f) not in cache:
            cache.update({(a, f): c for a, c in frequency(x[:, f], ends - starts, wanted).items()})
            cache["freq", f] = count
        return cache[agg, f]

    out = []
    for f, agg in plan:
        col = x[:, f]
        if agg in wanted:
            out.append(counted(f, agg))
        elif agg == "count":
            out.append(count)
        elif agg == "sum":
            out.append(total(f))
        elif agg == "mean":
            out.append(total(f) / count)
        elif agg == "var":
            out.append(var(f))
        elif agg == "std":
            out.append(np.sqrt(var(f)))
        elif agg == "min":
            out.append(np.minimum.reduceat(col, starts))
        elif agg == "max":
            out.append(np.maximum.reduceat(col, starts))
        elif agg == "first":
            out.append(col[starts])
        elif agg == "last":
            out.append(col[ends - 1])
        elif agg == "rate":
            out.append(count / length_s)
        elif APPROX_QUANTILE.match(agg):  # the KLL sketch a summary would hold
            q = [float(agg[len("approx_p") :]) / 100.0]
            out.append(
                np.array(
                    [kll_quantiles(col[a:b], q)[0] for a, b in zip(starts.tolist(), ends.tolist())]
                )
            )
        else:  # a quantile p<percent>
            at = float(agg[1:]) / 100.0 * (count - 1)
            below = np.floor(at).astype(np.int64)
            above = np.minimum(below + 1, ends - starts - 1)
            values = ordered(f)
            out.append(_lerp(values[starts + below], values[starts + above], at - below))
    return out


class Windows:
    """Released rows into windows, closed windows out, for the keys of one state.

    Args:
        spec: What to compute.
        clock: Wall clock (seconds); read once per step, so a step sees one time.
        resume: :meth:`snapshot_data` of an earlier state.
    """

    def __init__(
        self, spec: Spec, clock: Callable[[], float] = time.time, resume: Any = None
    ) -> None:
        self.spec = spec
        self.wall = clock
        self.now = clock()
        windows = spec.windows
        self.et = KeyedEventTime(
            max_delay=spec.max_delay,
            # a forgotten key's stale rows stay late for as long as they could reopen a window
            guard=timedelta(
                microseconds=windows.gap if isinstance(windows, Sessions) else windows.length
            ),
            ttl=spec.ttl,
            max_future=spec.max_future,
            idle_advance=spec.idle_advance,
            width=len(spec.fields),
            clock=lambda: self.now,
            resume=None if resume is None else resume["time"],
        )
        width = len(spec.fields)
        # the open rows, each key's in event-time order (ties in arrival order)
        self.kid = _EMPTY_I
        self.ts = _EMPTY_I
        self.x = np.zeros((0, width))
        self.lo = _EMPTY_I  # fixed windows: the first window of each row not yet closed
        # or, when every aggregate is mergeable, a summary per open window instead of rows
        self.sums: Summaries | None = None
        if all(mergeable(agg) for _, agg in spec.plan):
            length_s = windows.length / 1e6 if isinstance(windows, Fixed) else 0.0
            held = None if resume is None else resume.get("summaries")
            self.sums = Summaries(spec.plan, width, length_s, resume=held)
        elif resume is not None and resume.get("summaries") is not None:
            raise ValueError(
                f"the recovery store holds {spec.step_id}'s windows as summaries; an aggregate "
                "asked for now (an exact quantile, distinct or top<k>) needs their rows: use a "
                "new recovery store, or approx_p<q> / approx_distinct"
            )
        if resume is not None:  # rows of a state that kept rows (always, before summaries)
            kid = np.asarray(resume["kid"], dtype=np.int64)
            ts = np.asarray(resume["ts"], dtype=np.int64)
            x = np.asarray(resume["x"], dtype=np.float64).reshape(len(kid), width)
            lo = np.asarray(resume["lo"], dtype=np.int64)
            if self.sums is None or isinstance(windows, Fixed):  # rows, or rows to fold
                self.kid, self.ts, self.x, self.lo = kid, ts, x, lo
            else:
                self._fold(kid, ts, x, lo)
        self.names: list[Any] = list(self.et.keys)  # key of each id, kept past the core's TTL

    # -- a step --------------------------------------------------------------

    def tick(self) -> None:
        """Start a step: read the wall clock once."""
        self.now = self.wall()

    def admit(self, keys: Any, ts: np.ndarray) -> Any:
        """The core's verdict on a batch (see ``KeyedEventTime.admit``)."""
        et = self.et
        free = len(et.free)
        adm = et.admit(keys, ts)
        if len(et.keys) != len(self.names) or len(et.free) != free:
            self.names = list(et.keys)
        return adm

    def hold(self, kid: np.ndarray, ts: np.ndarray, x: np.ndarray) -> None:
        """Hold admitted rows until their key's watermark reaches them."""
        self.et.hold(None, kid, ts, x)

    def adopt(self, key: Any, data: dict[str, Any]) -> None:
        """Take over one key's state kept elsewhere before (see :mod:`._window_legacy`):
        its newest time, its held rows and its open rows, which precede any row of it here."""
        self.admit([key], np.array([data["newest"]], dtype=np.int64))  # its watermark
        kid = self.et.kids([key])
        held = len(data["held_ts"])
        self.hold(np.repeat(kid, held), data["held_ts"], data["held_x"])
        rows = len(data["ts"])
        if rows and self.sums is not None:
            self._fold(np.repeat(kid, rows), data["ts"], data["x"], data.get("lo"))
        elif rows:
            self.kid = np.concatenate([self.kid, np.repeat(kid, rows)])
            self.ts = np.concatenate([self.ts, data["ts"]])
            self.x = np.concatenate([self.x, data["x"]])
            if isinstance(self.spec.windows, Fixed):
                self.lo = np.concatenate([self.lo, data["lo"]])

    def step(self, *, eof: bool = False) -> Closed:
        """Release what is due into the open rows and close every window that can close."""
        et = self.et
        rel = et.release(eof=eof)
        held = rel.held
        if self.sums is not None:
            if isinstance(self.spec.windows, Fixed):
                self._pend(held.kid, held.ts, held.data, eof, rel.gone)
            else:
                self._fold(held.kid, held.ts, held.data, None)
            closed = self._close_summaries(eof, rel.gone)
            if eof:
                et.close()
            return closed
        if len(held):
            self.kid = np.concatenate([self.kid, held.kid])
            self.ts = np.concatenate([self.ts, held.ts])
            self.x = np.concatenate([self.x, held.data])
            if isinstance(self.spec.windows, Fixed):
                self.lo = np.concatenate([self.lo, self.spec.windows.first_id(held.ts)])
        if not len(self.kid):
            closed = self._none()
        else:
            marks = et.marks(self.kid)
            done = None  # rows whose key closes everything: end of input, or forgotten (ttl)
            if eof:
                done = np.ones(len(self.kid), dtype=bool)
            elif len(rel.gone):
                done = np.isin(self.kid, rel.gone)
            if isinstance(self.spec.windows, Fixed):
                closed = self._close_fixed(self.spec.windows, marks, done)
            else:
                closed = self._close_sessions(self.spec.windows, marks, done)
        if eof:
            et.close()
        return closed

    def _none(self) -> Closed:
        return Closed(_EMPTY_I, _EMPTY_I, _EMPTY_I, [np.zeros(0) for _ in self.spec.names])

    def _moved(self, kids: np.ndarray, marks: np.ndarray) -> None:
        """Windows the wall clock closed: their keys' watermarks move up to the clock's."""
        if self.et.advance and len(kids):
            np.maximum.at(self.et.kmax, kids, marks + self.et.delay)

    def _close_fixed(self, w: Fixed, marks: np.ndarray, done: np.ndarray | None) -> Closed:
        last = w.last_id(self.ts)
        upto = w.closed_upto(marks)
        if done is not None:
            upto = np.where(done, last, upto)
        hi = np.minimum(last, upto)
        counts = np.maximum(hi - self.lo + 1, 0)
        total = int(counts.sum())
        if not total:
            return self._none()
        rows = np.repeat(np.arange(len(self.kid)), counts)
        firsts = np.cumsum(counts) - counts
        wid = np.repeat(self.lo, counts) + np.arange(total) - np.repeat(firsts, counts)
        kid = self.kid[rows]
        order = np.lexsort((wid, kid))  # stable: each window's rows stay in event-time order
        rows, wid, kid = rows[order], wid[order], kid[order]
        cut = np.flatnonzero((kid[1:] != kid[:-1]) | (wid[1:] != wid[:-1])) + 1
        starts = np.r_[0, cut]
        columns = aggregate(self.spec.plan, self.x[rows], starts, w.length / 1e6)
        emitted = counts > 0
        self._moved(self.kid[emitted], marks[emitted])
        keep = last > upto
        self.lo = np.maximum(self.lo, upto + 1)[keep]
        self.kid, self.ts, self.x = self.kid[keep], self.ts[keep], self.x[keep]
        begin = w.start(wid[starts])
        return Closed(kid[starts], begin, begin + w.length, columns)

    def _close_sessions(self, w: Sessions, marks: np.ndarray, done: np.ndarray | None) -> Closed:
        order = np.argsort(self.kid, kind="stable")  # a key's rows are in event-time order
        kid, ts, marks = self.kid[order], self.ts[order], marks[order]
        n = len(kid)
        new_key = np.r_[True, kid[1:] != kid[:-1]]
        cut = np.flatnonzero(new_key | np.r_[False, np.diff(ts) > w.gap])
        ends = np.r_[cut[1:], n]
        last = ends - 1
        shut = ~np.r_[new_key[1:], True][last]  # a later session of its key began
        shut |= marks[last] - ts[last] > w.gap
        if done is not None:
            shut |= done[order][last]
        if not shut.any():
            return self._none()
        starts, stops = cut[shut], ends[shut]
        first = np.zeros(n, dtype=bool)
        first[cut] = True
        rows = np.flatnonzero(shut[np.cumsum(first) - 1])  # the rows of the shut sessions
        local = np.flatnonzero(first[rows])
        columns = aggregate(self.spec.plan, self.x[order[rows]], local, 0.0)
        self._moved(kid[stops - 1], marks[stops - 1])
        keep = np.ones(n, dtype=bool)
        keep[rows] = False
        keep_rows = order[keep]
        keep_rows.sort()  # the open rows stay in release order
        self.kid, self.ts, self.x = self.kid[keep_rows], self.ts[keep_rows], self.x[keep_rows]
        return Closed(kid[starts], ts[starts], ts[stops - 1], columns)

    # -- summaries instead of rows ----------------------------------------------

    def _fold(self, kid: np.ndarray, ts: np.ndarray, x: np.ndarray, lo: np.ndarray | None) -> None:
        """Fold rows (each key's in event-time order, after its earlier ones) into their
        windows' summaries: a fixed window from ``lo`` (default: the row's first) to the row's
        last; a session its key's open one when within ``gap`` of its last row, else a new one
        from the row on."""
        sums, w = self.sums, self.spec.windows
        assert sums is not None
        if not len(kid):
            return
        if isinstance(w, Fixed):
            last = w.last_id(ts)
            if w.offset == w.length:  # tumbling: a row's one window (``lo`` is it)
                sums.fold(kid, last, ts, x, by_key=True)
                return
            first = w.first_id(ts) if lo is None else np.asarray(lo, dtype=np.int64)
            counts = last - first + 1
            rows = np.repeat(np.arange(len(kid)), counts)
            starts = np.cumsum(counts) - counts
            wid = np.repeat(first, counts) + np.arange(len(rows)) - np.repeat(starts, counts)
            sums.fold(kid[rows], wid, ts[rows], x.take(rows, axis=0))
            return
        order = np.argsort(kid, kind="stable")
        k, t = kid[order], ts[order]
        new_key = np.concatenate([[True], k[1:] != k[:-1]])
        begins = new_key | np.concatenate([[False], np.diff(t) > w.gap])
        start = t[begins]
        open_wid, open_end = sums.latest(k[new_key])
        goes_on = (open_wid >= 0) & (t[new_key] - open_end <= w.gap)
        first_of_key = np.flatnonzero(new_key[begins])  # a key's first session here
        start[first_of_key[goes_on]] = open_wid[goes_on]
        wid = np.empty(len(kid), dtype=np.int64)
        wid[order] = start[np.cumsum(begins) - 1]
        sums.fold(kid, wid, ts, x, by_key=True)

    def _pend(
        self, kid: np.ndarray, ts: np.ndarray, x: np.ndarray, eof: bool, gone: np.ndarray
    ) -> None:
        """Fixed windows: released rows wait in the open rows (``lo`` their first window) and
        are folded together once one of their windows closes, or more wait than 16 per open
        window or 1,024 - one fold per closing step instead of one per step, into the same
        summaries, and the waiting rows' memory bounded by the summaries'."""
        w = self.spec.windows
        assert isinstance(w, Fixed)
        if len(kid) and len(self.kid):
            self.kid = np.concatenate([self.kid, kid])
            self.ts = np.concatenate([self.ts, ts])
            self.x = np.concatenate([self.x, x])
            self.lo = np.concatenate([self.lo, w.first_id(ts)])
        elif len(kid):
            self.kid, self.ts, self.x, self.lo = kid, ts, x, w.first_id(ts)
        if not len(self.kid):
            return
        bound = max(_PENDING, _PENDING_PER_WINDOW * len(self.sums.kid))
        due = eof or len(gone) or len(self.kid) > bound
        if due or (self.lo <= w.closed_upto(self.et.marks(self.kid))).any():
            self._flush()

    def _flush(self) -> None:
        """Fold the rows waiting in the open rows into their windows' summaries."""
        if len(self.kid):
            self._fold(self.kid, self.ts, self.x, self.lo)
            self.kid, self.ts, self.lo = _EMPTY_I, _EMPTY_I, _EMPTY_I
            self.x = np.zeros((0, len(self.spec.fields)))

    def _close_summaries(self, eof: bool, gone: np.ndarray) -> Closed:
        sums, w = self.sums, self.spec.windows
        assert sums is not None
        if not len(sums.kid):
            return self._none()
        marks = self.et.marks(sums.kid)
        if eof:
            shut = np.ones(len(sums.kid), dtype=bool)
        else:
            if isinstance(w, Fixed):
                shut = sums.wid <= w.closed_upto(marks)
            else:
                latest, _ = sums.latest(sums.kid)
                shut = (sums.wid != latest) | (marks - sums.end > w.gap)
            if len(gone):
                shut |= np.isin(sums.kid, gone)
        if not shut.any():
            return self._none()
        self._moved(sums.kid[shut], marks[shut])
        kid, wid, end, columns = sums.close(shut)
        if isinstance(w, Fixed):
            begin = w.start(wid)
            return Closed(kid, begin, begin + w.length, columns)
        return Closed(kid, wid, end, columns)

    # -- wake-ups, snapshots ---------------------------------------------------

    def notify_at(self) -> float | None:
        """Wall-clock seconds when the clock will close a window or release a held row."""
        et = self.et
        due = et.notify_at()
        at = np.inf if due is None else due.timestamp()
        w, sums = self.spec.windows, self.sums
        if et.advance and sums is not None and len(sums.kid):
            # each open window's end; a session's: its gap after its last row
            ends = w.start(sums.wid) + w.length if isinstance(w, Fixed) else sums.end + w.gap + 1
            at = min(at, float(et.wall_time_of(sums.kid, ends).min()))
        if et.advance and len(self.kid):  # rows, or rows waiting to be folded
            if isinstance(w, Fixed):  # each row's first open window
                kids, ends = self.kid, w.start(self.lo) + w.length
            else:  # each key's open session, by its newest row
                order = np.argsort(self.kid, kind="stable")
                sk = self.kid[order]
                newest = order[np.r_[sk[1:] != sk[:-1], True]]
                kids, ends = self.kid[newest], self.ts[newest] + w.gap + 1
            at = min(at, float(et.wall_time_of(kids, ends).min()))
        return None if at == np.inf else at

    def snapshot_data(self) -> dict[str, Any]:
        """The state as builtins and NumPy arrays, for a versioned record."""
        return {
            "time": self.et.snapshot_data(),
            "kid": self.kid.copy(),
            "ts": self.ts.copy(),
            "x": self.x.copy(),
            "lo": self.lo.copy(),
            "summaries": None if self.sums is None else self.sums.snapshot_data(),
        }
