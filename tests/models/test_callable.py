"""CallableModel and the Model protocol: any batch function, one interface."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from streamml.models import CallableModel, Model, ModelInputError, TensorSpec, as_feeds


def test_single_tuple_and_dict_outputs() -> None:
    x = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    one = CallableModel(lambda b: b.sum(axis=1), outputs="s")
    np.testing.assert_array_equal(one.predict(x)["s"], [3.0, 7.0])
    two = CallableModel(lambda b: (b.min(axis=1), b.max(axis=1)), outputs=("lo", "hi"))
    assert {k: v.tolist() for k, v in two.predict(x).items()} == {"lo": [1, 3], "hi": [2, 4]}
    named = CallableModel(lambda b: {"m": b.mean(axis=1)}, outputs="m")
    assert named.predict(x)["m"].tolist() == [1.5, 3.5]
    with pytest.raises(ValueError, match="missing declared outputs"):
        CallableModel(lambda b: {"other": b}, outputs="m").predict(x)
    with pytest.raises(ValueError, match="must return 2 arrays"):
        CallableModel(lambda b: b, outputs=("a", "b")).predict(x)


def test_sklearn_predict_proba() -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4))
    clf = LogisticRegression().fit(x, x[:, 0] > 0)
    model = CallableModel(clf.predict_proba, outputs="proba", dtype=np.float64, shape=(4,))
    np.testing.assert_array_equal(model.predict(x[:5])["proba"], clf.predict_proba(x[:5]))


def test_declared_shape_is_enforced() -> None:
    model = CallableModel(lambda b: b[:, 0], shape=(2,))
    with pytest.raises(ModelInputError):
        model.predict(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="callable"):
        CallableModel("not a function")  # type: ignore[arg-type]


def test_a_users_own_runtime_satisfies_the_protocol() -> None:
    class Doubler:
        version = "d1"
        inputs = {"x": TensorSpec(np.dtype("float32"), (None,))}
        outputs = ("y",)

        def predict(self, inputs: Any) -> dict[str, Any]:
            return {"y": as_feeds(self.inputs, inputs)["x"] * 2}

    assert isinstance(Doubler(), Model)
    assert not isinstance(object(), Model)


def test_as_feeds_casting_rules() -> None:
    specs = {"x": TensorSpec(np.dtype("int64"), None)}
    assert as_feeds(specs, np.array([[1, 2]], dtype=np.int32))["x"].dtype == np.int64
    with pytest.raises(ModelInputError, match="expected int64"):
        as_feeds(specs, np.array([[1.5]]))
    two = {"a": TensorSpec(np.dtype("float32"), None), "b": TensorSpec(np.dtype("float32"), None)}
    with pytest.raises(ModelInputError, match="dict of named arrays"):
        as_feeds(two, np.zeros((1, 1)))
