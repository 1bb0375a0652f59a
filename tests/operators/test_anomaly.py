"""Anomaly windows and scorers: properties against brute-force references, edge cases, bad input."""

from __future__ import annotations

import math
import pickle
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.anomaly import (
    Ewma,
    FixedThreshold,
    QuantileThreshold,
    RobustZScore,
    ZScore,
    _engine,
    anomaly_windows,
    score,
)
from streamml.operators.anomaly import windows as windows_mod

from streamml.errors import Rejected

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
SEC = timedelta(seconds=1)


def ev(t: float, s: Any, **extra: Any) -> dict[str, Any]:
    return {"t": T0 + t * SEC, "s": s, **extra}


@dataclass
class Out:
    windows: list[dict] = field(default_factory=list)
    opened: list[dict] = field(default_factory=list)
    errs: list[Rejected] = field(default_factory=list)
    late: list[Rejected] = field(default_factory=list)


def run_windows(items: list[tuple[str, dict]], **kw: Any) -> Out:
    kw.setdefault("threshold", FixedThreshold(4.0, close_below=2.0))
    kw.setdefault("score", "s")
    kw.setdefault("alerts", True)
    flow = Dataflow("t")
    s = op.input("in", flow, TestingSource(items, batch_size=kw.pop("batch_size", 7)))
    res = anomaly_windows("aw", s, timestamp=lambda e: e["t"], **kw)
    out, w, o = Out(), [], []
    op.output("w", res.windows, TestingSink(w))
    op.output("o", res.opened, TestingSink(o))
    op.output("e", res.errs, TestingSink(out.errs))
    op.output("l", res.late, TestingSink(out.late))
    run_main(flow)
    out.windows = [r for _, r in w]
    out.opened = [r for _, r in o]
    return out


def comparable(windows: list[dict]) -> list[tuple]:
    return sorted(
        (w["key"], w["start"], w["end"], w["points"], w["peak_score"], w["peak_time"])
        + (round(w["mean_score"], 9), w["closed_by"])
        for w in windows
    )


# ---------------------------------------------------------------- properties

OPEN, CLOSE = 4.0, 2.0

series = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=40),  # seconds since the previous point
        st.sampled_from([0.0, 1.0, 1.5, 2.0, 3.0, 4.0, 4.5, 6.0, 9.0]),
    ),
    min_size=1,
    max_size=60,
)


