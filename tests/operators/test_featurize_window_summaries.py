"""window_agg with only mergeable aggregates keeps a summary per window, not its rows: the same
results as the row state (exact aggregates against the brute-force group-by, approximate ones
against the rows' own sketch), bounded state, snapshots, and stores of the row state."""

from __future__ import annotations

import math
import pickle
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators._core.state import restore, snapshot
from streamml.operators.featurize import windows as windows_module
from streamml.operators.featurize._summaries import Summaries, kll_quantiles
from streamml.operators.featurize._window_core import Fixed, Sessions, Spec, Windows

from tests.operators.test_featurize_windows import (
    GAP,
    LENGTH,
    OFFSET,
    T0,
    WINDOWERS,
    _windows_of,
    brute_force,
    run_windows,
    streams,
)

EXACT = ["count", "sum", "mean", "std", "min", "max", "first", "last"]
APPROX = ["approx_p50", "approx_p95", "approx_distinct", "bin-50_0", "bin0_50"]
S = 1_000_000  # µs


def _by_window(oks):
    return {(key, (row["window_start"] - T0) // timedelta(milliseconds=1)): row for key, row in oks}


def _window_values(items, kind, late_ids):
    """Each window's accepted values in event-time order (ties in arrival order)."""
    rows = sorted(
        (key, ev["ms"], i, ev["x"]) for i, (key, ev) in enumerate(items) if ev["id"] not in late_ids
    )
    groups: dict = {}
    start: dict = {}
    prev: dict = {}
    for key, t, _, x in rows:
        if kind == "session":
            if key not in prev or t - prev[key] > GAP:
                start[key] = t
            prev[key] = t
            groups.setdefault((key, start[key]), []).append(x)
        else:
            step = LENGTH if kind == "tumbling" else OFFSET
            for wid in _windows_of(kind, t):
                groups.setdefault((key, wid * step), []).append(x)
    return groups


@pytest.mark.parametrize("kind", list(WINDOWERS))
@settings(max_examples=25, deadline=None)
@given(items=streams(), delay_s=st.integers(0, 3), batch_size=st.integers(1, 5))
def test_summaries_give_the_groupby_and_the_rows_sketches(kind, items, delay_s, batch_size):
    delay = timedelta(seconds=delay_s)
    kwargs = {"batch_size": batch_size, "max_delay": delay}
    oks, errs, lates = run_windows(items, WINDOWERS[kind], aggregates=EXACT + APPROX, **kwargs)
    expected, late_ids = brute_force(items, kind, delay_s * 1000)
    assert errs == []
    assert sorted(r.original[1]["id"] for r in lates) == sorted(late_ids)
    got = _by_window(oks)
    assert len(got) == len(oks) and sorted(got) == sorted(expected)
    values = _window_values(items, kind, late_ids)
    # the row state (kept because of 'distinct') gives the very same approximate values
    rows, _, _ = run_windows(items, WINDOWERS[kind], aggregates=APPROX + ["distinct"], **kwargs)
    by_rows = _by_window(rows)
    for k, want in expected.items():
        row = got[k]
        assert (row["window_end"] - T0) // timedelta(milliseconds=1) == want["end"]
        for agg in EXACT:
            assert math.isclose(row[f"x_{agg}"], want[agg], rel_tol=1e-12, abs_tol=1e-9), agg
        xs = np.array(values[k])
        assert [row["x_approx_p50"], row["x_approx_p95"]] == kll_quantiles(xs, [0.5, 0.95])
        assert row["x_bin-50_0"] == ((xs >= -50) & (xs < 0)).sum()
        assert row["x_bin0_50"] == ((xs >= 0) & (xs < 50)).sum()
        for agg in APPROX:
            assert math.isclose(row[f"x_{agg}"], by_rows[k][f"x_{agg}"], rel_tol=1e-12), agg


def spec(windows, plan, *, delay=0) -> Spec:
    names = tuple(f"x_{a}" for _, a in plan)
    return Spec("w", ("x",), plan, names, windows, timedelta(microseconds=delay), None, None, False)


SKETCHED = ((0, "count"), (0, "std"), (0, "approx_p99"), (0, "approx_distinct"))


def feed(w: Windows, keys, ts, xs) -> list:
    w.tick()
    adm = w.admit(list(keys), np.asarray(ts, dtype=np.int64))
    x = np.asarray(xs, dtype=np.float64).reshape(-1, 1)
    w.hold(adm.kid, adm.ts, x[adm.ok])
    return rows(w, w.step())


def rows(w: Windows, closed) -> list:
    cols = [c.tolist() for c in closed.columns]
    return [
        (w.names[k], int(a), int(b), *vals)
        for k, a, b, *vals in zip(closed.kid.tolist(), closed.start, closed.end, *cols)
    ]


def test_a_long_window_keeps_a_bounded_summary_not_its_rows():
    """One key, 200,000 rows in one open window: the state stays a few KB; the row state
    (an exact p99) holds every row."""
    rng = np.random.default_rng(5)
    ts = np.sort(rng.integers(0, 3600 * S, 200_000))
    x = rng.normal(size=len(ts))
    sketched = Windows(spec(Fixed(3600 * S, 3600 * S, 0), SKETCHED))
    exact = Windows(spec(Fixed(3600 * S, 3600 * S, 0), ((0, "count"), (0, "p99"))))
    for part in np.array_split(np.arange(len(ts)), 50):
        for w in (sketched, exact):
            assert feed(w, ["a"] * len(part), ts[part], x[part]) == []
    size = len(pickle.dumps(sketched.snapshot_data()))
    assert size < 16_000 < 200_000 * 8 < len(pickle.dumps(exact.snapshot_data()))
    (row,) = rows(sketched, sketched.step(eof=True))
    ((_, _, _, count, p99),) = rows(exact, exact.step(eof=True))
    assert row[3] == count == 200_000 and math.isclose(row[4], np.std(x), rel_tol=1e-9)
    rank = (x <= row[5]).mean()  # within 2 % of the 99th percentile's rank (the KLL bound)
    assert abs(rank - 0.99) < 0.02 and abs(row[5] - p99) < 0.1
    assert abs(row[6] - 200_000) < 0.05 * 200_000  # HyperLogLog, 1.6 % standard error


def test_rows_waiting_to_be_folded_stay_bounded():
    """Fixed windows' released rows wait to be folded until one of their windows closes, but
    never more than 16 per open window or 1,024: one key's hour-long window, 60 rows a step."""
    rng = np.random.default_rng(3)
    ts = np.sort(rng.integers(0, 3600 * S, 6000))
    x = rng.normal(size=len(ts))
    w = Windows(spec(Fixed(3600 * S, 3600 * S, 0), SKETCHED))
    most = 0
    for part in np.array_split(np.arange(len(ts)), 100):
        assert feed(w, ["a"] * len(part), ts[part], x[part]) == []
        most = max(most, len(w.kid))
    assert 0 < most <= 1024
    (row,) = rows(w, w.step(eof=True))
    assert row[3] == 6000 and math.isclose(row[4], np.std(x), rel_tol=1e-9)


@st.composite
def flows(draw):
    n = draw(st.integers(1, 60))
    keys = draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
    ts = draw(st.lists(st.integers(0, 60), min_size=n, max_size=n))
    xs = draw(st.lists(st.integers(-5, 5), min_size=n, max_size=n))
    cuts = sorted(set(draw(st.lists(st.integers(1, n), max_size=6))))
    return keys, [t * S // 2 for t in ts], xs, cuts


def _batches(flow):
    keys, ts, xs, cuts = flow
    bounds = [0, *[c for c in cuts if c < len(keys)], len(keys)]
    return [(keys[a:b], ts[a:b], xs[a:b]) for a, b in zip(bounds, bounds[1:])]


def _run(w: Windows, part) -> list:
    return [r for k, t, x in part for r in feed(w, k, t, x)]


WINDOWS = [Fixed(6 * S, 2 * S, 0), Sessions(3 * S)]


@pytest.mark.parametrize("windows", WINDOWS, ids=["sliding", "session"])
@settings(max_examples=30, deadline=None)
@given(flow=flows(), at=st.integers(0, 7))
def test_a_restored_summary_carries_on_as_if_uninterrupted(windows, flow, at):
    batches = _batches(flow)
    at = min(at, len(batches))
    whole = Windows(spec(windows, SKETCHED, delay=2 * S))
    want = _run(whole, batches) + rows(whole, whole.step(eof=True))
    first = Windows(spec(windows, SKETCHED, delay=2 * S))
    got = _run(first, batches[:at])
    record = pickle.loads(pickle.dumps(snapshot("k", 2, first.snapshot_data())))
    second = Windows(
        spec(windows, SKETCHED, delay=2 * S), resume=restore(record, kind="k", version=2)
    )
    got += _run(second, batches[at:]) + rows(second, second.step(eof=True))
    assert sorted(got) == sorted(want)


@pytest.mark.parametrize("windows", WINDOWS, ids=["sliding", "session"])
@settings(max_examples=30, deadline=None)
@given(flow=flows(), at=st.integers(0, 7))
def test_a_version_1_store_of_rows_resumes_as_summaries(windows, flow, at):
    """Every v1 state kept rows; a step whose aggregates are all mergeable folds them into
    summaries on resume and goes on as an uninterrupted run of today's."""
    batches = _batches(flow)
    at = min(at, len(batches))
    whole = Windows(spec(windows, SKETCHED, delay=2 * S))
    want = _run(whole, batches) + rows(whole, whole.step(eof=True))
    old = Windows(spec(windows, ((0, "p50"),), delay=2 * S))  # a state of rows
    _run(old, batches[:at])
    v1 = {"path": "rows", **old.snapshot_data()}
    del v1["summaries"]
    data = restore(
        pickle.loads(pickle.dumps(snapshot(windows_module._KIND, 1, v1))),
        kind=windows_module._KIND,
        version=windows_module._VERSION,
        upgrades=windows_module._UPGRADES,
    )
    new = Windows(spec(windows, SKETCHED, delay=2 * S), resume=data)
    got = _run(new, batches[at:]) + rows(new, new.step(eof=True))
    # the windows the row state closed before the cut are the ones summaries would have closed
    before = _run(Windows(spec(windows, SKETCHED, delay=2 * S)), batches[:at])
    got, want = sorted(before + got), sorted(want)
    assert [r[:3] for r in got] == [r[:3] for r in want]
    for a, b in zip(got, want):  # std: rows folded in other batches round differently
        assert a[3:] == pytest.approx(b[3:], rel=1e-12, abs=1e-12)


def test_a_store_of_summaries_is_refused_where_rows_or_other_sketches_are_needed():
    w = Windows(spec(Fixed(6 * S, 6 * S, 0), SKETCHED))
    feed(w, ["a"], [1 * S], [1.0])
    data = w.snapshot_data()
    with pytest.raises(ValueError, match="needs their rows"):
        Windows(spec(Fixed(6 * S, 6 * S, 0), ((0, "p99"),)), resume=data)
    with pytest.raises(ValueError, match="use a new recovery store"):
        Windows(spec(Fixed(6 * S, 6 * S, 0), ((0, "count"), (0, "approx_p50"))), resume=data)
    other_quantile = ((0, "count"), (0, "std"), (0, "approx_p50"), (0, "approx_distinct"))
    assert Windows(spec(Fixed(6 * S, 6 * S, 0), other_quantile), resume=data)


def test_windows_far_apart_are_found_without_the_packed_search():
    """Session starts more than 2**31 µs apart cannot share one int64 code: the sort path."""
    sums = Summaries(((0, "count"), (0, "max")), 1, 0.0)
    far = np.array([0, 1 << 40, 5], dtype=np.int64)
    sums.fold(np.array([0, 0, 1]), far, far, np.array([[1.0], [2.0], [3.0]]))
    sums.fold(np.array([0, 1]), far[[1, 2]], far[[1, 2]], np.array([[7.0], [4.0]]))
    kid, wid, _, (count, top) = sums.close(np.ones(3, dtype=bool))
    assert list(zip(kid.tolist(), wid.tolist(), count.tolist(), top.tolist())) == [
        (0, 0, 1.0, 1.0),
        (0, 1 << 40, 2.0, 7.0),
        (1, 5, 2.0, 4.0),
    ]


def _recovery_flow(items, out):
    import bytewax.operators as op
    import polars as pl
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import SessionWindower, SlidingWindower
    from bytewax.testing import TestingSink, TestingSource
    from streamml.operators.featurize import window_agg

    flow = Dataflow("recover_summaries")
    up = op.input("in", flow, TestingSource(items, batch_size=7))
    common = {"fields": {"x": ["count", "std", "approx_p90", "approx_distinct"]}, "shards": 2}
    sessions = window_agg(
        "sessions",
        up,
        timestamp=lambda e: T0 + timedelta(milliseconds=e["ms"]),
        windower=SessionWindower(timedelta(seconds=2)),
        max_delay=timedelta(seconds=1),
        idle_advance=False,
        **common,
    )
    frames = op.flat_map_batch(
        "frames", up, lambda batch: [pl.DataFrame([{"key": k, **e} for k, e in batch])]
    )
    sliding = window_agg(
        "sliding",
        frames,
        key="key",
        timestamp="ms",
        windower=SlidingWindower(timedelta(seconds=6), timedelta(seconds=2), align_to=T0),
        max_delay=timedelta(seconds=1),
        idle_advance=False,
        **common,
    )
    op.output("out_sessions", sessions.oks, TestingSink(out["sessions"]))
    op.output("out_sliding", sliding.oks, TestingSink(out["sliding"]))
    return flow


def test_abort_and_resume_of_summaries_gives_the_same_windows(tmp_path):
    """Through Bytewax recovery: sketches and registers snapshot and come back as they were."""
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.testing import TestingSource, run_main

    rng = np.random.default_rng(2)
    gaps = np.where(rng.random(400) < 0.05, 2500, 100)  # now and then a session ends
    ms = np.cumsum(gaps) - rng.integers(0, 800, 400) * (rng.random(400) < 0.2)
    items = [
        (f"k{i % 2}", {"ms": int(max(t, 0)), "x": float(rng.integers(0, 40))})
        for i, t in enumerate(ms)
    ]

    def canonical(out):
        rows = [r for r in out["sessions"]]
        rows += [("frame", r) for frame in out["sliding"] for r in frame.iter_rows(named=True)]
        return sorted(repr({**r, "x_std": round(r["x_std"], 9)}) for _, r in rows)

    whole = {"sessions": [], "sliding": []}
    run_main(_recovery_flow(items, whole))
    init_db_dir(tmp_path, 1)
    cfg = RecoveryConfig(str(tmp_path))
    crashed = {"sessions": [], "sliding": []}
    aborting = items[:211] + [TestingSource.ABORT()] + items[211:]
    run_main(_recovery_flow(aborting, crashed), epoch_interval=timedelta(0), recovery_config=cfg)
    first = canonical(crashed)
    assert 0 < len(first) < len(canonical(whole))
    run_main(_recovery_flow(aborting, crashed), epoch_interval=timedelta(0), recovery_config=cfg)
    assert canonical(crashed) == canonical(whole)
