"""The value-frequency aggregates (distinct, approx_distinct, top-k, bins) and rolling's ``first``,
each against a brute-force reference: the kernel alone, ``rolling`` (time and count windows) and
``window_agg``, and a snapshot/restore round trip of a rolling step that asks for them."""

from __future__ import annotations

import math
import pickle
from collections import Counter
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import numpy as np
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import TumblingWindower
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.featurize import rolling, window_agg
from streamml.operators.featurize._frequency import frequency
from streamml.operators.featurize.rolling_agg import _config, _FrameLogic

from streamml.testing import run_operator
from streamml.testing.strategies import keyed_events

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
FREQ = ["distinct", "top1", "top1_count", "top2", "top2_count", "bin0_2", "bin-1.5_0.5"]


def reference(values: list[float], agg: str) -> float:
    """One aggregate of one window's values, the slow obvious way."""
    counts = Counter(v + 0.0 for v in values)
    ranked = sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))
    if agg == "distinct":
        return float(len(counts))
    if agg == "first":
        return values[0]
    if agg.startswith("top"):
        k = int(agg[3:].split("_")[0])
        if k > len(ranked):
            return 0.0 if agg.endswith("_count") else math.nan
        return float(ranked[k - 1][1] if agg.endswith("_count") else ranked[k - 1][0])
    if agg.startswith("bin"):
        lo, hi = (float(e) for e in agg[3:].split("_"))
        return float(sum(lo <= v < hi for v in values))
    raise AssertionError(agg)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


values_st = st.lists(st.sampled_from([-2.0, -1.0, -0.0, 0.0, 0.5, 1.0, 1.5, 3.0]), max_size=12)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.sampled_from([-1.0, -0.0, 0.0, 1.0, 2.0, 1e300]), min_size=1), max_size=6)
)
def test_frequency_matches_bruteforce(segments):
    values = np.array([v for s in segments for v in s], dtype=np.float64)
    lengths = np.array([len(s) for s in segments], dtype=np.int64)
    aggs = {*FREQ, "top3", "top3_count"}
    out = frequency(values, lengths, aggs)
    for agg in aggs:
        assert len(out[agg]) == len(segments)
        for got, seg in zip(out[agg].tolist(), segments):
            assert same(got, reference(seg, agg)), (agg, seg, got)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30_000), st.integers(1, 3), st.integers(0, 2**32))
def test_approx_distinct_within_its_error_bound(n, repeat, seed):
    """HyperLogLog with 4096 registers: standard error 1.6 %; within 4 standard errors."""
    rng = np.random.default_rng(seed)
    distinct = rng.standard_normal(n) * 1e6
    values = np.repeat(distinct, repeat)
    rng.shuffle(values)
    est = frequency(values, np.array([len(values)]), {"approx_distinct"})["approx_distinct"][0]
    assert abs(est - len(np.unique(distinct))) <= 4 * 1.04 / 64 * n + 1


def run_rolling(frame: pl.DataFrame, **kwargs):
    flow = Dataflow("freq_rolling")
    up = op.input("in", flow, TestingSource([frame]))
    feats = rolling("r", up, key="k", timestamp="ts", fields=["x"], shards=2, **kwargs)
    oks, errs, late = [], [], []
    op.output("oks", feats.oks, TestingSink(oks))
    op.output("errs", feats.errs, TestingSink(errs))
    op.output("late", feats.late, TestingSink(late))
    run_main(flow)
    return pl.concat(oks) if oks else None, errs, late


rows_st = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]), st.integers(0, 5), st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0])
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=30, deadline=None)
@given(rows_st)
def test_rolling_frequency_aggregates_match_bruteforce(rows):
    """In-order rows (ties in arrival order): time window 3 s and count window 4."""
    rows = sorted(rows, key=lambda r: r[1])  # by time; sorted() is stable: ties keep arrival
    frame = pl.DataFrame(
        {
            "k": [k for k, _, _ in rows],
            "ts": [s * 1000 for _, s, _ in rows],
            "x": [x for _, _, x in rows],
            "i": list(range(len(rows))),
        }
    )
    aggs = [*FREQ, "first", "approx_distinct"]
    out, errs, late = run_rolling(frame, window=timedelta(seconds=3), last=4, aggregates=aggs)
    assert not errs and not late
    got = {r["i"]: r for r in out.to_dicts()}
    assert sorted(got) == list(range(len(rows)))
    for i, (k, s, _) in enumerate(rows):
        mine = [(j, r) for j, r in enumerate(rows[: i + 1]) if r[0] == k]
        timed = [r[2] for _, r in mine if r[1] > s - 3]
        counted = [r[2] for _, r in mine[-4:]]
        for agg in aggs:
            for label, window in (("3s", timed), ("last4", counted)):
                got_value = got[i][f"x_{agg}_{label}"]
                if agg == "approx_distinct":  # within 4 standard errors (1.6 %)
                    exact = len({v + 0.0 for v in window})
                    assert abs(got_value - exact) <= 4 * 1.04 / 64 * exact + 1e-3
                else:
                    assert same(got_value, reference(window, agg)), (agg, label, window)


