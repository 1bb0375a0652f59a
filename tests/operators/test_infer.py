"""The inference operator: batch results equal per-event results, failures are isolated, swaps are atomic."""

from __future__ import annotations

import hashlib
import os
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators._batching import DynamicBatcher
from streamml.operators.infer import infer

from streamml.errors import Rejected
from streamml.models import CallableModel, OnnxModel, TensorSpec

N_FEATURES = 16


def _train_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, N_FEATURES)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] * (seed + 1) > 0).astype(np.int64)


def _mlp_bytes(seed: int) -> bytes:
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    x, y = _train_data(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged: fine, any fixed weights will do
        mlp = MLPClassifier(hidden_layer_sizes=(16, 16), max_iter=20, random_state=seed).fit(x, y)
    return to_onnx(mlp, x[:1], options={id(mlp): {"zipmap": False}}).SerializeToString()


def _iforest_bytes() -> bytes:
    from skl2onnx import to_onnx
    from sklearn.ensemble import IsolationForest

    x, _ = _train_data(0)
    forest = IsolationForest(n_estimators=10, random_state=0).fit(x)
    return to_onnx(forest, x[:1], target_opset={"": 17, "ai.onnx.ml": 3}).SerializeToString()


@pytest.fixture(scope="module")
def mlp_v1() -> bytes:
    return _mlp_bytes(1)


@pytest.fixture(scope="module")
def mlp_v2() -> bytes:
    return _mlp_bytes(2)


@pytest.fixture(scope="module")
def mlp(mlp_v1: bytes) -> OnnxModel:
    return OnnxModel(mlp_v1, version="v1", intra_op_threads=1)


@pytest.fixture(scope="module")
def iforest() -> OnnxModel:
    return OnnxModel(_iforest_bytes(), version="if1", intra_op_threads=1)


def _events(n: int, keys: list[str], seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    return [(keys[i % len(keys)], {"id": i, "features": x[i]}) for i in range(n)]


def _run(inp: list[Any], **kwargs: Any) -> tuple[list, list, Any]:
    flow = Dataflow("t")
    batch_size = kwargs.pop("source_batch", 1000)
    control = kwargs.pop("control_items", None)
    up = op.input("in", flow, TestingSource(inp, batch_size=batch_size))
    if control is not None:
        kwargs["control"] = op.input("control", flow, TestingSource(control))
    out = infer("infer", up, **kwargs)
    oks: list = []
    errs: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    return oks, errs, out.stats


def _by_key(items: list[tuple[str, dict]]) -> dict[str, list[int]]:
    ids: dict[str, list[int]] = {}
    for k, e in items:
        ids.setdefault(k, []).append(e["id"])
    return ids


# -- batching is invisible: same results as the model run event by event -------------


@settings(max_examples=60, deadline=None)
@given(
    key_ids=st.lists(st.integers(0, 4), max_size=120),
    pauses=st.sets(st.integers(0, 120), max_size=2),
    max_batch=st.integers(1, 64),
    source_batch=st.integers(1, 50),
    max_wait_ms=st.sampled_from([0, 1, 5]),
    shards=st.integers(1, 3),
    which=st.sampled_from(["mlp", "iforest"]),
)
def test_outputs_equal_per_event_model_runs(
    request: pytest.FixtureRequest,
    key_ids: list[int],
    pauses: set[int],
    max_batch: int,
    source_batch: int,
    max_wait_ms: int,
    shards: int,
    which: str,
) -> None:
    model: OnnxModel = request.getfixturevalue(which)
    n = len(key_ids)
    events = [(f"k{k}", e) for k, (_, e) in zip(key_ids, _events(n, ["_"], seed=n), strict=True)]
    arrivals: list[Any] = []
    for i, event in enumerate(events):
        if i in pauses:  # a gap in arrivals, longer than some max_waits
            arrivals.append(TestingSource.PAUSE(timedelta(milliseconds=3)))
        arrivals.append(event)
    oks, errs, stats = _run(
        arrivals,
        model=model,
        max_batch=max_batch,
        max_wait=timedelta(milliseconds=max_wait_ms),
        shards=shards,
        source_batch=source_batch,
    )
    assert errs == []
    assert sorted(e["id"] for _, e in oks) == list(range(n))  # none lost, none twice
    assert _by_key(oks) == _by_key(events)  # each key's order kept
    for k, e in oks:
        expected = model.predict(events[e["id"]][1]["features"][None, :])
        for name, value in expected.items():
            got = np.asarray(e[name], dtype=value.dtype).ravel()
            if which == "mlp" or name == "label":
                assert np.array_equal(got, value.ravel()), name
            else:
                # ONNX Runtime's tree ensembles sum the trees in a different order for
                # batches of 4 rows or more: the last bits of a float32 score can differ.
                np.testing.assert_allclose(got, value.ravel(), rtol=1e-5, atol=1e-6)
        assert e["model_version"] == model.version
        assert k == events[e["id"]][0]
        assert e.keys() >= events[e["id"]][1].keys()
    assert stats.scored == n
    if n:
        assert max(1, -(-n // max_batch)) <= stats.batches <= n


def test_iforest_attaches_scalar_label_and_score(iforest: OnnxModel) -> None:
    oks, _, _ = _run(
        _events(5, ["a"]), model=iforest, outputs={"label": "anomaly", "scores": "score"}
    )
    _, e = oks[0]
    assert isinstance(e["anomaly"], int) and isinstance(e["score"], float)
    assert "label" not in e and "features" in e


def test_inputs_are_not_mutated(mlp: OnnxModel) -> None:
    events = _events(3, ["a"])
    before = [dict(e) for _, e in events]
    _run(events, model=mlp)
    assert [dict(e) for _, e in events] == before


# -- the dynamic batcher --------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    max_batch=st.integers(1, 10),
    max_wait=st.sampled_from([0.0, 0.005, 0.02]),
    arrivals=st.lists(st.tuples(st.integers(0, 12), st.floats(0.0, 0.03)), max_size=20),
    as_frames=st.booleans(),
)
def test_batcher_fifo_bounded_and_on_time(
    max_batch: int, max_wait: float, arrivals: list[tuple[int, float]], as_frames: bool
) -> None:
    """Drive the batcher like the operator does (at each arrival and at each deadline).

    Chunks are lists of ids, or frames of an ``id`` column (joined and sliced the same way).
    """
    b: DynamicBatcher = DynamicBatcher(max_batch=max_batch, max_wait_s=max_wait)
    now, next_id, taken = 0.0, 0, []
    arrived_at: dict[int, float] = {}

    def ids(batch: Any) -> list[int]:
        assert isinstance(batch, pl.DataFrame) == as_frames
        return batch["id"].to_list() if as_frames else batch

    def run_due(t: float) -> None:
        for batch, runs in b.due(t):
            items = ids(batch)
            assert 1 <= len(items) <= max_batch
            assert sum(c for c, _ in runs) == len(items)
            for i in items:
                assert t - arrived_at[i] <= max_wait + 1e-3  # nothing overstays
            taken.extend(items)

    for count, gap in arrivals:
        deadline = b.deadline()
        while deadline is not None and deadline <= now + gap:
            run_due(deadline)
            deadline = b.deadline()
        now += gap
        chunk = list(range(next_id, next_id + count))
        next_id += count
        for i in chunk:
            arrived_at[i] = now
        b.push(pl.DataFrame({"id": chunk}, schema={"id": pl.Int64}) if as_frames else chunk, now)
        run_due(now)
    taken.extend(i for batch, _ in b.flush() for i in ids(batch))
    assert taken == list(range(next_id))
    assert len(b) == 0 and b.deadline() is None


def test_batcher_cuts_a_batch_where_the_kind_of_chunk_changes() -> None:
    b: DynamicBatcher = DynamicBatcher(max_batch=10, max_wait_s=1.0)
    b.push(["a", "b"], 0.0)
    b.push(pl.DataFrame({"x": [1, 2]}), 0.0)
    b.push(pl.DataFrame({"x": [3]}), 0.0)
    b.push(pl.DataFrame({"x": [4.5]}), 0.0)  # another schema
    b.push(["c"], 0.0)
    assert [len(p) for p in b.pending()] == [2, 2, 1, 1, 1]
    batches = [batch for batch, _ in b.flush()]
    assert batches[0] == ["a", "b"] and batches[-1] == ["c"]
    assert [f["x"].to_list() for f in batches[1:-1]] == [[1, 2, 3], [4.5]]


def test_trickle_waits_about_max_wait_and_batches(mlp: OnnxModel) -> None:
    """Two trickles of events 5 ms apart, 0.6 s of silence between them, max_wait 50 ms.

    The first trickle must run on its deadline, not when the next events (or
    the end of input) come along 0.6 s later.
    """
    events = _events(20, ["a", "b"])
    gap = TestingSource.PAUSE(timedelta(milliseconds=5))
    source: list[Any] = []
    for i, event in enumerate(events):
        source += [event, gap]
        if i == 9:
            source.append(TestingSource.PAUSE(timedelta(seconds=0.6)))
    oks, _, stats = _run(
        source,
        model=mlp,
        max_batch=1000,
        max_wait=timedelta(milliseconds=50),
        wait_field="waited",
    )
    waits = [e["waited"] for _, e in oks]
    assert len(waits) == 20
    assert max(waits) < 0.6  # run on its deadline, not when the next events came 0.6 s later
    assert max(waits) >= 0.045  # the oldest waited for company up to its deadline
    assert stats.mean_batch_size > 1.5  # the events were gathered, not run one by one


def test_no_waiting_runs_what_arrived_together(mlp: OnnxModel) -> None:
    oks, _, stats = _run(
        _events(100, ["a"]), model=mlp, max_batch=1000, max_wait=timedelta(0), source_batch=25
    )
    assert len(oks) == 100 and stats.batches == 4 and stats.mean_batch_size == 25
    counters = stats.as_dict()
    assert counters["events_per_second"] > 0 and counters["model_seconds"] > 0
    assert counters["rejected"] == counters["model_errors"] == counters["swaps"] == 0


# -- failures are isolated ------------------------------------------------------------


def test_invalid_inputs_go_to_errs_and_the_rest_is_scored(mlp: OnnxModel) -> None:
    good = _events(6, ["a", "b"])
    bad_values: list[Any] = [
        np.zeros(N_FEATURES - 1, dtype=np.float32),  # wrong length
        np.full(N_FEATURES, np.nan, dtype=np.float32),  # non-finite
        np.array(["x"] * N_FEATURES),  # strings
        np.zeros(N_FEATURES, dtype=np.complex64),  # complex is not float
        None,  # missing
        [1.0] * (N_FEATURES - 1) + [float("inf")],  # a list with an inf
    ]
    events = list(good)
    for i, value in enumerate(bad_values):
        events.insert(2 * i + 1, ("c", {"id": 100 + i, "features": value}))
    events.append(("c", {"id": 200}))  # no field at all
    events.append(("c", {"id": 201, "features": [0.5] * N_FEATURES}))  # a float64 list is fine
    oks, errs, stats = _run(events, model=mlp, max_batch=4, source_batch=3)
    assert sorted(e["id"] for _, e in oks) == [0, 1, 2, 3, 4, 5, 201]
    by_id = {r.original[1]["id"]: r for r in errs}
    assert sorted(by_id) == [100, 101, 102, 103, 104, 105, 200]
    assert [by_id[i].error_type for i in sorted(by_id)] == [
        "BadShape",
        "NonFinite",
        "BadDtype",
        "BadDtype",
        "MissingInput",
        "NonFinite",
        "MissingInput",
    ]
    assert all(isinstance(r, Rejected) and r.step_id == "t.infer" and r.reason for r in errs)
    assert "(15,)" in by_id[100].reason
    expected = mlp.predict(np.full((1, N_FEATURES), 0.5, dtype=np.float32))["label"][0]
    assert dict(oks)["c"]["label"] == expected
    assert stats.rejected == 7 and stats.scored == 7


@pytest.mark.parametrize("overlap", [True, False])
def test_model_raising_on_rows_splits_the_batch(overlap: bool) -> None:
    calls: list[int] = []

    def fragile(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        if (x[:, 0] == 13).any():
            raise RuntimeError("cannot score 13")
        return x[:, 0] * 2

    model = CallableModel(fragile, outputs="y", shape=(2,))
    events = [("k", {"id": i, "features": [float(i), 0.0]}) for i in range(40)]
    oks, errs, stats = _run(events, model=model, max_batch=16, source_batch=40, overlap=overlap)
    assert [e["id"] for _, e in oks] == [i for i in range(40) if i != 13]
    assert all(e["y"] == 2 * e["id"] for _, e in oks)
    assert [(r.error_type, r.original[1]["id"]) for r in errs] == [("ModelError", 13)]
    assert "cannot score 13" in errs[0].reason
    assert stats.model_errors == 1
    assert len(calls) < 40  # split by halves, not event by event


def test_model_returning_wrong_row_count_is_an_error() -> None:
    model = CallableModel(lambda x: np.zeros(len(x) + 1), outputs="y", shape=(1,))
    oks, errs, _ = _run([("k", {"id": i, "features": [1.0]}) for i in range(3)], model=model)
    assert oks == [] and len(errs) == 3
    assert {r.error_type for r in errs} == {"ModelError"}


def test_input_function_and_multi_input_model() -> None:
    def fn(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"s": feeds["a"].sum(axis=1) + feeds["b"][:, 0]}

    spec = TensorSpec(np.dtype("float32"), (None,))
    model = CallableModel(fn, inputs={"a": spec, "b": spec}, outputs="s")
    events = [("k", {"id": i, "xs": [1.0, float(i)], "y": 10.0}) for i in range(4)]
    events.append(("k", {"id": 9, "xs": [1.0, 2.0]}))  # no "y": the function raises KeyError
    oks, errs, _ = _run(
        events, model=model, inputs={"a": "xs", "b": lambda e: [e["y"]]}, max_batch=8
    )
    assert [e["s"] for _, e in oks] == [11.0, 12.0, 13.0, 14.0]
    assert [(r.error_type, r.original[1]["id"]) for r in errs] == [("MissingInput", 9)]


def test_outputs_function() -> None:
    model = CallableModel(lambda x: x[:, 0] * 3, outputs="y", shape=(1,), version="v7")
    oks, _, _ = _run(
        [("k", {"features": [2.0]})],
        model=model,
        outputs=lambda e, out: {**e, "tripled": out["y"]},
        version_field="by",
    )
    assert oks == [("k", {"features": [2.0], "tripled": 6.0, "by": "v7"})]


def test_misconfiguration_raises_at_build_time(mlp: OnnxModel) -> None:
    flow = Dataflow("bad")
    up = op.input("in", flow, TestingSource([]))
    with pytest.raises(ValueError, match="max_batch"):
        infer("a", up, mlp, max_batch=0)
    with pytest.raises(ValueError, match="max_wait"):
        infer("b", up, mlp, max_wait=timedelta(milliseconds=-1))
    with pytest.raises(ValueError, match="does not return"):
        infer("c", up, mlp, outputs={"nope": "x"})
    with pytest.raises(ValueError, match="every model input"):
        infer("d", up, mlp, inputs={"a": "x"})
    with pytest.raises(ValueError, match="Model"):
        infer("e", up, "model.onnx")
    with pytest.raises(ValueError, match="shards"):
        infer("f", up, mlp, shards=0)


# -- live swaps -----------------------------------------------------------------------


def _paused(events: list, cut: int, pause_s: float) -> list:
    return [*events[:cut], TestingSource.PAUSE(timedelta(seconds=pause_s)), *events[cut:]]


def test_swap_from_control_stream_is_atomic(mlp_v1: bytes, mlp_v2: bytes) -> None:
    v1 = OnnxModel(mlp_v1, version="v1", intra_op_threads=1)
    v2 = OnnxModel(mlp_v2, version="v2", intra_op_threads=1)
    events = _events(60, ["a", "b", "c"])
    control = [TestingSource.PAUSE(timedelta(seconds=0.3)), v2, b"not an onnx model"]
    oks, errs, stats = _run(
        _paused(events, 30, 0.6),
        model=v1,
        control_items=control,
        max_batch=8,
        max_wait=timedelta(milliseconds=2),
        shards=2,
    )
    assert sorted(e["id"] for _, e in oks) == list(range(60))
    assert _by_key(oks) == _by_key(events)
    for _, e in oks:
        assert e["model_version"] == ("v1" if e["id"] < 30 else "v2")
        model = v1 if e["id"] < 30 else v2
        expected = model.predict(events[e["id"]][1]["features"][None, :])
        assert np.array_equal(e["probabilities"], expected["probabilities"][0])
    # The corrupt model is reported once (not once per shard), and v2 keeps serving.
    assert [(r.error_type, r.original) for r in errs] == [("ModelRejected", b"not an onnx model")]
    assert stats.swaps == 1 and stats.models_rejected == 1


def test_watched_file_swap_and_corrupt_file(tmp_path: Path, mlp_v1: bytes, mlp_v2: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(mlp_v1)
    v1 = OnnxModel(path, intra_op_threads=1)
    v2_version = hashlib.sha256(mlp_v2).hexdigest()[:8]
    events = _events(90, ["a", "b"])

    def replace(data: bytes) -> None:
        tmp = tmp_path / "incoming"
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def source() -> Any:
        pause = TestingSource.PAUSE(timedelta(seconds=0.3))
        yield from events[:30]
        yield pause
        replace(b"corrupt")
        yield pause
        yield from events[30:60]
        yield pause
        replace(mlp_v2)
        yield pause
        yield from events[60:]

    oks, errs, stats = _run(
        source(),
        model=v1,
        watch=path,
        watch_interval=timedelta(milliseconds=20),
        max_wait=timedelta(0),
    )
    versions = {e["id"]: e["model_version"] for _, e in oks}
    assert sorted(versions) == list(range(90))
    assert {versions[i] for i in range(60)} == {v1.version}
    assert {versions[i] for i in range(60, 90)} == {f"model@{v2_version}"}
    assert [(r.error_type, r.original) for r in errs] == [("ModelRejected", str(path))]
    assert stats.models_rejected == 1 and stats.swaps == 1


# -- recovery -------------------------------------------------------------------------


def test_recovery_keeps_waiting_events_and_the_swapped_model(
    tmp_path: Path, mlp_v1: bytes, mlp_v2: bytes
) -> None:
    """Events still waiting for a batch at a crash, and the model swapped in, survive a resume."""
    from bytewax.recovery import RecoveryConfig, init_db_dir

    init_db_dir(tmp_path, 1)
    v1 = OnnxModel(mlp_v1, version="v1", intra_op_threads=1)
    events = _events(15, ["a", "b"])
    data = [
        *events[:10],
        TestingSource.PAUSE(timedelta(seconds=0.3)),  # an epoch closes: a snapshot
        TestingSource.ABORT(),
        *events[10:],
    ]

    def build() -> tuple[Dataflow, list, list]:
        flow = Dataflow("rec")
        up = op.input("in", flow, TestingSource(data, batch_size=100))
        control = op.input("control", flow, TestingSource([mlp_v2]))
        out = infer("infer", up, v1, control=control, max_wait=timedelta(seconds=60))
        oks: list = []
        errs: list = []
        op.output("oks", out.oks, TestingSink(oks))
        op.output("errs", out.errs, TestingSink(errs))
        return flow, oks, errs

    config = RecoveryConfig(str(tmp_path))
    flow, oks, errs = build()
    run_main(flow, epoch_interval=timedelta(milliseconds=50), recovery_config=config)
    assert oks == [] and errs == []  # the first ten were waiting (max_wait 60 s) at the abort
    flow, oks, errs = build()
    run_main(flow, epoch_interval=timedelta(milliseconds=50), recovery_config=config)
    assert errs == []
    assert sorted(e["id"] for _, e in oks) == list(range(15))
    v2_version = OnnxModel(mlp_v2, warmup=False).version
    assert {e["model_version"] for _, e in oks} == {v2_version}


def test_recovery_keeps_events_whose_model_call_was_still_running(tmp_path: Path) -> None:
    """A batch in the model thread at a snapshot is not lost when the flow stops before it is done."""
    import threading

    from bytewax.recovery import RecoveryConfig, init_db_dir

    init_db_dir(tmp_path, 1)
    first_call = [True]
    aborted = threading.Event()

    def slow_the_first_time(x: np.ndarray) -> np.ndarray:
        if first_call[0]:
            first_call[0] = False
            # still running at the pause's snapshots and at the abort, however slow the machine
            aborted.wait(timeout=120)
        return x[:, 0] * 2

    model = CallableModel(slow_the_first_time, outputs="y", shape=(2,))
    events = [("k", {"id": i, "features": [float(i), 0.0]}) for i in range(15)]
    data = [
        *events[:10],
        TestingSource.PAUSE(timedelta(seconds=0.3)),
        TestingSource.ABORT(),
        *events[10:],
    ]

    def build() -> tuple[Dataflow, list]:
        flow = Dataflow("rec_in_flight")
        up = op.input("in", flow, TestingSource(data, batch_size=100))
        out = infer("infer", up, model, max_wait=timedelta(0))
        oks: list = []
        op.output("oks", out.oks, TestingSink(oks))
        return flow, oks

    config = RecoveryConfig(str(tmp_path))
    flow, oks = build()
    run_main(flow, epoch_interval=timedelta(milliseconds=50), recovery_config=config)
    aborted.set()
    assert oks == []  # the first ten were in the model thread at the abort
    flow, oks = build()
    run_main(flow, epoch_interval=timedelta(milliseconds=50), recovery_config=config)
    assert [e["id"] for _, e in oks] == list(range(15))
    assert all(e["y"] == 2 * e["id"] for _, e in oks)


@pytest.mark.integration
def test_swap_from_a_kafka_topic_of_model_paths(
    broker: Any, topic_name: str, tmp_path: Path, mlp_v1: bytes, mlp_v2: bytes
) -> None:
    """The broadcast-state pattern over a real broker: a topic carries the paths of new models."""
    from bytewax.connectors.kafka import KafkaSource
    from confluent_kafka import Producer

    broker.create_topic(topic_name, partitions=1)
    good, corrupt = tmp_path / "v2.onnx", tmp_path / "broken.onnx"
    good.write_bytes(mlp_v2)
    corrupt.write_bytes(b"\x00" * 10)
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for path in (corrupt, good):
        producer.produce(topic_name, value=str(path).encode())
    assert producer.flush(10) == 0

    def load(msg: Any) -> OnnxModel:
        path = Path(msg.value.decode())
        return OnnxModel(path, version=path.stem, intra_op_threads=1)

    events = _events(40, ["a", "b"])
    flow = Dataflow("kafka_swap")
    up = op.input("in", flow, TestingSource(_paused(events, 20, 3.0)))
    control = op.input("control", flow, KafkaSource([broker.bootstrap], [topic_name], tail=False))
    v1 = OnnxModel(mlp_v1, version="v1", intra_op_threads=1)
    out = infer("infer", up, v1, control=control, loader=load, max_wait=timedelta(0))
    oks: list = []
    errs: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    versions = {e["id"]: e["model_version"] for _, e in oks}
    assert sorted(versions) == list(range(40))
    assert {versions[i] for i in range(20, 40)} == {"v2"}
    assert [r.error_type for r in errs] == ["ModelRejected"]
    assert errs[0].original.value == str(corrupt).encode()


def test_outputs_function_raising_rejects_only_those_events() -> None:
    def attach(e: dict, out: dict) -> dict:
        if e["id"] == 2:
            raise KeyError("no such field")
        return {**e, "y": out["y"]}

    model = CallableModel(lambda x: x[:, 0], outputs="y", shape=(1,))
    events = [("k", {"id": i, "features": [float(i)]}) for i in range(4)]
    oks, errs, _ = _run(events, model=model, outputs=attach, version_field=None)
    assert [(e["id"], e["y"]) for _, e in oks] == [(0, 0.0), (1, 1.0), (3, 3.0)]
    assert [(r.error_type, r.original[1]["id"]) for r in errs] == [("OutputError", 2)]


def test_no_fields_to_attach_still_passes_events_through() -> None:
    model = CallableModel(lambda x: x[:, 0], outputs="y", shape=(1,))
    events = [("k", {"id": i, "features": [1.0]}) for i in range(3)]
    oks, _, _ = _run(events, model=model, outputs={}, version_field=None)
    assert oks == events


def test_the_same_path_sent_again_loads_the_new_file(
    tmp_path: Path, mlp_v1: bytes, mlp_v2: bytes
) -> None:
    path = tmp_path / "current.onnx"
    path.write_bytes(mlp_v1)
    events = _events(30, ["a"])

    def control() -> Any:
        yield str(path)  # loads v1's bytes
        yield TestingSource.PAUSE(timedelta(seconds=0.4))
        path.write_bytes(mlp_v2)
        yield str(path)  # same item, new content

    data = [TestingSource.PAUSE(timedelta(seconds=0.2)), *_paused(events, 15, 0.4)]
    v0 = CallableModel(lambda x: x[:, 0], outputs="y", shape=(N_FEATURES,), version="v0")
    oks, errs, stats = _run(
        data, model=v0, control_items=control(), outputs={}, max_wait=timedelta(0)
    )
    digest = {d: hashlib.sha256(d).hexdigest()[:8] for d in (mlp_v1, mlp_v2)}
    versions = [e["model_version"] for _, e in oks]
    assert errs == [] and stats.swaps == 2
    assert versions == [f"current@{digest[mlp_v1]}"] * 15 + [f"current@{digest[mlp_v2]}"] * 15


def test_two_workers_give_the_same_results(mlp: OnnxModel) -> None:
    """Shards spread over two workers: every event scored once, each key in order."""
    from bytewax.testing import cluster_main

    events = _events(300, [f"k{i}" for i in range(7)])
    flow = Dataflow("two_workers")
    up = op.input("in", flow, TestingSource(events, batch_size=37))
    out = infer("infer", up, mlp, shards=4, max_batch=50, max_wait=timedelta(milliseconds=2))
    oks: list = []
    op.output("oks", out.oks, TestingSink(oks))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert sorted(e["id"] for _, e in oks) == list(range(300))
    assert _by_key(oks) == _by_key(events)
    single, _, _ = _run(events, model=mlp, max_batch=50)
    assert {e["id"]: e["label"] for _, e in oks} == {e["id"]: e["label"] for _, e in single}


def test_a_swap_to_a_model_with_other_inputs_or_outputs_is_rejected(mlp: OnnxModel) -> None:
    narrower = CallableModel(lambda x: x[:, :2], outputs="label", shape=(8,), version="narrow")
    renamed = CallableModel(lambda x: x[:, 0], outputs="y", shape=(N_FEATURES,), version="renamed")
    events = _events(10, ["a"])
    oks, errs, stats = _run(
        [TestingSource.PAUSE(timedelta(seconds=0.3)), *events],
        model=mlp,
        control_items=[narrower, renamed],
        max_wait=timedelta(0),
    )
    assert [r.error_type for r in errs] == ["ModelRejected", "ModelRejected"]
    assert "shape (8,)" in errs[0].reason and "attach fields" in errs[1].reason
    assert {e["model_version"] for _, e in oks} == {"v1"} and len(oks) == 10
    assert stats.models_rejected == 2 and stats.swaps == 0


def test_a_classifier_with_zipmap_outputs_attaches_dicts() -> None:
    """skl2onnx's default classifier output is a sequence of {class: probability} maps."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y = _train_data(0)
    onx = to_onnx(LogisticRegression().fit(x, y), x[:1])
    model = OnnxModel(onx.SerializeToString(), version="lr", intra_op_threads=1)
    events = _events(5, ["a"])
    oks, errs, _ = _run(events, model=model, max_batch=4)
    assert errs == [] and len(oks) == 5
    for _, e in oks:
        proba = e["output_probability"]
        assert set(proba) == {0, 1} and abs(sum(proba.values()) - 1) < 1e-5
        assert e["output_label"] == max(proba, key=proba.get)
