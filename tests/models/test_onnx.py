"""OnnxModel: loading, validation against declared inputs, name mapping, versions, pickling."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

from streamml.models import Model, ModelInputError, OnnxModel, TensorSpec, default_providers


@pytest.fixture(scope="module")
def regressor() -> bytes:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    model = LinearRegression().fit(x, x @ np.array([1.0, 2.0, 3.0]))
    return to_onnx(model, x[:1]).SerializeToString()


def test_loads_from_bytes_and_path_with_content_versions(regressor: bytes, tmp_path: Path) -> None:
    path = tmp_path / "lr.onnx"
    path.write_bytes(regressor)
    digest = hashlib.sha256(regressor).hexdigest()[:8]
    assert OnnxModel(regressor).version == digest
    assert OnnxModel(path).version == f"lr@{digest}"
    assert OnnxModel(str(path), version="prod-7").version == "prod-7"
    assert isinstance(OnnxModel(regressor), Model)


def test_declared_inputs_and_predictions(regressor: bytes) -> None:
    model = OnnxModel(regressor, intra_op_threads=1, inter_op_threads=1)
    assert model.inputs == {"X": TensorSpec(np.dtype("float32"), (3,))}
    assert model.outputs == ("variable",)
    out = model.predict(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]))  # float64 is cast
    np.testing.assert_allclose(out["variable"].ravel(), [6.0, 3.0], rtol=1e-5)


def test_invalid_batches_say_what_the_model_wants(regressor: bytes) -> None:
    model = OnnxModel(regressor)
    with pytest.raises(ModelInputError, match=r"shape \(3,\); got \(2,\)"):
        model.predict(np.zeros((4, 2), dtype=np.float32))
    with pytest.raises(ModelInputError, match="expected float32 values; got <U1"):
        model.predict(np.array([["a", "b", "c"]]))
    with pytest.raises(ModelInputError, match="missing model input"):
        model.predict({"features": np.zeros((1, 3), dtype=np.float32)})


def test_name_mapping(regressor: bytes) -> None:
    model = OnnxModel(regressor, input_names={"features": "X"}, output_names={"variable": "y"})
    assert list(model.inputs) == ["features"] and model.outputs == ("y",)
    out = model.predict({"features": np.ones((1, 3), dtype=np.float32)})
    assert list(out) == ["y"]
    with pytest.raises(ValueError, match="does not have"):
        OnnxModel(regressor, input_names={"features": "nope"})
    with pytest.raises(ValueError, match="does not output"):
        OnnxModel(regressor, output_names={"nope": "y"})


def test_broken_models_fail_at_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot load ONNX model"):
        OnnxModel(b"definitely not protobuf")
    with pytest.raises(ValueError, match="cannot read"):
        OnnxModel(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="graph_optimization"):
        OnnxModel(b"", graph_optimization="max")


def test_providers_default_to_cpu_here_and_can_be_chosen(regressor: bytes) -> None:
    assert default_providers()[-1] == "CPUExecutionProvider"
    model = OnnxModel(regressor, providers=["CPUExecutionProvider"], graph_optimization="basic")
    assert model.session.get_providers() == ["CPUExecutionProvider"]


def test_pickles_by_bytes(regressor: bytes) -> None:
    model = OnnxModel(regressor, version="v3", intra_op_threads=1)
    clone = pickle.loads(pickle.dumps(model))
    x = np.ones((2, 3), dtype=np.float32)
    assert clone.version == "v3"
    np.testing.assert_array_equal(clone.predict(x)["variable"], model.predict(x)["variable"])