def _qualifying_runs(points: list[tuple[int, float]], min_points: int, gap: int) -> set[int]:
    """Indices of points in runs of >= min_points consecutive points above OPEN (no gap)."""
    out: set[int] = set()
    run: list[int] = []
    for i, (t, s) in enumerate(points):
        if s > OPEN and run and t - points[run[-1]][0] < gap:
            run.append(i)
        elif s > OPEN:
            run = [i]
        else:
            run = []
        if len(run) >= min_points:
            out.update(run)
    return out


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(series, min_size=1, max_size=3),
    min_points=st.integers(1, 3),
    cooldown=st.integers(5, 60),
    gap=st.integers(20, 90),
    max_duration=st.integers(60, 400),
    seed=st.integers(0, 2**16),
)
def test_windows_match_bruteforce_properties(keys, min_points, cooldown, gap, max_duration, seed):
    lateness = 30
    per_key: dict[str, list[tuple[int, float]]] = {}
    items = []
    for k, steps in enumerate(keys):
        t, pts = 0, []
        for dt, s in steps:
            t += dt
            pts.append((t, s))
        per_key[f"k{k}"] = pts
        items += [(f"k{k}", ev(t, s)) for t, s in pts]
    items.sort(key=lambda kv: kv[1]["t"])
    kw = dict(
        min_points=min_points,
        cooldown=cooldown * SEC,
        gap=gap * SEC,
        max_duration=max_duration * SEC,
        lateness=lateness * SEC,
    )
    out = run_windows(items, **kw)
    assert out.errs == [] and out.late == []

    for key, pts in per_key.items():
        ws = sorted((w for w in out.windows if w["key"] == key), key=lambda w: w["start"])
        secs = [((w["start"] - T0) / SEC, (w["end"] - T0) / SEC) for w in ws]
        # windows of a key never overlap and never exceed max_duration
        for (_, e1), (s2, _) in zip(secs, secs[1:], strict=False):
            assert e1 < s2
        for (s1, e1), w in zip(secs, ws, strict=True):
            assert e1 - s1 < max_duration
            inside = [s for t, s in pts if s1 <= t <= e1]
            assert w["points"] == len(inside)
            assert w["peak_score"] == max(inside)
            assert math.isclose(w["mean_score"], sum(inside) / len(inside))
            assert dict(pts)[(w["peak_time"] - T0) / SEC] == w["peak_score"]
            assert dict(pts)[e1] >= CLOSE
            inner = [(t, s) for t, s in pts if s1 <= t <= e1]
            assert all(b[0] - a[0] < gap for a, b in zip(inner, inner[1:], strict=False))
            below = None  # no stretch of points below CLOSE inside a window lasts `cooldown`
            for t, s in inner:
                if s < CLOSE:
                    below = t if below is None else below
                else:
                    assert below is None or t - below < cooldown
                    below = None
        # every point of a qualifying run lies in exactly one window
        for i in _qualifying_runs(pts, min_points, gap):
            t = pts[i][0]
            assert sum(s1 <= t <= e1 for s1, e1 in secs) == 1, (i, pts[i], secs)
    # one alert per window, with the same id
    assert sorted(a["window_id"] for a in out.opened) == sorted(w["window_id"] for w in out.windows)

    # arrival order within the lateness bound does not change the result
    rng = random.Random(seed)
    jitter = sorted(items, key=lambda kv: (kv[1]["t"] - T0) / SEC + rng.uniform(0, lateness - 1))
    again = run_windows(jitter, **kw)
    assert again.late == []
    assert comparable(again.windows) == comparable(out.windows)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 10), st.floats(-3, 3), st.booleans()), min_size=5, max_size=120
    ),
    st.integers(0, 2**16),
)
def test_scored_windows_do_not_depend_on_arrival_order(steps, seed):
    t, items = 0, []
    for dt, x, spike in steps:
        t += dt
        items.append(("k", ev(t, x + (12.0 if spike else 0.0))))
    kw = dict(
        score=ZScore("s", window=60 * SEC, min_points=3),
        threshold=FixedThreshold(3.0, 1.5),
        cooldown=15 * SEC,
        lateness=20 * SEC,
    )
    rng = random.Random(seed)
    shuffled = sorted(items, key=lambda kv: (kv[1]["t"] - T0) / SEC + rng.uniform(0, 19))
    a, b = run_windows(items, **kw), run_windows(shuffled, **kw)
    assert b.late == [] and comparable(a.windows) == comparable(b.windows)
    assert sorted(x["window_id"] for x in a.opened) == sorted(x["window_id"] for x in b.opened)


# ---------------------------------------------------------------- edge cases


def test_flapping_around_threshold_makes_one_window():
    flaps = [0, 0, 5, 3, 4.5, 2.5, 5, 3.9, 4.1, 2.2, 6, 0, 0, 0, 0, 0]
    out = run_windows([("p", ev(10 * i, s)) for i, s in enumerate(flaps)], cooldown=30 * SEC)
    assert len(out.windows) == 1
    w = out.windows[0]
    assert (w["start"], w["end"], w["points"], w["peak_score"]) == (
        T0 + 20 * SEC,
        T0 + 100 * SEC,
        9,
        6,
    )
    assert w["closed_by"] == "cooldown"


def test_no_hysteresis_with_short_cooldown_flaps():
    flaps = [5, 3, 5, 3, 5, 0]
    items = [("p", ev(10 * i, s)) for i, s in enumerate(flaps)]
    one = run_windows(items, threshold=FixedThreshold(4.0), cooldown=30 * SEC)
    many = run_windows(items, threshold=FixedThreshold(4.0), cooldown=10 * SEC)
    assert len(one.windows) == 1 and len(many.windows) == 3


