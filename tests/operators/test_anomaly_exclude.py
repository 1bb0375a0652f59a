"""Scorers that do not learn from anomalies (``exclude_above``), against brute-force references."""

from __future__ import annotations

import math
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
from streamml.operators.anomaly import Ewma, FixedThreshold, RobustZScore, ZScore, anomaly_windows

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
SEC = timedelta(seconds=1)

values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False).map(lambda x: round(x, 2))


def _feed(scorer: Any, pts: list[tuple[int, tuple[float, ...]]]) -> list[tuple[float, int]]:
    state = scorer._state()
    return [state.update(t, xs) for t, xs in pts]


def _feed_runs(scorer: Any, pts: list, cut: int) -> list[tuple[float, int]]:
    """The same points, given to ``update_many`` in runs of ``cut`` (how the operators call it)."""
    state = scorer._state()
    out: list = []
    for i in range(0, len(pts), cut):
        run = pts[i : i + cut]
        out += state.update_many([t for t, _ in run], [x for _, x in run])
    return out


def _reference(pts, window_us, cap, min_points, exclude, robust):
    """Each point scored against the learned points of its window; learned iff not above ``exclude``."""
    learned: list[tuple[int, tuple[float, ...]]] = []
    out = []
    for t, xs in pts:
        learned = [p for p in learned if p[0] > t - window_us][-(cap - 1) :]
        prior = np.array([p[1] for p in learned])
        if len(prior) < min_points:
            z = np.zeros(len(xs))
        elif robust:
            med = np.median(prior, axis=0)
            mad = np.median(np.abs(prior - med), axis=0)
            z = np.abs(np.array(xs) - med) / np.maximum(1.4826 * mad, 1e-9)
        else:
            mean, std = prior.mean(axis=0), prior.std(axis=0, ddof=1)
            dev = np.abs(np.array(xs) - mean)
            dev[dev <= 1e-9 * (np.abs(xs) + np.abs(mean))] = 0.0  # float noise is no deviation
            z = dev / np.maximum(std, 1e-9)
        out.append(float(z.max()))
        if not out[-1] > exclude:
            learned.append((t, xs))
    return out


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 30), values, values), min_size=1, max_size=80),
    st.integers(20, 200),
    st.sampled_from([0.7071, 1.4142, 3.1416]),  # no score of 2-decimal values lands on one
    st.integers(4, 40),
    st.integers(1, 9),
)
def test_rolling_scorers_skip_flagged_points_like_bruteforce(steps, window_s, exclude, cap, cut):
    t, pts = 0, []
    for dt, a, b in steps:
        t += dt * 1_000_000
        pts.append((t, (a, b)))
    w = window_s * SEC
    kw = dict(window=w, min_points=3, max_points=cap, exclude_above=exclude)
    plain = _feed(ZScore(["a", "b"], **kw), pts)
    single = _feed(ZScore("a", **kw), [(t, xs[:1]) for t, xs in pts])
    robust = _feed_runs(RobustZScore(["a", "b"], **kw), pts, cut)
    us = window_s * 1_000_000
    want_plain = _reference(pts, us, cap, 3, exclude, robust=False)
    want_single = _reference([(t, xs[:1]) for t, xs in pts], us, cap, 3, exclude, robust=False)
    want_robust = _reference(pts, us, cap, 3, exclude, robust=True)
    for i in range(len(pts)):
        # running sums: a few 1e-6 relative when a large value has left the window
        assert math.isclose(plain[i][0], want_plain[i], rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(single[i][0], want_single[i], rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(robust[i][0], want_robust[i], rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 20), values), min_size=1, max_size=120),
    st.sampled_from([1.4142, 2.7183]),
)
def test_ewma_skips_flagged_points_like_the_reference_recurrence(steps, exclude):
    t, pts = 0, []
    for dt, x in steps:
        t += dt * 1_000_000
        pts.append((t, (x,)))
    got = _feed(Ewma("x", half_life=60 * SEC, min_points=5, exclude_above=exclude), pts)
    n, mean, var, last = 0, 0.0, 0.0, 0
    for (t, (x,)), (z, _) in zip(pts, got):
        if n == 0 or t - last >= 1200 * 1_000_000:  # ttl: 20 half-lives without a learned point
            n, mean, var, last = 1, x, 0.0, t
            assert z == 0.0
            continue
        want = abs(x - mean) / max(math.sqrt(var), 1e-9) if n >= 5 else 0.0
        assert math.isclose(z, want, rel_tol=1e-9, abs_tol=1e-12)
        if want > exclude:
            continue
        a = max(1 - 0.5 ** ((t - last) / 60e6), 1 / (n + 1))
        d = x - mean
        mean += a * d
        var = (1 - a) * (var + a * d * d)
        n, last = n + 1, t


def test_without_exclusion_nothing_changes():
    rng = np.random.default_rng(4)
    pts = [(i * 1_000_000, (float(x),)) for i, x in enumerate(rng.normal(0, 1, 300))]
    for cls in (ZScore, RobustZScore):
        base = _feed(cls("x", window=60 * SEC, min_points=5), pts)
        huge = _feed(cls("x", window=60 * SEC, min_points=5, exclude_above=1e300), pts)
        assert base == huge


def _spike_flow(scorer: Any) -> list[dict]:
    """A sensor at 10 +- 0.1: a burst of 12 readings at 30 at 100 s, three at 11.5 at 150 s."""
    rng = np.random.default_rng(1)
    x = 10 + rng.normal(0, 0.1, 300)
    x[100:112] = 30.0
    x[150:153] = 11.5
    frame = pl.DataFrame({"k": "s1", "t": [T0 + i * SEC for i in range(300)], "x": x})
    flow = Dataflow("spike")
    frames = op.input("in", flow, TestingSource([frame]))
    found = anomaly_windows(
        "aw",
        frames,
        key="k",
        timestamp="t",
        score=scorer,
        threshold=FixedThreshold(6.0, close_below=3.0),
        cooldown=5 * SEC,
        shards=1,
    )
    out: list[dict] = []
    op.output("w", found.windows, TestingSink(out))
    run_main(flow)
    return out


@pytest.mark.parametrize("cls", [ZScore, RobustZScore])
def test_a_burst_does_not_hide_the_next_anomaly_when_it_is_not_learned(cls):
    learned = _spike_flow(cls("x", window=120 * SEC, min_points=20))
    protected = _spike_flow(cls("x", window=120 * SEC, min_points=20, exclude_above=6.0))
    starts = [T0 + 100 * SEC, T0 + 150 * SEC]
    assert [(w["start"], w["points"]) for w in protected] == list(zip(starts, [12, 3]))
    if cls is ZScore:  # learned, the burst inflates the std and the 15-sigma step is missed
        assert [w["start"] for w in learned] == starts[:1]
    else:  # the median and MAD hardly move for 12 points of 120: robust either way
        assert [w["start"] for w in learned] == starts


def test_build_time_validation():
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="exclude_above"):
            ZScore("x", window=SEC, exclude_above=bad)
        with pytest.raises(ValueError, match="exclude_above"):
            Ewma("x", half_life=SEC, exclude_above=bad)
