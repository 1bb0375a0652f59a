"""rolling: brute-force equivalence, lateness, bad input, eviction, snapshot/restore."""

from __future__ import annotations

import math
import pickle
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.featurize import rolling, rolling_agg
from streamml.operators.featurize._kernels import range_variance

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
ALL = ["count", "sum", "mean", "std", "var", "min", "max", "last", "delta", "since", "rate"]
ALL += ["ewma", "p50", "p95", "p99"]
HALF_LIFE = 7.0


def _ts(event):
    return T0 + timedelta(milliseconds=event["ms"])


def run_rolling(events, *, batch_size=1, **kwargs):
    """Run ``rolling`` over ``(key, event)`` items; return (oks, errs, lates)."""
    flow = Dataflow("t")
    up = op.input("in", flow, TestingSource(events, batch_size=batch_size))
    kwargs.setdefault("timestamp", _ts)
    out = rolling("roll", up, **kwargs)
    oks, errs, lates = [], [], []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    op.output("late", out.late, TestingSink(lates))
    run_main(flow)
    return oks, errs, lates


def brute_force(items, window_ms, delay_ms):
    """Reference: late flags by per-key max seen, features from the full accepted list."""
    max_seen: dict[str, int] = {}
    accepted, late_ids = [], set()
    for arrival, (key, ev) in enumerate(items):
        t = ev["ms"]
        m = max_seen.get(key)
        if m is not None and t < m - delay_ms:
            late_ids.add(ev["id"])
            continue
        max_seen[key] = t if m is None else max(m, t)
        accepted.append((key, t, arrival, ev))
    expected = {}
    for key in {k for k, *_ in accepted}:
        rows = sorted((r for r in accepted if r[0] == key), key=lambda r: (r[1], r[2]))
        for i, (_, t, _, ev) in enumerate(rows):
            win = [r for r in rows[: i + 1] if r[1] > t - window_ms]
            expected[ev["id"]] = {
                f: _aggs([r[3][f] for r in win], [r[1] for r in win], t, window_ms)
                for f in ("x", "y")
            }
    return expected, late_ids


def _aggs(xs, ts, t, window_ms):
    arr = np.array(xs, dtype=float)
    w = np.exp2(-((t - np.array(ts)) / 1000.0) / HALF_LIFE)
    out = {
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
        "rate": len(xs) / (window_ms / 1000.0),
        "ewma": float(np.sum(w * arr) / np.sum(w)),
    }
    for q in (50, 95, 99):
        out[f"p{q}"] = float(np.quantile(arr, q / 100))
    return out


EXACT = {"count", "sum", "min", "max", "last", "delta", "since", "rate"}


def _check(got, want, scale, exact):
    if math.isnan(want):
        return math.isnan(got)
    if exact:
        return got == want
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9 * scale)


@st.composite
def streams(draw, values):
    n = draw(st.integers(1, 40))
    keys = draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
    # half-second steps so that window edges and equal timestamps are common
    base = sorted(draw(st.lists(st.integers(0, 60), min_size=n, max_size=n)))
    jitter = draw(st.lists(st.integers(-12, 6), min_size=n, max_size=n))
    xs = draw(st.lists(values, min_size=n, max_size=n))
    ys = draw(st.lists(values, min_size=n, max_size=n))
    return [
        (k, {"id": i, "ms": max(0, b + j) * 500, "x": x, "y": y})
        for i, (k, b, j, x, y) in enumerate(zip(keys, base, jitter, xs, ys))
    ]


def _assert_matches(items, oks, lates, errs, window_ms, delay_ms, exact_values):
    expected, late_ids = brute_force(items, window_ms, delay_ms)
    assert errs == []
    got_late = [r.original[1]["id"] for r in lates]
    assert sorted(got_late) == sorted(late_ids)
    assert all(r.error_type == "Late" for r in lates)
    got_ids = [e["id"] for _, e in oks]
    assert sorted(got_ids) == sorted(expected)  # every accepted event exactly once
    label = f"{window_ms // 1000}s"
    for key, ev in oks:
        assert key == items[ev["id"]][0]
        for f in ("x", "y"):
            want = expected[ev["id"]][f]
            scale = max(1.0, max(abs(v) for v in (ev[f], want["min"], want["max"])))
            for agg in ALL:
                got = ev[f"{f}_{agg}_{label}"]
                exact = agg in EXACT and (exact_values or agg in {"count", "min", "max", "last"})
                sc = scale * scale if agg == "var" else scale
                assert _check(got, want[agg], sc, exact), (agg, f, ev, got, want[agg])