def test_cooldown_boundary_is_inclusive():
    just_before = [("p", ev(0, 5)), ("p", ev(10, 0)), ("p", ev(39.999, 5))]
    at = [("p", ev(0, 5)), ("p", ev(10, 0)), ("p", ev(40, 5))]
    sparse = [("p", ev(0, 5)), ("p", ev(50, 5))]  # no point below: only `gap` closes
    assert len(run_windows(just_before, cooldown=30 * SEC).windows) == 1
    assert len(run_windows(at, cooldown=30 * SEC).windows) == 2
    assert len(run_windows(sparse, cooldown=30 * SEC).windows) == 1


def test_min_points_and_min_duration_gate_opening():
    items = [("p", ev(i, s)) for i, s in enumerate([5, 5, 0, 5, 5, 5, 0])]
    out = run_windows(items, min_points=3)
    assert [(w["start"], w["points"]) for w in out.windows] == [(T0 + 3 * SEC, 3)]
    assert out.opened[0]["opened_at"] == T0 + 5 * SEC
    by_time = run_windows(items, min_duration=2 * SEC)
    assert [w["start"] for w in by_time.windows] == [T0 + 3 * SEC]


def test_gap_closes_a_window_when_the_key_goes_quiet():
    items = [("p", ev(0, 5)), ("p", ev(1, 5)), ("p", ev(100, 0))]
    out = run_windows(items, cooldown=300 * SEC, gap=60 * SEC)
    assert [(w["end"], w["closed_by"]) for w in out.windows] == [(T0 + SEC, "gap")]


def test_max_duration_splits_runaway_windows():
    items = [("p", ev(10 * i, 9.0)) for i in range(40)]
    out = run_windows(items, max_duration=100 * SEC)
    ws = sorted(out.windows, key=lambda w: w["start"])
    assert len(ws) == 4
    assert [w["closed_by"] for w in ws] == ["max_duration"] * 3 + ["eof"]
    assert all(w["end"] - w["start"] < 100 * SEC for w in ws)
    assert sum(w["points"] for w in ws) == 40
    assert len(out.opened) == 4


def test_eof_closes_open_windows_so_nothing_is_lost():
    out = run_windows([("p", ev(0, 5)), ("p", ev(1, 7))])
    assert [(w["peak_score"], w["closed_by"]) for w in out.windows] == [(7, "eof")]


def test_peak_event_carries_the_features_and_driver():
    items = [("p", ev(0, 5, vibration=1.0, s_field="vibration")), ("p", ev(1, 8, vibration=3.0))]
    w = run_windows(items).windows[0]
    assert w["peak_event"]["vibration"] == 3.0 and w["peak_score"] == 8
    assert w["field"] is None  # the peak event has no "s_field"
    assert run_windows(items[:1]).windows[0]["field"] == "vibration"


# ---------------------------------------------------------------- bad input


def test_bad_input_is_routed_not_raised():
    naive = {"t": datetime(2026, 3, 1), "s": 9.0}
    items = [
        ("p", ev(0, 5)),
        ("p", ev(1, float("nan"))),
        ("p", ev(2, float("inf"))),
        ("p", {"t": T0 + 3 * SEC}),
        ("p", ev(4, "high")),
        ("p", naive),
        ("p", ev(5, 6)),
        ("p", ev(50, 0)),
        ("p", ev(10, 9.0)),  # 40 s behind the newest, lateness is 20 s
    ]
    out = run_windows(items, lateness=20 * SEC, cooldown=30 * SEC)
    assert [r.error_type for r in out.errs] == [
        "NonFinite",
        "NonFinite",
        "MissingField",
        "NotANumber",
        "BadTimestamp",
    ]
    assert all(r.step_id == "t.aw" and r.original[0] == "p" for r in out.errs)
    assert [(r.error_type, r.original) for r in out.late] == [("Late", ("p", ev(10, 9.0)))]
    assert [(w["points"], w["peak_score"]) for w in out.windows] == [(2, 6)]


