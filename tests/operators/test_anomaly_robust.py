"""Robust z-score: the incremental median/MAD and the run-at-a-time path against a plain reference."""

from __future__ import annotations

import pickle
import random
from datetime import timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.anomaly import RobustZScore, ZScore, scorers

SEC = timedelta(seconds=1)


def reference(
    cfg: RobustZScore, pts: list[tuple[int, tuple[float, ...]]]
) -> list[tuple[float, int]]:
    """Each point scored from scratch: sort the window, sort the distances to its median; a
    point scoring above ``exclude_above`` is not learned."""
    window = cfg.window // timedelta(microseconds=1)
    out, kept = [], []
    for t, xs in pts:
        kept = [p for p in kept if p[0] > t - window][-(cfg.max_points - 1) :]
        best, best_f = 0.0, 0
        if len(kept) >= cfg.min_points:
            for f, x in enumerate(xs):
                s = sorted(p[1][f] for p in kept)
                n, mid = len(s), len(s) // 2
                m = s[mid] if n % 2 else (s[mid - 1] + s[mid]) / 2
                d = sorted(abs(v - m) for v in s)
                mad = d[mid] if n % 2 else (d[mid - 1] + d[mid]) / 2
                z = abs(x - m) / max(1.4826 * mad, cfg.min_std)
                if z > best:
                    best, best_f = z, f
        out.append((best, best_f))
        if cfg.exclude_above is None or not best > cfg.exclude_above:
            kept.append((t, xs))
    return out


def in_runs(state: object, pts: list, cuts: list[int]) -> list[tuple[float, int]]:
    got, i = [], 0
    for size in cuts:
        run = pts[i : i + size]
        got += state.update_many([p[0] for p in run], [p[1] for p in run])
        i += size
    return got + state.update_many([p[0] for p in pts[i:]], [p[1] for p in pts[i:]])


# small integers (many ties), two far-apart clusters (the median jumps between them),
# and arbitrary floats
value = st.one_of(
    st.integers(-3, 3).map(float),
    st.sampled_from([0.0, 0.5, 100.0, 100.25]),
    st.floats(-1e6, 1e6, allow_nan=False),
)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.tuples(st.integers(0, 20), value, value), min_size=1, max_size=150),
    window_s=st.integers(5, 120),
    min_points=st.integers(2, 8),
    extra_cap=st.sampled_from([0, 1, 5, 10_000]),
    runs=st.lists(st.integers(1, 40), max_size=10),
    fields=st.sampled_from([1, 2]),
    exclude=st.sampled_from([None, 0.7071, 2.2361]),
)
def test_runs_match_reference_exactly(
    steps, window_s, min_points, extra_cap, runs, fields, exclude
):
    t, pts = 0, []
    for dt, a, b in steps:
        t += dt * 1_000_000
        pts.append((t, (a, b)[:fields]))
    cfg = RobustZScore(
        ["a", "b"][:fields],
        window=window_s * SEC,
        min_points=min_points,
        max_points=min_points + extra_cap,
        exclude_above=exclude,
    )
    want = reference(cfg, pts)
    assert in_runs(cfg._state(), pts, runs) == want
    one_by_one = cfg._state()
    assert [one_by_one.update(t, xs) for t, xs in pts] == want