@settings(max_examples=150, deadline=None)
@given(
    items=streams(st.integers(-1000, 1000).map(float)),
    delay_s=st.integers(0, 5),
    batch_size=st.integers(1, 7),
    shards=st.integers(1, 3),
)
def test_rolling_matches_bruteforce_exact_values(items, delay_s, batch_size, shards):
    oks, errs, lates = run_rolling(
        items,
        batch_size=batch_size,
        window=timedelta(seconds=10),
        fields=["x", "y"],
        aggregates=ALL,
        max_delay=timedelta(seconds=delay_s),
        half_life=timedelta(seconds=HALF_LIFE),
        shards=shards,
    )
    _assert_matches(items, oks, lates, errs, 10_000, delay_s * 1000, exact_values=True)


@settings(max_examples=150, deadline=None)
@given(
    items=streams(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)),
    delay_s=st.integers(0, 5),
    batch_size=st.integers(1, 7),
)
def test_rolling_matches_bruteforce_float_values(items, delay_s, batch_size):
    oks, errs, lates = run_rolling(
        items,
        batch_size=batch_size,
        window=timedelta(seconds=10),
        fields=["x", "y"],
        aggregates=ALL,
        max_delay=timedelta(seconds=delay_s),
        half_life=timedelta(seconds=HALF_LIFE),
        shards=2,
    )
    _assert_matches(items, oks, lates, errs, 10_000, delay_s * 1000, exact_values=False)


def test_variance_is_stable_for_large_offsets():
    rng = np.random.default_rng(0)
    x = (1e9 + rng.normal(0, 1e-3, 500))[:, None]
    start = np.arange(0, 400)
    end = start + 99
    var, _ = range_variance(x, np.zeros_like(x), start, end)
    want = [np.var(x[s : e + 1]) for s, e in zip(start, end)]
    np.testing.assert_allclose(var[:, 0], want, rtol=1e-6)


def test_keys_do_not_cost_each_other_precision():
    # key 0 has huge values, key 1 small ones right after it in the same array
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(1e12, 1e11, 300), rng.normal(0.5, 1e-3, 300)])[:, None]
    group_first = np.repeat([0, 300], 300)
    end = np.arange(310, 600)
    start = end - 9
    var, total = range_variance(x, x[group_first], start, end)
    want_var = [np.var(x[s : e + 1]) for s, e in zip(start, end)]
    want_sum = [np.sum(x[s : e + 1]) for s, e in zip(start, end)]
    np.testing.assert_allclose(var[:, 0], want_var, rtol=1e-9)
    np.testing.assert_allclose(total[:, 0], want_sum, rtol=1e-12)


def _ev(i, ms, **fields):
    return ("k", {"id": i, "ms": ms, **fields})


def test_bad_input_is_routed_and_flow_continues():
    items = [
        _ev(0, 1000, x=1.0),
        _ev(1, 1100),  # missing field
        _ev(2, 1200, x="2.5"),  # string where a number belongs
        _ev(3, 1300, x=float("nan")),
        _ev(4, 1400, x=float("inf")),
        _ev(5, 1500, x=True),  # bool is not a number here
        _ev(6, 1600, x=None),
        ("k", "not a mapping"),
        (7, {"id": 7, "ms": 1700, "x": 1.0}),  # key not a str
        _ev(8, 2000, x=3.0),
    ]
    oks, errs, lates = run_rolling(
        items, batch_size=3, window=timedelta(seconds=10), fields=["x"], aggregates=["sum"]
    )
    assert [(e["id"], e["x_sum_10s"]) for _, e in oks] == [(0, 1.0), (8, 4.0)]
    kinds = sorted((items.index(r.original), r.error_type) for r in errs)
    assert kinds == [
        (1, "MissingField"),
        (2, "NotANumber"),
        (3, "NonFinite"),
        (4, "NonFinite"),
        (5, "NotANumber"),
        (6, "NotANumber"),
        (7, "BadItem"),
        (8, "BadItem"),
    ]
    errs.sort(key=lambda r: items.index(r.original))
    assert errs[1].original == items[2] and "field 'x' is str '2.5'" in errs[1].reason
    assert lates == []


