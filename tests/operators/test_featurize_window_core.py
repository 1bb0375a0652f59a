"""window_agg's state on a fake wall clock: idle advance, TTL, snapshots (no Bytewax, no sleeping)."""

from __future__ import annotations

import pickle
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators._core.state import restore, snapshot
from streamml.operators.featurize._window_core import Fixed, Sessions, Spec, Windows

S = 1_000_000  # µs


def spec(windows, *, delay=0, ttl=None, idle_advance=False) -> Spec:
    return Spec(
        step_id="w",
        fields=("x",),
        plan=((0, "count"), (0, "sum")),
        names=("x_count", "x_sum"),
        windows=windows,
        max_delay=timedelta(microseconds=delay),
        ttl=ttl,
        max_future=None,
        idle_advance=idle_advance,
    )


def feed(w: Windows, keys, ts) -> tuple[list, list]:
    """Admit and hold one batch, step; ``(closed windows, late batch rows)``."""
    w.tick()
    ts = np.asarray(ts, dtype=np.int64)
    adm = w.admit(list(keys), ts)
    w.hold(adm.kid, adm.ts, np.ones((len(adm.ok), 1)))
    return rows(w, w.step()), adm.late.tolist()


def rows(w: Windows, closed) -> list:
    return [
        (w.names[k], int(a), int(b), c)
        for k, a, b, c in zip(closed.kid.tolist(), closed.start, closed.end, closed.columns[0])
    ]


def test_a_window_the_clock_closed_makes_older_rows_late_not_a_second_window():
    now = [1000.0]
    w = Windows(spec(Fixed(10 * S, 10 * S, 0), idle_advance=True), clock=lambda: now[0])
    assert feed(w, ["a"], [1 * S]) == ([], [])
    assert w.notify_at() == pytest.approx(1009.0)  # the watermark reaches 10 s after 9 s
    now[0] = 1009.5
    w.tick()
    assert rows(w, w.step()) == [("a", 0, 10 * S, 1.0)]
    closed, late = feed(w, ["a", "a"], [5 * S, 12 * S])  # 5 s fell in the closed window
    assert (closed, late) == ([], [0])


def test_without_idle_advance_the_clock_changes_nothing():
    now = [1000.0]
    w = Windows(spec(Fixed(10 * S, 10 * S, 0)), clock=lambda: now[0])
    feed(w, ["a"], [1 * S])
    now[0] = 10**6
    w.tick()
    assert rows(w, w.step()) == [] and w.notify_at() is None
    assert feed(w, ["a"], [5 * S]) == ([], [])
    assert rows(w, w.step(eof=True)) == [("a", 0, 10 * S, 2.0)]


def test_a_session_closes_by_the_clock_once_its_gap_passed():
    now = [0.0]
    w = Windows(spec(Sessions(2 * S), idle_advance=True), clock=lambda: now[0])
    feed(w, ["a", "a"], [0, 1 * S])
    now[0] = 2.0  # watermark 3 s: the session's gap after 1 s not yet exceeded
    w.tick()
    assert rows(w, w.step()) == []
    now[0] = 2.1
    w.tick()
    assert rows(w, w.step()) == [("a", 0, 1 * S, 2.0)]
    assert feed(w, ["a"], [int(2.5 * S)]) == ([], [0])  # would have joined it: late


def test_a_key_idle_for_ttl_has_its_windows_closed_and_its_stale_rows_late():
    w = Windows(spec(Fixed(10 * S, 10 * S, 0), ttl=timedelta(seconds=60)))
    feed(w, ["a", "b"], [1 * S, 2 * S])
    closed, _ = feed(w, ["b"], [70 * S])  # a: idle 69 s of the shard's time
    assert ("a", 0, 10 * S, 1.0) in closed and ("b", 0, 10 * S, 1.0) in closed
    assert "a" not in w.et.kid_of
    assert feed(w, ["a"], [5 * S])[1] == [0]  # before the forgotten time + a window: late
    assert feed(w, ["a"], [75 * S]) == ([], [])  # a new start


@st.composite
def flows(draw):
    n = draw(st.integers(1, 40))
    keys = draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
    ts = draw(st.lists(st.integers(0, 60), min_size=n, max_size=n))
    cuts = sorted(set(draw(st.lists(st.integers(1, n), max_size=6))))
    return keys, [t * S // 2 for t in ts], cuts


@pytest.mark.parametrize(
    "windows", [Fixed(6 * S, 2 * S, 0), Sessions(3 * S)], ids=["sliding", "session"]
)
@settings(max_examples=40, deadline=None)
@given(flow=flows(), at=st.integers(0, 40))
def test_a_restored_snapshot_carries_on_as_if_uninterrupted(windows, flow, at):
    keys, ts, cuts = flow
    bounds = [0, *[c for c in cuts if c < len(keys)], len(keys)]
    batches = [(keys[a:b], ts[a:b]) for a, b in zip(bounds, bounds[1:])]
    at = min(at, len(batches))

    def run(w: Windows, part) -> list:
        out = []
        for k, t in part:
            out += feed(w, k, t)[0]
        return out

    whole = Windows(spec(windows, delay=2 * S))
    want = run(whole, batches) + rows(whole, whole.step(eof=True))
    first = Windows(spec(windows, delay=2 * S))
    got = run(first, batches[:at])
    record = pickle.loads(pickle.dumps(snapshot("k", 1, first.snapshot_data())))
    second = Windows(spec(windows, delay=2 * S), resume=restore(record, kind="k", version=1))
    got += run(second, batches[at:]) + rows(second, second.step(eof=True))
    assert sorted(got) == sorted(want)