def test_build_time_validation():
    flow = Dataflow("v")
    s = op.input("in", flow, TestingSource([]))
    ts = lambda e: e["t"]  # noqa: E731
    with pytest.raises(ValueError, match="close_below"):
        FixedThreshold(2.0, close_below=3.0)
    with pytest.raises(ValueError, match="cooldown"):
        anomaly_windows("a", s, timestamp=ts, threshold=FixedThreshold(1.0), cooldown=0 * SEC)
    with pytest.raises(ValueError, match="min_points"):
        anomaly_windows("b", s, timestamp=ts, threshold=FixedThreshold(1.0), min_points=0)
    with pytest.raises(ValueError, match="min_duration"):
        anomaly_windows(
            "e",
            s,
            timestamp=ts,
            threshold=FixedThreshold(1.0),
            min_duration=2 * SEC,
            max_duration=SEC,
        )
    with pytest.raises(ValueError, match="score must be"):
        anomaly_windows("c", s, timestamp=ts, threshold=FixedThreshold(1.0), score=3)
    with pytest.raises(ValueError, match="window"):
        ZScore("x", window=-SEC)
    with pytest.raises(ValueError, match="close_q"):
        QuantileThreshold(open_q=0.9, close_q=0.95)
    with pytest.raises(ValueError, match="lateness"):
        score("d", s, scorer=Ewma("x", half_life=SEC), timestamp=ts, lateness=-SEC)


# ---------------------------------------------------------------- state


def _shard(now: list[float], **kw: Any) -> _engine.Shard:
    """One shard state of anomaly_windows over (key, event) rows, on the clock ``now[0]``."""
    scorer = kw.get("scorer")
    rules = windows_mod._WindowRules(
        kw.get("min_points", 1), 0, 30_000_000, kw.get("gap", 60_000_000), 10**12, True
    )
    family = windows_mod._Family(rules, FixedThreshold(4.0, 2.0), scorer, "s_field")
    timing = _engine.check_timing(
        "t",
        lateness=timedelta(microseconds=kw.get("lateness", 0)),
        span=timedelta(hours=1),
        ttl=None,
        max_future=None,
        fields=("s",),
    )
    io = _engine.RowInput(timing, lambda e: e["t"])
    return _engine.Shard(family, timing, io, kw.get("resume"), clock=lambda: now[0])


def _batch(shard: _engine.Shard, events: list[dict], key: str = "p") -> list:
    return shard.on_batch([[(key, e) for e in events]])[0][0]


def _joined(*outs: list[list]) -> list[list]:
    """The shard's output lists of several calls, stream by stream."""
    return [sum(lists, []) for lists in zip(*outs)]


def test_quiet_key_closes_its_window_and_is_evicted():
    now = [1e9]
    shard = _shard(now)
    windows, opened, errs, late = _batch(shard, [ev(0, 5), ev(1, 6), ev(2, 0)])
    assert [a["start"] for _, a in opened] == [T0] and windows == errs == late == []
    due = shard.notify_at()
    assert due.timestamp() == now[0] + 30  # 30 s of cooldown after the point below
    now[0] += 30
    windows, *_ = shard.on_notify()[0][0]
    assert [w["closed_by"] for _, w in windows] == ["cooldown"]
    assert shard.states  # the key may still continue a run; evicted after `gap` of quiet
    now[0] += 31
    assert shard.notify_at().timestamp() <= now[0]
    assert shard.on_notify()[0][0] == [[], [], [], []] and not shard.states
    assert shard.notify_at() is None


def test_quiet_key_closes_in_a_running_dataflow():
    now = datetime.now(timezone.utc)
    items = [
        ("p", {"t": now - 2 * SEC, "s": 9.0}),
        TestingSource.PAUSE(timedelta(seconds=1.5)),
        ("q", {"t": now, "s": 0.0}),
    ]
    w: list = []
    flow = Dataflow("quiet")
    s = op.input("in", flow, TestingSource(items))
    res = anomaly_windows(
        "aw", s, timestamp=lambda e: e["t"], threshold=FixedThreshold(4.0), score="s", gap=SEC
    )
    op.output("w", res.windows, TestingSink(w))
    run_main(flow)
    assert [(k, r["closed_by"]) for k, r in w] == [("p", "gap")]


