"""inactivity: silences against a brute-force reference, the wall clock, snapshots, bad input."""

from __future__ import annotations

import pickle
import random
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

import bytewax.operators as op
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators._core.event_time import KeyedEventTime
from streamml.operators.anomaly import inactivity
from streamml.operators.anomaly import silence as silence_mod

from streamml.errors import Rejected

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
MIN = timedelta(minutes=1)


def _arrivals(times: dict[str, list[int]], lateness: int, seed: int) -> list[tuple[str, int]]:
    """Every (key, minute) row, arriving in order of time plus a jitter below ``lateness``:
    no row arrives after a row ``lateness`` newer than it, of any key."""
    rng = random.Random(seed)
    rows = [(k, t) for k, ts in times.items() for t in ts]
    jit = [rng.random() * lateness for _ in rows]
    return [r for _, r in sorted(zip([t + j for (_, t), j in zip(rows, jit)], rows))]


def _reference(times: dict[str, list[int]], after: int, lateness: int) -> set[tuple[str, int]]:
    """(key, last seen) of every silence: a gap over ``after`` between a key's rows, or its last
    row over ``after`` behind the flow's final event time (newest row minus lateness)."""
    newest = max(t for ts in times.values() for t in ts)
    out = set()
    for k, ts in times.items():
        ts = sorted(set(ts))
        out |= {(k, a) for a, b in zip(ts, ts[1:]) if b - a > after}
        if newest - lateness > ts[-1] + after:
            out.add((k, ts[-1]))
    return out


def _frames(rows: list[tuple[str, int]], cuts: list[int]) -> list[pl.DataFrame]:
    frames, i = [], 0
    for c in [*cuts, len(rows)]:
        part = rows[i : i + c] if c < len(rows) else rows[i:]
        if part:
            frames.append(
                pl.DataFrame({"k": [k for k, _ in part], "t": [T0 + t * MIN for _, t in part]})
            )
        i += len(part)
        if i >= len(rows):
            break
    return frames


def _run(frames: list[Any], **kw: Any) -> tuple[list[dict], list[Rejected], list[Rejected]]:
    flow = Dataflow("quiet")
    s = op.input("in", flow, TestingSource(frames))
    out = inactivity("silent", s, key="k", timestamp="t", **kw)
    alerts: list[dict] = []
    errs: list[Rejected] = []
    late: list[Rejected] = []
    op.output("a", out.alerts, TestingSink(alerts))
    op.output("e", out.errs, TestingSink(errs))
    op.output("l", out.late, TestingSink(late))
    run_main(flow)
    return alerts, errs, late


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from("abcde"),
        st.lists(st.integers(0, 300), min_size=1, max_size=25),
        min_size=1,
    ),
    st.integers(1, 60),
    st.integers(0, 10),
    st.lists(st.integers(1, 40), max_size=5),
    st.integers(0, 1000),
)
def test_silences_match_bruteforce(times, after, lateness, cuts, seed):
    rows = _arrivals(times, lateness, seed)
    alerts, errs, late = _run(_frames(rows, cuts), after=after * MIN, lateness=lateness * MIN)
    got = [(a["key"], round((a["last_seen"] - T0) / MIN)) for a in alerts]
    assert len(got) == len(set(got))  # each silence once
    assert set(got) == _reference(times, after, lateness)
    assert all(a["silent_at"] - a["last_seen"] == after * MIN for a in alerts)
    assert errs == late == []


def _silences(now: list[float], resume: Any = None, after_s: int = 60) -> Any:
    """The operator's state on the clock ``now[0]``."""
    et = partial(KeyedEventTime, max_delay=timedelta(0), idle_advance=True, clock=lambda: now[0])
    return silence_mod._Silences("s", "t", "k", after_s * 1_000_000, lambda r: et(resume=r), resume)


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def test_wall_clock_reports_a_quiet_key_once():
    now = [1e9]
    state = _silences(now)
    frame = pl.DataFrame({"k": ["a"], "t": [_at(now[0])]})
    assert state.on_batch([frame])[0][0] == ([], [], [])
    now[0] += 5
    frame = pl.DataFrame({"k": ["b"], "t": [_at(now[0])]})
    assert state.on_batch([frame])[0][0] == ([], [], [])
    # a's watermark moves on with the wall clock from its row's arrival: past its row + 60 s
    assert state.notify_at() == _at(1e9 + 60 + 1e-6)
    now[0] = 1e9 + 61
    alerts, _, _ = state.on_notify()[0][0]
    assert [(a["key"], a["last_seen"]) for a in alerts] == [("a", _at(1e9))]
    assert state.notify_at() == _at(1e9 + 65 + 1e-6)  # then b's
    now[0] += 10
    alerts, _, _ = state.on_notify()[0][0]
    assert [a["key"] for a in alerts] == ["b"]
    assert state.notify_at() is None and state.on_notify()[0][0] == ([], [], [])
    # b comes back, long after: its silence was reported, not again; then quiet again: once more
    frame = pl.DataFrame({"k": ["b"], "t": [_at(now[0])]})
    assert state.on_batch([frame])[0][0] == ([], [], [])
    now[0] += 61
    assert [a["key"] for a in state.on_notify()[0][0][0]] == ["b"]


def test_snapshot_round_trip():
    now = [1e9]
    times = {"a": list(range(0, 400, 7)), "b": [0, 3, 90, 95, 300], "c": [1, 2]}
    rows = _arrivals({k: [t * 60 for t in v] for k, v in times.items()}, 0, 3)
    frames = [
        pl.DataFrame(
            {"k": [k for k, _ in part], "t": [T0 + t * timedelta(seconds=1) for _, t in part]}
        )
        for part in (rows[i : i + 9] for i in range(0, len(rows), 9))
    ]
    whole = _silences(now)
    want = [a for f in frames for a in whole.on_batch([f])[0][0][0]]
    first = _silences(now)
    got = [a for f in frames[:4] for a in first.on_batch([f])[0][0][0]]
    snap = pickle.loads(pickle.dumps(first.snapshot()))
    assert snap["state"] == "streamml.anomaly.inactivity" and snap["version"] == 1
    second = _silences(now, resume=snap)
    got += [a for f in frames[4:] for a in second.on_batch([f])[0][0][0]]
    assert got == want and len(want) >= 3


def test_bad_input_is_routed_not_raised():
    t = [T0 + i * MIN for i in range(4)]
    frames = [
        pl.DataFrame({"k": ["a", None, "b", "a"], "t": t}),
        "not a frame",
        pl.DataFrame({"k": ["a", "b"], "t": [None, T0 + 5 * MIN]}),
        pl.DataFrame({"k": ["a", "b"], "t": [T0 - 60 * MIN, T0 + 200 * MIN]}),  # a's row is late
    ]
    alerts, errs, late = _run(frames, after=10 * MIN)
    assert sorted(e.error_type for e in errs) == ["BadItem", "BadKey", "BadTimestamp"]
    assert [r.original["k"] for r in late] == ["a"]
    assert sorted((a["key"], a["last_seen"]) for a in alerts) == [
        ("a", T0 + 3 * MIN),
        ("b", T0 + 5 * MIN),
    ]


def test_build_time_validation():
    flow = Dataflow("v")
    s = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match="after"):
        inactivity("a", s, key="k", timestamp="t", after=timedelta(0))
    with pytest.raises(ValueError, match="ttl"):
        inactivity("b", s, key="k", timestamp="t", after=MIN, ttl=timedelta(seconds=30))
    with pytest.raises(ValueError, match="lateness"):
        inactivity("c", s, key="k", timestamp="t", after=MIN, lateness=-MIN)
