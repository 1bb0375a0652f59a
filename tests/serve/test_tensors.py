"""Open Inference Protocol tensors: round trips for every datatype, and bad bodies only ever 400."""

from __future__ import annotations

import json
import struct

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from streamml.models import TensorSpec
from streamml.serve.errors import RequestError
from streamml.serve.tensors import (
    DATATYPES,
    InferRequest,
    check_inputs,
    decode_request,
    encode_response,
)

NUMERIC = [name for name in DATATYPES if name != "BYTES"]


def _arrays(datatype: str) -> st.SearchStrategy[np.ndarray]:
    dtype = DATATYPES[datatype]
    elements = None
    if dtype.kind == "f":  # JSON carries no NaN or infinity
        elements = st.floats(allow_nan=False, allow_infinity=False, width=dtype.itemsize * 8)
    return hnp.arrays(
        dtype, hnp.array_shapes(min_dims=1, max_dims=3, max_side=4), elements=elements
    )


def _json_request(name: str, datatype: str, arr: np.ndarray) -> bytes:
    tensor = {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": arr.tolist()}
    return orjson.dumps({"inputs": [tensor]})


def _binary_request(name: str, datatype: str, arr: np.ndarray) -> tuple[bytes, int]:
    raw = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": list(arr.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
    )
    return head + raw, len(head)


@given(datatype=st.sampled_from(NUMERIC), data=st.data())
def test_json_and_binary_tensors_decode_to_the_same_array(datatype: str, data) -> None:  # noqa: ANN001
    arr = data.draw(_arrays(datatype))
    from_json = decode_request(_json_request("t", datatype, arr)).inputs["t"]
    body, head = _binary_request("t", datatype, arr)
    from_binary = decode_request(body, head).inputs["t"]
    for got in (from_json, from_binary):
        assert got.dtype == arr.dtype and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)


@given(datatype=st.sampled_from(NUMERIC), data=st.data())
def test_outputs_encode_to_what_a_client_decodes(datatype: str, data) -> None:  # noqa: ANN001
    arr = data.draw(_arrays(datatype))
    request = decode_request(
        b'{"inputs": [{"name": "x", "datatype": "BOOL", "shape": [1], "data": [true]}]}'
    )
    body, head = encode_response(
        model_name="m", model_version="v", request=request, outputs={"y": arr}, order=["y"]
    )
    assert head is None
    (tensor,) = json.loads(body)["outputs"]
    assert (tensor["datatype"], tensor["shape"]) == (datatype, list(arr.shape))
    np.testing.assert_array_equal(np.array(tensor["data"], dtype=arr.dtype).reshape(arr.shape), arr)

    binary = InferRequest(id=None, inputs=request.inputs, outputs=None, binary_output=True)
    body, head = encode_response(
        model_name="m", model_version="v", request=binary, outputs={"y": arr}, order=["y"]
    )
    (tensor,) = json.loads(body[:head])["outputs"]
    assert tensor["parameters"]["binary_data_size"] == len(body) - head
    back = np.frombuffer(body[head:], dtype=arr.dtype.newbyteorder("<")).reshape(arr.shape)
    np.testing.assert_array_equal(back, arr)


def test_bytes_tensors_both_ways() -> None:
    words = [b"a", b"", "é".encode()]
    raw = b"".join(struct.pack("<I", len(w)) + w for w in words)
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "b",
                    "datatype": "BYTES",
                    "shape": [3],
                    "parameters": {"binary_data_size": len(raw)},
                },
                {"name": "j", "datatype": "BYTES", "shape": [1, 2], "data": [["x", "yz"]]},
            ]
        }
    )
    request = decode_request(head + raw, len(head))
    assert request.inputs["b"].tolist() == words
    assert request.inputs["j"].tolist() == [[b"x", b"yz"]]
    out = np.array(["hi", "é"])
    body, _ = encode_response(
        model_name="m", model_version="v", request=request, outputs={"s": out}, order=["s"]
    )
    assert json.loads(body)["outputs"][0]["data"] == ["hi", "é"]


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        ({"datatype": "INT8", "shape": [1], "data": [300]}, "out of range for INT8"),
        ({"datatype": "UINT8", "shape": [1], "data": [-1]}, "out of range for UINT8"),
        ({"datatype": "INT64", "shape": [1], "data": [1.5]}, "INT64 data must be integers"),
        ({"datatype": "FP16", "shape": [1], "data": [1e6]}, "out of range for FP16"),
        ({"datatype": "BOOL", "shape": [1], "data": [1]}, "BOOL data must be true/false"),
        ({"datatype": "FP32", "shape": [2], "data": [[1], [2, 3]]}, "not a regular array"),
        ({"datatype": "FP32", "shape": [-1], "data": [1]}, "non-negative integers"),
        ({"datatype": "FP31", "shape": [1], "data": [1]}, "unknown datatype 'FP31'"),
        ({"datatype": "FP32", "shape": [1]}, "neither data nor a binary_data_size"),
        ({"datatype": "BYTES", "shape": [1], "data": [1]}, "BYTES data must be strings"),
    ],
)
def test_bad_tensors_say_what_is_wrong(tensor: dict, message: str) -> None:
    with pytest.raises(RequestError, match="input 'x'") as caught:
        decode_request(orjson.dumps({"inputs": [{"name": "x", **tensor}]}))
    assert caught.value.status == 400 and message in str(caught.value)


@given(st.binary(max_size=300), st.one_of(st.none(), st.integers(-5, 400)))
def test_any_bytes_decode_or_answer_400(body: bytes, head: int | None) -> None:
    try:
        decode_request(body, head)
    except RequestError as exc:
        assert exc.status == 400


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=60)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "name": st.sampled_from(["x", 3]) | _JSON,
            "datatype": st.sampled_from([*DATATYPES, "X"]) | _JSON,
            "shape": st.lists(st.integers(-1, 3), max_size=3) | _JSON,
            "data": _JSON,
            "parameters": st.fixed_dictionaries({}, optional={"binary_data_size": _JSON}) | _JSON,
        },
    ),
    _JSON,
)
def test_malformed_requests_answer_400_never_crash(tensor: dict, outputs) -> None:  # noqa: ANN001
    # the standard library writes what orjson cannot read (integers past 64 bits): 400 too
    body = json.dumps({"inputs": [tensor], "outputs": outputs, "id": outputs}).encode()
    try:
        request = decode_request(body)
        check_inputs({"x": TensorSpec(np.dtype("float32"), (None,))}, request.inputs)
    except RequestError as exc:
        assert exc.status == 400


def test_inputs_are_checked_against_the_model() -> None:
    specs = {
        "a": TensorSpec(np.dtype("float32"), (2,)),
        "b": TensorSpec(np.dtype("int64"), None),
    }
    a, b = np.zeros((3, 2), np.float32), np.zeros((3, 5, 5), np.int64)
    feeds, rows = check_inputs(specs, {"a": a, "b": b})
    assert rows == 3 and feeds["a"] is a and feeds["b"] is b
    for tensors, message in [
        ({"a": a}, "missing input(s) ['b']"),
        ({"a": a, "b": b[:2]}, "input 'b' has 2 rows; the others have 3"),
        ({"a": a[:0], "b": b[:0]}, "a request needs at least one row"),
        ({"a": a.astype(np.float64), "b": b}, "input 'a': the model takes FP32; got FP64"),
        ({"a": np.zeros(3, np.float32), "b": b}, "input 'a': shape must be [rows, 2]; got [3]"),
    ]:
        with pytest.raises(RequestError) as caught:
            check_inputs(specs, tensors)
        assert caught.value.status == 400 and message in str(caught.value)
