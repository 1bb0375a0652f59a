"""Adaptive batch size: the controller's choices on a fake clock against a brute-force best size, and infer with it."""

from __future__ import annotations

import time
from datetime import timedelta

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.infer import infer
from streamml.operators.infer.adaptive import AdaptiveBatchSize

from streamml.models import CallableModel


class _FakeClockModel:
    """A model whose call costs ``a + b * rows`` seconds of a fake clock (``b`` can change)."""

    def __init__(self, a: float, b: float) -> None:
        self.a, self.b, self.now = a, b, 0.0

    def __call__(self, x: np.ndarray) -> float:
        started = self.now
        self.now += self.a + self.b * len(x)
        return self.now - started


def _best(a: float, b: float, target: float, max_batch: int) -> int:
    """Brute force: the largest size in [1, max_batch] whose latency is within the target (else 1)."""
    fits = [s for s in range(1, max_batch + 1) if a + b * s <= target]
    return fits[-1] if fits else 1


def _drive(sizer: AdaptiveBatchSize, model: _FakeClockModel, calls: int) -> list[int]:
    sizes = []
    for _ in range(calls):
        size = sizer.size
        sizes.append(size)
        sizer.observe(size, model(np.zeros((size, 1))))
    return sizes


def _near_best(size: int, a: float, b: float, target: float, max_batch: int) -> bool:
    best = _best(a, b, target * (1 + 1e-6), max_batch)
    return size in (best, _best(a, b, target * (1 - 1e-6), max_batch))


@settings(max_examples=200, deadline=None)
@given(
    a=st.floats(0.0, 0.05),
    b=st.floats(1e-6, 1e-2),
    b_later=st.floats(1e-6, 1e-2),
    target=st.floats(1e-3, 0.1),
    max_batch=st.integers(1, 2048),
)
def test_the_size_settles_on_the_largest_batch_within_the_target_and_follows_a_change(
    a: float, b: float, b_later: float, target: float, max_batch: int
) -> None:
    sizer = AdaptiveBatchSize(target_s=target, max_batch=max_batch)
    model = _FakeClockModel(a, b)
    sizes = _drive(sizer, model, 40)
    assert all(1 <= s <= max_batch for s in sizes)
    assert sizes[0] == 1
    assert _near_best(sizer.size, a, b, target, max_batch)
    model.b = b_later  # the cost per row changes: learned within a window of calls
    _drive(sizer, model, 60)
    assert _near_best(sizer.size, a, b_later, target, max_batch)


def test_it_never_grows_more_than_twice_the_largest_batch_seen() -> None:
    sizer = AdaptiveBatchSize(target_s=1.0, max_batch=10_000)
    sizes = _drive(sizer, _FakeClockModel(0.0, 1e-6), 20)
    assert all(later <= 2 * max(sizes[: i + 1]) for i, later in enumerate(sizes[1:]))
    assert sizes[-1] == 10_000


def test_garbage_timings_are_ignored() -> None:
    sizer = AdaptiveBatchSize(target_s=0.01, max_batch=64)
    for seconds in (float("nan"), float("inf"), -1.0):
        sizer.observe(1, seconds)
    sizer.observe(0, 0.001)
    assert sizer.size == 1


def test_infer_with_a_target_latency_scores_every_row_in_batches_that_start_at_one() -> None:
    sizes: list[int] = []

    def slow(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        time.sleep(1e-4 * len(x))  # cost in proportion to the rows
        return x.sum(axis=1)

    model = CallableModel(slow, outputs="score", shape=(2,), version="v1")
    events = [(f"k{i % 5}", {"id": i, "features": [float(i), 1.0]}) for i in range(3000)]
    flow = Dataflow("adaptive")
    up = op.input("in", flow, TestingSource(events, batch_size=500))
    out = infer(
        "score", up, model, max_batch=256, target_latency=timedelta(milliseconds=50), overlap=False
    )
    oks: list = []
    op.output("oks", out.oks, TestingSink(oks))
    run_main(flow)
    assert sorted(e["id"] for _, e in oks) == list(range(3000))
    for key in {k for k, _ in events}:
        ids = [e["id"] for k, e in oks if k == key]
        assert ids == sorted(ids)
    assert all(e["score"] == e["id"] + 1.0 for _, e in oks)
    assert sizes[0] == 1 and max(sizes) > 1 and all(s <= 256 for s in sizes)


def test_a_target_latency_must_be_positive() -> None:
    flow = Dataflow("bad")
    up = op.input("in", flow, TestingSource([]))
    model = CallableModel(lambda x: x.sum(axis=1), shape=(2,))
    with pytest.raises(ValueError, match="target_latency"):
        infer("score", up, model, target_latency=timedelta(0))
