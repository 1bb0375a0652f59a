"""window_agg: brute-force group-by equivalence, one late record per event, bad input."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import SessionWindower, SlidingWindower, TumblingWindower
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.featurize import window_agg

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
AGGS = ["count", "sum", "mean", "std", "min", "max", "first", "last", "p50", "p95"]
LENGTH, OFFSET, GAP = 3000, 1000, 2000  # ms


def _ts(e):
    return T0 + timedelta(milliseconds=e["ms"])


def run_windows(items, windower, *, batch_size=1, aggregates=AGGS, **kwargs):
    flow = Dataflow("t")
    up = op.input("in", flow, TestingSource(items, batch_size=batch_size))
    out = window_agg(
        "win",
        up,
        timestamp=_ts,
        windower=windower,
        fields=["x"],
        aggregates=aggregates,
        idle_advance=False,
        **kwargs,
    )
    oks, errs, lates = [], [], []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    op.output("late", out.late, TestingSink(lates))
    run_main(flow)
    return oks, errs, lates


def _windows_of(kind, t):
    if kind == "tumbling":
        return [t // LENGTH]
    if kind == "sliding":
        return list(range((t - LENGTH) // OFFSET + 1, t // OFFSET + 1))
    raise AssertionError(kind)


def brute_force(items, kind, delay_ms):
    max_seen, accepted, late_ids = {}, [], set()
    for arrival, (key, ev) in enumerate(items):
        m = max_seen.get(key)
        if m is not None and ev["ms"] < m - delay_ms:
            late_ids.add(ev["id"])
            continue
        max_seen[key] = ev["ms"] if m is None else max(m, ev["ms"])
        accepted.append((key, ev["ms"], arrival, ev["x"]))
    accepted.sort(key=lambda r: (r[0], r[1], r[2]))
    groups: dict[tuple[str, int], list[tuple[int, float]]] = {}
    if kind == "session":
        prev: dict[str, int] = {}
        start: dict[str, int] = {}
        for key, t, _, x in accepted:
            if key not in prev or t - prev[key] > GAP:
                start[key] = t
            prev[key] = t
            groups.setdefault((key, start[key]), []).append((t, x))
    else:
        step = LENGTH if kind == "tumbling" else OFFSET
        for key, t, _, x in accepted:
            for wid in _windows_of(kind, t):
                groups.setdefault((key, wid * step), []).append((t, x))
    expected = {}
    for (key, start_ms), rows in groups.items():
        xs = np.array([x for _, x in rows])
        expected[(key, start_ms)] = {
            "count": len(xs),
            "sum": float(np.sum(xs)),
            "mean": float(np.mean(xs)),
            "std": float(np.std(xs)),
            "min": float(xs.min()),
            "max": float(xs.max()),
            "first": rows[0][1],
            "last": rows[-1][1],
            "p50": float(np.quantile(xs, 0.5)),
            "p95": float(np.quantile(xs, 0.95)),
            "end": (
                rows[-1][0]
                if kind == "session"
                else start_ms + (LENGTH if kind != "session" else 0)
            ),
        }
    return expected, late_ids


@st.composite
def streams(draw):
    n = draw(st.integers(1, 30))
    keys = draw(st.lists(st.sampled_from("ab"), min_size=n, max_size=n))
    base = sorted(draw(st.lists(st.integers(0, 40), min_size=n, max_size=n)))
    jitter = draw(st.lists(st.integers(-8, 4), min_size=n, max_size=n))
    xs = draw(st.lists(st.integers(-100, 100).map(float), min_size=n, max_size=n))
    return [
        (k, {"id": i, "ms": max(0, b + j) * 500, "x": x})
        for i, (k, b, j, x) in enumerate(zip(keys, base, jitter, xs))
    ]


WINDOWERS = {
    "tumbling": TumblingWindower(timedelta(milliseconds=LENGTH), align_to=T0),
    "sliding": SlidingWindower(
        timedelta(milliseconds=LENGTH), timedelta(milliseconds=OFFSET), align_to=T0
    ),
    "session": SessionWindower(timedelta(milliseconds=GAP)),
}


@pytest.mark.parametrize("kind", list(WINDOWERS))
@settings(max_examples=50, deadline=None)
@given(items=streams(), delay_s=st.integers(0, 3), batch_size=st.integers(1, 5))
def test_window_agg_matches_groupby(kind, items, delay_s, batch_size):
    oks, errs, lates = run_windows(
        items, WINDOWERS[kind], batch_size=batch_size, max_delay=timedelta(seconds=delay_s)
    )
    expected, late_ids = brute_force(items, kind, delay_s * 1000)
    assert errs == []
    assert sorted(r.original[1]["id"] for r in lates) == sorted(late_ids)
    got = {}
    for key, row in oks:
        assert row["key"] == key
        start_ms = (row["window_start"] - T0) // timedelta(milliseconds=1)
        assert (key, start_ms) not in got
        got[(key, start_ms)] = row
    assert sorted(got) == sorted(expected)
    for k, want in expected.items():
        row = got[k]
        assert (row["window_end"] - T0) // timedelta(milliseconds=1) == want["end"]
        for agg in AGGS:
            assert math.isclose(row[f"x_{agg}"], want[agg], rel_tol=1e-12, abs_tol=1e-9), agg


def test_bad_input_goes_to_errs():
    items = [
        ("k", {"id": 0, "ms": 0, "x": 1.0}),
        ("k", {"id": 1, "ms": 10}),
        ("k", {"id": 2, "ms": 20, "x": "1"}),
        ("k", {"id": 3, "ms": 30, "x": float("nan")}),
        ("k", {"id": 4, "x": 2.0}),  # timestamp getter raises KeyError
    ]
    oks, errs, lates = run_windows(items, WINDOWERS["tumbling"], aggregates=["sum"])
    assert [(r.original[1]["id"], r.error_type) for r in errs] == [
        (1, "MissingField"),
        (2, "NotANumber"),
        (3, "NonFinite"),
        (4, "BadTimestamp"),
    ]
    assert [row["x_sum"] for _, row in oks] == [1.0]


def test_rate_and_label():
    items = [("k", {"id": i, "ms": i * 100, "x": 1.0}) for i in range(6)]
    oks, _, _ = run_windows(items, WINDOWERS["tumbling"], aggregates=["rate"], label="3s")
    assert [row["x_rate_3s"] for _, row in oks] == [2.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"windower": WINDOWERS["session"], "aggregates": ["rate"]}, "rate needs a fixed"),
        ({"aggregates": ["delta"]}, "unknown window aggregate 'delta'"),
        ({"windower": "1m"}, "windower must be"),
        ({"max_delay": timedelta(seconds=-1)}, "max_delay must be >= 0"),
    ],
)
def test_misconfiguration_raises(kwargs, message):
    args = {"windower": WINDOWERS["tumbling"], "fields": ["x"], "timestamp": _ts, **kwargs}
    flow = Dataflow("t")
    up = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match=message):
        window_agg("win", up, **args)


@pytest.mark.parametrize(
    "windower",
    [
        TumblingWindower(timedelta(seconds=2), align_to=T0),
        SlidingWindower(timedelta(seconds=3), timedelta(seconds=1), align_to=T0),
    ],
    ids=["tumbling", "sliding"],
)
def test_window_numbering_is_what_bytewax_reports_on_its_public_streams(windower):
    """window_agg numbers windows itself (``_window_core.Fixed``); Bytewax's meta and late
    streams agree, so its windows are the ones Bytewax's windowers would make."""
    from bytewax.operators.windowing import EventClock, collect_window
    from streamml.operators._time import micros, to_micros
    from streamml.operators.featurize.windows import _windows

    frozen = datetime(1970, 1, 1, tzinfo=timezone.utc)
    clock = EventClock(
        lambda s: T0 + timedelta(seconds=s),
        wait_for_system_duration=timedelta(0),
        now_getter=lambda: frozen,
        to_system_utc=lambda _t: None,
    )
    seconds = [0.5, 4.2, 7.0, 12.9, 1.7, 30.0, 11.0]  # 1.7 and 11.0 arrive late
    flow = Dataflow("numbering")
    up = op.input("in", flow, TestingSource([("k", s) for s in seconds]))
    wout = collect_window("w", up, clock, windower)
    metas, lates = [], []
    op.output("meta", wout.meta, TestingSink(metas))
    op.output("late", wout.late, TestingSink(lates))
    run_main(flow)

    fixed = _windows(windower)

    def us(s):
        return np.array([to_micros(T0) + micros(timedelta(seconds=s))])

    assert len(metas) >= 5
    for _key, (wid, meta) in metas:
        start = int(fixed.start(np.array([wid]))[0])
        assert (start, start + fixed.length) == (
            to_micros(meta.open_time),
            to_micros(meta.close_time),
        )
    late_ids: dict[float, list[int]] = {}
    for _key, (wid, s) in lates:
        late_ids.setdefault(s, []).append(wid)
    assert sorted(late_ids) == [1.7, 11.0]
    for s, ids in late_ids.items():  # every window holding the event, first to last
        assert sorted(ids) == list(range(fixed.first_id(us(s))[0], fixed.last_id(us(s))[0] + 1))


