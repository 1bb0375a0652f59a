"""Fixtures for the model server's tests: small real ONNX models, built here from weights."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def linear_onnx(weights: list[float], bias: float) -> bytes:
    """An ONNX model ``y = x @ weights + bias`` over float32 rows of ``len(weights)`` values.

    Output ``y`` has one column; a second output ``big`` is ``y > 0`` as BOOL, so the
    server answers two datatypes.
    """
    import onnx
    from onnx import TensorProto, helper

    n = len(weights)
    w = helper.make_tensor("w", TensorProto.FLOAT, [n, 1], weights)
    b = helper.make_tensor("b", TensorProto.FLOAT, [1], [bias])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
            helper.make_node("Greater", ["y", "zero"], ["big"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", n])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", 1]),
            helper.make_tensor_value_info("big", TensorProto.BOOL, ["rows", 1]),
        ],
        initializer=[w, b, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="session")
def make_linear() -> Callable[[list[float], float], bytes]:
    """Build linear ONNX models (see :func:`linear_onnx`)."""
    return linear_onnx
