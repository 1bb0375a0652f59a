"""interval_join: equal to a brute-force join whatever the interleaving within the lateness bound."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.join import interval_join
from streamml.operators.join._shards import LEFT, RIGHT, micros
from streamml.operators.join.interval import _Config, _RowLogic

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ts(event: dict) -> datetime:
    return event["ts"]


def chunks(rows):
    """``(side, key, event)`` rows as the row path's chunks: runs of one side, in arrival order."""
    out = []
    for side, key, event in rows:
        if out and out[-1][0] == side:
            out[-1][1].append((key, event))
        else:
            out.append((side, [(key, event)]))
    return out


def brute_force(lefts, rights, lower, upper, outer):
    """All (left id, right id) pairs, and (left id, None) for unmatched lefts if outer."""
    out = Counter()
    for lk, left in lefts:
        matched = False
        for rk, right in rights:
            if lk == rk and left["ts"] + lower <= right["ts"] <= left["ts"] + upper:
                out[(lk, left["id"], right["id"])] += 1
                matched = True
        if outer and not matched:
            out[(lk, left["id"], None)] += 1
    return out


def as_counter(oks):
    return Counter((k, left["id"], right and right["id"]) for k, (left, right) in oks)


@st.composite
def arrivals(draw, max_items=40):
    """Items (side, key, event) in arrival order, each within ``lateness`` of all before it."""
    lateness = draw(st.integers(0, 5))
    n = draw(st.integers(0, max_items))
    steps = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    jitter = draw(st.lists(st.integers(0, lateness), min_size=n, max_size=n))
    sides = draw(st.lists(st.sampled_from([LEFT, RIGHT]), min_size=n, max_size=n))
    keys = draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
    base, items = 0, []
    for i in range(n):
        base += steps[i]
        items.append((sides[i], keys[i], {"id": i, "ts": at(base - jitter[i])}))
    cuts = draw(st.lists(st.integers(0, n), max_size=6))
    return lateness, items, sorted(set(cuts))


def row_logic(lower_us, upper_us, lateness, outer, ttl=timedelta(days=1), idle=None, clock=None):
    kw = {} if clock is None else {"clock": clock}
    cfg = _Config("t", lower_us, upper_us, lateness, outer, ttl, idle, getters=(ts, ts), **kw)
    return _RowLogic(cfg, None)


def run_logic(items, cuts, lower, upper, lateness, outer):
    logic = row_logic(micros(lower), micros(upper), lateness, outer)
    oks, late = [], []
    bounds = [0, *cuts, len(items)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        if a < b:
            out, _ = logic.on_batch(chunks(items[a:b]))
            for o, _e, lt in out:
                oks += o
                late += lt
    out, _ = logic.on_eof()
    for o, _e, _l in out:
        oks += o
    return oks, late


@settings(max_examples=300, deadline=None)
@given(
    arrivals(),
    st.integers(-4, 4),
    st.integers(0, 6),
    st.booleans(),
)
def test_interval_join_matches_bruteforce(arr, lower_s, width_s, outer):
    lateness_s, items, cuts = arr
    lower, upper = timedelta(seconds=lower_s), timedelta(seconds=lower_s + width_s)
    oks, late = run_logic(items, cuts, lower, upper, timedelta(seconds=lateness_s), outer)
    assert late == []
    lefts = [(k, e) for s, k, e in items if s == LEFT]
    rights = [(k, e) for s, k, e in items if s == RIGHT]
    assert as_counter(oks) == brute_force(lefts, rights, lower, upper, outer)


@settings(max_examples=100, deadline=None)
@given(arrivals(max_items=25))
def test_outer_emits_every_unmatched_left_exactly_once(arr):
    lateness_s, items, cuts = arr
    lower, upper = timedelta(0), timedelta(seconds=2)
    oks, _ = run_logic(items, cuts, lower, upper, timedelta(seconds=lateness_s), True)
    got_lefts = Counter(left["id"] for _, (left, right) in oks if right is None)
    assert all(n == 1 for n in got_lefts.values())
    matched = {left["id"] for _, (left, right) in oks if right is not None}
    lefts = {e["id"] for s, _, e in items if s == LEFT}
    assert set(got_lefts) == lefts - matched


def test_late_events_go_to_late_and_do_not_join():
    items = [
        (LEFT, "a", {"id": 0, "ts": at(100)}),
        (RIGHT, "a", {"id": 1, "ts": at(90)}),  # 10 s behind, lateness 5 s
        (RIGHT, "a", {"id": 2, "ts": at(97)}),
    ]
    oks, late = run_logic(
        items, [], timedelta(seconds=-5), timedelta(seconds=5), timedelta(seconds=5), False
    )
    assert as_counter(oks) == Counter({("a", 0, 2): 1})
    assert [(r.error_type, r.original[1]["id"]) for r in late] == [("Late", 1)]


def test_state_stays_bounded_with_key_churn():
    # Each key goes quiet for good: the TTL (event time of its shard) forgets it.
    logic = row_logic(0, micros(timedelta(seconds=10)), timedelta(0), True, timedelta(seconds=10))
    sizes = []
    for chunk in range(40):
        batch = []
        for i in range(500):
            n = chunk * 500 + i
            key = f"k{n // 20}"  # each key lives for 20 events, then never returns
            side = LEFT if n % 2 else RIGHT
            batch.append((side, key, {"id": n, "ts": at(n / 10)}))
        logic.on_batch(chunks(batch))
        core = logic.core
        keys = core.stored_keys()
        sizes.append((core.size(), keys, len(core.et.held) + len(core.et.kid_of)))
    assert max(s[0] for s in sizes[5:]) <= 2 * sizes[5][0] + 10
    assert max(s[1] for s in sizes[5:]) <= 2 * sizes[5][1] + 10
    assert max(s[2] for s in sizes[5:]) <= 2 * sizes[5][2] + 10
    assert sizes[-1][0] < 300  # 10 s of events at 10 per second, both sides


def test_bad_timestamp_goes_to_errs_rest_of_batch_joins():
    logic = row_logic(0, micros(timedelta(seconds=5)), timedelta(0), False)
    out, _ = logic.on_batch(
        chunks(
            [
                (LEFT, "a", {"id": 0, "ts": at(0)}),
                (RIGHT, "a", {"id": 1, "ts": datetime(2024, 1, 1)}),  # naive
                (RIGHT, "a", {"id": 2}),  # no ts
                (RIGHT, "a", {"id": 3, "ts": at(1)}),
            ]
        )
    )
    ((oks, errs, late),) = out
    assert as_counter(oks) == Counter({("a", 0, 3): 1})
    assert sorted(e.original[1]["id"] for e in errs) == [1, 2]
    assert {e.error_type for e in errs} == {"TypeError", "KeyError"}


def _flow_join(lefts, rights, **kwargs):
    flow = Dataflow("ij")
    left = op.input("left", flow, TestingSource(lefts, batch_size=7))
    right = op.input("right", flow, TestingSource(rights, batch_size=5))
    out = interval_join("join", left, right, left_ts=ts, **kwargs)
    oks, late = [], []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("late", out.late, TestingSink(late))
    run_main(flow)
    return oks, late


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 60)), max_size=30),
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 60)), max_size=30),
    st.integers(1, 7),
    st.booleans(),
)
def test_dataflow_matches_bruteforce(lspec, rspec, shards, outer):
    # Lateness covers the whole span, so any arrival order of the two inputs is in bound.
    lefts = [(k, {"id": f"l{i}", "ts": at(t)}) for i, (k, t) in enumerate(lspec)]
    rights = [(k, {"id": f"r{i}", "ts": at(t)}) for i, (k, t) in enumerate(rspec)]
    lower, upper = timedelta(seconds=-3), timedelta(seconds=10)
    oks, late = _flow_join(
        lefts,
        rights,
        lower=lower,
        upper=upper,
        lateness=timedelta(seconds=61),
        how="left" if outer else "inner",
        shards=shards,
    )
    assert late == []
    assert as_counter(oks) == brute_force(lefts, rights, lower, upper, outer)


