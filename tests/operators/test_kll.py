"""The KLL sketch against brute force: rank error within its documented bound, memory bounded,
the same sketch however the values are cut into updates, merges, snapshots, and a broken
compaction caught by the same check."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.featurize import _kll
from streamml.operators.featurize._kll import KLL, pack, unpack, worst_rank_error

DELTA = 1e-6  # per query; ~80 queries an example: a miss would be a real bug, not bad luck
QS = np.linspace(0.0, 1.0, 41)


def rank_excess(sketch: KLL, data: np.ndarray) -> float:
    """How far (in ranks) the worst of the ``QS`` quantiles lies beyond the sketch's bound:
    the distance from ``q * n`` to the true rank range ``[#below, #at or below]`` of the value
    returned, minus :meth:`KLL.rank_error`. At most 0 when the sketch keeps its promise."""
    xs = np.sort(data)
    got = sketch.quantile(QS)
    below = np.searchsorted(xs, got, side="left")
    upto = np.searchsorted(xs, got, side="right")
    want = QS * len(xs)
    miss = np.maximum(below - want, 0) + np.maximum(want - upto, 0)
    return float(miss.max() - sketch.rank_error(DELTA))


@st.composite
def streams(draw):
    """Values with repeats, runs and extremes, of 0 to 30,000 items, and where to cut them."""
    n = draw(st.integers(0, 30_000))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["normal", "few values", "sorted", "reversed", "heavy tail"]))
    x = {
        "normal": lambda: rng.normal(size=n),
        "few values": lambda: rng.integers(0, 5, size=n).astype(float),
        "sorted": lambda: np.sort(rng.random(n)),
        "reversed": lambda: np.sort(rng.random(n))[::-1].copy(),
        "heavy tail": lambda: rng.pareto(0.5, size=n) * np.where(rng.random(n) < 0.5, -1, 1),
    }[kind]()
    if n:
        x[rng.integers(0, n, size=min(n, 3))] = draw(st.sampled_from([1e300, -1e300, 0.0]))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))
    return x, cuts


def sketch_of(x: np.ndarray, cuts: list[int], k: int = 200) -> KLL:
    s = KLL(k)
    for part in np.split(x, cuts):
        s.update(part)
    return s


@settings(max_examples=60, deadline=None, derandomize=True)
@given(stream=streams(), k=st.sampled_from([8, 32, 200]))
def test_every_quantile_is_within_the_rank_error_bound(stream, k):
    x, cuts = stream
    s = sketch_of(x, cuts, k)
    assert s.n == len(x)
    if not len(x):
        assert np.isnan(s.quantile(0.5))
        return
    assert rank_excess(s, x) <= 0
    assert s.quantile(0.0) == x.min() and s.quantile(1.0) == x.max()
    # memory: level 0 below k, levels above within 3k (+ 8 a low level, + half a block)
    assert len(s.levels[0]) < k
    assert s.size() - len(s.levels[0]) <= 3 * k + 8 * len(s.levels) + k // 2


@settings(max_examples=30, deadline=None, derandomize=True)
@given(stream=streams(), other=st.lists(st.integers(0, 30_000), min_size=1, max_size=8))
def test_the_sketch_depends_on_the_values_not_on_how_they_were_cut(stream, other):
    x, cuts = stream
    a, b = sketch_of(x, cuts), sketch_of(x, sorted(min(c, len(x)) for c in other))
    assert [v.tolist() for v in a.levels] == [v.tolist() for v in b.levels]
    assert (a.n, a.counts, a.variance) == (b.n, b.counts, b.variance)
    back = unpack(pack([a]))[0]  # and a snapshot carries on as if uninterrupted
    tail = np.arange(500.0)
    a.update(tail)
    back.update(tail)
    assert [v.tolist() for v in a.levels] == [v.tolist() for v in back.levels]


@settings(max_examples=30, deadline=None, derandomize=True)
@given(streams=st.lists(streams(), min_size=2, max_size=4))
def test_merged_sketches_keep_the_bound_of_the_merged_sketch(streams):
    parts = [sketch_of(x, cuts) for x, cuts in streams]
    merged = parts[0]
    for s in parts[1:]:
        merged.merge(s)
    x = np.concatenate([x for x, _ in streams])
    assert merged.n == len(x)
    if len(x):
        assert rank_excess(merged, x) <= 0


def test_a_biased_compaction_is_caught(monkeypatch):
    """The check above can fail: with coins that always keep the smaller of each pair, every
    compaction pushes ranks the same way, and 100,000 values end beyond the bound."""
    x = np.random.default_rng(3).normal(size=100_000)
    assert rank_excess(sketch_of(x, []), x) <= 0
    monkeypatch.setattr(_kll, "_coins", lambda seed, level, first, count: np.zeros(count, int))
    assert rank_excess(sketch_of(x, []), x) > 0


def test_the_documented_worst_bound_and_bad_parameters():
    assert worst_rank_error(200, n_max=1 << 18) < 0.02
    assert worst_rank_error(200, n_max=1 << 18) == pytest.approx(0.0199, abs=1e-4)
    for k in (7, 9, 0, True, 200.0):
        with pytest.raises(ValueError, match="k must be an even int"):
            KLL(k)
    with pytest.raises(ValueError, match="cannot merge"):
        KLL(8).merge(KLL(10))
