"""The joins' TimeIndex and IdSet against brute force: any times (coded or too wide for a code),
any insert order, rows killed and compacted; snapshots round-trip."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators._core.event_time import MAX_TS, MIN_TS
from streamml.operators.join._index import IdSet, TimeIndex

_TIMES = st.one_of(
    st.integers(0, 50),  # a narrow span: codes fit with room to grow
    st.integers(-(10**15), 10**15),  # wider: recoded as times arrive
    st.sampled_from([MIN_TS, MAX_TS, 0, 1, -1]),  # too wide for any code: per-key searches
)


@st.composite
def batches(draw):
    """Batches of (kid, ts) rows, and which earlier ids to kill before each batch."""
    out = []
    for _ in range(draw(st.integers(1, 5))):
        n = draw(st.integers(0, 12))
        kids = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
        times = draw(st.lists(_TIMES, min_size=n, max_size=n))
        kill = draw(st.lists(st.integers(0, 60), max_size=5))
        out.append((kids, times, kill))
    return out


def _brute(stored, kid, lo, hi):
    """Per query, the ids of stored rows of its key with lo <= ts <= hi, in (ts, id) order."""
    out = []
    for k, a, b in zip(kid, lo, hi):
        rows = sorted((t, i) for sk, t, i in stored if sk == k and a <= t <= b)
        out.append([i for _, i in rows])
    return out


@settings(max_examples=300, deadline=None)
@given(batches(), st.data())
def test_search_finds_exactly_the_rows_in_range(plan, data):
    ix = TimeIndex()
    stored: list[tuple[int, int, int]] = []  # (kid, ts, id) alive
    next_id = 0
    for kids, times, kill in plan:
        dead = [i for i in kill if any(s[2] == i for s in stored)]
        if dead:
            ix.kill(np.array(dead, dtype=np.int64))
            stored = [s for s in stored if s[2] not in dead]
            ix.compact()  # searches then see only the live rows
        ids = list(range(next_id, next_id + len(kids)))
        next_id += len(kids)
        ix.insert(np.array(kids, dtype=np.int64), np.array(times, dtype=np.int64), np.array(ids))
        stored += list(zip(kids, times, ids))
        assert len(ix) == len(stored)
        m = data.draw(st.integers(0, 6))
        top = max([k for k, _, _ in stored], default=-1) + 1
        qk = data.draw(st.lists(st.integers(0, top), min_size=m, max_size=m))
        lo = data.draw(st.lists(_TIMES, min_size=m, max_size=m))
        width = data.draw(st.lists(st.integers(0, 10**15), min_size=m, max_size=m))
        hi = [min(a + w, MAX_TS + (1 << 61)) for a, w in zip(lo, width)]
        q, pos = ix.search(np.array(qk, dtype=np.int64), np.array([lo, hi], dtype=np.int64))
        got = [[] for _ in range(m)]
        for qi, p in zip(q.tolist(), ix.ids[pos].tolist()):
            got[qi].append(p)
        assert got == _brute(stored, qk, lo, hi)
    # a snapshot restores the same rows
    back = TimeIndex(ix.snapshot_data())
    assert sorted(back.ids.tolist()) == sorted(i for _, _, i in stored)
    assert sorted(zip(back.kid.tolist(), back.ts.tolist())) == sorted((k, t) for k, t, _ in stored)


def test_a_span_too_wide_for_a_code_searches_per_key():
    ix = TimeIndex()
    ix.insert(np.array([0, 1, 0]), np.array([MIN_TS, 0, MAX_TS]), np.array([0, 1, 2]))
    assert ix.width == 0  # no code holds 2**63 of times
    q, pos = ix.search(np.array([0, 1]), np.array([[MIN_TS, -5], [MAX_TS, 5]]))
    assert list(zip(q.tolist(), ix.ids[pos].tolist())) == [(0, 0), (0, 2), (1, 1)]


def test_killed_rows_compact_once_half_are_dead():
    ix = TimeIndex()
    ix.insert(np.zeros(4, dtype=np.int64), np.arange(4), np.arange(4))
    ix.kill(np.array([0]))
    assert len(ix) == 3 and len(ix.ids) == 4  # marked, still stored
    ix.kill(np.array([1, 2]))
    assert len(ix) == 1 and ix.ids.tolist() == [3]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["add", "discard", "pop"]), st.integers(0, 30)), max_size=40)
)
def test_idset_is_a_set(ops):
    s, ref, top = IdSet(), set(), -1
    for op_, x in ops:
        if op_ == "add":
            top += 1 + x % 3
            s.add(np.array([top]))
            ref.add(top)
        elif op_ == "discard":
            s.discard(np.array([x, x]))
            ref.discard(x)
        else:
            got = s.pop(np.array([x]))
            assert got.tolist() == ([x] if x in ref else [])
            ref.discard(x)
        assert s.ids().tolist() == sorted(ref) and len(s) == len(ref)