def test_misconfiguration_raises_at_build_time():
    flow = Dataflow("bad")
    s = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match="upper must be >= lower"):
        interval_join("j", s, s, left_ts=ts, lower=timedelta(1), upper=timedelta(0))
    with pytest.raises(ValueError, match="how must be"):
        interval_join("j2", s, s, left_ts=ts, lower=timedelta(0), upper=timedelta(1), how="full")
    with pytest.raises(ValueError, match="shards"):
        interval_join("j3", s, s, left_ts=ts, lower=timedelta(0), upper=timedelta(1), shards=0)


@pytest.mark.parametrize("join", ["interval", "asof"])
def test_a_lone_surrogate_key_is_joined_not_a_crash(join: str) -> None:
    """A key with a lone surrogate is valid Python text: it is routed and joined like any other."""
    from streamml.operators.join import asof_join

    flow = Dataflow("surrogate")
    events = [("\ud800", {"ts": at(1)}), ("a", {"ts": at(1)})]
    left = op.input("l", flow, TestingSource(events))
    right = op.input("r", flow, TestingSource(events))
    if join == "interval":
        out = interval_join(
            "j",
            left,
            right,
            left_ts=ts,
            right_ts=ts,
            lower=timedelta(0),
            upper=timedelta(seconds=1),
        )
    else:
        out = asof_join("j", left, right, ts=ts, table_ts=ts)
    oks: list = []
    errs: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    assert sorted(k for k, _ in oks) == ["a", "\ud800"] and errs == []


def test_frames_of_one_call_that_cannot_be_stored_together_are_rejected_not_a_crash() -> None:
    """Two left frames in one Bytewax batch, an Int64 and a Binary ``n``: the second is a BadItem."""
    import polars as pl

    flow = Dataflow("clash")
    frames = [
        pl.DataFrame({"k": ["a"], "n": [1], "ts": [0]}),
        pl.DataFrame({"k": ["a"], "n": [b"x"], "ts": [1]}),
    ]
    left = op.input("l", flow, TestingSource(frames, batch_size=2))
    right = op.input("r", flow, TestingSource([pl.DataFrame({"k": ["a"], "ts": [500]})]))
    out = interval_join(
        "j",
        left,
        right,
        key="k",
        left_ts="ts",
        lower=timedelta(0),
        upper=timedelta(seconds=1),
        shards=1,
    )
    oks: list = []
    errs: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    assert [(e.error_type, e.original["n"]) for e in errs] == [("BadItem", b"x")]
    assert sum(f.height for f in oks) == 1  # the first frame's row met the right one
