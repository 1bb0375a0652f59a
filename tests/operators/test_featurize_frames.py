"""rolling on frames: brute force (time and count windows), independence of shards and frame
cuts, out of order = in order, bad rows, timestamp types, snapshots."""

from __future__ import annotations

import math
import pickle
import random
from collections import deque
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import numpy as np
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.featurize import rolling, rolling_agg

from streamml.errors import Rejected

HALF_LIFE = 7.0
AGGS = ["count", "sum", "mean", "std", "var", "min", "max", "last", "delta", "since", "ewma"]
AGGS += ["p50", "p95"]
EXACT = {"count", "sum", "min", "max", "last", "delta", "since"}
SCHEMA = {"id": pl.Int64, "key": pl.String, "ms": pl.Int64, "x": pl.Float64, "y": pl.Float64}


def frames_of(rows: list[dict], cuts: list[int]) -> list[pl.DataFrame]:
    """The rows as frames, cut at ``cuts`` (no empty frame)."""
    frame = pl.DataFrame(rows, schema=SCHEMA)
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(rows))), len(rows)]
    return [frame.slice(a, b - a) for a, b in zip(bounds, bounds[1:])]


def run_frames(frames, *, batch_size=1, **kwargs):
    """Run ``rolling`` on frames; return (one frame of oks or None, errs, lates, ok frames)."""
    flow = Dataflow("t")
    up = op.input("in", flow, TestingSource(frames, batch_size=batch_size))
    kwargs.setdefault("key", "key")
    kwargs.setdefault("timestamp", "ms")
    out = rolling("roll", up, **kwargs)
    oks, errs, lates = [], [], []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    op.output("late", out.late, TestingSink(lates))
    run_main(flow)
    assert all(isinstance(f, pl.DataFrame) and f.height for f in oks)  # never an empty frame
    return (pl.concat(oks) if oks else None), errs, lates, oks


def accepted_rows(rows, delay_ms):
    """Reference lateness, row by row: (accepted rows with arrival index, late ids)."""
    newest: dict[str, int] = {}
    accepted, late = [], set()
    for arrival, r in enumerate(rows):
        m = newest.get(r["key"])
        if m is not None and r["ms"] < m - delay_ms:
            late.add(r["id"])
            continue
        newest[r["key"]] = r["ms"] if m is None else max(m, r["ms"])
        accepted.append((arrival, r))
    return accepted, late


def _aggs(xs: list[float], ts: list[int]) -> dict[str, float]:
    arr = np.array(xs, dtype=float)
    w = np.exp2(-((ts[-1] - np.array(ts)) / 1000.0) / HALF_LIFE)
    return {
        "count": len(xs),
        "sum": sum(xs),
        "mean": float(np.mean(arr)),
        "std": float(np.std(arr)),
        "var": float(np.var(arr)),
        "min": min(xs),
        "max": max(xs),
        "last": xs[-1],
        "delta": xs[-1] - xs[-2] if len(xs) > 1 else math.nan,
        "since": (ts[-1] - ts[-2]) / 1000.0 if len(xs) > 1 else math.nan,
        "ewma": float(np.sum(w * arr) / np.sum(w)),
        "p50": float(np.quantile(arr, 0.5)),
        "p95": float(np.quantile(arr, 0.95)),
    }


