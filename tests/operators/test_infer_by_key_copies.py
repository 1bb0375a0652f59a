"""infer_by_key(..., copies=N): N copies of each loaded model, each in one call at a time, outputs in order."""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
import numpy as np
import pytest
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.infer.keyed import infer_by_key

from streamml.models import CallableModel
from streamml.models.protocol import ModelUnavailable
from tests.operators.test_infer_copies import VALUES, _events, _Exclusive, _Locked, _Log, _mlp


def _fleet(log: _Log) -> Any:
    """Model ``m<j>`` scores ``(j + 2) * (a + b)``; all of them share ``log``."""
    return lambda name: _Exclusive(log, name, float(int(name[1:]) + 2))


def _run(
    events: list,
    load: Any,
    *,
    model_for: Any = lambda key: "m0",
    source_batch: int = 1000,
    workers: int = 1,
    **kwargs: Any,
) -> tuple[list, list]:
    flow = Dataflow("by_key_copies")
    up = op.input("in", flow, TestingSource(events, batch_size=source_batch))
    out = infer_by_key("s", up, model_for=model_for, load=load, **kwargs)
    oks: list = []
    errs: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return oks, errs


def test_calls_run_at_once_on_separate_copies_and_rows_leave_in_order() -> None:
    # One batch of 32 rows for one model, in pieces of 8: the pieces starting at 8, 16 and 24
    # wait for each other (three calls at once), and the one at 8 returns after the one at 16.
    log = _Log(meet=3)
    oks, errs = _run(_events([float(i) for i in range(32)]), _fleet(log), max_batch=8, copies=3)
    assert errs == [] and log.concurrent_entries == 0
    assert [e["id"] for _, e in oks] == list(range(32))  # in order, though piece 3 returned first
    assert [e["score"] for _, e in oks] == [2.0 * (i + 1) for i in range(32)]
    assert log.done.index(16) < log.done.index(8)  # the pieces did finish out of order
    assert len({copy for copy, _ in log.entered}) == 3 and log.calls == 4


def _outcome(oks: list, errs: list) -> tuple[list, list]:
    scored = [(k, e["id"], e["score"], e["model_version"]) for k, e in oks]
    rejected = [(r.original[1]["id"], r.error_type, r.reason) for r in errs]
    return scored, rejected


@settings(max_examples=15, deadline=None)
@given(
    values=VALUES,
    max_batch=st.integers(1, 8),
    source_batch=st.integers(1, 40),
)
def test_outputs_and_errors_are_those_of_one_copy(
    values: list[float], max_batch: int, source_batch: int
) -> None:
    events = _events(values, keys=5)
    kwargs = dict(model_for=lambda key: f"m{int(key[1:]) % 3}", max_batch=max_batch)
    one_log, three_log = _Log(), _Log()
    one = _outcome(*_run(events, _fleet(one_log), source_batch=source_batch, copies=1, **kwargs))
    three = _outcome(
        *_run(events, _fleet(three_log), source_batch=source_batch, copies=3, **kwargs)
    )
    assert three == one  # the same rows, errors and reasons, in the same order
    assert three_log.concurrent_entries == 0
    # Brute force: NaN/inf rejected before the model, |v| > 100 by the model (found by halves,
    # or named in RowErrors), every other row scored by its group's model.
    scored, rejected = one
    bad = {i for i, v in enumerate(values) if not np.isfinite(v) or abs(v) > 100}
    assert sorted(i for i, *_ in rejected) == sorted(bad)
    assert sorted(i for _, i, _, _ in scored) == [i for i in range(len(values)) if i not in bad]
    for key, i, score, version in scored:
        j = int(key[1:]) % 3
        assert version == f"m{j}" and score == np.float32(j + 2) * (
            np.float32(values[i]) + np.float32(1)
        )


def test_two_workers_of_a_process_never_enter_one_copy_together() -> None:
    log = _Log()
    events = _events([float(i % 50) for i in range(400)], keys=7)
    oks, errs = _run(events, _fleet(log), source_batch=37, workers=2, max_batch=8, copies=2)
    assert errs == [] and log.concurrent_entries == 0
    assert sorted(e["id"] for _, e in oks) == list(range(400))
    assert len({copy for copy, _ in log.entered}) == 2


def test_an_onnx_model_gives_the_same_scores_with_copies() -> None:
    mlp = _mlp()
    x = np.random.default_rng(3).normal(size=(200, 4)).astype(np.float32)
    events = [(f"k{i % 4}", {"id": i, "features": x[i]}) for i in range(200)]
    runs = [_run(events, lambda name: mlp, max_batch=16, copies=c)[0] for c in (1, 2)]
    assert [e["id"] for _, e in runs[1]] == [e["id"] for _, e in runs[0]] == list(range(200))
    want = mlp.predict(x)["y"].ravel()
    for oks in runs:
        np.testing.assert_allclose([e["y"] for _, e in oks], want, rtol=1e-6)


def test_a_model_that_cannot_be_copied_is_rejected_when_loaded() -> None:
    oks, errs = _run(_events([1.0, 2.0]), lambda name: _Locked(name), copies=2)
    assert oks == [] and [r.error_type for r in errs] == ["ModelRejected"] * 2
    assert "cannot copy the model" in errs[0].reason and "or copies=1" in errs[0].reason
    oks, errs = _run(_events([1.0, 2.0]), lambda name: _Locked(name), copies=1)
    assert errs == [] and [e["score"] for _, e in oks] == [2.0, 3.0]  # itself: nothing copied


def test_an_unavailable_model_stops_the_flow_with_copies_too() -> None:
    def down(x: np.ndarray) -> np.ndarray:
        raise ModelUnavailable("the scoring service is down")

    model = CallableModel(down, outputs="score", shape=(2,), version="v1")
    for copies in (1, 2):
        with pytest.raises(BytewaxRuntimeError) as stopped:
            _run(_events([1.0] * 5), lambda name: model, max_batch=2, copies=copies)
        causes = [stopped.value]
        while causes[-1].__cause__ is not None:
            causes.append(causes[-1].__cause__)
        assert isinstance(causes[-1], ModelUnavailable)  # raised again, not routed to errs


@pytest.mark.parametrize("copies", [0, -1, 1.5, "2", True])
def test_copies_must_be_a_positive_int(copies: Any) -> None:
    with pytest.raises(ValueError, match="copies must be an int >= 1; got the"):
        _run([], _fleet(_Log()), copies=copies)