def test_bad_timestamps():
    far = datetime(3000, 1, 1, tzinfo=timezone.utc)
    stamps = {
        0: T0,
        1: datetime(1970, 1, 1, tzinfo=timezone.utc),  # epoch 0: valid, but late for this key
        2: datetime(1960, 1, 1, tzinfo=timezone.utc),  # negative: valid, late
        3: far,  # beyond max_future: rejected, does not poison the watermark
        4: datetime(2024, 1, 1),  # naive
        5: 1704067200,  # not a datetime
        6: T0 + timedelta(seconds=1),
    }
    items = [("k", {"id": i, "x": 1.0}) for i in stamps]
    oks, errs, lates = run_rolling(
        items,
        batch_size=2,
        timestamp=lambda e: stamps[e["id"]],
        window=timedelta(seconds=10),
        fields=["x"],
        aggregates=["count"],
    )
    assert [e["id"] for _, e in oks] == [0, 6]
    assert [r.original[1]["id"] for r in lates] == [1, 2]
    assert [(r.original[1]["id"], r.error_type) for r in errs] == [
        (3, "FutureTimestamp"),
        (4, "BadTimestamp"),
        (5, "BadTimestamp"),
    ]
    # a new key's first event at epoch 0 is just an old event, accepted
    oks, _, _ = run_rolling(
        [("z", {"id": 0, "x": 1.0})],
        timestamp=lambda e: stamps[1],
        window=timedelta(seconds=10),
        fields=["x"],
    )
    assert len(oks) == 1


def test_far_future_accepted_when_allowed():
    items = [("k", {"id": 0, "x": 1.0})]
    oks, errs, _ = run_rolling(
        items,
        timestamp=lambda e: datetime(9999, 1, 1, tzinfo=timezone.utc),
        window=timedelta(seconds=1),
        fields=["x"],
        max_future=None,
    )
    assert len(oks) == 1 and errs == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"window": timedelta(0)}, "window must be > 0"),
        ({"max_delay": timedelta(seconds=-1)}, "max_delay must be >= 0"),
        ({"aggregates": ["median"]}, "unknown aggregate 'median'"),
        ({"aggregates": ["ewma"]}, "ewma needs half_life"),
        ({"ttl": timedelta(seconds=1)}, "ttl must be >= window"),
        ({"shards": 0}, "shards must be >= 1"),
        ({"idle_release": timedelta(0)}, "idle_release must be > 0"),
        ({"fields": []}, "fields must name at least one"),
        ({"fields": {"x": "mean"}}, "must be a list"),
    ],
)
def test_misconfiguration_raises_at_build_time(kwargs, message):
    args = {"timestamp": _ts, "window": timedelta(seconds=10), "fields": ["x"], **kwargs}
    flow = Dataflow("t")
    up = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match=message):
        rolling("roll", up, **args)


def test_idle_keys_are_forgotten_and_stale_events_stay_late():
    # key "old" goes idle; "new" runs on for longer than the ttl
    items = [("old", {"id": 0, "ms": 0, "x": 1.0})]
    items += [("new", {"id": i, "ms": i * 1000, "x": 1.0}) for i in range(1, 40)]
    items += [
        ("old", {"id": 100, "ms": 4_000, "x": 1.0}),  # old key forgotten: stale -> late
        ("old", {"id": 101, "ms": 39_000, "x": 1.0}),  # far enough past the horizon: fresh
    ]
    oks, errs, lates = run_rolling(
        items,
        batch_size=5,
        window=timedelta(seconds=5),
        fields=["x"],
        aggregates=["count"],
        ttl=timedelta(seconds=10),
        shards=1,
    )
    assert [r.original[1]["id"] for r in lates] == [100]
    assert "TTL" in lates[0].reason
    counts = {e["id"]: e["x_count_5s"] for _, e in oks}
    assert counts[101] == 1.0 and counts[39] == 5.0


def _logic(**kwargs):
    """A builder of the shard state ``rolling`` uses, for state-level tests."""
    cfg = rolling_agg._config("roll", fields=["x"], **kwargs)
    return lambda resume=None: rolling_agg._RowLogic(cfg, _ts, resume)


def test_state_is_bounded_by_window_and_ttl():
    build = _logic(
        window=timedelta(seconds=10),
        aggregates=["count"],
        ttl=timedelta(seconds=20),
        max_delay=timedelta(seconds=2),
    )
    logic = build()
    for step in range(100):
        batch = [(f"k{step}-{j}", {"ms": step * 1000, "x": 1.0}) for j in range(50)]
        batch += [("steady", {"ms": step * 1000, "x": 1.0})]
        logic.on_batch([batch])
    # only keys active in the last ttl (plus a quarter ttl sweep period) remain
    kid_of = logic.core.et.kid_of
    assert len(kid_of) <= 51 * 26
    assert "k0-0" not in kid_of and "steady" in kid_of
    rows = logic.core.win.rows[0]
    assert len(rows) <= len(kid_of) * 13