def brute_force(rows, *, window_ms, counts, delay_ms):
    """Features of every accepted row: a time window over the key's rows in event-time order
    (ties by arrival), and each count window from a per-key deque fed in that order."""
    accepted, late = accepted_rows(rows, delay_ms)
    expected: dict[int, dict[str, float]] = {}
    for key in {r["key"] for _, r in accepted}:
        mine = sorted(
            ((r["ms"], a, r) for a, r in accepted if r["key"] == key), key=lambda t: t[:2]
        )
        windows = {n: deque(maxlen=n) for n in counts}
        for i, (t, _, r) in enumerate(mine):
            feats = {}
            in_time = [m for m in mine[: i + 1] if m[0] > t - window_ms]
            for f in ("x", "y"):
                for agg, v in _aggs([m[2][f] for m in in_time], [m[0] for m in in_time]).items():
                    feats[f"{f}_{agg}_w"] = v
            for n, dq in windows.items():
                dq.append((t, r))
                for f in ("x", "y"):
                    got = _aggs([q[1][f] for q in dq], [q[0] for q in dq])
                    for agg, v in got.items():
                        feats[f"{f}_{agg}_last{n}"] = v
            expected[r["id"]] = feats
    return expected, late


@st.composite
def streams(draw, values=None, max_rows=40):
    values = st.integers(-1000, 1000).map(float) if values is None else values
    n = draw(st.integers(1, max_rows))
    keys = draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
    base = sorted(draw(st.lists(st.integers(0, 60), min_size=n, max_size=n)))
    jitter = draw(st.lists(st.integers(-12, 6), min_size=n, max_size=n))
    xs = draw(st.lists(values, min_size=n, max_size=n))
    ys = draw(st.lists(values, min_size=n, max_size=n))
    rows = [
        {"id": i, "key": k, "ms": max(0, b + j) * 500, "x": x, "y": y}
        for i, (k, b, j, x, y) in enumerate(zip(keys, base, jitter, xs, ys))
    ]
    cuts = draw(st.lists(st.integers(0, n), max_size=6))
    return rows, cuts


def _close(got, want, scale, exact):
    if math.isnan(want):
        return math.isnan(got)
    if exact:
        return got == want
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9 * scale)


def check_against_brute_force(rows, out, lates, errs, *, counts, delay_ms, exact_values):
    expected, late_ids = brute_force(rows, window_ms=10_000, counts=counts, delay_ms=delay_ms)
    assert errs == []
    assert sorted(r.original["id"] for r in lates) == sorted(late_ids)
    assert all(r.error_type == "Late" for r in lates)
    ids = [] if out is None else out["id"].to_list()
    assert sorted(ids) == sorted(expected)  # every accepted row exactly once
    if out is None:
        return
    names = [
        f"{f}_{a}_{s}" for s in ["w", *(f"last{n}" for n in counts)] for f in "xy" for a in AGGS
    ]
    assert out.columns == list(SCHEMA) + names
    assert all(out.schema[n] == pl.Float64 for n in names)
    for row in out.iter_rows(named=True):
        want = expected[row["id"]]
        assert {k: row[k] for k in SCHEMA} == rows[row["id"]]  # input columns unchanged
        for name in names:
            field, agg = name.split("_")[:2]
            scale = max(
                1.0, abs(want[name.replace(agg, "min", 1)]), abs(want[name.replace(agg, "max", 1)])
            )
            scale = scale * scale if agg == "var" else scale
            exact = agg in EXACT and (exact_values or agg in {"count", "min", "max", "last"})
            assert _close(row[name], want[name], scale, exact), (name, row, want[name])


@settings(max_examples=120)
@given(
    data=streams(),
    delay_s=st.integers(0, 5),
    batch_size=st.integers(1, 4),
    shards=st.sampled_from([1, 3, 8]),
    counts=st.lists(st.integers(1, 6), min_size=1, max_size=2, unique=True),
)
def test_frames_match_bruteforce_exact_values(data, delay_s, batch_size, shards, counts):
    rows, cuts = data
    out, errs, lates, _ = run_frames(
        frames_of(rows, cuts),
        batch_size=batch_size,
        window=timedelta(seconds=10),
        label="w",
        last=counts,
        fields=["x", "y"],
        aggregates=AGGS,
        max_delay=timedelta(seconds=delay_s),
        half_life=timedelta(seconds=HALF_LIFE),
        shards=shards,
    )
    check_against_brute_force(
        rows, out, lates, errs, counts=counts, delay_ms=delay_s * 1000, exact_values=True
    )


