"""infer and a model that names its failed rows (RowErrors) or cannot answer at all (ModelUnavailable)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.infer import infer

from streamml.models import CallableModel
from streamml.models.protocol import ModelUnavailable, RowErrors


class _Picky:
    """Doubles each row's sum, and names the rows whose first value is negative."""

    def __init__(self, *, misfit: bool = False) -> None:
        self.calls: list[int] = []
        self.misfit = misfit  # answer one row too many: a model bug infer must survive

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        bad = np.flatnonzero(x[:, 0] < 0)
        scores = (2 * x.sum(axis=1)).astype(np.float32)
        if len(bad) and len(x) > 1:
            keep = np.ones(len(x), bool)
            keep[bad] = False
            answered = scores if self.misfit else scores[keep]
            raise RowErrors({"score": answered}, {int(i): f"x[{i}] < 0" for i in bad})
        if len(bad):
            raise ValueError("negative")
        return scores


def _run(events: list, model: Any, **kwargs: Any) -> tuple[list, list]:
    flow = Dataflow("row_errors")
    up = op.input("in", flow, TestingSource(events, batch_size=len(events) or 1))
    out = infer("score", up, model, **kwargs)
    oks: list = []
    errs: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    return oks, errs


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=1, max_size=60),
    max_batch=st.integers(1, 16),
)
def test_named_rows_go_to_errs_and_the_rest_are_scored_with_one_call_per_batch(
    values: list[float], max_batch: int
) -> None:
    picky = _Picky()
    model = CallableModel(picky, outputs="score", shape=(2,), version="v1")
    events = [(f"k{i % 3}", {"id": i, "features": [v, 1.0]}) for i, v in enumerate(values)]
    oks, errs = _run(events, model, max_batch=max_batch, max_wait=timedelta(0))
    # Brute force: every row with a negative first value is rejected, every other one scored.
    bad = {i for i, v in enumerate(values) if v < 0}
    assert [e["id"] for _, e in oks] == [i for i in range(len(values)) if i not in bad]
    for _, e in oks:
        assert e["score"] == pytest.approx(2 * (values[e["id"]] + 1.0), rel=1e-6)
    assert sorted(r.original[1]["id"] for r in errs) == sorted(bad)
    assert all(r.error_type == "ModelError" for r in errs)
    assert all(
        "model 'v1' failed on the row: x[" in r.reason or "ValueError" in r.reason for r in errs
    )
    # No split search: a batch of several rows is one call (a single-row batch may raise itself).
    assert sum(picky.calls) == len(values)


def test_a_frame_batch_keeps_row_order_around_the_named_rows() -> None:
    picky = _Picky()
    model = CallableModel(picky, outputs="score", shape=(2,), version="v1")
    frame = pl.DataFrame({"a": [1.0, -1.0, 2.0, 3.0, -2.0, 4.0], "b": [0.0] * 6})
    oks, errs = _run([frame], model, inputs=["a", "b"], max_batch=64)
    assert picky.calls == [6]
    out = pl.concat(oks)
    assert out["a"].to_list() == [1.0, 2.0, 3.0, 4.0]
    assert out["score"].to_list() == [2.0, 4.0, 6.0, 8.0]
    assert sorted(r.original["a"] for r in errs) == [-2.0, -1.0]
    assert {r.reason for r in errs} == {
        "model 'v1' failed on the row: x[1] < 0",
        "model 'v1' failed on the row: x[4] < 0",
    }


def test_row_errors_that_do_not_fit_the_batch_fall_back_to_splitting() -> None:
    picky = _Picky(misfit=True)
    model = CallableModel(picky, outputs="score", shape=(2,), version="v1")
    events = [("k", {"id": i, "features": [v, 0.0]}) for i, v in enumerate([1.0, -1.0, 2.0, 3.0])]
    oks, errs = _run(events, model, max_batch=4)
    assert [e["id"] for _, e in oks] == [0, 2, 3]
    assert [r.original[1]["id"] for r in errs] == [1]
    assert len(picky.calls) > 1  # it searched by halves


def test_an_unavailable_model_stops_the_flow_instead_of_rejecting_rows() -> None:
    def down(x: np.ndarray) -> np.ndarray:
        raise ModelUnavailable("the scoring service is down")

    model = CallableModel(down, outputs="score", shape=(2,), version="v1")
    events = [("k", {"features": [1.0, 2.0]}) for _ in range(5)]
    for overlap in (True, False):
        with pytest.raises(BytewaxRuntimeError) as stopped:
            _run(events, model, max_batch=4, overlap=overlap)
        cause = stopped.value.__cause__
        assert isinstance(cause, ModelUnavailable) and "service is down" in str(cause)