@pytest.mark.parametrize(
    ("window", "name"),
    [
        (timedelta(seconds=10), "x_max_10s"),
        ([timedelta(seconds=4), timedelta(seconds=10)], "x_max_4s"),  # several windows, one state
    ],
)
def test_snapshot_restore_round_trip(window, name):
    build = _logic(
        window=window, aggregates=["count", "mean", "max"], max_delay=timedelta(seconds=3)
    )
    rng = np.random.default_rng(1)
    batches = [
        [
            (
                f"k{rng.integers(5)}",
                {
                    "id": b * 10 + j,
                    "ms": int(b * 2000 + rng.integers(-2500, 2500)),
                    "x": float(rng.normal()),
                },
            )
            for j in range(10)
        ]
        for b in range(20)
    ]

    def outputs(chunks):
        return [(k, e) for oks, _, _ in chunks for k, e in oks], [
            r.original for _, _, lates in chunks for r in lates
        ]

    straight = build()
    expected = [c for b in batches for c in straight.on_batch([b])[0]] + straight.on_eof()[0]

    first = build()
    got = [c for b in batches[:9] for c in first.on_batch([b])[0]]
    snap = first.snapshot()
    # the snapshot is a copy: more work on the old logic does not change it
    first.on_batch([batches[9]])
    resumed = build(pickle.loads(pickle.dumps(snap)))
    got += [c for b in batches[9:] for c in resumed.on_batch([b])[0]] + resumed.on_eof()[0]
    assert outputs(got) == outputs(expected)
    assert any(lates for _, _, lates in expected) and all(name in e for _, e in outputs(got)[0])


@pytest.mark.parametrize("idle_release", [None, timedelta(milliseconds=50)])
def test_idle_release_emits_held_events_of_a_quiet_key(idle_release):
    pause = TestingSource.PAUSE(timedelta(milliseconds=600))
    items = [_ev(0, 10_000, x=1.0), _ev(1, 12_000, x=2.0), pause, _ev(2, 11_000, x=4.0)]
    oks, errs, lates = run_rolling(
        items,
        window=timedelta(seconds=10),
        fields=["x"],
        aggregates=["count", "sum"],
        max_delay=timedelta(seconds=5),
        idle_release=idle_release,
    )
    sums = {e["id"]: e["x_sum_10s"] for _, e in oks}
    if idle_release is None:  # held until end of input: event 2 counts for event 1
        assert sums == {0: 1.0, 2: 5.0, 1: 7.0} and lates == []
    else:  # 0 and 1 emitted during the pause; 2 is then behind the emitted 12 s
        assert sums == {0: 1.0, 1: 3.0}
        assert [r.original[1]["id"] for r in lates] == [2]


def test_bounded_temporaries_give_the_same_features(monkeypatch):
    # long windows over many rows switch min/max, fallbacks, ewma and quantiles to
    # range-by-range chunks; force that with a tiny bound and compare with brute force
    from streamml.operators.featurize import _kernels

    monkeypatch.setattr(_kernels, "MAX_CELLS", 40)
    rng = np.random.default_rng(5)
    items = [
        (
            str(rng.choice(list("abc"))),
            {
                "id": i,
                "ms": int(i * 300 + rng.integers(0, 2000)),
                "x": float(rng.integers(-50, 50)),
                "y": float(rng.normal() * 1e3),
            },
        )
        for i in range(150)
    ]
    oks, errs, lates = run_rolling(
        items,
        batch_size=40,
        window=timedelta(seconds=10),
        fields=["x", "y"],
        aggregates=ALL,
        max_delay=timedelta(seconds=2),
        half_life=timedelta(seconds=HALF_LIFE),
        shards=1,
    )
    _assert_matches(items, oks, lates, errs, 10_000, 2_000, exact_values=False)


@settings(max_examples=100)
@given(
    keys=st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=30),
    shards=st.integers(1, 9),
)
def test_row_sharding_follows_the_one_key_router(keys, shards):
    import polars as pl
    from streamml.operators._core.keys import shard_ids
    from streamml.operators.featurize._shard import shard_grouper

    got = {
        k: int(shard)
        for shard, items in shard_grouper(shards)([(k, 0) for k in keys])
        for k, _ in items
    }
    want = dict(zip(keys, shard_ids(pl.Series(keys, dtype=pl.String), shards).tolist()))
    assert got == want