@settings(max_examples=80)
@given(
    data=streams(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)),
    delay_s=st.integers(0, 5),
    counts=st.lists(st.integers(1, 6), min_size=1, max_size=2, unique=True),
)
def test_frames_match_bruteforce_float_values(data, delay_s, counts):
    rows, cuts = data
    out, errs, lates, _ = run_frames(
        frames_of(rows, cuts),
        window=timedelta(seconds=10),
        label="w",
        last=counts,
        fields=["x", "y"],
        aggregates=AGGS,
        max_delay=timedelta(seconds=delay_s),
        half_life=timedelta(seconds=HALF_LIFE),
        shards=2,
    )
    check_against_brute_force(
        rows, out, lates, errs, counts=counts, delay_ms=delay_s * 1000, exact_values=False
    )


def _features(out):
    return {} if out is None else {r["id"]: r for r in out.iter_rows(named=True)}


@settings(max_examples=60)
@given(
    data=streams(max_rows=60),
    other_cuts=st.lists(st.integers(0, 60), max_size=8),
    shards=st.lists(st.sampled_from([1, 3, 8]), min_size=2, max_size=2),
    delay_s=st.integers(0, 5),
)
def test_results_and_lateness_do_not_depend_on_shards_or_frame_cuts(
    data, other_cuts, shards, delay_s
):
    rows, cuts = data
    args = dict(
        window=timedelta(seconds=4),
        last=3,
        fields=["x", "y"],
        aggregates=["count", "sum", "mean", "min", "max", "last"],
        max_delay=timedelta(seconds=delay_s),
    )
    a, _, late_a, _ = run_frames(frames_of(rows, cuts), shards=shards[0], **args)
    b, _, late_b, _ = run_frames(
        frames_of(rows, other_cuts), shards=shards[1], batch_size=3, **args
    )
    assert sorted(r.original["id"] for r in late_a) == sorted(r.original["id"] for r in late_b)
    assert _features(a) == _features(b)  # integer values: sums are exact, so equal to the bit


@settings(max_examples=60)
@given(
    n=st.integers(1, 60),
    seed=st.integers(0, 10_000),
    delay_s=st.integers(1, 6),
    shards=st.sampled_from([1, 3]),
)
def test_out_of_order_within_max_delay_is_the_same_as_in_order(n, seed, delay_s, shards):
    rnd = random.Random(seed)
    # distinct times per key (ties would be ordered by arrival, which is what changes here)
    times = rnd.sample(range(0, 200_000, 250), n)
    rows = [
        {"id": i, "key": rnd.choice("abc"), "ms": t, "x": float(rnd.randint(-99, 99)), "y": 1.0}
        for i, t in enumerate(sorted(times))
    ]
    # arrival: each row up to delay_s later than its own time, so none is ever late
    shuffled = sorted(rows, key=lambda r: r["ms"] + rnd.uniform(0, delay_s * 1000))
    args = dict(
        window=timedelta(seconds=3),
        last=[2, 5],
        fields=["x"],
        aggregates=["count", "sum", "mean", "std", "min", "max", "delta", "since"],
        max_delay=timedelta(seconds=delay_s),
        shards=shards,
    )
    cut = rnd.sample(range(n + 1), min(4, n + 1))
    in_order, _, late_a, _ = run_frames(frames_of(rows, cut), **args)
    out_of_order, _, late_b, frames = run_frames(frames_of(shuffled, cut), **args)
    assert late_a == late_b == []
    a, b = _features(in_order), _features(out_of_order)
    assert a.keys() == b.keys() == {r["id"] for r in rows}
    for i, row in a.items():
        for name, v in row.items():
            w = b[i][name]
            assert v == w or (math.isnan(v) and math.isnan(w)) or math.isclose(v, w, rel_tol=1e-12)
    for frame in frames:  # each output frame is in event-time order
        assert frame["ms"].is_sorted()