def test_snapshot_restore_round_trips_open_windows():
    now = [1e9]
    rng = random.Random(3)
    events = [ev(i * 5, rng.choice([0.0, 1.0, 3.0, 5.0, 8.0])) for i in range(200)]
    for scorer in (None, ZScore("s", window=100 * SEC, min_points=3)):
        whole = _shard(now, scorer=scorer, lateness=7_000_000)
        expected = _joined(_batch(whole, events), whole.on_eof()[0][0])
        first = _shard(now, scorer=scorer, lateness=7_000_000)
        got = _joined(_batch(first, events[:97]))
        assert any(st.windows.open for st in first.states.values()) or len(first.et.held)
        snap = pickle.loads(pickle.dumps(first.snapshot()))
        assert snap["state"] == "streamml.anomaly.windows" and snap["version"] == 1
        second = _shard(now, scorer=scorer, lateness=7_000_000, resume=snap)
        got = _joined(got, _batch(second, events[97:]), second.on_eof()[0][0])
        assert got == expected
        assert got[0] or scorer is not None  # the score field's run makes a window


def test_recovery_resumes_open_window_after_a_crash(tmp_path):
    init_db_dir(tmp_path, 1)
    items = [("p", ev(i, s)) for i, s in enumerate([0, 5, 6, 7])]
    items += [TestingSource.ABORT()] + [("p", ev(4 + i, s)) for i, s in enumerate([8, 3, 0])]

    def flow_with(sink: list) -> Dataflow:
        flow = Dataflow("rec")
        s = op.input("in", flow, TestingSource(items, batch_size=1))
        res = anomaly_windows(
            "aw", s, timestamp=lambda e: e["t"], threshold=FixedThreshold(4.0), score="s"
        )
        op.output("w", res.windows, TestingSink(sink))
        return flow

    first: list = []
    cfg = RecoveryConfig(str(tmp_path))
    run_main(flow_with(first), epoch_interval=timedelta(0), recovery_config=cfg)  # aborts
    second: list = []
    run_main(flow_with(second), epoch_interval=timedelta(0), recovery_config=cfg)
    assert first == []
    assert [(r["start"], r["points"], r["peak_score"]) for _, r in second] == [(T0 + SEC, 4, 8)]


# ---------------------------------------------------------------- scorers


def _feed(scorer: Any, pts: list[tuple[int, tuple[float, ...]]]) -> list[tuple[float, int]]:
    state = scorer._state()
    return [state.update(t, xs) for t, xs in pts]


values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False).map(lambda x: round(x, 2))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 30), values, values),
        min_size=1,
        max_size=80,
    ),
    st.integers(20, 200),
)
def test_rolling_scorers_match_bruteforce(steps, window_s):
    t, pts = 0, []
    for dt, a, b in steps:
        t += dt * 1_000_000
        pts.append((t, (a, b)))
    window = window_s * SEC
    plain = _feed(ZScore(["a", "b"], window=window, min_points=3), pts)
    single = _feed(ZScore("a", window=window, min_points=3), [(t, xs[:1]) for t, xs in pts])
    robust = _feed(RobustZScore(["a", "b"], window=window, min_points=3), pts)
    for i, (t, xs) in enumerate(pts):
        prior = np.array([p[1] for p in pts[:i] if p[0] > t - window_s * 1_000_000])
        if len(prior) < 3:
            assert plain[i] == (0.0, 0) and robust[i] == (0.0, 0)
            continue
        mean, std = prior.mean(axis=0), prior.std(axis=0, ddof=1)
        dev = np.abs(np.array(xs) - mean)
        dev[dev <= 1e-9 * (np.abs(xs) + np.abs(mean))] = 0.0  # float noise is no deviation
        z = dev / np.maximum(std, 1e-9)
        med = np.median(prior, axis=0)
        mad = np.median(np.abs(prior - med), axis=0)
        rz = np.abs(np.array(xs) - med) / np.maximum(1.4826 * mad, 1e-9)
        assert math.isclose(plain[i][0], z.max(), rel_tol=1e-6, abs_tol=1e-6)
        assert math.isclose(single[i][0], z[0], rel_tol=1e-6, abs_tol=1e-6)
        assert math.isclose(robust[i][0], rz.max(), rel_tol=1e-9, abs_tol=1e-9)
        if abs(z[0] - z[1]) > 1e-6 * max(z):
            assert plain[i][1] == int(z.argmax())