def test_median_jumps_between_clusters_use_the_binary_search():
    """A bimodal key (a pump on and off): the MAD block jumps by about half the window."""
    rng = random.Random(3)
    pts, t = [], 0
    for i in range(3000):
        t += 1_000_000
        on = (i // 150) % 2 == 0 if i < 1500 else rng.random() < 0.5
        pts.append((t, ((100.0 if on else 0.0) + rng.random(), float(rng.randint(0, 3)))))
    cfg = RobustZScore(["power", "level"], window=200 * SEC, min_points=10)
    calls = {"right": 0, "left": 0}
    right, left = scorers._block_right, scorers._block_left

    def count(name, fn):
        def wrapped(*args):
            calls[name] += 1
            return fn(*args)

        return wrapped

    scorers._block_right, scorers._block_left = count("right", right), count("left", left)
    try:
        got = in_runs(cfg._state(), pts, [rng.randint(1, 60) for _ in range(100)])
    finally:
        scorers._block_right, scorers._block_left = right, left
    assert got == reference(cfg, pts)
    assert calls["right"] and calls["left"]


def test_snapshot_is_unchanged_and_restores_mid_run():
    rng = random.Random(4)
    pts = [(i * 1_000_000, (rng.gauss(0, 1), rng.gauss(5, 2))) for i in range(400)]
    cfg = RobustZScore(["a", "b"], window=60 * SEC, min_points=5)
    whole = cfg._state()
    want = whole.update_many([p[0] for p in pts], [p[1] for p in pts])
    first = cfg._state()
    got = first.update_many([p[0] for p in pts[:250]], [p[1] for p in pts[:250]])
    snap = pickle.loads(pickle.dumps(first.snapshot()))
    # named plain values: the window's points, each field's values in sorted order
    points, srt = snap["points"], snap["sorted"]
    assert list(points) == pts[190:250]
    assert list(srt[1]) == sorted(x[1] for _, x in pts[190:250])
    resumed = cfg._state()
    resumed.restore(snap)
    got += resumed.update_many([p[0] for p in pts[250:]], [p[1] for p in pts[250:]])
    assert got == want
    assert resumed.snapshot() == whole.snapshot()


def test_other_scorers_update_many_is_update_in_turn():
    rng = random.Random(6)
    pts = [(i * 1_000_000, (rng.gauss(0, 1), rng.gauss(5, 2))) for i in range(300)]
    for cfg in (
        ZScore(["a", "b"], window=30 * SEC),
        ZScore("a", window=30 * SEC),
        scorers.Ewma(["a", "b"], half_life=10 * SEC),
    ):
        xs = [p[1][: len(cfg.fields)] for p in pts]
        one = cfg._state()
        want = [one.update(p[0], x) for p, x in zip(pts, xs)]
        many = cfg._state()
        got = many.update_many([p[0] for p in pts[:100]], xs[:100])
        got += many.update_many([p[0] for p in pts[100:]], xs[100:])
        assert got == want
        assert many.snapshot() == one.snapshot()


@settings(max_examples=100, deadline=None)
@given(
    keys=st.lists(
        st.lists(st.tuples(st.integers(0, 9), value, value), min_size=1, max_size=60),
        min_size=1,
        max_size=4,
    ),
    window_s=st.integers(5, 60),
    calls=st.lists(st.integers(0, 25), min_size=1, max_size=6),
)
def test_score_runs_of_many_keys_match_each_key_alone(keys, window_s, calls):
    """The operators' form: each call scores a run of several keys at once (some empty); the
    robust scorer equals its reference exactly, the others their own point-by-point update."""
    series = []
    for steps in keys:
        t, pts = 0, []
        for dt, a, b in steps:
            t += dt * 1_000_000
            pts.append((t, (a, b)))
        series.append(pts)
    for cfg in (
        RobustZScore(["a", "b"], window=window_s * SEC, min_points=3, max_points=40),
        RobustZScore(
            ["a", "b"], window=window_s * SEC, min_points=3, max_points=9, exclude_above=1.4
        ),
        ZScore(["a", "b"], window=window_s * SEC, min_points=3),
        scorers.Ewma(["a", "b"], half_life=window_s * SEC, min_points=3),
    ):
        if isinstance(cfg, RobustZScore):
            wants = [reference(cfg, pts) for pts in series]
        else:
            wants = [
                [s.update(t, xs) for t, xs in pts]
                for s, pts in ((cfg._state(), pts) for pts in series)
            ]
        states = [cfg._state() for _ in series]
        got: list[list] = [[] for _ in series]
        done = [0] * len(series)
        for i, size in enumerate([*calls, None]):
            ts, xs, bounds = [], [], []
            for k, pts in enumerate(series):
                end = None if size is None else done[k] + (size + k * i) % 30
                take = pts[done[k] : end]
                bounds.append((len(ts), len(ts) + len(take)))
                ts += [p[0] for p in take]
                xs += [p[1] for p in take]
                done[k] += len(take)
            z, f = scorers.score_runs(
                states, np.array(ts, dtype=np.int64), np.array(xs).reshape(-1, 2), bounds
            )
            for k, (a, b) in enumerate(bounds):
                got[k] += list(zip(z[a:b].tolist(), f[a:b].tolist()))
        assert got == wants
