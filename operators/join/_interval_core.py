"""The matching core of :func:`~streamml.operators.join.interval_join`: one shard's state.

:class:`IntervalCore` holds a shard's per-key watermarks and stored rows,
finds the pairs of each batch (:class:`Pairs`) and evicts rows; the upgrades
of its snapshot record from earlier releases are here too. The Bytewax logic
and the operator, which read batches into it and write its pairs back, are
in :mod:`streamml.operators.join.interval`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, NamedTuple

import numpy as np
import polars as pl
from streamml.operators._core.event_time import KeyedEventTime
from streamml.operators.join._index import IdSet, TimeIndex
from streamml.operators.join._legacy import _IntervalState
from streamml.operators.join._shards import LEFT, RIGHT, clip

__all__ = ["IntervalCore", "Pairs"]

_EMPTY = np.zeros(0, dtype=np.int64)
_NO_LEFT = np.zeros(0, dtype=bool)
_NEVER = np.iinfo(np.int64).min  # event_time's "no time yet"
_WAIT_ROWS = 256  # an inner join releases at least every this many held rows


class Pairs(NamedTuple):
    """Pairs found in a batch, one entry per pair, in the order they completed.

    ``q`` is the row that completed a pair (its index among the batch's
    accepted rows) and ``qid`` its id, ``partner`` the id of the earlier
    row it met, and ``q_left`` whether the completing row is the left one.
    """

    q: np.ndarray
    partner: np.ndarray
    q_left: np.ndarray
    qid: np.ndarray

    def ids(self) -> tuple[np.ndarray, np.ndarray]:
        """``(left ids, right ids)``."""
        q_left, qid, partner = self.q_left, self.qid, self.partner
        return np.where(q_left, qid, partner), np.where(q_left, partner, qid)


_NO_PAIRS = Pairs(_EMPTY, _EMPTY, np.zeros(0, dtype=bool), _EMPTY)


class IntervalCore:
    """One shard of an interval join: per-key watermarks, stored rows, matching, eviction.

    Event time is :class:`~streamml.operators._core.event_time.KeyedEventTime`
    over both sides: a key's watermark is its newest accepted time (either
    side) minus ``lateness``; a row older than it on arrival is late.

    Matching is per batch, in NumPy: a batch's accepted rows go into one
    :class:`~streamml.operators.join._index.TimeIndex` of both sides, then
    each meets the other side's rows that arrived before it, so every pair
    comes out once, in the batch where its second row arrives — the pairs a
    row-by-row join gives. :class:`Pairs` lists them in the order they
    completed (the row path emits those a left row completed first).

    Eviction: every stored row is held in the event-time state until its
    key's watermark passes the last time a row that is not late could
    match it — ``ts + upper`` for a left row, ``ts - lower`` for a right
    row — and leaves then (an unmatched left row is then emitted by a left
    outer join). A key idle for ``ttl`` of its shard's event time is
    forgotten with its rows; rows of an unknown key older than the newest
    forgotten time plus the interval are late afterwards, so forgetting
    never loses a pair. ``idle_release`` (wall clock) lets a row leave
    early, moving its key's watermark to where it would have left.

    Rows are ids here (ascending in arrival order); the entry point keeps
    what an id stands for (the event, or a stored frame row).
    """

    def __init__(
        self,
        *,
        lower: int,
        upper: int,
        lateness: timedelta,
        outer: bool,
        ttl: timedelta | None,
        idle_release: timedelta | None = None,
        clock: Callable[[], float] = time.time,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.lower, self.upper, self.outer = clip(lower), clip(upper), outer
        lo, hi = self.lower, self.upper
        # for a row of side LEFT/RIGHT: the other side's times it matches, [t + lo, t + hi],
        # and when it is due to leave (its key's watermark past the last of them)
        self.reach = np.array([[lo, -hi], [hi, -lo], [hi + 1, 1 - lo]], dtype=np.int64)
        guard = timedelta(microseconds=max(self.upper, -self.lower, 0) + 1)
        self.et = KeyedEventTime(
            max_delay=lateness,
            guard=guard,
            ttl=ttl,
            idle_release=idle_release,
            width=2,
            clock=clock,
            resume=None if data is None else data["time"],
        )
        if data is None:
            self.index = TimeIndex()  # both sides: group = kid * 2 + side
            self.unmatched = IdSet()
            self.next_id = 0
        else:
            self.index = TimeIndex(_grouped(data["sides"]))
            self.unmatched = IdSet(data["unmatched"])
            self.next_id = data["next_id"]
        self.unreleased = 0  # rows held since the last release (see release's may_wait)
        self.waited = False  # a release waited: due rows may still be stored

    def add(
        self, sides: np.ndarray, keys: Sequence[Any] | pl.Series, ts: np.ndarray
    ) -> tuple[Any, np.ndarray, Pairs]:
        """Admit a batch (arrival order): ``(admission, an id for every row, new pairs)``.

        Every row gets an id, late ones too (they are never stored: a frame
        can be kept whole); the accepted rows' ids are ``ids[adm.ok]``.
        """
        adm = self.et.admit(keys, ts)
        all_ids = np.arange(self.next_id, self.next_id + len(ts), dtype=np.int64)
        self.next_id += len(ts)
        n = len(adm.ok)
        if not n:
            return adm, all_ids, _NO_PAIRS
        whole = n == len(sides)
        side = sides if whole else sides[adm.ok]
        ids = all_ids if whole else all_ids[adm.ok]
        kid, t = adm.kid, adm.ts
        # One index for both sides (group = kid * 2 + side). The batch goes in
        # first; then each new row meets the other side's rows that arrived
        # before it, so every pair is found once, by its later row, in a
        # row-by-row join's order (arrival, then the earlier row's time).
        group = kid * 2 + side
        index = self.index
        index.insert(group, t, ids)
        # per row: the other side's times it matches, [lo, hi], and when it is due to leave
        lo_hi_due = t + self.reach[:, side]
        q, pos = index.search(group ^ 1, lo_hi_due[:2])
        partner = index.ids[pos]
        qid = ids[q]
        earlier = partner < qid
        if not earlier.all():
            q, partner, qid = q[earlier], partner[earlier], qid[earlier]
        q_left = side[q] == LEFT
        if self.outer:
            self.unmatched.add(ids[side == LEFT])
            if len(q):
                self.unmatched.discard(np.where(q_left, qid, partner))
        data = np.empty((n, 2))
        data[:, 0] = ids
        data[:, 1] = side
        self.et.hold(None, kid, lo_hi_due[2], data)
        self.unreleased += n
        return adm, all_ids, Pairs(q, partner, q_left, qid)

    def release(
        self, *, eof: bool = False, may_wait: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Evict what no row can match any more.

        Returns ``(ids evicted, whether each is a left row, unmatched left ids
        among them)``; the unmatched ids are in release order (event time).

        With ``may_wait``, an inner join may keep due rows a little longer
        (until the rows held since the last release reach half the stored
        ones): a due row can never match a row that is not late, so only
        the state's size changes, never the output. A left outer join
        (due rows are emitted), idle release (wall clock) and a due TTL
        sweep (forgotten keys change lateness) never wait.
        """
        if may_wait and not eof and self._may_wait():
            self.waited = True
            return _EMPTY, _NO_LEFT, _EMPTY
        self.unreleased, self.waited = 0, False
        released = self.et.release(eof=eof)
        held = released.held
        lost = _EMPTY
        if len(held):
            ids = held.data[:, 0].astype(np.int64)
            is_left = held.data[:, 1] == LEFT
            if eof:  # everything leaves
                self.index = TimeIndex()
            else:
                self.index.kill(ids)
            if self.outer and len(self.unmatched):
                lost = self.unmatched.pop(ids[is_left])
        else:
            ids, is_left = _EMPTY, np.zeros(0, dtype=bool)
        if len(released.gone):  # forgotten keys: their ids are reused, their rows must go now
            self.index.compact()
        if eof:
            self.et.close()
        return ids, is_left, lost

    def _may_wait(self) -> bool:
        et = self.et
        return (
            not self.outer
            and et.idle is None
            and not et.advance
            and self.unreleased < max(_WAIT_ROWS, len(self.index) // 2)
            and (et.ttl is None or et.newest == _NEVER or et.newest - et.swept < et.ttl // 4)
        )

    def size(self) -> int:
        """Rows stored (for tests of bounded state)."""
        return len(self.index)

    def stored_keys(self) -> int:
        """Keys with stored rows (for tests of bounded state)."""
        return len(np.unique(self.index.live_kids() // 2))

    def snapshot_data(self) -> dict[str, Any]:
        stored = self.index.snapshot_data()
        side = stored["kid"] % 2
        sides = [{name: col[side == s] for name, col in stored.items()} for s in (LEFT, RIGHT)]
        for one in sides:
            one["kid"] //= 2
        return {
            "time": self.et.snapshot_data(),
            "sides": sides,
            "unmatched": self.unmatched.ids().copy(),
            "next_id": self.next_id,
        }


def _grouped(sides: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The snapshot's stored rows of both sides as one index's rows (group = kid * 2 + side)."""
    kid = [np.asarray(one["kid"], dtype=np.int64) * 2 + s for s, one in enumerate(sides)]
    return {
        "kid": np.concatenate(kid),
        "ts": np.concatenate([one["ts"] for one in sides]).astype(np.int64),
        "ids": np.concatenate([one["ids"] for one in sides]).astype(np.int64),
    }


def _from_legacy(state: _IntervalState, lower: int, upper: int) -> dict[str, Any]:
    """The previous release's shard state as the version-1 record of a row join.

    The old state kept one watermark per shard; each of its keys gets that
    shard's newest time as its own (no row it held becomes late), and the
    stored rows keep their order and their matched flags.
    """
    keys: list[str] = []
    kid_of: dict[str, int] = {}
    sides: list[list] = [[], []]
    unmatched: list[tuple[int, tuple[str, Any]]] = []
    next_id = 0
    held_kid, held_ts, held_data = [], [], []
    for s, buffers in enumerate((state.lefts, state.rights)):
        for key, buf in buffers.items():
            kid = kid_of.setdefault(key, len(keys))
            if kid == len(keys):
                keys.append(key)
            ids = list(range(next_id, next_id + len(buf.ts)))
            next_id += len(ids)
            sides[s].append((kid, list(buf.ts), ids, list(buf.items)))
            for i, t, item, matched in zip(ids, buf.ts, buf.items, buf.matched, strict=True):
                if s == LEFT and not matched:
                    unmatched.append((i, (key, item)))
                held_kid.append(kid)
                held_ts.append(t + upper + 1 if s == LEFT else t - lower + 1)
                held_data.append((float(i), float(s)))
    newest = state.max_seen
    time_data = {
        "keys": keys,
        "kmax": np.full(len(keys), newest, dtype=np.int64),
        "forgotten_max": None,
        "newest": newest if keys else np.iinfo(np.int64).min,
        "swept": np.iinfo(np.int64).min,
        "held_frame": None,
        "held_kid": np.array(held_kid, dtype=np.int64),
        "held_ts": np.array(held_ts, dtype=np.int64),
        "held_arrived": np.full(len(held_kid), time.time()),
        "held_data": np.array(held_data, dtype=np.float64).reshape(-1, 2),
    }
    order = np.argsort(time_data["held_ts"], kind="stable")
    for name in ("held_kid", "held_ts", "held_arrived", "held_data"):
        time_data[name] = time_data[name][order]
    core = {"time": time_data, "sides": sides, "unmatched": unmatched, "next_id": next_id}
    return {"path": "rows", "core": core}


def _from_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 (per-key lists of stored rows) as version 2 (one sorted array per side)."""
    core = data["core"]
    sides, events = [], {}
    for stored in core["sides"]:
        kid, ts, ids = [], [], []
        for k, t, i, refs in stored:
            kid += [k] * len(t)
            ts += list(t)
            ids += list(i)
            events.update(zip(i, refs))
        arrays = (np.array(x, dtype=np.int64) for x in (kid, ts, ids))
        sides.append(dict(zip(("kid", "ts", "ids"), arrays)))
    unmatched = sorted(i for i, _ in core["unmatched"])
    new_core = {
        "time": core["time"],
        "sides": sides,
        "unmatched": np.array(unmatched, dtype=np.int64),
        "next_id": core["next_id"],
    }
    out = {**data, "core": new_core}
    if data["path"] == "rows":
        ids = sorted(events)
        keys = dict(core["unmatched"])
        out["events"] = {
            "ids": ids,
            "events": [events[i] for i in ids],
            "keys": [keys[i][0] for i in unmatched],
        }
    return out