def test_bad_rows_go_to_errs_and_the_rest_of_their_frame_goes_on():
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    good = pl.DataFrame(
        {
            "key": ["a", None, "a", "b", "a", "b", "a"],
            "ts": [t0 + timedelta(seconds=s) for s in range(7)],
            "x": [1.0, 2.0, float("nan"), None, float("inf"), 3.0, 4.0],
            "y": [1, 1, 1, 1, 1, 1, 1],
        }
    )
    text = pl.DataFrame({"key": ["a"], "ts": [t0 + timedelta(seconds=9)], "x": ["5"], "y": [1]})
    no_y = pl.DataFrame({"key": ["b"], "ts": [t0 + timedelta(seconds=9)], "x": [5.0]})
    naive = pl.DataFrame(
        {"key": ["a"], "ts": [datetime(2024, 1, 1, 0, 0, 10)], "x": [1.0], "y": [1]}
    )
    no_key = pl.DataFrame({"id": ["a"], "ts": [t0], "x": [1.0], "y": [1]})
    future = pl.DataFrame(
        {"key": ["a"], "ts": [datetime(3000, 1, 1, tzinfo=timezone.utc)], "x": [1.0], "y": [1]}
    )
    items = [good, text, {"key": "a"}, no_y, naive, no_key, future]
    out, errs, lates, _ = run_frames(
        items,
        timestamp="ts",
        window=timedelta(seconds=10),
        last=2,
        fields=["x", "y"],
        aggregates=["count", "sum"],
    )
    out = out.sort("ts")
    assert out["ts"].to_list() == [t0 + timedelta(seconds=s) for s in (0, 5, 6)]
    assert out["x_sum_10s"].to_list() == [1.0, 3.0, 5.0] and out["x_sum_last2"].to_list() == [
        1.0,
        3.0,
        5.0,
    ]
    assert out.schema["y"] == pl.Int64 and out.schema["y_sum_10s"] == pl.Float64
    got = sorted((r.error_type, str(r.original)) for r in errs)
    assert [kind for kind, _ in got] == sorted(
        ["BadKey", "NonFinite", "MissingField", "NonFinite", "NotANumber", "BadItem"]
        + ["MissingField", "BadTimestamp", "BadKey", "FutureTimestamp"]
    )
    assert lates == []
    assert all(isinstance(r, Rejected) and r.step_id == "t.roll" for r in errs)
    by_kind = {r.error_type: r for r in errs}
    assert by_kind["BadItem"].original == {"key": "a"}
    assert by_kind["NotANumber"].original == text.row(0, named=True)
    assert "naive" in by_kind["BadTimestamp"].reason


@pytest.mark.parametrize(
    "column",
    [
        pl.Series("ts", [0, 1500, 3000, 1900, 9000], dtype=pl.Int64),
        pl.Series("ts", [0, 1500, 3000, 1900, 9000], dtype=pl.Int32),
        pl.Series("ts", [0, 1500, 3000, 1900, 9000])
        .cast(pl.Datetime("ms"))
        .dt.replace_time_zone("UTC"),
        pl.Series("ts", [0, 1500, 3000, 1900, 9000])
        .cast(pl.Datetime("ms"))
        .dt.replace_time_zone("UTC")
        .dt.cast_time_unit("ns")
        .dt.convert_time_zone("Europe/Paris"),
    ],
)
def test_every_timestamp_type_gives_the_same_features(column):
    frame = pl.DataFrame({"key": ["k"] * 5, "x": [1.0, 2.0, 3.0, 4.0, 5.0]}).with_columns(column)
    out, errs, lates, _ = run_frames(
        [frame],
        timestamp="ts",
        window=timedelta(seconds=2),
        fields=["x"],
        aggregates=["count", "sum", "since"],
        max_delay=timedelta(seconds=1),
    )
    assert errs == [] and [r.original["x"] for r in lates] == [4.0]
    out = out.sort("ts")
    assert out.schema["ts"] == column.dtype
    assert out.select("x", "x_count_2s", "x_sum_2s").rows() == [
        (1.0, 1.0, 1.0),
        (2.0, 2.0, 3.0),
        (3.0, 2.0, 5.0),
        (5.0, 1.0, 5.0),
    ]
    since = out["x_since_2s"].to_list()
    assert math.isnan(since[0]) and since[1:3] == [1.5, 1.5] and math.isnan(since[3])


