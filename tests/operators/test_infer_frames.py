"""The inference operator on polars frames: the model's own scores, columns added in order, bad rows isolated."""

from __future__ import annotations

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
from streamml.operators.infer import infer

from streamml.errors import Rejected
from streamml.models import CallableModel, OnnxModel, TensorSpec

N_FEATURES = 16
COLUMNS = [f"f{j}" for j in range(N_FEATURES)]


def _mlp_bytes(seed: int) -> bytes:
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, N_FEATURES)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] * (seed + 1) > 0).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged: fine, any fixed weights will do
        mlp = MLPClassifier(hidden_layer_sizes=(16, 16), max_iter=20, random_state=seed).fit(x, y)
    return to_onnx(mlp, x[:1], options={id(mlp): {"zipmap": False}}).SerializeToString()


@pytest.fixture(scope="module")
def mlp_v1() -> bytes:
    return _mlp_bytes(1)


@pytest.fixture(scope="module")
def mlp_v2() -> bytes:
    return _mlp_bytes(2)


@pytest.fixture(scope="module")
def mlp(mlp_v1: bytes) -> OnnxModel:
    return OnnxModel(mlp_v1, version="v1", intra_op_threads=1)


def _frame(n: int, *, start: int = 0, keys: int = 5, seed: int = 0) -> pl.DataFrame:
    x = np.random.default_rng(seed).normal(size=(n, N_FEATURES)).astype(np.float32)
    return pl.DataFrame(
        {
            "key": [f"k{(start + i) % keys}" for i in range(n)],
            "id": np.arange(start, start + n),
            **{c: x[:, j] for j, c in enumerate(COLUMNS)},
        }
    )


def _frames(sizes: list[int], seed: int = 0) -> list[pl.DataFrame]:
    out, start = [], 0
    for i, size in enumerate(sizes):
        out.append(_frame(size, start=start, seed=seed + i))
        start += size
    return out


def _run(inp: list[Any], model: Any, **kwargs: Any) -> tuple[list, list, Any]:
    flow = Dataflow("t")
    batch_size = kwargs.pop("source_batch", 1000)
    control = kwargs.pop("control_items", None)
    up = op.input("in", flow, TestingSource(inp, batch_size=batch_size))
    if control is not None:
        kwargs["control"] = op.input("control", flow, TestingSource(control))
    out = infer("infer", up, model, **kwargs)
    oks: list = []
    errs: list = []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    return oks, errs, out.stats


def _matrix(frame: pl.DataFrame) -> np.ndarray:
    return frame.select(COLUMNS).to_numpy().astype(np.float32)


def _all(oks: list[pl.DataFrame]) -> pl.DataFrame:
    assert all(isinstance(f, pl.DataFrame) and f.height > 0 for f in oks)  # frames, never empty
    return pl.concat(oks)


# -- the model's own scores, attached as columns -------------------------------------------


def test_frame_scores_equal_the_model_on_the_same_matrix(mlp: OnnxModel) -> None:
    frame = _frame(300)
    oks, errs, stats = _run([frame], mlp, inputs=COLUMNS, max_batch=1024)
    assert errs == []
    [out] = oks
    expected = mlp.predict(_matrix(frame))
    # The input columns as they were, then one column per model output, then the version.
    assert out.columns == [*frame.columns, "label", "probabilities", "model_version"]
    assert out.select(frame.columns).equals(frame)
    assert out.schema["probabilities"] == pl.Array(pl.Float32, 2)
    assert np.array_equal(out["label"].to_numpy(), expected["label"])
    assert np.array_equal(out["probabilities"].to_numpy(), expected["probabilities"])
    assert out["model_version"].unique().to_list() == ["v1"]
    assert stats.scored == 300 and stats.batches == 1


def test_an_array_column_and_an_input_function_give_the_same_scores(mlp: OnnxModel) -> None:
    frame = _frame(50)
    vectors = frame.with_columns(pl.Series("features", _matrix(frame))).drop(COLUMNS)
    assert vectors.schema["features"] == pl.Array(pl.Float32, N_FEATURES)
    by_array, errs1, _ = _run([vectors], mlp)  # the default inputs="features"
    by_fn, errs2, _ = _run([frame], mlp, inputs=lambda f: f.select(COLUMNS).to_numpy())
    by_dict, errs3, _ = _run([frame], mlp, inputs={"X": COLUMNS})
    assert errs1 == errs2 == errs3 == []
    expected = mlp.predict(_matrix(frame))["probabilities"]
    for oks in (by_array, by_fn, by_dict):
        assert np.array_equal(_all(oks)["probabilities"].to_numpy(), expected)


