"""The one event-time model of streamml's keyed operators: per-key watermarks, one lateness rule.

Every keyed, event-time operator (``featurize.rolling`` today; anomaly and
the joins next) admits, holds and releases its rows through
:class:`KeyedEventTime`, one per state shard, so they all judge time alike:

- **Watermark.** A key's watermark is the largest event time accepted for
  that key minus ``max_delay``.
- **Lateness (the one rule).** A row is late iff its time is older than
  its key's watermark as of the rows of that key that arrived before it.
  It depends only on the key's own rows, in arrival order — never on
  ``shards=``, on workers or processes, or on where a stream is cut into
  batches (checked vectorised over a batch: a running maximum per key,
  seeded with the state's per-key maxima). A late row changes nothing.
- **Future.** With ``max_future``, a row more than that beyond the wall
  clock is rejected (``FutureTimestamp``) before it can push its key's
  watermark to the year 3000.
- **Holding.** Accepted rows are held until their key's watermark reaches
  them (at once with ``max_delay=0``), then released in event-time order
  (ties in arrival order). No later row can then fall before them: every
  row that could still arrive for the key is at or after them.
- **Idle release** (``idle_release``, wall clock): a row held that long is
  released anyway, and its key's watermark moves up to it (results never
  change; which later rows are late then depends on timing).
- **Idle advance** (``idle_advance``, wall clock; Bytewax's ``EventClock``):
  while a key is quiet its watermark moves on with the wall clock, from
  where its rows last put it, so a quiet key's deadlines (a window's end, a
  session's gap) pass and its held rows come out. The clock alone never
  makes a row late: a row is late only behind its key's newest rows (the
  one rule above), or behind a row the clock released early (its key's
  watermark moves up to it, as with idle release). After a restore the
  clock starts again from the snapshot's watermark: downtime is not
  idleness.
- **TTL** (event time): keys whose newest row is ``ttl`` older than the
  newest row of the shard are forgotten (their held rows released first).
  One number is remembered, the newest forgotten time; afterwards a key
  with no accepted row is late when older than it plus ``guard`` (the
  history the operator would have needed, e.g. its longest window), so a
  forgotten key's stale rows stay late. This is the one place where a
  shard's other keys matter: which idle keys are forgotten, and so which
  of their very old rows are late, depends on the newest time of the
  shard they share.

Times are int64 microseconds since the epoch (see :mod:`streamml.operators._time`).
The wall clock is a callable returning seconds (``time.time`` by default),
so tests inject their own and never sleep.

Examples:
    >>> import numpy as np
    >>> from datetime import timedelta
    >>> et = KeyedEventTime(max_delay=timedelta(microseconds=5))
    >>> adm = et.admit(["a", "a", "a", "b"], np.array([10, 7, 2, 0]))
    >>> adm.late.tolist(), adm.late_mark.tolist()
    ([2], [5])
    >>> et.hold(None, adm.kid, adm.ts)
    >>> et.release().held.ts.tolist()  # watermarks: a 5, b -5
    []
    >>> adm = et.admit(["b", "a"], np.array([6, 12]))
    >>> et.hold(None, adm.kid, adm.ts)
    >>> et.release().held.ts.tolist()  # watermarks: a 7, b 1
    [0, 7]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import polars as pl
from streamml.operators._core.admission import (
    _EMPTY_B,
    _NONE,
    MAX_TS,
    MIN_TS,
    Admission,
    _distinct,
    _prior_max,
)
from streamml.operators._core.arrays import highest, lowest
from streamml.operators._core.held import _EMPTY_I, Held, HeldRows, Released
from streamml.operators._core.state import frame_from_bytes, frame_to_bytes
from streamml.operators._time import micros

__all__ = ["Admission", "Held", "KeyedEventTime", "Released", "MIN_TS", "MAX_TS"]


class KeyedEventTime:
    """Per-key watermarks, lateness, held rows, TTL and idle release of one state shard.

    Keys are any hashable values (a str or int key column's values); each
    gets a small integer id (``kid``), reused after the key is forgotten,
    so operators can keep their per-key state in arrays.

    Eviction: a key leaves after ``ttl`` of event time without a row
    (checked when the shard's newest time has moved a quarter ``ttl``);
    held rows leave when released.

    Args:
        max_delay: Allowed out-of-orderness (``>= 0``).
        guard: After keys are forgotten, how far past the newest forgotten
            time a row of an unknown key still counts as stale (``>= 0``).
        ttl: Forget keys idle this long in event time; ``None`` keeps them.
        idle_release: Release a row once held this long in wall-clock time;
            ``None``: only event time releases.
        max_future: Reject rows beyond the wall clock plus this; ``None``
            accepts any time.
        idle_advance: Move each quiet key's watermark on with the wall
            clock (see the module doc); :meth:`marks` and
            :meth:`wall_time_of` then tell an operator where each key's
            watermark is and when it will reach a time.
        width: Columns of :attr:`Held.data`.
        clock: Wall clock, seconds since the epoch.
        resume: A :meth:`snapshot` to continue from.

    Examples:
        >>> import numpy as np
        >>> from datetime import timedelta
        >>> now = [100.0]
        >>> et = KeyedEventTime(max_delay=timedelta(seconds=10),
        ...                     idle_release=timedelta(seconds=1), clock=lambda: now[0])
        >>> adm = et.admit(["k"], np.array([5_000_000]))
        >>> et.hold(None, adm.kid, adm.ts)
        >>> len(et.release().held), et.notify_at().timestamp()
        (0, 101.0)
        >>> now[0] = 101.0
        >>> et.release().held.ts.tolist(), et.watermark("k")
        ([5000000], 5000000)
    """

    def __init__(
        self,
        *,
        max_delay: timedelta,
        guard: timedelta = timedelta(0),
        ttl: timedelta | None = None,
        idle_release: timedelta | None = None,
        max_future: timedelta | None = None,
        idle_advance: bool = False,
        width: int = 0,
        clock: Callable[[], float] = time.time,
        resume: dict[str, Any] | None = None,
    ) -> None:
        if max_delay < timedelta(0):
            raise ValueError(f"max_delay must be >= 0; got {max_delay}")
        if guard < timedelta(0):
            raise ValueError(f"guard must be >= 0; got {guard}")
        if ttl is not None and ttl <= timedelta(0):
            raise ValueError(f"ttl must be > 0 or None; got {ttl}")
        if idle_release is not None and idle_release <= timedelta(0):
            raise ValueError(f"idle_release must be > 0 or None; got {idle_release}")
        if max_future is not None and max_future < timedelta(0):
            raise ValueError(f"max_future must be >= 0 or None; got {max_future}")
        self.delay = micros(max_delay)
        self.guard = micros(guard)
        self.ttl = None if ttl is None else micros(ttl)
        self.idle = None if idle_release is None else idle_release.total_seconds()
        self.max_future = None if max_future is None else micros(max_future)
        self.width = width
        self.clock = clock
        self.kid_of: dict[Any, int] = {}
        self.keys: list[Any] = []  # key of each id; None for a free id
        self.free: list[int] = []
        self.kmax = np.full(16, _NONE, dtype=np.int64)
        self.forgotten_max: int | None = None
        self.newest = _NONE  # newest accepted time of the shard (the TTL clock)
        self.swept = _NONE
        self.rows = HeldRows(width)
        self.advance = idle_advance
        # idle advance: a key's watermark is max(kmax - delay, adv_base + wall time since adv_since)
        self.adv_base = np.full(16, _NONE, dtype=np.int64)
        self.adv_since = np.zeros(16)
        if resume is not None:
            self._restore(resume)

    # -- held rows --------------------------------------------------------

    @property
    def held(self) -> Held:
        """The held rows, in arrival order: views, valid until the next hold or release.

        An operator may replace its ``frame`` (the same rows, columns added):
        the held rows keep the new one.
        """
        return self.rows.view()

    # -- keys -----------------------------------------------------------

    def kids(self, keys: Sequence[Any] | pl.Series) -> np.ndarray:
        """The id of each key, allocating ids for new keys."""
        if isinstance(keys, pl.Series):
            if isinstance(keys.dtype, (pl.Categorical, pl.Enum)):
                keys = keys.cast(pl.String)
            uniq, inverse = _distinct(keys)
            get = self.kid_of.get
            values = uniq.to_list()
            ids = [get(k) for k in values]
            if None in ids:  # new keys get ids in sorted order: the same on every run
                self._new_kids(sorted(k for k, v in zip(values, ids) if v is None))
                ids = [get(k) for k in values]
            return np.array(ids, dtype=np.int64)[inverse]
        get = self.kid_of.get
        try:  # a None (a new key) raises: cheaper than looking for one (~2x on 100 keys)
            return np.fromiter(map(get, keys), np.int64, len(keys))
        except TypeError:  # new keys get ids in order of first arrival
            new = [k for k in keys if k not in self.kid_of]
            self._new_kids(list(dict.fromkeys(new)))
            return np.fromiter(map(get, keys), np.int64, len(keys))

    def _new_kids(self, new: list[Any]) -> None:
        """Give each of ``new`` (distinct keys without an id) an id: freed ids first, last freed
        first, then new ones; all at once (a call per key was most of the cost of a batch of
        new keys, e.g. event ids)."""
        cut = len(self.free) - min(len(self.free), len(new))
        reused = self.free[cut:][::-1]  # last freed first
        del self.free[cut:]
        keys = self.keys
        for key, kid in zip(new, reused):
            keys[kid] = key
        start = len(self.keys)
        rest = new[len(reused) :]
        self.keys.extend(rest)
        if len(self.keys) > len(self.kmax):
            size = len(self.kmax)
            while size < len(self.keys):
                size *= 2
            grown = np.full(size, _NONE, dtype=np.int64)
            grown[: len(self.kmax)] = self.kmax
            self.kmax = grown
        ids = reused + list(range(start, start + len(rest)))
        self.kmax[ids] = _NONE
        self.kid_of.update(zip(new, ids))

    def key_of(self, kid: int) -> Any:
        """The key of an id."""
        return self.keys[kid]

    def watermark(self, key: Any) -> int | None:
        """The key's watermark in microseconds, or ``None`` for a key with no accepted row."""
        kid = self.kid_of.get(key)
        if kid is None or self.kmax[kid] == _NONE:
            return None
        return int(self.kmax[kid]) - self.delay

    def future_limit(self) -> int | None:
        """The latest event time accepted now (``max_future`` past the wall clock), or ``None``."""
        if self.max_future is None:
            return None
        return int(self.clock() * 1e6) + self.max_future

    # -- admit, hold, release -------------------------------------------

    def admit(self, keys: Sequence[Any] | pl.Series, ts: np.ndarray) -> Admission:
        """Judge a batch of rows (in arrival order) and advance the watermarks with the accepted.

        ``ts`` must lie in ``[MIN_TS, MAX_TS]`` (operators reject others as
        ``BadTimestamp`` first).
        """
        ts = np.asarray(ts, dtype=np.int64)
        n = len(ts)
        idx = np.arange(n)
        future = _EMPTY_I
        limit = self.future_limit()
        if limit is not None and n and highest(ts) > limit:
            beyond = ts > limit
            future = idx[beyond]
            idx = idx[~beyond]
            ts_in = ts[~beyond]
            keys_in = keys.gather(idx) if isinstance(keys, pl.Series) else [keys[i] for i in idx]
        else:
            ts_in, keys_in = ts, keys
        kid = self.kids(keys_in) if len(idx) else _EMPTY_I
        seed = self.kmax[kid]
        if len(kid):
            # Every row within max_delay of the newest time any of its keys can have
            # seen (and above the TTL floor): none is late, no running maximum needed.
            low, high = lowest(ts_in), highest(ts_in)
            floor = None if self.forgotten_max is None else self.forgotten_max + self.guard
            if low >= max(highest(seed), high) - self.delay and (floor is None or low >= floor):
                np.maximum.at(self.kmax, kid, ts_in)
                self.newest = max(self.newest, high)
                if self.advance:
                    self._advance_from_rows(np.unique(kid))
                none = _EMPTY_I
                return Admission(idx, kid, ts_in, none, none, _EMPTY_B, future, none, keys, ts)
            if floor is None and self.delay < 1 << 61:
                quick = self._admit_by_runs(idx, kid, ts_in, seed, future, keys, ts)
                if quick is not None:
                    return quick
        prior = _prior_max(kid, ts_in, seed)
        known = prior != _NONE
        mark = np.where(known, prior - self.delay, _NONE)
        is_late = ts_in < mark
        by_floor = np.zeros(len(kid), dtype=bool)
        if self.forgotten_max is not None:
            floor = self.forgotten_max + self.guard
            # a key with no accepted row yet: the newest forgotten time guards it
            by_floor = (seed == _NONE) & (prior < floor)
            is_late = np.where(by_floor, ts_in < floor, is_late)
            mark = np.where(by_floor, floor, mark)
        ok = ~is_late
        if np.count_nonzero(ok):
            np.maximum.at(self.kmax, kid[ok], ts_in[ok])
            self.newest = max(self.newest, highest(ts_in[ok]))
            if self.advance:
                self._advance_from_rows(np.unique(kid[ok]))
        late_rows = is_late.nonzero()[0]
        return Admission(
            ok=idx[ok],
            kid=kid[ok],
            ts=ts_in[ok],
            late=idx[late_rows],
            late_mark=mark[late_rows],
            late_unknown=by_floor[late_rows],
            future=future,
            _seen=prior[late_rows],
            _keys=keys,
            _all_ts=ts,
        )

    def _admit_by_runs(
        self,
        idx: np.ndarray,
        kid: np.ndarray,
        ts: np.ndarray,
        seed: np.ndarray,
        future: np.ndarray,
        keys: Sequence[Any] | pl.Series,
        all_ts: np.ndarray,
    ) -> Admission | None:
        """:meth:`admit` when no key was forgotten and the batch is a few runs of
        non-decreasing times (e.g. one chunk per side), else ``None``.

        A row's earlier rows in its own run are no newer than it, so it is late
        only against its key's newest time before the batch and in the earlier
        runs: one gather and one comparison per run, no sort.
        """
        delay = self.delay  # < 2**61: ts + delay does not wrap
        n = len(kid)
        starts = (ts[1:] < ts[:-1]).nonzero()[0]
        if len(starts) > 15:
            return None
        if not len(starts):
            late_rows = (ts + delay < seed).nonzero()[0]  # seed _NONE: never late
            prior = seed[late_rows]
            kmax = None
        else:
            kmax = self.kmax.copy()
            bounds = [0, *(starts + 1).tolist(), n]
            lates, priors = [], []
            for a, b in zip(bounds[:-1], bounds[1:]):
                k, t = kid[a:b], ts[a:b]
                p = seed[a:b] if a == 0 else kmax[k]
                late = (t + delay < p).nonzero()[0]
                if len(late):
                    lates.append(late + a)
                    priors.append(p[late])
                # late rows too: each is below its key's newest time already
                np.maximum.at(kmax, k, t)
            late_rows = np.concatenate(lates) if lates else _EMPTY_I
            prior = np.concatenate(priors) if priors else _EMPTY_I
        if len(late_rows) == n:
            return None
        if kmax is None:
            np.maximum.at(self.kmax, kid, ts)
        else:
            self.kmax = kmax
        # the batch's newest row is never late (only a newer time can make a row late)
        self.newest = max(self.newest, highest(ts))
        if not len(late_rows):
            if self.advance:
                self._advance_from_rows(np.unique(kid))
            none = _EMPTY_I
            return Admission(idx, kid, ts, none, none, _EMPTY_B, future, none, keys, all_ts)
        ok = np.ones(n, dtype=bool)
        ok[late_rows] = False
        ok_rows = ok.nonzero()[0]
        kid_ok = kid[ok_rows]
        if self.advance:
            self._advance_from_rows(np.unique(kid_ok))
        return Admission(
            ok=idx[ok_rows],
            kid=kid_ok,
            ts=ts[ok_rows],
            late=idx[late_rows],
            late_mark=prior - delay,
            late_unknown=np.zeros(len(late_rows), dtype=bool),
            future=future,
            _seen=prior,
            _keys=keys,
            _all_ts=all_ts,
        )

    def hold(
        self,
        frame: pl.DataFrame | None,
        kid: np.ndarray,
        ts: np.ndarray,
        data: np.ndarray | None = None,
    ) -> None:
        """Hold accepted rows (the ``ok`` rows of an :class:`Admission`, in arrival order).

        ``ts`` is when each row is due: usually its event time, but an
        operator may hold a row until a later time of its own (a join keeps
        a row until its key's watermark passes ``ts + upper``); the row is
        released once its key's watermark reaches that time, and sorted by
        it. Idle release then moves the key's watermark up to it.

        Examples:
            >>> et = KeyedEventTime(max_delay=timedelta(0))
            >>> adm = et.admit(["a"], np.array([10]))
            >>> et.hold(None, adm.kid, adm.ts + 5)  # due at 15
            >>> len(et.release().held)
            0
            >>> adm = et.admit(["a"], np.array([15]))
            >>> et.release().held.ts.tolist()
            [15]
        """
        n = len(kid)
        if not n:
            return
        if data is None:
            data = np.zeros((n, self.width))
        elif data.shape != (n, self.width):
            data = data.reshape(n, self.width)
        self.rows.add(frame, kid, ts, self.clock(), data)

    def holdable(self, frame: pl.DataFrame) -> str | None:
        """Why ``frame``'s columns cannot join the held rows' (``None`` if they can)."""
        held = self.rows.joined()
        if held is None or not held.height or held.schema == frame.schema:
            return None
        try:  # not _concat: it skips the check when either side has no rows
            pl.concat([held.head(0), frame.head(0)], how="diagonal_relaxed")
        except Exception as exc:  # noqa: BLE001 - polars names the clash
            return f"columns do not fit the rows held from earlier batches: {exc}"
        return None

    def release(self, *, eof: bool = False) -> Released:
        """Release the rows whose key's watermark reached them (all of them at ``eof``)."""
        gone = self._sweep()
        delay = self.delay
        rows = self.rows
        if (
            not eof
            and not len(gone)
            and self.idle is None
            and not self.advance
            and rows.due_min > self.newest - delay
        ):  # no key's watermark passes the newest time of the shard: nothing is due
            return Released(Held.empty(self.width), gone)
        if not len(rows):
            return Released(Held.empty(self.width), gone, self._free(gone))
        kid, ts, arrived, alive = rows.columns()  # by position; alive None: no dead rows
        if self.idle is not None:
            waited = arrived + self.idle <= self.clock()
            if alive is not None:
                waited &= alive
            if np.count_nonzero(waited):  # released early: the key's watermark moves up to it
                np.maximum.at(self.kmax, kid[waited], ts[waited] + delay)
        if self.advance:
            passed = ts <= self.marks(kid)
            if alive is not None:
                passed &= alive
            if np.count_nonzero(passed):  # the wall clock released it: its key's watermark too
                np.maximum.at(self.kmax, kid[passed], ts[passed] + delay)
        if eof:
            released = rows.pop_all()
        else:  # even at max_delay=0: a row may be held until a time past its own (see hold)
            out = ts <= self.kmax[kid] - delay
            if len(gone):
                out |= np.isin(kid, gone)
            if alive is not None:
                out &= alive
            # index arrays, not masks: ndarray.nonzero skips flatnonzero's wrappers, and
            # taking by index is several times cheaper than by mask on a few hundred rows
            idx = out.nonzero()[0]
            if len(idx) == len(rows):
                released = rows.pop_all()
            elif not len(idx):
                released = Held.empty(self.width)
            else:
                released = rows.take(idx)
                rows.drop(idx)
        if len(released) > 1:
            ts = released.ts
            if np.count_nonzero(ts[1:] < ts[:-1]):
                released = released.take(np.argsort(ts, kind="stable"))
        return Released(released, gone, self._free(gone))

    def close(self) -> None:
        """After releasing everything at end of input: every key's watermark is its newest time."""
        known = self.kmax != _NONE
        self.kmax[known] += self.delay

    def notify_at(self) -> datetime | None:
        """When the oldest held row will have waited ``idle_release`` (if set), or the wall clock
        will have moved a quiet key's watermark to a held row (``idle_advance``)."""
        if (self.idle is None and not self.advance) or not len(self.rows):
            return None
        kid, ts, arrived, alive = self.rows.columns()
        if alive is not None:
            kid, ts, arrived = kid[alive], ts[alive], arrived[alive]
        due = np.inf
        if self.idle is not None:
            due = float(arrived.min()) + self.idle
        if self.advance:
            due = min(due, float(self.wall_time_of(kid, ts).min()))
        return datetime.fromtimestamp(due, tz=timezone.utc)

    # -- idle advance -----------------------------------------------------

    def _grow_advance(self) -> None:
        n = len(self.kmax)
        if len(self.adv_base) < n:
            base = np.full(n, _NONE, dtype=np.int64)
            base[: len(self.adv_base)] = self.adv_base
            since = np.zeros(n)
            since[: len(self.adv_since)] = self.adv_since
            self.adv_base, self.adv_since = base, since

    def _advance_from_rows(self, kids: np.ndarray) -> None:
        """Keys whose newest row rose: their clock restarts where the rows put the watermark."""
        self._grow_advance()
        now = self.clock()
        mark = self.kmax[kids] - self.delay
        base = self.adv_base[kids]
        ahead = base + (np.maximum(now - self.adv_since[kids], 0.0) * 1e6).astype(np.int64)
        up = (base == _NONE) | (mark > ahead)  # a new key, or rows ahead of the clock
        self.adv_base[kids[up]] = mark[up]
        self.adv_since[kids[up]] = now

    def marks(self, kids: np.ndarray, now: float | None = None) -> np.ndarray:
        """The watermark of each key id (µs), the wall clock's advance included; ``_NONE``-like
        minimum for a key with no accepted row.

        Without ``idle_advance`` this is each key's newest time minus ``max_delay``.

        Examples:
            >>> now = [100.0]
            >>> et = KeyedEventTime(max_delay=timedelta(microseconds=5), idle_advance=True,
            ...                     clock=lambda: now[0])
            >>> adm = et.admit(["a", "b"], np.array([10, 50]))
            >>> now[0] = 100.000020  # 20 µs of wall clock with no row
            >>> et.marks(adm.kid).tolist()
            [25, 65]
            >>> adm = et.admit(["a"], np.array([12]))  # not late: the clock alone makes nothing late
            >>> len(adm.ok), et.marks(adm.kid).tolist()
            (1, [25])
            >>> adm = et.admit(["a"], np.array([40]))  # rows ahead of the clock: it restarts there
            >>> et.marks(adm.kid).tolist(), round(float(et.wall_time_of(adm.kid, np.array([45]))[0]), 6)
            ([35], 100.00003)
        """
        kids = np.asarray(kids, dtype=np.int64)
        kmax = self.kmax[kids]
        event = np.where(kmax == _NONE, _NONE, kmax - self.delay)
        if not self.advance:
            return event
        self._grow_advance()
        now = self.clock() if now is None else now
        base = self.adv_base[kids]
        waited = np.maximum(now - self.adv_since[kids], 0.0) * 1e6
        clock = np.where(base == _NONE, _NONE, base + waited.astype(np.int64))
        return np.maximum(event, clock)

    def wall_time_of(self, kids: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Wall-clock seconds at which each key's watermark reaches ``ts`` (``inf`` if never:
        no ``idle_advance``, or a key with no row; a past time if it already has)."""
        kids = np.asarray(kids, dtype=np.int64)
        ts = np.asarray(ts, dtype=np.int64)
        if not self.advance:
            return np.where(self.marks(kids) >= ts, -np.inf, np.inf)
        self._grow_advance()
        base = self.adv_base[kids]
        known = base != _NONE
        due = np.where(known, self.adv_since[kids] + (ts - np.where(known, base, 0)) / 1e6, np.inf)
        return np.where(self.marks(kids) >= ts, np.minimum(due, self.clock()), due)

    def _sweep(self) -> np.ndarray:
        """Key ids idle for ``ttl`` (checked when the newest time moved a quarter ``ttl``)."""
        ttl = self.ttl
        if ttl is None or self.newest == _NONE or self.newest - self.swept < ttl // 4:
            return _EMPTY_I
        self.swept = self.newest
        used = np.ones(len(self.keys), dtype=bool)
        used[self.free] = False
        kmax = self.kmax[: len(self.keys)]
        gone = np.flatnonzero(used & (kmax < self.newest - ttl))
        if len(gone):
            seen = kmax[gone]
            seen = seen[seen != _NONE]
            if len(seen):
                top = int(seen.max())
                if self.forgotten_max is None or top > self.forgotten_max:
                    self.forgotten_max = top
        return gone

    def _free(self, gone: np.ndarray) -> list[Any]:
        """Forget the keys of ``gone``; returns those keys."""
        if not len(gone):
            return []
        ids = gone.tolist()
        all_keys, kid_of = self.keys, self.kid_of
        keys = [all_keys[kid] for kid in ids]
        for kid, key in zip(ids, keys):
            del kid_of[key]
            all_keys[kid] = None
        self.kmax[gone] = _NONE
        self.free.extend(ids)
        if self.advance:
            self.adv_base[gone[gone < len(self.adv_base)]] = _NONE
        return keys

    # -- snapshot ---------------------------------------------------------

    def snapshot_data(self) -> dict[str, Any]:
        """The state as builtins and NumPy arrays (copies), for a versioned snapshot."""
        held = self.held
        return {
            "keys": list(self.keys),
            "kmax": self.kmax[: len(self.keys)].copy(),
            "forgotten_max": self.forgotten_max,
            "newest": self.newest,
            "swept": self.swept,
            "held_frame": None if held.frame is None else frame_to_bytes(held.frame),
            "held_kid": held.kid.copy(),
            "held_ts": held.ts.copy(),
            "held_arrived": held.arrived.copy(),
            "held_data": held.data.copy(),
            # idle advance: each key's watermark now, where its clock restarts after a restore
            **({"adv_mark": self.marks(np.arange(len(self.keys)))} if self.advance else {}),
        }

    def _restore(self, data: dict[str, Any]) -> None:
        self.keys = list(data["keys"])
        self.kid_of = {k: i for i, k in enumerate(self.keys) if k is not None}
        self.free = [i for i, k in enumerate(self.keys) if k is None]
        self.kmax = np.full(max(16, 2 * len(self.keys)), _NONE, dtype=np.int64)
        self.kmax[: len(self.keys)] = data["kmax"]
        self.forgotten_max = data["forgotten_max"]
        self.newest = data["newest"]
        self.swept = data["swept"]
        frame = data["held_frame"]
        self.rows = HeldRows(self.width)
        kid = np.array(data["held_kid"], dtype=np.int64)
        self.rows.add(
            None if frame is None else frame_from_bytes(frame),
            kid,
            np.array(data["held_ts"], dtype=np.int64),
            np.array(data["held_arrived"], dtype=np.float64),
            # rows x width, not -1: numpy cannot infer the rows of an empty (n, 0) array
            np.array(data["held_data"], dtype=np.float64).reshape(len(kid), self.width),
        )
        if self.advance:  # downtime is not idleness: the clock restarts from the stored watermark
            self._grow_advance()
            n = len(self.keys)
            stored = data.get("adv_mark")
            if stored is None:
                known = self.kmax[:n] != _NONE
                stored = np.where(known, self.kmax[:n] - self.delay, _NONE)
            self.adv_base[:n] = stored
            self.adv_since[:n] = self.clock()
