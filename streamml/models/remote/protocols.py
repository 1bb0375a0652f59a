"""What goes over the wire: the Open Inference Protocol's JSON tensors, or any JSON REST API.

A protocol turns one request's rows into a request body and the answer back
into named arrays, and says where the model lives:

- :class:`OpenInference` speaks the Open Inference Protocol (KServe V2), the
  REST API of Triton, KServe, MLServer, Seldon and ``streamml serve``: the
  model describes its inputs at ``/v2/models/{name}``, and
  ``/v2/models/{name}/infer`` takes ``{"inputs": [{"name", "shape",
  "datatype", "data"}]}`` and answers ``{"outputs": [...]}`` — or, with
  ``binary=True``, the binary tensor extension (Triton, ``streamml serve``):
  the same JSON without ``data``, each tensor's raw little-endian bytes
  after it, and the JSON's length in the ``Inference-Header-Content-Length``
  header.
- :class:`JsonRest` calls any JSON endpoint, with two small functions that
  map a batch to the request and the answer to arrays; by default the
  ``{"instances": [...]}`` → ``{"predictions": [...]}`` format of TensorFlow
  Serving and KServe's V1 protocol.

An answer that does not parse, lacks an output or has the wrong number of
rows raises :class:`~streamml.models.remote.BadAnswer` saying what was wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson

from streamml.models.protocol import TensorSpec
from streamml.models.remote.errors import BadAnswer

__all__ = ["JsonRest", "OpenInference"]

_DATATYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
_NAMES = {np.dtype(t): name for name, t in _DATATYPES.items()}
_JSON_OPTS = orjson.OPT_SERIALIZE_NUMPY
HEADER_LENGTH = "Inference-Header-Content-Length"


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadAnswer(f"the answer is not JSON: {_excerpt(body)}") from None


def _excerpt(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", "replace")
    return repr(text + ("..." if len(body) > limit else ""))


def error_reason(status: int, body: bytes) -> str:
    """The service's reason for a refusal: its JSON ``"error"`` (or ``"detail"``), else the body.

    Examples:
        >>> error_reason(400, b'{"error": "input x: expected FP32"}')
        'HTTP 400: input x: expected FP32'
        >>> error_reason(413, b"too big")
        "HTTP 413: 'too big'"
    """
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    if isinstance(parsed, dict):
        for field in ("error", "detail", "message"):
            if isinstance(parsed.get(field), str):
                return f"HTTP {status}: {parsed[field]}"
    return f"HTTP {status}: {_excerpt(body)}"


def _rows_of(name: str, values: Any, rows: int) -> np.ndarray:
    try:
        arr = np.asarray(values)
    except (ValueError, OverflowError) as exc:  # ragged lists, integers beyond 64 bits
        raise BadAnswer(f"output {name!r} is not a tensor: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise BadAnswer(f"output {name!r} holds {arr.dtype} values, not numbers")
    if arr.ndim < 1 or len(arr) != rows:
        raise BadAnswer(
            f"output {name!r} has shape {arr.shape} for a request of {rows} rows; "
            "its first dimension must be the rows"
        )
    return arr


class OpenInference:
    """The Open Inference Protocol (KServe V2) over REST with JSON tensors.

    Args:
        model: The model's name on the server.
        version: A model version to pin (``/v2/models/{model}/versions/{version}``);
            ``None``: the server's default version.
        outputs: The outputs to ask for (default: all the model declares).
        binary: Send and ask for tensors as raw bytes (the binary tensor
            extension) instead of JSON lists: no number is printed or parsed.

    Examples:
        >>> p = OpenInference("mlp", version="2")
        >>> p.infer_path
        '/v2/models/mlp/versions/2/infer'
        >>> specs = {"x": TensorSpec(np.dtype("float32"), (2,))}
        >>> p.encode({"x": np.array([[1, 2]], dtype=np.float32)}, specs)
        (b'{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1.0,2.0]}]}', None)
        >>> p.decode(b'{"outputs":[{"name":"y","shape":[1],"datatype":"FP32","data":[3]}]}', 1)
        ({'y': array([3.], dtype=float32)}, None)
        >>> b = OpenInference("mlp", binary=True)
        >>> body, headers = b.encode({"x": np.array([[1, 2]], dtype=np.int8)}, {})
        >>> body[-2:], headers
        (b'\\x01\\x02', {'Inference-Header-Content-Length': '134'})
        >>> head = b'{"outputs":[{"name":"y","shape":[1],"datatype":"INT8",' + (
        ...     b'"parameters":{"binary_data_size":1}}]}')
        >>> b.decode(head + bytes([7]), 1, header_length=len(head))
        ({'y': array([7], dtype=int8)}, None)
        >>> p.decode(b'<html>', 1)
        Traceback (most recent call last):
        ...
        streamml.models.remote.errors.BadAnswer: the answer is not JSON: '<html>'
    """

    def __init__(
        self,
        model: str,
        version: str | None = None,
        *,
        outputs: Sequence[str] | None = None,
        binary: bool = False,
    ) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError(f"OpenInference needs the model's name on the server; got {model!r}")
        self.model = model
        self.version = version
        base = f"/v2/models/{quote(model, safe='')}"
        if version is not None:
            base += f"/versions/{quote(str(version), safe='')}"
        self.metadata_path: str | None = base
        self.infer_path = base + "/infer"
        self._wanted = tuple(outputs) if outputs is not None else None
        self.binary = binary
        self._tail: dict[str, Any] = {}  # what follows the inputs in every request
        if self._wanted is not None:
            flag = {"parameters": {"binary_data": True}} if binary else {}
            self._tail["outputs"] = [{"name": n, **flag} for n in self._wanted]
        elif binary:
            self._tail["parameters"] = {"binary_data_output": True}

    def describe(
        self, metadata: Any, inputs: Mapping[str, TensorSpec] | None
    ) -> tuple[dict[str, TensorSpec], tuple[str, ...]]:
        """The model's inputs and outputs from its metadata (``inputs`` given: those)."""
        if not isinstance(metadata, dict):
            raise BadAnswer(f"the model metadata is not a JSON object: {metadata!r:.200}")
        try:
            declared = {
                t["name"]: (t["datatype"], t["shape"]) for t in metadata.get("inputs") or []
            }
            names = tuple(t["name"] for t in metadata.get("outputs") or [])
        except (TypeError, KeyError) as exc:
            raise BadAnswer(f"the model metadata has a malformed tensor entry: {exc!r}") from None
        specs: dict[str, TensorSpec] = dict(inputs) if inputs is not None else {}
        if inputs is None:
            for name, (datatype, shape) in declared.items():
                if datatype not in _DATATYPES:
                    raise ValueError(
                        f"input {name!r} is {datatype}; only numeric tensors can be sent "
                        f"({sorted(_DATATYPES)}); pass inputs= to override"
                    )
                row = tuple(None if d is None or d < 0 else int(d) for d in list(shape)[1:])
                specs[name] = TensorSpec(np.dtype(_DATATYPES[datatype]), row)
        if not specs:
            raise ValueError("the model declares no inputs; pass inputs={name: TensorSpec(...)}")
        for name, spec in specs.items():
            if spec.dtype not in _NAMES:
                raise ValueError(f"input {name!r}: {spec.dtype} has no Open Inference datatype")
        outputs = self._wanted or names
        if not outputs:
            raise ValueError("the model declares no outputs; pass outputs=[...] to OpenInference")
        return specs, outputs

    def encode(
        self, feeds: Mapping[str, np.ndarray], specs: Mapping[str, TensorSpec]
    ) -> tuple[bytes, dict[str, str] | None]:
        """The request body for one request's rows, and the headers it needs."""
        tensors, raw = [], []
        for name, arr in feeds.items():
            tensor: dict[str, Any] = {"name": name, "shape": list(arr.shape)}
            tensor["datatype"] = _NAMES[arr.dtype]
            if self.binary:
                data = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
                tensor["parameters"] = {"binary_data_size": len(data)}
                raw.append(data)
            else:
                tensor["data"] = np.ascontiguousarray(arr).reshape(-1)
            tensors.append(tensor)
        head = orjson.dumps({"inputs": tensors, **self._tail}, option=_JSON_OPTS)
        if not self.binary:
            return head, None
        return b"".join([head, *raw]), {HEADER_LENGTH: str(len(head))}

    def decode(
        self, body: bytes, rows: int, header_length: int | None = None
    ) -> tuple[dict[str, np.ndarray], str | None]:
        """The answer's outputs by name (each ``rows`` long), and the version that made it.

        ``header_length`` is the answer's ``Inference-Header-Content-Length``:
        the JSON is that long and binary tensors follow it.
        """
        if header_length is not None and not 0 < header_length <= len(body):
            raise BadAnswer(f"{HEADER_LENGTH} is {header_length} for a body of {len(body)} bytes")
        answer = _parse(body if header_length is None else body[:header_length])
        raw = memoryview(body)[header_length:] if header_length is not None else None
        at = 0
        tensors = answer.get("outputs") if isinstance(answer, dict) else None
        if not isinstance(tensors, list):
            raise BadAnswer(f"the answer has no 'outputs' list: {_excerpt(body)}")
        outs = {}
        for t in tensors:
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                raise BadAnswer(f"an output is not a named tensor: {t!r:.200}")
            name, shape, datatype = t["name"], t.get("shape"), t.get("datatype")
            if datatype not in _DATATYPES:
                raise BadAnswer(f"output {name!r} has datatype {datatype!r}, not a numeric one")
            dtype = np.dtype(_DATATYPES[datatype])
            parameters = t.get("parameters")
            size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
            try:
                if size is None:
                    with np.errstate(over="raise"):  # 1e300 is not FP32 data: an error, not inf
                        arr = np.asarray(t.get("data"), dtype=dtype).reshape(shape)
                elif raw is None or not isinstance(size, int) or at + size > len(raw):
                    raise ValueError(f"binary_data_size {size!r} runs past the answer")
                else:
                    chunk = raw[at : at + size]
                    at += size
                    arr = np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).reshape(shape)
            except (TypeError, ValueError, OverflowError, FloatingPointError) as exc:
                raise BadAnswer(
                    f"output {name!r} is not {datatype} data of shape {shape!r}: {exc}"
                ) from None
            outs[name] = _rows_of(name, arr, rows)
        version = answer.get("model_version")
        return outs, str(version) if version is not None else None