def test_outputs_spec_picks_columns_and_a_function_builds_the_frame(mlp: OnnxModel) -> None:
    frame = _frame(40)
    expected = mlp.predict(_matrix(frame))["probabilities"]
    oks, _, _ = _run(
        [frame], mlp, inputs=COLUMNS, outputs={"p_hot": ("probabilities", 1), "label": "cls"}
    )
    out = _all(oks)
    assert out.columns == [*frame.columns, "p_hot", "cls", "model_version"]
    assert np.array_equal(out["p_hot"].to_numpy(), expected[:, 1])

    def attach(f: pl.DataFrame, outs: dict[str, np.ndarray]) -> pl.DataFrame:
        return f.select("id").with_columns(hot=outs["probabilities"][:, 1] > 0.5)

    oks, errs, _ = _run([frame], mlp, inputs=COLUMNS, outputs=attach, version_field="by")
    out = _all(oks)
    assert errs == [] and out.columns == ["id", "hot", "by"]
    assert out["hot"].to_list() == (expected[:, 1] > 0.5).tolist()


def test_wait_field_is_a_column_of_seconds(mlp: OnnxModel) -> None:
    oks, _, _ = _run(
        _frames([3, 4]), mlp, inputs=COLUMNS, wait_field="waited", max_wait=timedelta(seconds=5)
    )
    out = _all(oks)
    assert out.schema["waited"] == pl.Float64 and out.height == 7
    assert all(0.0 <= w < 5.0 for w in out["waited"].to_list())


def test_outputs_function_raising_rejects_the_batch_rows(mlp: OnnxModel) -> None:
    def broken(f: pl.DataFrame, outs: dict) -> pl.DataFrame:
        raise KeyError("nope")

    oks, errs, stats = _run([_frame(5)], mlp, inputs=COLUMNS, outputs=broken)
    assert oks == [] and [r.error_type for r in errs] == ["OutputError"] * 5
    assert [r.original["id"] for r in errs] == list(range(5))
    assert stats.rejected == 5 and stats.scored == 0