def _frame_logic(**kwargs):
    cfg = rolling_agg._config("roll", fields=["x"], **kwargs)
    return lambda resume=None: rolling_agg._FrameLogic(cfg, "key", "ms", resume)


@pytest.mark.parametrize("window", [None, timedelta(seconds=4)])
def test_snapshot_restore_round_trip(window):
    build = _frame_logic(
        window=window,
        last=[3, 6],
        aggregates=["count", "mean", "max"],
        max_delay=timedelta(seconds=3),
    )
    rng = np.random.default_rng(1)
    frames = [
        pl.DataFrame(
            {
                "id": np.arange(b * 10, b * 10 + 10),
                "key": [f"k{rng.integers(5)}" for _ in range(10)],
                "ms": (b * 2000 + rng.integers(-2500, 2500, 10)).astype(np.int64),
                "x": rng.normal(size=10),
            }
        )
        for b in range(20)
    ]

    def outputs(chunks):
        oks = [f for frames_, _, _ in chunks for f in frames_]
        return pl.concat(oks).rows(), [r.original for _, _, lates in chunks for r in lates]

    straight = build()
    expected = [straight.on_batch([f])[0][0] for f in frames] + straight.on_eof()[0]
    first = build()
    got = [first.on_batch([f])[0][0] for f in frames[:9]]
    snap = first.snapshot()
    assert snap["state"] == "streamml.featurize.rolling" and snap["version"] == 1
    first.on_batch([frames[9]])  # the snapshot is a copy
    resumed = build(pickle.loads(pickle.dumps(snap)))
    got += [resumed.on_batch([f])[0][0] for f in frames[9:]] + resumed.on_eof()[0]
    assert outputs(got) == outputs(expected)
    assert any(lates for _, _, lates in expected)
    with pytest.raises(ValueError, match="frames path"):
        rolling_agg._RowLogic(rolling_agg._config("roll", fields=["x"], last=3), lambda e: e, snap)


@settings(max_examples=60)
@given(
    data=streams(),
    delay_s=st.integers(0, 5),
    batch_size=st.integers(1, 7),
    shards=st.integers(1, 3),
    counts=st.lists(st.integers(1, 6), min_size=1, max_size=2, unique=True),
)
def test_count_windows_in_the_row_path_match_a_deque(data, delay_s, batch_size, shards, counts):
    rows, _ = data
    t0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
    flow = Dataflow("rows")
    up = op.input("in", flow, TestingSource([(r["key"], r) for r in rows], batch_size=batch_size))
    out = rolling(
        "roll",
        up,
        timestamp=lambda e: t0 + timedelta(milliseconds=e["ms"]),
        last=counts,
        fields=["x", "y"],
        aggregates=AGGS,
        half_life=timedelta(seconds=HALF_LIFE),
        max_delay=timedelta(seconds=delay_s),
        shards=shards,
    )
    oks, lates = [], []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("late", out.late, TestingSink(lates))
    run_main(flow)
    expected, late_ids = brute_force(rows, window_ms=1, counts=counts, delay_ms=delay_s * 1000)
    assert sorted(r.original[1]["id"] for r in lates) == sorted(late_ids)
    assert sorted(e["id"] for _, e in oks) == sorted(expected)
    for key, e in oks:
        assert key == e["key"]
        want = expected[e["id"]]
        names = [f"{f}_{a}_last{n}" for n in counts for f in "xy" for a in AGGS]
        assert [k for k in e if "_last" in k] == names
        for name in names:
            agg = name.split("_")[1]
            scale = max(
                1.0, abs(want[name.replace(agg, "min", 1)]), abs(want[name.replace(agg, "max", 1)])
            )
            scale = scale * scale if agg == "var" else scale
            assert _close(e[name], want[name], scale, agg in EXACT), (name, e, want[name])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"last": 0}, "last must be an int >= 1"),
        ({"last": []}, "last must be an int >= 1"),
        ({"last": True}, "last must be an int >= 1"),
        ({"last": [3, "4"]}, "last must be an int >= 1"),
        ({"last": [3, 3]}, "duplicate feature names"),
        ({"last": 3, "aggregates": ["rate"]}, "rate is a count per second"),
        ({}, "give window="),
        ({"last": 3, "label": "x"}, "label names time windows"),
        ({"last": 3, "timestamp": lambda e: e}, "key and timestamp name columns"),
        ({"last": 3, "key": None}, "timestamp must be a function"),
    ],
)
def test_misconfiguration_raises_at_build_time(kwargs, message):
    args = {"key": "key", "timestamp": "ms", "fields": ["x"], **kwargs}
    flow = Dataflow("t")
    up = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match=message):
        rolling("roll", up, **args)