def _as_frame(items):
    import polars as pl

    return pl.DataFrame(
        {
            "k": [k for k, _ in items],
            "ms": [int(T0.timestamp() * 1000) + e["ms"] for _, e in items],
            "id": [e["id"] for _, e in items],
            "x": [e["x"] for _, e in items],
        }
    )


@pytest.mark.parametrize("kind", list(WINDOWERS))
@settings(max_examples=15, deadline=None)
@given(
    items=streams(),
    delay_s=st.integers(0, 3),
    cut=st.integers(1, 30),
    shards=st.sampled_from([1, 3]),
)
def test_frames_give_the_rows_windows(kind, items, delay_s, cut, shards):
    """The frame path (``key=``, shards, any frame cut) = the row path, window by window."""
    import polars as pl

    oks, _, lates = run_windows(items, WINDOWERS[kind], max_delay=timedelta(seconds=delay_s))
    frame = _as_frame(items)
    flow = Dataflow("t")
    parts = [frame.slice(i, cut) for i in range(0, frame.height, cut)]
    out = window_agg(
        "win",
        op.input("in", flow, TestingSource(parts)),
        key="k",
        timestamp="ms",
        windower=WINDOWERS[kind],
        fields=["x"],
        aggregates=AGGS,
        max_delay=timedelta(seconds=delay_s),
        idle_advance=False,
        shards=shards,
    )
    got, got_late = [], []
    op.output("oks", out.oks, TestingSink(got))
    op.output("late", out.late, TestingSink(got_late))
    run_main(flow)
    rows = pl.concat(got).to_dicts() if got else []
    assert sorted(r.original["id"] for r in got_late) == sorted(r.original[1]["id"] for r in lates)

    def canon(r):
        return (
            r["key"],
            r["window_start"],
            r["window_end"],
            *(round(r[f"x_{a}"], 9) for a in AGGS),
        )

    assert sorted(map(canon, rows)) == sorted(canon(r) for _, r in oks)