class JsonRest:
    """Any JSON REST endpoint, mapped to and from a batch by two functions.

    Args:
        path: The endpoint's path under the model's URL, e.g. ``"/v1/models/m:predict"``.
        request: ``{input name: array} -> JSON-able`` (NumPy arrays are
            allowed anywhere in it). Default: ``{"instances": rows}`` of the
            only input.
        response: ``parsed JSON -> {output name: array-like}``, each with one
            entry per row. Default: ``{"predictions": answer["predictions"]}``.
        outputs: The output names ``response`` gives.

    Examples:
        >>> p = JsonRest("/predict")
        >>> p.encode({"x": np.array([[1.0, 2.0]])}, {})
        (b'{"instances":[[1.0,2.0]]}', None)
        >>> p.decode(b'{"predictions": [0.5]}', 1)
        ({'predictions': array([0.5])}, None)
        >>> p.decode(b'{"predictions": [0.5, 0.7]}', 1)
        Traceback (most recent call last):
        ...
        streamml.models.remote.errors.BadAnswer: output 'predictions' has shape (2,) for a request of 1 rows; its first dimension must be the rows
    """

    metadata_path = None

    def __init__(
        self,
        path: str = "/",
        *,
        request: Callable[[dict[str, np.ndarray]], Any] | None = None,
        response: Callable[[Any], Mapping[str, Any]] | None = None,
        outputs: Sequence[str] = ("predictions",),
    ) -> None:
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/'; got {path!r}")
        self.infer_path = path
        self._request = request or _instances
        self._response = response or _predictions
        self._outputs = tuple(outputs)
        if not self._outputs:
            raise ValueError("outputs must name at least one output")

    def describe(
        self, metadata: Any, inputs: Mapping[str, TensorSpec] | None
    ) -> tuple[dict[str, TensorSpec], tuple[str, ...]]:
        """The inputs given (default: one ``float32`` input ``"input"``) and the outputs named."""
        specs = dict(inputs) if inputs else {"input": TensorSpec(np.dtype("float32"), None)}
        return specs, self._outputs

    def encode(
        self, feeds: Mapping[str, np.ndarray], specs: Mapping[str, TensorSpec]
    ) -> tuple[bytes, dict[str, str] | None]:
        """The request body: ``request(feeds)`` as JSON."""
        return orjson.dumps(self._request(dict(feeds)), option=_JSON_OPTS), None

    def decode(
        self, body: bytes, rows: int, header_length: int | None = None
    ) -> tuple[dict[str, np.ndarray], str | None]:
        """``response(answer)``, each output checked to have ``rows`` rows."""
        answer = _parse(body)
        try:
            mapped = self._response(answer)
        except Exception as exc:  # the user's mapping met an answer it cannot read
            raise BadAnswer(
                f"the response mapping failed ({type(exc).__name__}: {exc}) on {_excerpt(body)}"
            ) from None
        missing = [n for n in self._outputs if n not in mapped]
        if missing:
            raise BadAnswer(f"the answer lacks outputs {missing}: {_excerpt(body)}")
        return {n: _rows_of(n, mapped[n], rows) for n in self._outputs}, None


def _instances(feeds: dict[str, np.ndarray]) -> Any:
    if len(feeds) != 1:
        raise ValueError("the default JsonRest request sends one input; pass request=")
    return {"instances": next(iter(feeds.values()))}


def _predictions(answer: Any) -> Mapping[str, Any]:
    return {"predictions": answer["predictions"]}
