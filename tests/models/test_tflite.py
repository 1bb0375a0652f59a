"""TfliteModel: a real .tflite file, written by LiteRT's own flatbuffer schema, scored in batches.

The model is a softmax regression trained by scikit-learn on data the test
generates, written as a TF Lite graph (FULLY_CONNECTED then SOFTMAX) with the
object API that ships in the ai-edge-litert wheel (``schema_py_generated``),
so LiteRT runs the same kernels it runs for a converted network. Its scores
are checked against the source model's own ``predict_proba``.
"""

from __future__ import annotations

import pickle
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from streamml.models import Model, ModelInputError, TensorSpec

pytest.importorskip("ai_edge_litert")

from streamml.models.tflite import TfliteModel  # noqa: E402


def softmax_regression_tflite(weights: np.ndarray, bias: np.ndarray) -> bytes:
    """A .tflite model computing ``softmax(x @ weights.T + bias)`` for a batch ``x``."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as tfl

    classes, features = weights.shape

    def tensor(name: str, shape: list[int], buffer: int, signature: list[int] | None = None):
        t = tfl.TensorT()
        t.name, t.shape, t.buffer, t.type = name, shape, buffer, tfl.TensorType.FLOAT32
        t.shapeSignature = signature
        return t

    def buffer(data: np.ndarray | None):
        b = tfl.BufferT()
        if data is not None:
            b.data = np.frombuffer(np.ascontiguousarray(data, dtype="<f4").tobytes(), np.uint8)
        return b

    def opcode(code: int):
        c = tfl.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = code, min(code, 127), 1
        return c

    def op(index: int, ins: list[int], outs: list[int], kind: int, options):
        o = tfl.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = index, ins, outs
        o.builtinOptionsType, o.builtinOptions = kind, options
        return o

    softmax = tfl.SoftmaxOptionsT()
    softmax.beta = 1.0
    graph = tfl.SubGraphT()
    graph.tensors = [
        tensor("features", [1, features], 0, [-1, features]),
        tensor("weights", [classes, features], 1),
        tensor("bias", [classes], 2),
        tensor("logits", [1, classes], 0, [-1, classes]),
        tensor("probabilities", [1, classes], 0, [-1, classes]),
    ]
    graph.inputs, graph.outputs = [0], [4]
    graph.operators = [
        op(
            0,
            [0, 1, 2],
            [3],
            tfl.BuiltinOptions.FullyConnectedOptions,
            tfl.FullyConnectedOptionsT(),
        ),
        op(1, [3], [4], tfl.BuiltinOptions.SoftmaxOptions, softmax),
    ]
    model = tfl.ModelT()
    model.version, model.description = 3, "softmax regression"
    model.operatorCodes = [
        opcode(tfl.BuiltinOperator.FULLY_CONNECTED),
        opcode(tfl.BuiltinOperator.SOFTMAX),
    ]
    model.subgraphs = [graph]
    model.buffers = [buffer(None), buffer(weights), buffer(bias)]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.fixture(scope="module")
def trained() -> tuple[bytes, object, np.ndarray]:
    """(tflite bytes, the scikit-learn model it was written from, held-out rows)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    centres = rng.normal(scale=3.0, size=(3, 4))
    labels = rng.integers(0, 3, size=600)
    x = (centres[labels] + rng.normal(size=(600, 4))).astype(np.float32)
    clf = LogisticRegression(max_iter=500).fit(x[:400], labels[:400])
    data = softmax_regression_tflite(clf.coef_.astype(np.float32), clf.intercept_)
    return data, clf, x[400:]


def test_scores_match_the_source_model_in_batches_of_any_size(trained) -> None:
    data, clf, held_out = trained
    model = TfliteModel(data, num_threads=1)
    assert isinstance(model, Model)
    assert model.inputs == {"features": TensorSpec(np.dtype("float32"), (4,))}
    assert model.outputs == ("probabilities",)
    expected = clf.predict_proba(held_out)
    for size in (1, 7, 200, 3):  # the input is resized to each batch, back and forth
        out = model.predict(held_out[:size].astype(np.float64))  # float64 is cast
        assert out["probabilities"].shape == (size, 3)
        np.testing.assert_allclose(out["probabilities"], expected[:size], atol=1e-5)
    assert (out["probabilities"].argmax(axis=1) == clf.predict(held_out[:3])).all()


def test_loads_from_a_path_with_a_content_version_and_survives_pickling(
    trained, tmp_path: Path
) -> None:
    data, clf, held_out = trained
    path = tmp_path / "classifier.tflite"
    path.write_bytes(data)
    model = TfliteModel(path, output_names={"probabilities": "proba"})
    assert model.version.startswith("classifier@") and len(model.version) == len("classifier@") + 8
    copy = pickle.loads(pickle.dumps(model))
    assert copy.version == model.version and copy.outputs == ("proba",)
    np.testing.assert_allclose(
        copy.predict(held_out[:5])["proba"], clf.predict_proba(held_out[:5]), atol=1e-5
    )


def test_bad_files_names_and_batches_are_refused_with_reasons(trained, tmp_path: Path) -> None:
    data, _, _ = trained
    with pytest.raises(ValueError, match="cannot load TF Lite model"):
        TfliteModel(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read TF Lite model"):
        TfliteModel(tmp_path / "missing.tflite")
    with pytest.raises(ValueError, match="does not have"):
        TfliteModel(data, input_names={"x": "nope"})
    with pytest.raises(ValueError, match="does not output"):
        TfliteModel(data, output_names={"nope": "y"})
    with pytest.raises(ValueError, match="num_threads"):
        TfliteModel(data, num_threads=0)
    model = TfliteModel(data, input_names={"x": "features"})
    with pytest.raises(ModelInputError, match=r"shape \(4,\); got \(3,\)"):
        model.predict(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ModelInputError, match="expected float32"):
        model.predict({"x": np.array([["a"] * 4])})


def test_infer_scores_a_stream_with_it(trained) -> None:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main
    from streamml.operators.infer import infer

    data, clf, held_out = trained
    rows = [(str(i % 3), {"features": held_out[i].tolist()}) for i in range(40)]
    rows.insert(5, ("0", {"features": [1.0, 2.0]}))  # wrong shape: an error record, not a crash
    flow = Dataflow("tflite_infer")
    out = infer(
        "score",
        op.input("in", flow, TestingSource(rows, batch_size=16)),
        TfliteModel(data),
        inputs="features",
        max_wait=timedelta(milliseconds=5),
    )
    oks, errs = [], []
    op.output("oks", out.oks, TestingSink(oks))
    op.output("errs", out.errs, TestingSink(errs))
    run_main(flow)
    assert len(oks) == 40 and len(errs) == 1
    got = np.array([event["probabilities"] for _, event in oks])
    want = clf.predict_proba(np.array([event["features"] for _, event in oks], dtype=np.float32))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_calls_from_several_threads_each_get_their_own_batch_scored(trained) -> None:
    from concurrent.futures import ThreadPoolExecutor

    data, clf, held_out = trained
    model = TfliteModel(data, num_threads=1)
    expected = clf.predict_proba(held_out)
    sizes = [1 + (i * 37) % 150 for i in range(64)]  # a different batch size almost every call
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda n: model.predict(held_out[:n])["probabilities"], sizes))
    for n, out in zip(sizes, outs):
        np.testing.assert_allclose(out, expected[:n], atol=1e-5)