# -- batching: joined, sliced, order kept, results unchanged -------------------------------


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 70), min_size=1, max_size=8),
    max_batch=st.integers(1, 64),
    source_batch=st.integers(1, 4),
    max_wait_ms=st.sampled_from([0, 2, 10_000]),
)
def test_joining_and_slicing_at_max_batch_give_identical_results(
    mlp: OnnxModel, sizes: list[int], max_batch: int, source_batch: int, max_wait_ms: int
) -> None:
    frames = _frames(sizes)
    whole = pl.concat(frames)
    oks, errs, stats = _run(
        frames,
        mlp,
        inputs=COLUMNS,
        max_batch=max_batch,
        max_wait=timedelta(milliseconds=max_wait_ms),
        source_batch=source_batch,
    )
    assert errs == []
    out = _all(oks)
    assert all(f.height <= max_batch for f in oks)  # one frame per model call
    assert out["id"].to_list() == whole["id"].to_list()  # none lost, none twice, in order
    assert out.select(whole.columns).equals(whole)
    expected = mlp.predict(_matrix(whole))
    assert np.array_equal(out["probabilities"].to_numpy(), expected["probabilities"])
    assert np.array_equal(out["label"].to_numpy(), expected["label"])
    n = whole.height
    assert stats.scored == n and stats.batches >= -(-n // max_batch)
    if (
        max_wait_ms == 10_000
    ):  # everything waits for company: full batches only, joined across frames
        assert stats.batches == -(-n // max_batch)
        assert [f.height for f in oks[:-1]] == [max_batch] * (len(oks) - 1)


def test_frames_of_two_schemas_are_not_joined(mlp: OnnxModel) -> None:
    a = _frame(3)
    b = _frame(4, start=3).with_columns(pl.col("id").cast(pl.Int32), extra=pl.lit("x"))
    oks, errs, stats = _run([a, b], mlp, inputs=COLUMNS, max_wait=timedelta(seconds=10))
    assert errs == [] and [f.height for f in oks] == [3, 4] and stats.batches == 2
    assert "extra" not in oks[0].columns and oks[1]["extra"].to_list() == ["x"] * 4


def test_rows_and_frames_in_one_stream_each_come_back_as_they_came(mlp: OnnxModel) -> None:
    frame = _frame(6)
    rows = [
        (k, {"id": i, "features": v})
        for k, i, v in zip(frame["key"], frame["id"], _matrix(frame), strict=True)
    ]
    oks, errs, _ = _run([frame, *rows], mlp, inputs="features", max_wait=timedelta(0))
    # The frame has no "features" column: its rows are rejected; the events are scored.
    assert [r.error_type for r in errs] == ["MissingInput"] * 6
    assert all(isinstance(r.original, dict) for r in errs)
    assert [e["id"] for _, e in oks] == list(range(6))
    oks, errs, _ = _run([*rows[:3], frame, *rows[3:]], mlp, inputs={"X": "features"})
    assert len(errs) == 6 and [e["id"] for _, e in oks] == list(range(6))


# -- bad rows are rejected, the others scored ------------------------------------------------


def test_invalid_rows_are_rejected_and_the_others_scored(mlp: OnnxModel) -> None:
    frame = _frame(10).with_columns(
        f0=pl.when(pl.col("id") == 2).then(None).otherwise(pl.col("f0")),
        f3=pl.when(pl.col("id") == 5).then(float("nan")).otherwise(pl.col("f3")),
        f7=pl.when(pl.col("id") == 8).then(float("inf")).otherwise(pl.col("f7")),
    )
    oks, errs, stats = _run([frame], mlp, inputs=COLUMNS, max_batch=4)
    out = _all(oks)
    good = frame.filter(~pl.col("id").is_in([2, 5, 8]))
    assert out["id"].to_list() == good["id"].to_list()
    expected = mlp.predict(_matrix(good))["probabilities"]
    assert np.array_equal(out["probabilities"].to_numpy(), expected)
    by_id = {r.original["id"]: r for r in errs}
    assert sorted(by_id) == [2, 5, 8]
    assert [by_id[i].error_type for i in (2, 5, 8)] == ["MissingInput", "NonFinite", "NonFinite"]
    assert "f0" in by_id[2].reason
    assert by_id[8].original == frame.row(8, named=True)  # the whole row, as a dict
    assert all(isinstance(r, Rejected) and r.step_id == "t.infer" for r in errs)
    assert stats.rejected == 3 and stats.scored == 7


def test_wrong_dtype_shape_and_missing_columns_reject_every_row(mlp: OnnxModel) -> None:
    frame = _frame(4)
    as_text = frame.with_columns(pl.col("f3").cast(pl.String))
    _, errs, _ = _run([as_text], mlp, inputs=COLUMNS)
    assert [r.error_type for r in errs] == ["BadDtype"] * 4 and "f3" in errs[0].reason
    _, errs, _ = _run([frame.drop("f9")], mlp, inputs=COLUMNS)
    assert [r.error_type for r in errs] == ["MissingInput"] * 4 and "f9" in errs[0].reason
    ragged = pl.DataFrame({"id": [0, 1, 2], "features": [[0.5] * N_FEATURES, [0.5] * 3, None]})
    oks, errs, _ = _run([ragged], mlp)
    assert [(r.original["id"], r.error_type) for r in errs] == [
        (1, "BadShape"),
        (2, "MissingInput"),
    ]
    assert _all(oks)["id"].to_list() == [0]
    _, errs, _ = _run([frame], mlp, inputs=lambda f: 1 / 0)
    assert [r.error_type for r in errs] == ["InputError"] * 4
    assert "ZeroDivisionError" in errs[0].reason


def test_model_raising_on_rows_of_a_frame_splits_the_batch() -> None:
    calls: list[int] = []

    def fragile(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        if (x[:, 0] == 13).any():
            raise RuntimeError("cannot score 13")
        return x[:, 0] * 2

    model = CallableModel(fragile, outputs="y", shape=(2,))
    frame = pl.DataFrame({"a": np.arange(40.0), "b": np.zeros(40)})
    oks, errs, stats = _run([frame], model, inputs=["a", "b"], max_batch=16)
    out = _all(oks)
    assert out["a"].to_list() == [float(i) for i in range(40) if i != 13]
    assert out["y"].to_list() == [2 * a for a in out["a"].to_list()]
    assert [(r.error_type, r.original["a"]) for r in errs] == [("ModelError", 13.0)]
    assert stats.model_errors == 1 and len(calls) < 40


def test_a_multi_input_model_reads_its_columns_by_name() -> None:
    spec = TensorSpec(np.dtype("float32"), (None,))
    model = CallableModel(
        lambda feeds: feeds["a"].sum(axis=1) + feeds["b"][:, 0],
        inputs={"a": spec, "b": spec},
        outputs="s",
    )
    frame = pl.DataFrame({"x1": [1.0, 2.0], "x2": [10.0, 20.0], "y": [100.0, None]})
    oks, errs, _ = _run([frame], model, inputs={"a": ["x1", "x2"], "b": "y"})
    assert _all(oks)["s"].to_list() == [111.0]
    assert [r.error_type for r in errs] == ["MissingInput"]
    both = lambda f: {"a": f.select("x1", "x2").to_numpy(), "b": f.select("x2").to_numpy()}  # noqa: E731
    oks, _, _ = _run([frame], model, inputs=both)
    assert _all(oks)["s"].to_list() == [21.0, 42.0]


# -- keys and shards --------------------------------------------------------------------------


def test_shards_route_frames_by_key_and_a_bad_key_is_rejected_not_a_crash(mlp: OnnxModel) -> None:
    frames = _frames([30, 25, 40])
    with_null = frames[1].with_columns(
        key=pl.when(pl.col("id") == 35).then(None).otherwise(pl.col("key"))
    )
    frames[1] = with_null
    oks, errs, stats = _run(frames, mlp, inputs=COLUMNS, key="key", shards=3, max_batch=8)
    assert [(r.error_type, r.original["id"]) for r in errs] == [("BadKey", 35)]
    out = _all(oks)
    whole = pl.concat(frames).filter(pl.col("id") != 35)
    assert sorted(out["id"].to_list()) == whole["id"].to_list()
    for k in whole["key"].unique().to_list():  # each key's rows in their order
        assert (
            out.filter(pl.col("key") == k)["id"].to_list()
            == whole.filter(pl.col("key") == k)["id"].to_list()
        )
    scored = out.sort("id")
    expected = mlp.predict(_matrix(whole))["probabilities"]
    assert np.array_equal(scored["probabilities"].to_numpy(), expected)
    assert stats.rejected == 1
    # No key column, or no key= at all: every row is a BadKey, the dataflow goes on.
    _, errs, _ = _run(frames[:1], mlp, inputs=COLUMNS, key="sensor", shards=2)
    assert [r.error_type for r in errs] == ["BadKey"] * 30
    _, errs, _ = _run(frames[:1], mlp, inputs=COLUMNS, shards=2)
    assert [r.error_type for r in errs] == ["BadKey"] * 30 and "key=" in errs[0].reason


def test_rows_with_a_bad_key_or_no_pair_are_rejected_with_shards(mlp: OnnxModel) -> None:
    x = _matrix(_frame(4))
    events: list[Any] = [("a", {"id": 0, "features": x[0]}), (None, {"id": 1, "features": x[1]})]
    events += [(3.5, {"id": 2, "features": x[2]}), {"id": 3}, (7, {"id": 4, "features": x[3]})]
    oks, errs, _ = _run(events, mlp, shards=2)
    assert [r.error_type for r in errs] == ["BadKey", "BadKey", "BadItem"]
    assert sorted(e["id"] for _, e in oks) == [0, 4]  # an integer key is a key


# -- swaps and recovery --------------------------------------------------------------------


def test_a_model_swap_applies_to_frames_between_batches(mlp_v1: bytes, mlp_v2: bytes) -> None:
    v1 = OnnxModel(mlp_v1, version="v1", intra_op_threads=1)
    v2 = OnnxModel(mlp_v2, version="v2", intra_op_threads=1)
    frames = _frames([20, 10, 15, 15])
    source = [*frames[:2], TestingSource.PAUSE(timedelta(seconds=0.6)), *frames[2:]]
    control = [TestingSource.PAUSE(timedelta(seconds=0.3)), v2]
    oks, errs, stats = _run(
        source,
        v1,
        inputs=COLUMNS,
        key="key",
        shards=2,
        control_items=control,
        max_wait=timedelta(milliseconds=2),
        source_batch=1,
    )
    assert errs == [] and stats.swaps == 1
    out = _all(oks).sort("id")
    assert out["id"].to_list() == list(range(60))
    for model, ids in ((v1, range(30)), (v2, range(30, 60))):
        part = out.filter(pl.col("id").is_in(list(ids)))
        assert part["model_version"].unique().to_list() == [model.version]
        expected = model.predict(_matrix(part))["probabilities"]
        assert np.array_equal(part["probabilities"].to_numpy(), expected)


def test_recovery_keeps_waiting_frames_and_the_swapped_model(
    tmp_path: Path, mlp_v1: bytes, mlp_v2: bytes
) -> None:
    from bytewax.recovery import RecoveryConfig, init_db_dir

    init_db_dir(tmp_path, 1)
    v1 = OnnxModel(mlp_v1, version="v1", intra_op_threads=1)
    frames = _frames([6, 4, 5])
    data = [
        *frames[:2],
        TestingSource.PAUSE(timedelta(seconds=0.3)),  # an epoch closes: a snapshot
        TestingSource.ABORT(),
        frames[2],
    ]

    def build() -> tuple[Dataflow, list, list]:
        flow = Dataflow("rec_frames")
        up = op.input("in", flow, TestingSource(data, batch_size=100))
        control = op.input("control", flow, TestingSource([mlp_v2]))
        out = infer(
            "infer", up, v1, inputs=COLUMNS, control=control, max_wait=timedelta(seconds=60)
        )
        oks: list = []
        errs: list = []
        op.output("oks", out.oks, TestingSink(oks))
        op.output("errs", out.errs, TestingSink(errs))
        return flow, oks, errs

    config = RecoveryConfig(str(tmp_path))
    flow, oks, errs = build()
    run_main(flow, epoch_interval=timedelta(milliseconds=50), recovery_config=config)
    assert oks == [] and errs == []  # the first two frames were waiting at the abort
    flow, oks, errs = build()
    run_main(flow, epoch_interval=timedelta(milliseconds=50), recovery_config=config)
    assert errs == []
    out = _all(oks)
    assert out["id"].to_list() == list(range(15))
    v2 = OnnxModel(mlp_v2, warmup=False)
    assert out["model_version"].unique().to_list() == [v2.version]
    expected = v2.predict(_matrix(pl.concat(frames)))["probabilities"]
    assert np.array_equal(out["probabilities"].to_numpy(), expected)


def test_a_snapshot_is_a_versioned_plain_record(mlp: OnnxModel) -> None:
    from streamml.operators._core.state import frame_from_bytes, restore
    from streamml.operators.infer import operator as infer_op
    from streamml.operators.infer.recovery import restore_record

    cfg_flow = Dataflow("snap")
    up = op.input("in", cfg_flow, TestingSource([]))
    infer("infer", up, mlp, inputs=COLUMNS)  # builds without running
    served = infer_op.serve(mlp, COLUMNS, None, "model.onnx")
    cfg = infer_op._Config(
        step_id="s",
        inputs=COLUMNS,
        outputs=None,
        version_field="model_version",
        wait_field=None,
        max_batch=100,
        max_wait_s=60.0,
        overlap=False,
        watch=None,
        watch_interval_s=1.0,
        watch_initial=None,
        loader=infer_op.Loader(infer_op.default_loader),
        stats=infer_op.InferStats(),
    )
    frame = _frame(3)
    row = ("k", {"id": 9, "features": [0.0] * N_FEATURES})
    logic = infer_op._InferLogic(cfg, served, [frame, [row]])
    record = logic.snapshot()
    assert set(record) == {"state", "version", "data"}
    assert (record["state"], record["version"]) == ("streamml.infer", 1)
    data = restore(record, kind="streamml.infer", version=1)
    assert data["source"] == "model.onnx"
    assert frame_from_bytes(data["pending"][0]["frame"]).equals(frame)
    assert data["pending"][1] == {"rows": [row]}
    parts, source = restore_record(record)
    assert parts[0].equals(frame) and parts[1] == [row] and source == "model.onnx"