def test_a_key_polars_cannot_hold_is_still_a_key():
    """A lone surrogate is valid Python text: its rows are windowed (shard 0), not a crash."""
    odd = chr(0xD800)
    items = [(k, {"id": i, "ms": i * 1000, "x": 1.0}) for i, k in enumerate([odd, "a", odd])]
    oks, errs, _ = run_windows(items, WINDOWERS["tumbling"], aggregates=["count"], shards=3)
    assert errs == []
    assert sorted((k, row["x_count"]) for k, row in oks) == [("a", 1.0), (odd, 2.0)]


def test_frames_keyed_by_text_then_by_integers_go_on():
    """One shard, keys of a String column then of an integer one: keys come out as text."""
    import polars as pl

    ms = int(T0.timestamp() * 1000)
    frames = [
        pl.DataFrame({"k": ["7"], "ms": [ms], "x": [1.0]}),
        pl.DataFrame({"k": [7, 8], "ms": [ms + 1, ms + 2], "x": [2.0, 3.0]}),
    ]
    flow = Dataflow("t")
    out = window_agg(
        "win",
        op.input("in", flow, TestingSource(frames)),
        key="k",
        timestamp="ms",
        windower=WINDOWERS["tumbling"],
        fields=["x"],
        aggregates=["sum"],
        idle_advance=False,
        shards=1,
    )
    got = []
    op.output("oks", out.oks, TestingSink(got))
    run_main(flow)
    rows = pl.concat(got).select("key", "x_sum").sort("x_sum").rows()
    assert rows == [("7", 1.0), ("7", 2.0), ("8", 3.0)]  # "7" and 7 are two keys


def test_an_int_beyond_float_range_is_rejected_not_a_crash():
    items = [("k", {"id": 0, "ms": 0, "x": 2**1100}), ("k", {"id": 1, "ms": 1, "x": 1.0})]
    oks, errs, _ = run_windows(items, WINDOWERS["tumbling"], aggregates=["sum"])
    assert [(r.error_type, r.original[1]["id"]) for r in errs] == [("NotANumber", 0)]
    assert [row["x_sum"] for _, row in oks] == [1.0]