@pytest.mark.parametrize("fields", [["a"], ["a", "b"]])
def test_sums_stay_exact_once_a_far_reference_point_leaves(fields):
    """The key's first point, far from the rest, leaves the window; a tight cluster stays."""
    rng = random.Random(1)
    pts = [(0, (-1000.0, -1000.0))]
    pts += [(i * 1_000_000, (1000 + rng.choice([0, 0.01, 0.02, -0.01]),) * 2) for i in range(1, 61)]
    pts = [(t, xs[: len(fields)]) for t, xs in pts]
    got = _feed(ZScore(fields, window=20 * SEC, min_points=3), pts)
    for i in range(25, 61):  # the first point left at t = 20 s
        prior = np.array([p[1][0] for p in pts[i - 19 : i]])
        z = abs(pts[i][1][0] - prior.mean()) / prior.std(ddof=1)
        assert math.isclose(got[i][0], z, rel_tol=1e-9, abs_tol=1e-9), i


def test_running_sums_stay_exact_over_long_runs():
    rng = random.Random(8)
    pts = [(i * 1_000_000, (1e6 + rng.gauss(0, 1), rng.gauss(0, 1e-3))) for i in range(9000)]
    for scorer, cols in (
        (ZScore(["a", "b"], window=300 * SEC), [0, 1]),
        (ZScore("a", window=300 * SEC), [0]),
    ):
        state = scorer._state()
        for t, xs in pts[:-1]:
            state.update(t, tuple(xs[c] for c in cols))
        t, xs = pts[-1]
        got = state.update(t, tuple(xs[c] for c in cols))[0]
        prior = np.array([[p[1][c] for c in cols] for p in pts[-300:-1]])
        z = np.abs(np.array([xs[c] for c in cols]) - prior.mean(axis=0)) / prior.std(axis=0, ddof=1)
        assert math.isclose(got, z.max(), rel_tol=1e-6)


def test_ewma_matches_reference_recurrence():
    rng = random.Random(5)
    pts, t = [], 0
    for _ in range(300):
        t += rng.randint(1, 20) * 1_000_000
        pts.append((t, (rng.gauss(10, 2),)))
    got = _feed(Ewma("x", half_life=60 * SEC, min_points=5), pts)
    mean, var, last = pts[0][1][0], 0.0, pts[0][0]
    for i, (t, (x,)) in enumerate(pts[1:], start=1):
        a = max(1 - 0.5 ** ((t - last) / 60e6), 1 / (i + 1))  # equal weights while warming up
        want = abs(x - mean) / max(math.sqrt(var), 1e-9) if i >= 5 else 0.0
        assert math.isclose(got[i][0], want, rel_tol=1e-9)
        d = x - mean
        mean += a * d
        var = (1 - a) * (var + a * d * d)
        last = t


def test_score_operator_adds_score_and_driver_field():
    rng = random.Random(2)
    events = [
        {"t": T0 + i * SEC, "temp": 20 + rng.random(), "vib": 1 + rng.random()} for i in range(30)
    ]
    events.append({"t": T0 + 30 * SEC, "temp": 20.5, "vib": 9.0})
    events.append({"t": T0 + 31 * SEC, "temp": 20.5})
    events.append({"t": T0 + 2 * SEC, "temp": 20.5, "vib": 1.0})
    flow = Dataflow("s")
    s = op.key_on("k", op.input("in", flow, TestingSource(events)), lambda e: "pump")
    res = score(
        "score",
        s,
        scorer=RobustZScore(["temp", "vib"], window=60 * SEC, min_points=5),
        timestamp=lambda e: e["t"],
        lateness=5 * SEC,
    )
    oks, errs, late = [], [], []
    op.output("o", res.oks, TestingSink(oks))
    op.output("e", res.errs, TestingSink(errs))
    op.output("l", res.late, TestingSink(late))
    run_main(flow)
    assert len(oks) == 31 and oks[-1][1]["score_field"] == "vib" and oks[-1][1]["score"] > 10
    assert all(e["score"] < 10 for _, e in oks[:-1])
    assert [r.error_type for r in errs] == ["MissingField"]
    assert [r.original for r in late] == [("pump", events[-1])]