def test_ttl_forgets_idle_keys_with_their_count_windows_and_stale_rows_stay_late():
    # key "old" goes idle; "new" runs on for longer than the ttl
    rows = [{"id": 0, "key": "old", "ms": 0, "x": 1.0, "y": 0.0}]
    rows += [{"id": 1, "key": "old", "ms": 500, "x": 2.0, "y": 0.0}]
    rows += [{"id": i, "key": "new", "ms": i * 1000, "x": 1.0, "y": 0.0} for i in range(2, 40)]
    rows += [
        {"id": 100, "key": "old", "ms": 600, "x": 5.0, "y": 0.0},  # forgotten: stale, late
        {"id": 101, "key": "old", "ms": 39_000, "x": 7.0, "y": 0.0},  # fresh: a new window
    ]
    out, errs, lates, _ = run_frames(
        frames_of(rows, list(range(0, len(rows), 5))),
        window=timedelta(seconds=5),
        last=3,
        fields=["x"],
        aggregates=["count", "sum"],
        ttl=timedelta(seconds=10),
        shards=1,
    )
    assert errs == [] and [r.original["id"] for r in lates] == [100]
    assert "TTL" in lates[0].reason
    got = {r["id"]: r for r in out.iter_rows(named=True)}
    assert got[1]["x_sum_last3"] == 3.0 and got[39]["x_count_last3"] == 3.0
    assert (got[101]["x_count_last3"], got[101]["x_sum_last3"]) == (1.0, 7.0)


def test_times_beyond_datetime_years_are_judged_and_reported_without_raising():
    far = 10**15  # epoch milliseconds: about the year 33,700
    rows = [
        {"id": 0, "key": "k", "ms": 0, "x": 1.0, "y": 0.0},
        {"id": 1, "key": "k", "ms": far, "x": 1.0, "y": 0.0},  # beyond max_future
        {"id": 2, "key": "k", "ms": -far, "x": 1.0, "y": 0.0},  # late, about 31,700 BC
        {"id": 3, "key": "k", "ms": 2**62, "x": 1.0, "y": 0.0},  # beyond what is accepted
    ]
    out, errs, lates, _ = run_frames([pl.DataFrame(rows, schema=SCHEMA)], last=2, fields=["x"])
    assert out["id"].to_list() == [0]
    assert sorted((r.original["id"], r.error_type) for r in errs) == [
        (1, "FutureTimestamp"),
        (3, "BadTimestamp"),
    ]
    assert [r.original["id"] for r in lates] == [2] and "us since 1970" in lates[0].reason
