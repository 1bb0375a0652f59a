"""infer(..., copies=N): N copies of the model, each in one call at a time, outputs in order, errors as with one."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.testing import TestingSink, TestingSource
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.infer import infer
from streamml.operators.infer.copies import CopyPool
from streamml.operators.infer.models import Loader, default_loader, serve
from streamml.operators.infer.operator import _shard
from streamml.operators.infer.routing import Chunk, Swap
from streamml.operators.infer.shard import _Config, _InferLogic
from streamml.operators.infer.stats import InferStats

from streamml.models import CallableModel, OnnxModel, TensorSpec
from streamml.models.protocol import ModelUnavailable, RowErrors
from tests.operators.test_infer_frames import _run

# A rendezvous that does not happen within this long is a failure (calls that should run at once
# did not); when they do run at once it passes at once, so load only makes the test slower.
MEET_S = 60.0


class _Log:
    """What every copy of an :class:`_Exclusive` model shares: the calls it made."""

    def __init__(self, meet: int = 0) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.entered: list[tuple[int, str]] = []  # (copy id, version) per call
        self.done: list[float] = []  # each call's first row value, in the order they returned
        self.concurrent_entries = 0  # a copy entered while in a call: must stay 0
        self.meet = threading.Barrier(meet) if meet else None
        self.third_done = threading.Event()


class _Exclusive:
    """A model that must never be in two calls at once: it raises when entered again.

    Scores ``factor * (a + b)``; a row whose first value is above 100 fails the
    whole batch (``ValueError``), one below -100 is named in ``RowErrors``.
    With ``meet`` (for batches of 8 rows whose first values are 0, 1, 2...):
    the first batch sleeps 2 ms (so infer learns its calls are worth
    overlapping), the next ``meet`` batches wait for each other, and the
    second returns only after the third did — they finish out of order.
    """

    inputs = {"input": TensorSpec(np.dtype("float32"), (2,))}
    outputs = ("score",)

    def __init__(self, log: _Log, version: str = "v1", factor: float = 2.0) -> None:
        self.log, self.version, self.factor = log, version, factor
        self._entry = threading.Lock()  # held while in a call

    def __deepcopy__(self, memo: dict) -> _Exclusive:
        return _Exclusive(self.log, self.version, self.factor)  # copies share the log

    def predict(self, inputs: Any) -> dict[str, Any]:
        if not self._entry.acquire(blocking=False):
            with self.log.lock:
                self.log.concurrent_entries += 1
            raise RuntimeError("entered by two threads at once")
        try:
            return self._score(np.asarray(inputs["input"]))
        finally:
            self._entry.release()

    def _score(self, x: np.ndarray) -> dict[str, Any]:
        log, first = self.log, float(x[0, 0])
        with log.lock:
            log.calls += 1
            log.entered.append((id(self), self.version))
        if log.meet is not None:
            if first == 0:
                time.sleep(0.002)
            elif first <= 8 * log.meet.parties:
                log.meet.wait(MEET_S)  # raises BrokenBarrierError if the calls do not run at once
                if first == 8 and not log.third_done.wait(MEET_S):
                    raise TimeoutError("the third batch never returned")
        scores = (self.factor * x.sum(axis=1)).astype(np.float32)
        with log.lock:
            log.done.append(first)
        if first == 16:
            log.third_done.set()
        if (x[:, 0] > 100).any():
            raise ValueError("a value above 100")
        bad = np.flatnonzero(x[:, 0] < -100)
        if len(bad):
            keep = np.ones(len(x), bool)
            keep[bad] = False
            raise RowErrors({"score": scores[keep]}, {int(i): "below -100" for i in bad})
        return {"score": scores}


# A row's first feature: most are scored, NaN and inf rejected before the model, values over 100
# fail their batch (found by halves) and under -100 are named by the model in RowErrors.
VALUES = st.lists(
    st.one_of(
        st.floats(-3, 3, width=32),
        st.sampled_from([float("nan"), float("inf"), 150.0, -150.0]),
    ),
    min_size=1,
    max_size=50,
)


def _events(values: list[float], keys: int = 3) -> list[tuple[str, dict[str, Any]]]:
    return [(f"k{i % keys}", {"id": i, "features": [v, 1.0]}) for i, v in enumerate(values)]


# -- concurrency: on separate copies, never two calls on one, outputs in order -------------------


def test_calls_run_at_once_on_separate_copies_and_rows_leave_in_order() -> None:
    log = _Log(meet=3)
    frame = pl.DataFrame({"id": np.arange(80), "a": np.arange(80.0), "b": np.ones(80)})
    oks, errs, stats = _run(
        [frame], _Exclusive(log), inputs=["a", "b"], max_batch=8, max_wait=timedelta(0), copies=3
    )
    assert errs == [] and log.concurrent_entries == 0
    out = pl.concat(oks)
    assert out["id"].to_list() == list(range(80))  # in order, though batch 3 returned before 2
    assert out["score"].to_list() == [2.0 * (i + 1) for i in range(80)]
    assert log.done.index(16) < log.done.index(8)  # the batches did finish out of order
    assert len({copy for copy, _ in log.entered}) == 3  # three copies were used...
    assert stats.batches == 10 and log.calls == 10  # ...one call per batch of 8


def test_a_model_that_is_not_thread_safe_is_never_entered_twice_with_copies() -> None:
    # Two shards with three calls each in flight share three copies; every call takes a free copy.
    log = _Log()
    values = [float(i % 50) for i in range(600)]
    oks, errs, _ = _run(
        _events(values, keys=7),
        _Exclusive(log),
        key=None,
        shards=2,
        max_batch=16,
        max_wait=timedelta(0),
        copies=3,
        source_batch=40,
    )
    assert errs == [] and log.concurrent_entries == 0
    assert sorted(e["id"] for _, e in oks) == list(range(600))
    assert len({copy for copy, _ in log.entered}) == 3


def test_two_workers_of_a_process_share_its_copies() -> None:
    from bytewax.testing import cluster_main

    log = _Log()
    events = _events([float(i % 50) for i in range(400)], keys=7)
    flow = Dataflow("two_workers_copies")
    up = op.input("in", flow, TestingSource(events, batch_size=37))
    out = infer("infer", up, _Exclusive(log), shards=4, max_batch=16, copies=2)
    oks: list = []
    op.output("oks", out.oks, TestingSink(oks))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert log.concurrent_entries == 0 and len({copy for copy, _ in log.entered}) == 2
    assert sorted(e["id"] for _, e in oks) == list(range(400))
    for key in {k for k, _ in events}:  # each key in order
        ids = [e["id"] for k, e in oks if k == key]
        assert ids == sorted(ids)


# -- results and errors equal one copy's --------------------------------------------------------


def _outcome(oks: list, errs: list) -> tuple[dict, list]:
    by_key: dict[str, list] = {}
    for key, e in oks:
        by_key.setdefault(key, []).append((e["id"], e["score"], e["model_version"]))
    rejected = sorted(
        (r.original[1]["id"], r.error_type, r.reason) for r in errs if r.original is not None
    )
    return by_key, rejected


@settings(max_examples=20, deadline=None)
@given(
    values=VALUES,
    max_batch=st.integers(1, 12),
    overlap=st.booleans(),
)
def test_results_and_errors_are_those_of_one_copy(
    values: list[float], max_batch: int, overlap: bool
) -> None:
    events = _events(values)
    kwargs = dict(shards=2, max_batch=max_batch, max_wait=timedelta(0), overlap=overlap)
    one_log, three_log = _Log(), _Log()
    one = _outcome(*_run(events, _Exclusive(one_log), copies=1, **kwargs)[:2])
    three = _outcome(*_run(events, _Exclusive(three_log), copies=3, **kwargs)[:2])
    assert three == one
    assert three_log.concurrent_entries == 0
    # Brute force: each key's scored rows in order; NaN/inf rejected before the model, the rest
    # by the model (a value above 100 found by splitting its batch, one below -100 named).
    by_key, rejected = one
    for key, rows in by_key.items():
        assert [i for i, _, _ in rows] == sorted(i for i, _, _ in rows)
        assert all(k == key for k, e in events if e["id"] in {i for i, _, _ in rows})
    expected_bad = {
        i: ("NonFinite" if not np.isfinite(v) else "ModelError")
        for i, v in enumerate(values)
        if not np.isfinite(v) or abs(v) > 100
    }
    assert {i: etype for i, etype, _ in rejected} == expected_bad
    scored = sorted(i for rows in by_key.values() for i, _, _ in rows)
    assert scored == [i for i in range(len(values)) if i not in expected_bad]


def test_an_onnx_model_gives_the_same_scores_with_copies() -> None:
    mlp = _mlp()
    x = np.random.default_rng(3).normal(size=(300, 4)).astype(np.float32)
    frame = pl.DataFrame({"id": np.arange(300), **{f"f{j}": x[:, j] for j in range(4)}})
    runs = [
        _run([frame], mlp, inputs=[f"f{j}" for j in range(4)], max_batch=32, copies=c)[0]
        for c in (1, 2)
    ]
    one, two = pl.concat(runs[0]), pl.concat(runs[1])
    assert one["id"].to_list() == two["id"].to_list() == list(range(300))
    np.testing.assert_allclose(two["y"].to_numpy(), one["y"].to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(one["y"].to_numpy(), mlp.predict(x)["y"].ravel(), rtol=1e-6)


def _mlp() -> OnnxModel:
    """A 4->8->1 ReLU network in ONNX, weights from a fixed seed."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(8, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return OnnxModel(model.SerializeToString(), version="mlp", intra_op_threads=1)


