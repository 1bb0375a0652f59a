"""Open Inference Protocol tensors: JSON and binary-extension bodies to NumPy and back.

A request body is a JSON object with ``inputs`` (each ``name``, ``datatype``,
``shape`` and either ``data`` or, with the binary tensor extension, a
``binary_data_size`` parameter pointing into raw bytes appended after the
JSON; the JSON's length is then in the ``Inference-Header-Content-Length``
header). Everything a client can get wrong becomes a
:class:`~streamml.serve.errors.RequestError` with status 400 and a message
naming the tensor and what was wrong; nothing here raises anything else.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from streamml.models.protocol import TensorSpec, shape_matches
from streamml.serve.errors import RequestError

__all__ = [
    "DATATYPES",
    "InferRequest",
    "check_inputs",
    "datatype_of",
    "decode_request",
    "encode_response",
]

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
"""The protocol's tensor data types and the NumPy dtype each decodes to."""

_NAMES = {dtype: name for name, dtype in DATATYPES.items()}


def datatype_of(dtype: np.dtype) -> str:
    """The protocol's name for a NumPy dtype (strings and bytes are ``BYTES``).

    Examples:
        >>> datatype_of(np.dtype("float32")), datatype_of(np.dtype("<U3"))
        ('FP32', 'BYTES')
    """
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _NAMES[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no Open Inference Protocol datatype") from None


@dataclass(frozen=True)
class InferRequest:
    """One decoded inference request.

    Attributes:
        id: The client's request id, echoed in the answer (``None`` if absent).
        inputs: The input tensors by name, each of its declared datatype and shape.
        outputs: The requested outputs in order, each with whether it goes back
            as binary; ``None`` means every output.
        binary_output: Whether outputs not listed with a choice go back as binary.
    """

    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[tuple[str, bool | None], ...] | None
    binary_output: bool


def _bad(message: str) -> RequestError:
    return RequestError(400, message)


def _shape(tensor: Mapping[str, Any], name: str) -> tuple[int, ...]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _bad(f"input {name!r}: shape must be a list of non-negative integers; got {shape!r}")
    return tuple(shape)


def _parameters(obj: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    params = obj.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise _bad(f"{where}: parameters must be an object; got {params!r}")
    return params


def _from_json_data(data: Any, dtype: np.dtype, name: str, datatype: str) -> np.ndarray:
    if dtype.kind == "O":
        flat = _flatten(data, name)
        if not all(isinstance(v, str) for v in flat):
            raise _bad(f"input {name!r}: BYTES data must be strings")
        arr = np.empty(len(flat), dtype=object)
        arr[:] = [v.encode() for v in flat]
        return arr
    try:
        raw = np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise _bad(f"input {name!r}: data is not a regular array: {exc}") from None
    if dtype.kind in "iu" and raw.dtype.kind in "fO":
        return _integers(data, dtype, name, datatype)  # exact, past float64's 53 bits
    if raw.dtype.kind not in "biuf" or (dtype.kind == "b") != (raw.dtype.kind == "b"):
        want = "true/false" if dtype.kind == "b" else "numbers"
        raise _bad(f"input {name!r}: {datatype} data must be {want}")
    raw = raw.ravel()
    if raw.size and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise _bad(f"input {name!r}: a value is out of range for {datatype}")
    if raw.size and dtype.kind == "f" and raw.dtype.kind in "iuf":
        top = float(np.finfo(dtype).max)
        finite = raw[np.isfinite(raw)] if raw.dtype.kind == "f" else raw
        if finite.size and float(np.max(np.abs(finite))) > top:
            raise _bad(f"input {name!r}: a value is out of range for {datatype}")
    return raw.astype(dtype, copy=False)


def _integers(data: Any, dtype: np.dtype, name: str, datatype: str) -> np.ndarray:
    """Integer data NumPy would read as floats or objects (a float among them, 2**63 and more)."""
    values = []
    for v in _flatten(data, name):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _bad(f"input {name!r}: {datatype} data must be integers")
        if isinstance(v, float) and not v.is_integer():
            raise _bad(f"input {name!r}: {datatype} data must be integers")
        values.append(int(v))
    info = np.iinfo(dtype)
    if values and (min(values) < info.min or max(values) > info.max):
        raise _bad(f"input {name!r}: a value is out of range for {datatype}")
    return np.array(values, dtype=dtype)


def _flatten(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list):
        raise _bad(f"input {name!r}: data must be a list")
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def _from_binary(chunk: bytes, dtype: np.dtype, name: str, count: int) -> np.ndarray:
    if dtype.kind != "O":
        if len(chunk) != count * dtype.itemsize:
            raise _bad(
                f"input {name!r}: binary data has {len(chunk)} bytes; its shape needs "
                f"{count * dtype.itemsize}"
            )
        return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
    values, at = [], 0
    while at < len(chunk):
        if at + 4 > len(chunk):
            raise _bad(f"input {name!r}: truncated BYTES element length")
        (size,) = struct.unpack_from("<I", chunk, at)
        if at + 4 + size > len(chunk):
            raise _bad(f"input {name!r}: BYTES element runs past its data")
        values.append(chunk[at + 4 : at + 4 + size])
        at += 4 + size
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _input(tensor: Any, binary: memoryview, at: int) -> tuple[str, np.ndarray, int]:
    if not isinstance(tensor, Mapping):
        raise _bad("each input must be an object with name, datatype, shape and data")
    name = tensor.get("name")
    if not isinstance(name, str):
        raise _bad(f"an input has no string name: {str(tensor)[:80]}")
    datatype = tensor.get("datatype")
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise _bad(f"input {name!r}: unknown datatype {datatype!r}; one of {sorted(DATATYPES)}")
    shape = _shape(tensor, name)
    count = math.prod(shape)
    size = _parameters(tensor, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _bad(f"input {name!r}: binary_data_size must be a non-negative integer")
        if at + size > len(binary):
            raise _bad(f"input {name!r}: binary_data_size {size} runs past the request body")
        arr = _from_binary(bytes(binary[at : at + size]), dtype, name, count)
        at += size
    elif "data" in tensor:
        arr = _from_json_data(tensor["data"], dtype, name, datatype)
    else:
        raise _bad(f"input {name!r} has neither data nor a binary_data_size parameter")
    if arr.size != count:
        raise _bad(f"input {name!r}: shape {list(shape)} needs {count} values; got {arr.size}")
    return name, arr.reshape(shape), at


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """Decode an inference request body (JSON, or JSON then binary tensors).

    Args:
        body: The whole request body.
        header_length: The ``Inference-Header-Content-Length`` header: how many
            leading bytes are JSON (``None``: all of them).

    Raises:
        RequestError: 400, saying which tensor is malformed and how.

    Examples:
        >>> req = decode_request(b'{"id": "a", "inputs": [{"name": "x", "datatype": "FP32",'
        ...                      b' "shape": [2, 2], "data": [1, 2, 3, 4]}]}')
        >>> req.id, req.inputs["x"].dtype, req.inputs["x"].shape
        ('a', dtype('float32'), (2, 2))
        >>> raw = np.array([1.5, 2.5], dtype=np.float32).tobytes()
        >>> head = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2],' \\
        ...        b' "parameters": {"binary_data_size": 8}}]}'
        >>> decode_request(head + raw, len(head)).inputs["x"]
        array([[1.5, 2.5]], dtype=float32)
        >>> decode_request(b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1]}]}')
        Traceback (most recent call last):
        ...
        streamml.serve.errors.RequestError: input 'x': shape [3] needs 3 values; got 1
    """
    if header_length is None:
        header_length = len(body)
    if not 0 < header_length <= len(body):
        raise _bad(
            f"Inference-Header-Content-Length is {header_length}; the body has {len(body)} bytes"
        )
    view = memoryview(body)
    try:
        request = orjson.loads(view[:header_length])
    except orjson.JSONDecodeError as exc:
        raise _bad(f"the request is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise _bad("the request must be a JSON object")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _bad("the request needs a non-empty list of inputs")
    binary, at, tensors = view[header_length:], 0, {}
    for tensor in inputs:
        name, arr, at = _input(tensor, binary, at)
        if name in tensors:
            raise _bad(f"input {name!r} is given twice")
        tensors[name] = arr
    if at != len(binary):
        raise _bad(f"{len(binary) - at} bytes of binary data belong to no input")
    params = _parameters(request, "the request")
    outputs = request.get("outputs")
    wanted = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
            isinstance(o, Mapping) and isinstance(o.get("name"), str) for o in outputs
        ):
            raise _bad("outputs must be a list of objects with a name")
        wanted = tuple(
            (o["name"], _binary_flag(_parameters(o, f"output {o['name']!r}"))) for o in outputs
        )
    rid = request.get("id")
    return InferRequest(
        id=None if rid is None else str(rid),
        inputs=tensors,
        outputs=wanted,
        binary_output=bool(params.get("binary_data_output", False)),
    )


def _binary_flag(params: Mapping[str, Any]) -> bool | None:
    flag = params.get("binary_data")
    return None if flag is None else bool(flag)


def check_inputs(
    specs: Mapping[str, TensorSpec], tensors: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], int]:
    """Match decoded tensors to a model's declared inputs; returns the feeds and the row count.

    The datatype must be the model's own (no silent casts: a client sending
    ``FP64`` to an ``FP32`` model learns it), each row's shape must fit the
    declared one, and every input needs the same number of rows (at least one).

    Raises:
        RequestError: 400 with what the model wanted.

    Examples:
        >>> specs = {"x": TensorSpec(np.dtype("float32"), (2,))}
        >>> feeds, rows = check_inputs(specs, {"x": np.zeros((3, 2), np.float32)})
        >>> rows
        3
        >>> check_inputs(specs, {"x": np.zeros((3, 2))})
        Traceback (most recent call last):
        ...
        streamml.serve.errors.RequestError: input 'x': the model takes FP32; got FP64
    """
    unknown = sorted(set(tensors) - set(specs))
    if unknown:
        raise _bad(f"unknown input(s) {unknown}; the model takes {list(specs)}")
    missing = [name for name in specs if name not in tensors]
    if missing:
        raise _bad(f"missing input(s) {missing}; the model takes {list(specs)}")
    rows = None
    feeds = {}
    for name, spec in specs.items():
        arr = tensors[name]
        if arr.dtype != spec.dtype:
            raise _bad(
                f"input {name!r}: the model takes {datatype_of(spec.dtype)}; "
                f"got {datatype_of(arr.dtype)}"
            )
        if arr.ndim < 1 or not shape_matches(spec.shape, arr.shape[1:]):
            raise _bad(
                f"input {name!r}: shape must be [rows, {', '.join(_dims(spec.shape))}]; "
                f"got {list(arr.shape)}"
            )
        if rows is not None and arr.shape[0] != rows:
            raise _bad(f"input {name!r} has {arr.shape[0]} rows; the others have {rows}")
        rows = arr.shape[0]
        feeds[name] = arr
    if not rows:
        raise _bad("a request needs at least one row")
    return feeds, rows


def _dims(shape: tuple[int | None, ...] | None) -> list[str]:
    if shape is None:
        return ["..."]
    return ["-1" if d is None else str(d) for d in shape]


def encode_response(
    *,
    model_name: str,
    model_version: str,
    request: InferRequest,
    outputs: Mapping[str, Any],
    order: Sequence[str],
) -> tuple[bytes, int | None]:
    """Encode a model's outputs as an inference response.

    Returns the body and, when any output went as binary, the length of its
    JSON part (for the ``Inference-Header-Content-Length`` header).

    Raises:
        RequestError: 400 when the request asked for an output the model
            does not have.

    Examples:
        >>> req = decode_request(b'{"inputs": [{"name": "x", "datatype": "INT64",'
        ...                      b' "shape": [1], "data": [1]}]}')
        >>> body, head = encode_response(model_name="m", model_version="v1", request=req,
        ...                              outputs={"y": np.array([[0.5, 1.5]])}, order=["y"])
        >>> body.decode(), head
        ('{"model_name":"m","model_version":"v1","outputs":[{"name":"y","datatype":"FP64","shape":[1,2],"data":[0.5,1.5]}]}', None)
    """
    if request.outputs is None:
        wanted = [(name, None) for name in order]
    else:
        unknown = [name for name, _ in request.outputs if name not in outputs]
        if unknown:
            raise _bad(f"unknown output(s) {unknown}; the model has {list(order)}")
        wanted = list(request.outputs)
    answer: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request.id is not None:
        answer["id"] = request.id
    tensors, chunks = [], []
    for name, flag in wanted:
        arr = np.asarray(outputs[name])
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": datatype_of(arr.dtype),
            "shape": list(arr.shape),
        }
        if request.binary_output if flag is None else flag:
            raw = _to_binary(arr)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif arr.dtype.kind in "OSU":
            tensor["data"] = [_text(v) for v in arr.ravel().tolist()]
        else:
            tensor["data"] = np.ascontiguousarray(arr).ravel()
        tensors.append(tensor)
    answer["outputs"] = tensors
    head = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _to_binary(arr: np.ndarray) -> bytes:
    if arr.dtype.kind not in "OSU":
        return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    parts = []
    for value in arr.ravel().tolist():
        raw = value if isinstance(value, bytes) else str(value).encode()
        parts.append(struct.pack("<I", len(raw)))
        parts.append(raw)
    return b"".join(parts)
