"""rolling with several windows in one step: the same results as one step per window."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.featurize import rolling

from tests.operators.test_featurize_rolling import ALL, HALF_LIFE, _ts, run_rolling

# computed from the rows of the window alone: the other windows of the step cannot change them
WINDOW_ONLY = {"count", "min", "max", "last", "delta", "since", "rate", "ewma", "p50", "p95", "p99"}


@st.composite
def messy_streams(draw, values):
    """Keyed events out of order (some late), with some bad ones."""
    n = draw(st.integers(1, 50))
    keys = draw(st.lists(st.sampled_from("abc"), min_size=n, max_size=n))
    base = sorted(draw(st.lists(st.integers(0, 80), min_size=n, max_size=n)))
    jitter = draw(st.lists(st.integers(-14, 6), min_size=n, max_size=n))
    xs = draw(st.lists(values, min_size=n, max_size=n))
    ys = draw(st.lists(values, min_size=n, max_size=n))
    bad = draw(
        st.lists(
            st.sampled_from([None, None, None, None, None, None, "missing", "str", "nan"]),
            min_size=n,
            max_size=n,
        )
    )
    items = []
    for i, (k, b, j, x, y, what) in enumerate(zip(keys, base, jitter, xs, ys, bad)):
        event = {"id": i, "ms": max(0, b + j) * 500, "x": x, "y": y}
        if what == "missing":
            del event["y"]
        elif what == "str":
            event["x"] = str(x)
        elif what == "nan":
            event["y"] = math.nan
        items.append((k, event))
    return items


def _windows_and_labels(draw_windows):
    labels = [f"w{i}" for i in range(len(draw_windows))]
    return [timedelta(milliseconds=500 * w) for w in draw_windows], labels


def _compare(items, windows, labels, *, exact_values, **kwargs):
    ttl = max(windows) + kwargs["max_delay"] + timedelta(hours=1)
    multi = run_rolling(items, window=windows, label=labels, ttl=ttl, **kwargs)
    singles = [
        run_rolling(items, window=w, label=lb, ttl=ttl, **kwargs) for w, lb in zip(windows, labels)
    ]
    m_oks, m_errs, m_lates = multi
    longest = max(range(len(windows)), key=lambda i: windows[i])
    for i, (oks, errs, lates) in enumerate(singles):
        # the same events, in the same order, rejected alike
        assert [(k, e["id"]) for k, e in oks] == [(k, e["id"]) for k, e in m_oks]
        assert [(r.error_type, r.reason, r.original) for r in errs] == [
            (r.error_type, r.reason, r.original) for r in m_errs
        ]
        assert [(r.reason, r.original) for r in lates] == [(r.reason, r.original) for r in m_lates]
        suffix = f"_{labels[i]}"
        for (_, single), (_, both) in zip(oks, m_oks):
            mine = {k: v for k, v in both.items() if k.endswith(suffix)}
            theirs = {k: v for k, v in single.items() if k.endswith(suffix)}
            assert mine.keys() == theirs.keys() and mine
            assert {k: v for k, v in both.items() if "_w" not in k} == items[both["id"]][1]
            for name, want in theirs.items():
                got = mine[name]
                agg = name.split("_")[1]
                if i == longest or agg in WINDOW_ONLY or (exact_values and agg in {"sum", "mean"}):
                    assert got == want or (math.isnan(got) and math.isnan(want)), (name, got, want)
                else:  # the documented last-bits caveat
                    scale = max(
                        1.0,
                        abs(single[f"{name[0]}_max{suffix}"]),
                        abs(single[f"{name[0]}_min{suffix}"]),
                    )
                    scale = scale * scale if agg == "var" else scale
                    assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9 * scale), (
                        name,
                        got,
                        want,
                    )
    # outputs are new dicts with every window's fields, window by window in the order given
    for _, both in m_oks:
        names = [k for k in both if "_w" in k]
        assert names == [
            f"{f}_{a}_{lb}" for lb in labels for f in ("x", "y") for a in kwargs["aggregates"]
        ]


@settings(max_examples=120, deadline=None)
@given(
    items=messy_streams(st.integers(-1000, 1000).map(float)),
    windows=st.lists(st.integers(1, 30), min_size=1, max_size=3),
    delay_s=st.integers(0, 5),
    batch_size=st.integers(1, 9),
    shards=st.integers(1, 3),
)
def test_one_step_equals_one_step_per_window_exact_values(
    items, windows, delay_s, batch_size, shards
):
    windows, labels = _windows_and_labels(windows)
    _compare(
        items,
        windows,
        labels,
        exact_values=True,
        batch_size=batch_size,
        fields=["x", "y"],
        aggregates=ALL,
        max_delay=timedelta(seconds=delay_s),
        half_life=timedelta(seconds=HALF_LIFE),
        shards=shards,
    )


@settings(max_examples=120, deadline=None)
@given(
    items=messy_streams(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)),
    windows=st.lists(st.integers(1, 30), min_size=2, max_size=3),
    delay_s=st.integers(0, 5),
    batch_size=st.integers(1, 9),
)
def test_one_step_equals_one_step_per_window_float_values(items, windows, delay_s, batch_size):
    windows, labels = _windows_and_labels(windows)
    _compare(
        items,
        windows,
        labels,
        exact_values=False,
        batch_size=batch_size,
        fields=["x", "y"],
        aggregates=ALL,
        max_delay=timedelta(seconds=delay_s),
        half_life=timedelta(seconds=HALF_LIFE),
        shards=2,
    )


def test_bounded_temporaries_give_the_same_features(monkeypatch):
    # long windows over many rows: min/max gathered range by range for every window
    from streamml.operators.featurize import _kernels

    rng = np.random.default_rng(7)
    items = [
        (
            str(rng.choice(list("ab"))),
            {
                "id": i,
                "ms": int(i * 300 + rng.integers(0, 2000)),
                "x": float(rng.integers(-50, 50)),
                "y": float(rng.integers(-9, 9)),
            },
        )
        for i in range(150)
    ]
    args = dict(
        batch_size=40,
        fields=["x", "y"],
        aggregates=["min", "max", "p50", "sum"],
        max_delay=timedelta(seconds=2),
        shards=1,
    )
    windows = [timedelta(seconds=3), timedelta(seconds=12)]
    want, _, _ = run_rolling(items, window=windows, **args)
    monkeypatch.setattr(_kernels, "MAX_CELLS", 40)
    got, _, _ = run_rolling(items, window=windows, **args)
    assert got == want


def test_default_labels_and_rate_per_window():
    items = [("k", {"id": i, "ms": i * 1000, "x": float(i)}) for i in range(5)]
    oks, _, _ = run_rolling(
        items,
        window=[timedelta(seconds=2), timedelta(minutes=5)],
        fields=["x"],
        aggregates=["rate"],
    )
    assert oks[-1][1] == {"id": 4, "ms": 4000, "x": 4.0, "x_rate_2s": 1.0, "x_rate_5m": 5 / 300}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"window": []}, "non-empty list"),
        ({"window": [timedelta(seconds=1), 5]}, "non-empty list"),
        ({"window": [timedelta(seconds=1), timedelta(0)]}, "window must be > 0"),
        ({"window": [timedelta(seconds=1), timedelta(seconds=2)], "label": "1s"}, "one per window"),
        ({"window": [timedelta(seconds=1), timedelta(seconds=2)], "label": ["a"]}, "one label per"),
        ({"window": timedelta(seconds=1), "label": ["a"]}, "label must be a str"),
        ({"window": [timedelta(seconds=60), timedelta(minutes=1)]}, "duplicate feature names"),
        (
            {"window": [timedelta(seconds=1), timedelta(seconds=2)], "label": ["a", "a"]},
            "duplicate",
        ),
        (
            {"window": [timedelta(seconds=1), timedelta(seconds=20)], "ttl": timedelta(seconds=10)},
            "ttl must be >= window",
        ),
    ],
)
def test_misconfiguration_raises_at_build_time(kwargs, message):
    flow = Dataflow("t")
    up = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match=message):
        rolling("roll", up, timestamp=_ts, fields=["x"], **kwargs)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=5),
    data=st.data(),
    base=st.sampled_from([0, -(2**53) + 10**6, 2**53 - 10**6, 2**60]),
)
def test_group_range_starts_matches_the_binary_search(sizes, data, base):
    from streamml.operators.featurize import _kernels

    group = np.repeat(np.arange(len(sizes)), sizes)
    ts = np.concatenate(
        [np.sort(data.draw(st.lists(st.integers(0, 50), min_size=n, max_size=n))) for n in sizes]
    ).astype(np.int64) + np.int64(base)
    end = np.flatnonzero(data.draw(st.lists(st.booleans(), min_size=len(ts), max_size=len(ts))))
    windows = data.draw(st.lists(st.integers(1, 60), min_size=1, max_size=3))
    afters = [ts[end] - w for w in windows]
    got = _kernels.group_range_starts(group, ts, end, afters)
    if base == 2**60:
        assert got is None  # not exact as floats: the caller falls back to range_starts
        return
    first, _ = _kernels.group_rows(group)
    want = [_kernels.range_starts(ts, first[end], end, after) for after in afters]
    assert [g.tolist() for g in got] == [w.tolist() for w in want]


def test_times_beyond_float_precision_use_the_binary_search():
    far = datetime(9999, 1, 1, tzinfo=timezone.utc)  # 2.5e17 us: a float64 step is 32 us here
    items = [("k", {"id": i, "s": i, "x": float(i)}) for i in range(6)]
    oks, errs, lates = run_rolling(
        items,
        timestamp=lambda e: far + timedelta(seconds=e["s"], microseconds=e["s"] % 2),
        window=[timedelta(seconds=3), timedelta(seconds=1)],
        fields=["x"],
        aggregates=["count", "sum"],
        max_future=None,
        batch_size=4,
    )
    assert [(e["x_count_3s"], e["x_sum_3s"], e["x_count_1s"]) for _, e in oks] == [
        (1.0, 0.0, 1.0),
        (2.0, 1.0, 1.0),
        (3.0, 3.0, 2.0),
        (3.0, 6.0, 1.0),  # 3 s + 1 us back is the first event's time: out of the window
        (4.0, 10.0, 2.0),  # 4 s back is 1 us before the second event
        (3.0, 12.0, 1.0),
    ]