def test_an_unavailable_model_stops_the_flow_with_copies_too() -> None:
    def down(x: np.ndarray) -> np.ndarray:
        raise ModelUnavailable("the scoring service is down")

    model = CallableModel(down, outputs="score", shape=(2,), version="v1")
    for overlap in (True, False):
        with pytest.raises(BytewaxRuntimeError) as stopped:
            _run(_events([1.0] * 5), model, max_batch=2, overlap=overlap, copies=2)
        assert isinstance(stopped.value.__cause__, ModelUnavailable)


# -- swaps: every copy serves the new model ------------------------------------------------------


def _config(copies: int, loader: Any = default_loader, max_wait_s: float = 0.0) -> _Config:
    return _Config(
        step_id="s",
        inputs="features",
        outputs=None,
        version_field="model_version",
        wait_field=None,
        max_batch=4,
        max_wait_s=max_wait_s,
        overlap=True,
        watch=None,
        watch_interval_s=1.0,
        watch_initial=None,
        loader=Loader(loader),
        stats=InferStats(),
        copies=CopyPool(copies),
    )


def test_a_swap_is_copied_once_for_the_shards_of_a_process_and_serves_on_every_copy() -> None:
    log = _Log()
    cfg = _config(3)
    v1, v2 = _Exclusive(log, "v1", 2.0), _Exclusive(log, "v2", 3.0)
    initial = serve(v1, cfg.inputs, cfg.outputs, None, cfg.copies)
    shards = [_InferLogic(cfg, initial, []), _InferLogic(cfg, initial, [])]
    for i, shard in enumerate(shards):
        shard.on_batch([Swap(v2, report=i == 0, token="t1")])
    first, second = (s._served.copies for s in shards)
    assert first is second  # made once, for both shards
    assert first.models[0] is v2 and len({id(m) for m in first.models}) == 3
    assert [m.version for m in first.models] == ["v2"] * 3
    rows = [(f"k{i}", {"id": i, "features": [float(i), 1.0]}) for i in range(24)]
    out = []
    for shard in shards:
        for result in shard.on_batch([Chunk(0, rows)])[0]:
            out.extend(result.oks)
        for result in shard.on_eof()[0]:
            out.extend(result.oks)
    assert len(out) == 48
    assert all(e["model_version"] == "v2" and e["score"] == 3.0 * (e["id"] + 1) for _, e in out)
    assert {copy for copy, version in log.entered} == {id(m) for m in first.models}
    assert log.concurrent_entries == 0 and cfg.stats.swaps == 1


