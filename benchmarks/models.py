"""Model formats: ``PmmlModel`` and ``TfliteModel`` next to ``OnnxModel`` and their own runtimes.

Rows scored per second, one process, one thread a runtime, one call per
batch, at batches of 1 row (a stream's worst case) and of 256 rows.
Every contender of a table scores the same rows with the same model (the
scores are checked to agree first), alternating rounds of a fixed time each:

- PMML: an 8-tree, depth-4 random forest over 3 fields (scikit-learn,
  written as PMML by nyoka): ``PmmlModel``; JPMML-Evaluator used as its
  documentation shows (``evaluator.evaluateAll`` on a pandas DataFrame,
  ``parallelism=1`` as ``PmmlModel``'s default); the same forest converted
  by skl2onnx and run by ``OnnxModel``.
- TF Lite: a softmax regression over 4 features (3 classes) and an MLP
  16→64→64→3 (ReLU), trained by scikit-learn and written as ``.tflite``
  files with the flatbuffer schema LiteRT ships: ``TfliteModel``; LiteRT's
  ``Interpreter`` used directly (input resized once to the batch, then
  ``set_tensor``, ``invoke``, ``get_tensor`` per batch); the same model
  converted by skl2onnx and run by ``OnnxModel``.

    python -m benchmarks.models [--quick]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import alternate, format_table, per_cpu_second, with_cpu_rates
from streamml.models import OnnxModel, PmmlModel
from streamml.models.tflite import TfliteModel

BATCHES = (1, 256)
FOREST_FIELDS = ("amount", "age", "hour")


def _for_a_while(call: Callable[[np.ndarray], Any], batch: np.ndarray, seconds: float) -> Any:
    """A zero-argument run for the harness: ``call(batch)`` again and again for ``seconds``,
    returning the rows scored."""

    def run() -> int:
        rows = 0
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            call(batch)
            rows += len(batch)
        return rows

    return run


def _race(
    title: str,
    calls: dict[str, Callable[[np.ndarray], Any]],
    x: np.ndarray,
    quick: bool,
    warm_up: float,
) -> dict[str, Any]:
    """Each call at each batch size of ``BATCHES``, alternating; a table per batch size.

    Each contender first runs alone for ``warm_up`` seconds (a JVM compiles
    its hot paths only after thousands of calls).
    """
    seconds, rounds = (0.1, 3) if quick else (0.3, 5)
    out = {}
    for size in BATCHES:
        for call in calls.values():
            _for_a_while(call, x[:size], warm_up)()
        contenders = {name: _for_a_while(call, x[:size], seconds) for name, call in calls.items()}
        runs, cpu = with_cpu_rates(contenders)
        results = alternate(runs, rounds=rounds, warmup=False)
        per_cpu = per_cpu_second(results, cpu)
        table = f"{title}, batches of {size}"
        print(format_table(table + " (wall clock)", results, unit="rows/s"), flush=True)
        print(format_table(table + " (per CPU-second)", per_cpu, unit="rows/cpu-s"), flush=True)
        out[f"batch {size}"] = {
            "results": [m.as_dict() for m in results],
            "results_per_cpu_second": [m.as_dict() for m in per_cpu],
        }
    return out


# -- PMML ---------------------------------------------------------------------


def _forest(directory: Path) -> tuple[Path, bytes, np.ndarray]:
    """(a PMML file of a random forest, the same forest as ONNX, rows to score)."""
    import pandas as pd
    from nyoka import skl_to_pmml
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline

    rng = np.random.default_rng(0)
    x = np.column_stack(
        [rng.exponential(50.0, 2000), rng.integers(18, 80, 2000), rng.integers(0, 24, 2000)]
    ).astype(np.float64)
    y = ((x[:, 0] > 60) & ((x[:, 2] < 6) | (x[:, 1] < 30))).astype(int)
    y ^= rng.random(2000) < 0.05
    forest = RandomForestClassifier(n_estimators=8, max_depth=4, random_state=0)
    pipeline = Pipeline([("forest", forest)]).fit(pd.DataFrame(x, columns=FOREST_FIELDS), y)
    path = directory / "forest.pmml"
    skl_to_pmml(pipeline, list(FOREST_FIELDS), "label", str(path))
    onnx = to_onnx(forest, x[:1].astype(np.float32), options={"zipmap": False})
    return path, onnx.SerializeToString(), x


def pmml(quick: bool) -> dict[str, Any]:
    """The forest scored by ``PmmlModel``, by JPMML-Evaluator directly and by ``OnnxModel``."""
    import pandas as pd
    from jpmml_evaluator import make_evaluator

    with tempfile.TemporaryDirectory() as tmp:
        path, onnx_bytes, x = _forest(Path(tmp))
        ours = PmmlModel(path, vector="features")
        evaluator = make_evaluator(str(path)).verify()
    onnx = OnnxModel(onnx_bytes, intra_op_threads=1)

    def direct(batch: np.ndarray) -> Any:
        frame = pd.DataFrame(batch, columns=FOREST_FIELDS)
        return evaluator.evaluateAll(frame, parallelism=1)

    calls = {
        "PmmlModel": lambda b: ours.predict(b)["probability_1"],
        "JPMML-Evaluator evaluateAll (pandas)": lambda b: direct(b)["probability_1"],
        "OnnxModel (the forest by skl2onnx)": lambda b: onnx.predict(b.astype(np.float32)),
    }
    want = ours.predict(x[:256])["probability_1"].astype(np.float64)
    np.testing.assert_allclose(direct(x[:256])["probability_1"].to_numpy(), want, atol=1e-9)
    probabilities = next(
        v for v in onnx.predict(x[:256].astype(np.float32)).values() if v.ndim == 2
    )
    np.testing.assert_allclose(probabilities[:, 1], want, atol=1e-5)
    print("models: PMML, JPMML and ONNX agree on 256 rows; timing ...", flush=True)
    return _race("8-tree random forest, 3 fields", calls, x, quick, 0.5 if quick else 2.0)


# -- TF Lite ------------------------------------------------------------------


def dense_tflite(layers: list[tuple[np.ndarray, np.ndarray, bool]]) -> bytes:
    """A ``.tflite`` model of FULLY_CONNECTED layers then SOFTMAX, any batch size.

    Each layer is ``(weights (out, in), bias (out,), relu)``; the input tensor is
    ``features``, the output ``probabilities``.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as tfl

    tensors, buffers, operators = [], [tfl.BufferT()], []

    def add_tensor(name: str, shape: list[int], data: np.ndarray | None = None) -> int:
        t = tfl.TensorT()
        t.name, t.type, t.buffer = name, tfl.TensorType.FLOAT32, 0
        t.shape = [1, *shape[1:]] if data is None else shape
        t.shapeSignature = [-1, *shape[1:]] if data is None else None
        if data is not None:
            b = tfl.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data, dtype="<f4").tobytes(), np.uint8)
            buffers.append(b)
            t.buffer = len(buffers) - 1
        tensors.append(t)
        return len(tensors) - 1

    def add_op(code: int, ins: list[int], out: int, kind: int, options: Any) -> None:
        o = tfl.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = code, ins, [out]
        o.builtinOptionsType, o.builtinOptions = kind, options
        operators.append(o)

    current = add_tensor("features", [-1, layers[0][0].shape[1]])
    for i, (weights, bias, relu) in enumerate(layers):
        options = tfl.FullyConnectedOptionsT()
        if relu:
            options.fusedActivationFunction = tfl.ActivationFunctionType.RELU
        w = add_tensor(f"w{i}", list(weights.shape), weights)
        b = add_tensor(f"b{i}", list(bias.shape), bias)
        out = add_tensor(f"dense{i}", [-1, weights.shape[0]])
        add_op(0, [current, w, b], out, tfl.BuiltinOptions.FullyConnectedOptions, options)
        current = out
    softmax = tfl.SoftmaxOptionsT()
    softmax.beta = 1.0
    probabilities = add_tensor("probabilities", [-1, layers[-1][0].shape[0]])
    add_op(1, [current], probabilities, tfl.BuiltinOptions.SoftmaxOptions, softmax)
    graph = tfl.SubGraphT()
    graph.tensors, graph.operators = tensors, operators
    graph.inputs, graph.outputs = [0], [probabilities]
    codes = []
    for builtin in (tfl.BuiltinOperator.FULLY_CONNECTED, tfl.BuiltinOperator.SOFTMAX):
        c = tfl.OperatorCodeT()
        c.builtinCode, c.deprecatedBuiltinCode, c.version = builtin, min(builtin, 127), 1
        codes.append(c)
    model = tfl.ModelT()
    model.version, model.description = 3, "dense layers, softmax"
    model.operatorCodes, model.subgraphs, model.buffers = codes, [graph], buffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _classifiers() -> dict[str, tuple[bytes, bytes, np.ndarray]]:
    """``{name: (tflite bytes, onnx bytes, rows)}``: a softmax regression and an MLP."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(7)
    out = {}
    for name, features in (("softmax regression, 4 features", 4), ("MLP 16-64-64-3", 16)):
        centres = rng.normal(scale=3.0, size=(3, features))
        labels = rng.integers(0, 3, size=2000)
        x = (centres[labels] + rng.normal(size=(2000, features))).astype(np.float32)
        if features == 4:
            clf: Any = LogisticRegression(max_iter=500).fit(x, labels)
            layers = [(clf.coef_, clf.intercept_, False)]
        else:
            with warnings.catch_warnings():  # a benchmark model: convergence does not matter
                warnings.simplefilter("ignore")
                clf = MLPClassifier((64, 64), max_iter=10, random_state=0).fit(x, labels)
            layers = [
                (w.T, b, i < len(clf.coefs_) - 1)
                for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_, strict=True))
            ]
        onnx = to_onnx(clf, x[:1], options={"zipmap": False}).SerializeToString()
        out[name] = (dense_tflite(layers), onnx, x)
    return out


def tflite(quick: bool) -> dict[str, Any]:
    """Each classifier scored by ``TfliteModel``, by LiteRT directly and by ``OnnxModel``."""
    from ai_edge_litert.interpreter import Interpreter

    out = {}
    for name, (tflite_bytes, onnx_bytes, x) in _classifiers().items():
        ours = TfliteModel(tflite_bytes, num_threads=1)
        onnx = OnnxModel(onnx_bytes, intra_op_threads=1)
        interpreter = Interpreter(model_content=tflite_bytes, num_threads=1)
        (inp,) = interpreter.get_input_details()
        (res,) = interpreter.get_output_details()
        shape = [0]

        def direct(batch: np.ndarray, interp: Any = interpreter, inp=inp, res=res, shape=shape):
            if shape[0] != len(batch):  # a user sizes the input once per batch size
                interp.resize_tensor_input(inp["index"], list(batch.shape))
                interp.allocate_tensors()
                shape[0] = len(batch)
            interp.set_tensor(inp["index"], batch)
            interp.invoke()
            return interp.get_tensor(res["index"])

        calls = {
            "TfliteModel": lambda b, m=ours: m.predict(b),
            "LiteRT Interpreter": direct,
            "OnnxModel (the model by skl2onnx)": lambda b, m=onnx: m.predict(b),
        }
        want = direct(x[:256])
        np.testing.assert_allclose(ours.predict(x[:256])["probabilities"], want, atol=1e-6)
        probabilities = next(v for v in onnx.predict(x[:256]).values() if v.ndim == 2)
        np.testing.assert_allclose(probabilities, want, atol=1e-4)
        print(f"models: {name}: TF Lite, LiteRT and ONNX agree on 256 rows; timing ...")
        out[name] = _race(name, calls, x, quick, 0.1 if quick else 0.3)
    return out


def main(quick: bool = False) -> dict:
    """Run the model-format benchmarks, print their tables, return the figures."""
    out = {"pmml": pmml(quick), "tflite": tflite(quick)}
    print(f"  load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return out


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