def test_scored_stream_feeds_windows_as_a_field():
    rng = random.Random(4)
    xs = [rng.gauss(0, 1) for _ in range(200)]
    xs[150:155] = [12, 13, 15, 12, 11]
    events = [("m", {"t": T0 + i * SEC, "x": x}) for i, x in enumerate(xs)]
    flow = Dataflow("two")
    s = op.input("in", flow, TestingSource(events))
    scored = score("score", s, scorer=Ewma("x", half_life=30 * SEC), timestamp=lambda e: e["t"])
    res = anomaly_windows(
        "aw", scored.oks, timestamp=lambda e: e["t"], threshold=FixedThreshold(6.0, 3.0)
    )
    w: list = []
    op.output("w", res.windows, TestingSink(w))
    run_main(flow)
    assert [(r["start"], r["field"]) for _, r in w] == [(T0 + 150 * SEC, "x")]


def test_quantile_threshold_warms_up_then_adapts():
    rng = random.Random(7)
    pts = [(i, abs(rng.gauss(0, 1))) for i in range(600)]
    pts[30] = (30, 50.0)  # during warm-up: raises nothing
    pts[400] = (400, 50.0)
    out = run_windows(
        [("p", ev(t, s)) for t, s in pts],
        threshold=QuantileThreshold(
            open_q=0.999, close_q=0.99, window=300 * SEC, warmup=120 * SEC, min_open=3.0
        ),
        cooldown=5 * SEC,
    )
    assert [w["start"] for w in out.windows] == [T0 + 400 * SEC]


def test_quantile_levels_match_bruteforce():
    cfg = QuantileThreshold(open_q=0.9, close_q=0.5, window=50 * SEC, warmup=10 * SEC)
    state = cfg._state()
    rng = random.Random(9)
    pts = [(i * 3_000_000, rng.random()) for i in range(100)]
    for i, (t, s) in enumerate(pts):
        got = state.levels(t, s)
        prior = sorted(x for u, x in pts[:i] if u > t - 50_000_000)
        if t < 10_000_000 or not prior:
            assert got is None
        else:
            hi = prior[int(0.9 * (len(prior) - 1))]
            assert got == (hi, min(prior[int(0.5 * (len(prior) - 1))], hi))


def test_two_workers_give_the_same_windows_as_one():
    rng = random.Random(11)
    items = []
    for i in range(400):
        for k in ("a", "b", "c", "d"):
            x = rng.gauss(0, 1) + (9 if rng.random() < 0.01 else 0)
            items.append((k, {"t": T0 + i * SEC, "x": x, "y": rng.gauss(5, 1)}))

    def windows_of(run: Any) -> list[tuple]:
        flow = Dataflow("workers")
        s = op.input("in", flow, TestingSource(items, batch_size=50))
        res = anomaly_windows(
            "aw",
            s,
            timestamp=lambda e: e["t"],
            threshold=FixedThreshold(5.0, 2.0),
            score=ZScore(["y", "x"], window=60 * SEC),
            alerts=True,
        )
        out: list = []
        op.output("w", res.windows, TestingSink(out))
        run(flow)
        return comparable([w for _, w in out]), {w["field"] for _, w in out}

    one, fields = windows_of(run_main)
    two, _ = windows_of(lambda flow: cluster_main(flow, [], 0, worker_count_per_proc=2))
    assert one == two and len(one) >= 3
    assert fields == {"x"}  # the spikes are on x; the report names it