def test_a_resumed_shard_loads_the_swapped_model_again_with_its_copies() -> None:
    log = _Log()
    cfg = _config(2, loader=lambda version: _Exclusive(log, version, 3.0), max_wait_s=60.0)
    initial = serve(_Exclusive(log, "v1", 2.0), cfg.inputs, cfg.outputs, None, cfg.copies)
    shard = _shard(cfg, initial, None)
    rows = [(f"k{i}", {"id": i, "features": [float(i), 1.0]}) for i in range(3)]
    shard.on_batch([Swap("v2", report=True, token="t1"), Chunk(0, rows)])  # under max_batch: wait
    before = shard._served.copies
    resumed = _shard(cfg, initial, shard.snapshot())
    after = resumed._served.copies
    assert [m.version for m in after.models] == ["v2", "v2"]  # loaded again, and copied
    assert len({id(m) for m in (*before.models, *after.models)}) == 4
    out = [x for result in resumed.on_eof()[0] for x in result.oks]
    assert [e["id"] for _, e in out] == [0, 1, 2]
    assert all(e["model_version"] == "v2" and e["score"] == 3.0 * (e["id"] + 1) for _, e in out)
    assert {copy for copy, _ in log.entered} <= {id(m) for m in after.models}
    assert log.concurrent_entries == 0


