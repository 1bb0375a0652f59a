"""Combined detectors: votes and pooled scores of several scorers, against computing each alone."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.anomaly import (
    Combined,
    Ewma,
    FixedThreshold,
    RobustZScore,
    ZScore,
    _engine,
    anomaly_windows,
    score,
    scorers,
)
from streamml.operators.anomaly import windows as windows_mod

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
SEC = timedelta(seconds=1)
FIELDS = ("a", "b")

values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False).map(lambda x: round(x, 2))


def _detectors() -> list[Any]:
    return [
        ZScore("a", window=60 * SEC, min_points=3),
        RobustZScore(["b", "a"], window=40 * SEC, min_points=4, exclude_above=5.4321),
        Ewma("b", half_life=20 * SEC, min_points=3),
    ]


def _reference(parts: list[Any], how: str, above: float, pts: list) -> list[tuple[float, str]]:
    """Each scorer alone on its own fields, then combined point by point in plain Python."""
    per = []
    for p in parts:
        state = p._state()
        cols = [FIELDS.index(f) for f in p.fields]
        per.append(
            [
                (z, p.fields[f])
                for z, f in (state.update(t, tuple(x[c] for c in cols)) for t, x in pts)
            ]
        )
    out = []
    for scores in zip(*per):
        zs = [z for z, _ in scores]
        driver = scores[zs.index(max(zs))][1]
        if how == "max":
            out.append((max(zs), driver))
        elif how == "mean":
            out.append((sum(zs) / len(zs), driver))
        else:
            out.append((float(sum(z > above for z in zs)), driver))
    return out


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 15), values, values), min_size=1, max_size=80),
    st.sampled_from(["max", "mean", "vote"]),
    st.integers(1, 9),
)
def test_combined_scores_match_each_scorer_alone(steps, how, cut):
    t, pts = 0, []
    for dt, a, b in steps:
        t += dt * 1_000_000
        pts.append((t, (a, b)))
    parts = _detectors()
    combined = Combined(parts, how=how, vote_above=1.2345)
    assert combined.fields == FIELDS
    state = combined._state()
    got = []
    for i in range(0, len(pts), cut):  # in runs, as the operators call it
        run = pts[i : i + cut]
        got += state.update_many([t for t, _ in run], [x for _, x in run])
    want = _reference(parts, how, 1.2345, pts)
    if how == "mean":  # NumPy's mean may sum in another order than sum(): equal to rounding
        assert [z for z, _ in got] == pytest.approx([z for z, _ in want], rel=1e-12, abs=1e-12)
    else:
        assert [z for z, _ in got] == [z for z, _ in want]
    assert [FIELDS[f] for _, f in got] == [d for _, d in want]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(1, 15), values, values), min_size=1, max_size=50),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from(["max", "mean", "vote"]),
    st.lists(st.integers(0, 12), min_size=1, max_size=6),
)
def test_score_runs_of_many_keys_match_each_scorer_alone(keys, how, calls):
    """The operators' form: each call scores several keys' runs at once (some empty)."""
    series = []
    for steps in keys:
        t, pts = 0, []
        for dt, a, b in steps:
            t += dt * 1_000_000
            pts.append((t, (a, b)))
        series.append(pts)
    parts = _detectors()
    combined = Combined(parts, how=how, vote_above=1.2345)
    states = [combined._state() for _ in series]
    got: list[list] = [[] for _ in series]
    done = [0] * len(series)
    for i, size in enumerate([*calls, None]):
        ts, xs, bounds = [], [], []
        for k, pts in enumerate(series):
            take = pts[done[k] : None if size is None else done[k] + (size + k * i) % 13]
            bounds.append((len(ts), len(ts) + len(take)))
            ts += [p[0] for p in take]
            xs += [p[1] for p in take]
            done[k] += len(take)
        z, f = scorers.score_runs(
            states, np.array(ts, dtype=np.int64), np.array(xs).reshape(-1, 2), bounds
        )
        for k, (a, b) in enumerate(bounds):
            got[k] += list(zip(z[a:b].tolist(), [FIELDS[j] for j in f[a:b].tolist()]))
    for pts, mine in zip(series, got):
        want = _reference(parts, how, 1.2345, pts)
        if how == "mean":  # NumPy's mean may sum in another order than sum(): equal to rounding
            assert [z for z, _ in mine] == pytest.approx([z for z, _ in want], rel=1e-12, abs=1e-12)
        else:
            assert [z for z, _ in mine] == [z for z, _ in want]
        assert [d for _, d in mine] == [d for _, d in want]


def _frames(n: int = 240) -> pl.DataFrame:
    rng = np.random.default_rng(7)
    a, b = rng.normal(0, 1, n), rng.normal(5, 0.5, n)
    a[90:96] += 9.0  # both detectors see this one
    b[150:156] += 6.0  # only the b detectors see this one
    return pl.DataFrame({"k": "s1", "t": [T0 + i * SEC for i in range(n)], "a": a, "b": b})


def _run(scorer: Any, *, field: bool = False) -> tuple[list[dict], pl.DataFrame]:
    """Windows of a 2-of-3 vote, and the scored frame of :func:`score` with the same scorer."""
    frame = _frames()
    flow = Dataflow("combined")
    frames = op.input("in", flow, TestingSource([frame[:100], frame[100:]]))
    found = anomaly_windows(
        "aw",
        frames,
        key="k",
        timestamp="t",
        score=scorer,
        threshold=FixedThreshold(1.5),
        cooldown=3 * SEC,
        shards=2,
    )
    scored = score("sc", frames, key="k", timestamp="t", scorer=scorer, shards=2)
    windows: list[dict] = []
    rows: list[pl.DataFrame] = []
    op.output("w", found.windows, TestingSink(windows))
    op.output("s", scored.oks, TestingSink(rows))
    run_main(flow)
    return windows, pl.concat(rows).sort("t")


def test_operators_run_the_vote_and_windows_follow_it():
    parts = [
        ZScore("a", window=60 * SEC, min_points=20),
        ZScore("b", window=60 * SEC, min_points=20),
        RobustZScore(["a", "b"], window=60 * SEC, min_points=20),
    ]
    vote = Combined(parts, how="vote", vote_above=5.0)
    windows, scored = _run(vote)
    frame = _frames()
    pts = [(i * 1_000_000, (r["a"], r["b"])) for i, r in enumerate(frame.iter_rows(named=True))]
    want = _reference(parts, "vote", 5.0, pts)
    assert scored["score"].to_list() == [z for z, _ in want]
    assert scored["score_field"].to_list() == [d for _, d in want]
    # windows: the points with two votes or more, grouped (cooldown 3 s)
    two = [i for i, (z, _) in enumerate(want) if z >= 2]
    assert two and max(z for z, _ in want[140:170]) >= 1  # the b-only burst has votes
    starts = [
        T0 + i * SEC for i in two if i - 1 not in two and i - 2 not in two and i - 3 not in two
    ]
    assert [w["start"] for w in windows] == starts
    assert all(w["points"] >= 1 for w in windows) and sum(w["points"] for w in windows) >= len(two)


def test_snapshot_round_trip_of_combined_state():
    now = [1e9]
    vote = Combined(_detectors(), how="mean")
    rules = windows_mod._WindowRules(1, 0, 5_000_000, 60_000_000, 10**12, True)
    family = windows_mod._Family(rules, FixedThreshold(2.0, 1.0), vote, "")
    timing = _engine.check_timing(
        "t", lateness=timedelta(seconds=3), span=vote.span, ttl=None, max_future=None, fields=FIELDS
    )

    def shard(resume: Any = None) -> _engine.Shard:
        io = _engine.RowInput(timing, lambda e: e["t"])
        return _engine.Shard(family, timing, io, resume, clock=lambda: now[0])

    rows = [
        ("s1", {"t": T0 + i * SEC, "a": r["a"], "b": r["b"]})
        for i, r in enumerate(_frames().iter_rows(named=True))
    ]
    whole = shard()
    expected = [whole.on_batch([rows])[0][0], whole.on_eof()[0][0]]
    first = shard()
    part1 = first.on_batch([rows[:117]])[0][0]
    snap = pickle.loads(pickle.dumps(first.snapshot()))
    second = shard(snap)
    part2 = second.on_batch([rows[117:]])[0][0]
    got = [[a + b for a, b in zip(part1, part2)], second.on_eof()[0][0]]
    assert [sum(x, []) for x in zip(*got)] == [sum(x, []) for x in zip(*expected)]
    assert expected[0][0] or expected[1][0]  # some window to compare


def test_build_time_validation():
    z = ZScore("a", window=SEC)
    with pytest.raises(ValueError, match="two or more"):
        Combined([z])
    with pytest.raises(ValueError, match="how must be"):
        Combined([z, z], how="median")
    with pytest.raises(ValueError, match="scorers"):
        Combined([z, "b"])
    with pytest.raises(ValueError, match="scorers"):
        Combined([z, Combined([z, z])])