@settings(max_examples=20, deadline=None)
@given(rows_st)
def test_window_agg_frequency_aggregates_match_groupby(rows):
    """Tumbling 2 s windows, rows in time order, closed at end of input."""
    rows = sorted(rows, key=lambda r: r[1])
    ms = int(T0.timestamp() * 1000)
    frame = pl.DataFrame(
        {
            "k": [k for k, _, _ in rows],
            "ts": [ms + s * 1000 for _, s, _ in rows],
            "x": [x for *_, x in rows],
        }
    )
    flow = Dataflow("freq_window")
    out = window_agg(
        "w",
        op.input("in", flow, TestingSource([frame])),
        key="k",
        timestamp="ts",
        windower=TumblingWindower(timedelta(seconds=2), align_to=T0),
        fields=["x"],
        aggregates=FREQ,
        idle_advance=False,
        shards=2,
    )
    oks = []
    op.output("oks", out.oks, TestingSink(oks))
    run_main(flow)
    groups: dict[tuple[str, int], list[float]] = {}
    for k, s, x in rows:
        groups.setdefault((k, s // 2), []).append(x)
    result = pl.concat(oks).to_dicts()
    assert len(result) == len(groups)
    for row in result:
        window = groups[row["key"], int((row["window_start"] - T0).total_seconds()) // 2]
        for agg in FREQ:
            assert same(row[f"x_{agg}"], reference(window, agg)), (agg, window)


def test_snapshot_restore_round_trip_keeps_the_windows():
    """Half the rows, a snapshot, a new state from it, the rest: the same features as one state."""
    cfg = _config("r", window=timedelta(seconds=10), last=3, fields=["x"], aggregates=FREQ)
    rng = np.random.default_rng(7)
    n = 200
    frame = pl.DataFrame(
        {
            "k": rng.choice(["a", "b", "c"], n).tolist(),
            "ts": (np.arange(n) * 700).tolist(),
            "x": rng.integers(0, 5, n).astype(float).tolist(),
        }
    )
    clock = T0.timestamp
    whole = _FrameLogic(cfg, "k", "ts", None, clock=clock)
    expected = pl.concat(whole.on_batch([frame])[0][0][0] + whole.on_eof()[0][0][0])
    first = _FrameLogic(cfg, "k", "ts", None, clock=clock)
    part1 = first.on_batch([frame[:120]])[0][0][0]
    second = _FrameLogic(cfg, "k", "ts", pickle.loads(pickle.dumps(first.snapshot())), clock=clock)
    part2 = second.on_batch([frame[120:]])[0][0][0] + second.on_eof()[0][0][0]
    assert pl.concat(part1 + part2).equals(expected)


@pytest.mark.parametrize("agg", ["top0", "top100", "bin2_1", "bin1_1", "distinctish", "binx_2"])
def test_bad_parameters_are_refused_at_build_time(agg):
    flow = Dataflow("bad_agg")
    up = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match="unknown aggregate"):
        rolling("r", up, key="k", timestamp="ts", window=timedelta(seconds=1), fields={"x": [agg]})
    with pytest.raises(ValueError, match="unknown window aggregate"):
        window_agg(
            "w",
            up,
            key="k",
            timestamp="ts",
            windower=TumblingWindower(timedelta(seconds=1), align_to=T0),
            fields={"x": [agg]},
        )


@settings(max_examples=25, deadline=None)
@given(
    keyed_events(
        keys=("a", "b"),
        max_delay=timedelta(seconds=3),
        step=timedelta(seconds=1),
        values=st.sampled_from([0.0, 1.0, 2.0, 5.0]),
    ),
    st.integers(1, 6),
)
def test_out_of_order_rows_get_the_features_of_their_event_time_order(stream, batch_size):
    """Rows out of order within max_delay, late ones and duplicates (streamml.testing's
    strategy): each on-time row's window is its key's rows in (event time, arrival) order."""
    aggs = ["distinct", "top1", "top1_count", "bin0_2", "first"]
    out = run_operator(
        lambda up: rolling(
            "r",
            up,
            timestamp=lambda e: e["ts"],
            window=timedelta(seconds=4),
            last=3,
            fields=["x"],
            aggregates=aggs,
            max_delay=stream.max_delay,
            shards=2,
        ),
        stream.items,
        batch_size=batch_size,
    )
    on_time = stream.on_time()
    assert len(out.oks) == len(on_time)
    ordered: dict[str, list] = {}
    for _, (key, e) in sorted(enumerate(on_time), key=lambda p: (p[1][1]["ts"], p[0])):
        ordered.setdefault(key, []).append(e)
    expected = []
    for rows in ordered.values():
        for i, e in enumerate(rows):
            timed = [r["x"] for r in rows[: i + 1] if r["ts"] > e["ts"] - timedelta(seconds=4)]
            counted = [r["x"] for r in rows[max(0, i - 2) : i + 1]]
            expected.append((e["id"], *(reference(w, a) for w in (timed, counted) for a in aggs)))
    names = [f"x_{a}_{label}" for label in ("4s", "last3") for a in aggs]
    got = [(e["id"], *(e[n] for n in names)) for _, e in out.oks]
    key = lambda row: tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in row)  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, expected))