def test_a_model_swapped_in_on_control_scores_with_its_own_copies() -> None:
    log = _Log()
    v1, v2 = _Exclusive(log, "v1", 2.0), _Exclusive(log, "v2", 3.0)
    oks, errs, stats = _run(
        _events([float(i % 50) for i in range(200)]),
        v1,
        max_batch=8,
        max_wait=timedelta(0),
        copies=2,
        control_items=[v2],
        source_batch=10,
    )
    assert errs == [] and stats.swaps == 1 and log.concurrent_entries == 0
    factor = {"v1": 2.0, "v2": 3.0}
    assert all(e["score"] == factor[e["model_version"]] * (e["id"] % 50 + 1) for _, e in oks)
    assert sorted(e["id"] for _, e in oks) == list(range(200))


# -- what cannot be copied --------------------------------------------------------------------


class _Locked(CallableModel):
    """A model holding a lock, which ``copy.deepcopy`` cannot copy."""

    def __init__(self, version: str) -> None:
        super().__init__(lambda x: x.sum(axis=1), outputs="score", shape=(2,), version=version)
        self.lock = threading.Lock()


def test_a_model_that_cannot_be_copied_is_refused_at_build_and_rejected_on_a_swap() -> None:
    with pytest.raises(ValueError, match="copies=2: cannot copy the model .* or copies=1"):
        _run([], _Locked("v1"), copies=2)
    _run([], _Locked("v1"), copies=1)  # one copy: the model itself, nothing copied
    v1 = CallableModel(lambda x: x.sum(axis=1), outputs="score", shape=(2,), version="v1")
    oks, errs, stats = _run(
        _events([1.0, 2.0]), v1, copies=2, control_items=[_Locked("v2")], max_wait=timedelta(0)
    )
    assert [r.error_type for r in errs] == ["ModelRejected"] and "cannot copy" in errs[0].reason
    assert stats.swaps == 0 and [e["model_version"] for _, e in oks] == ["v1", "v1"]


@pytest.mark.parametrize("copies", [0, -1, 1.5, "2", True])
def test_copies_must_be_a_positive_int(copies: Any) -> None:
    model = CallableModel(lambda x: x.sum(axis=1), outputs="score", shape=(2,))
    with pytest.raises(ValueError, match="copies must be an int >= 1; got the"):
        _run([], model, copies=copies)
