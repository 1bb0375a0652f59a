"""``serve()`` in this process: live swaps, a server proxying another, compressed bodies, settings."""

from __future__ import annotations

import gzip
import json
import threading
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamml.models import CallableModel, OnnxModel
from streamml.models.remote import RemoteModel
from streamml.serve import RequestError, serve

ROW = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _times(
    k: float,
    version: str,
    gate: threading.Event | None = None,
    entered: threading.Event | None = None,
) -> CallableModel:
    def fn(x: np.ndarray) -> np.ndarray:
        if entered is not None:
            entered.set()
        if gate is not None:
            gate.wait(30)
        return k * x

    return CallableModel(fn, outputs="y", shape=(2,), version=version)


def test_a_swap_serves_the_new_version_and_the_old_one_answers_what_it_had() -> None:
    gate, entered = threading.Event(), threading.Event()
    gate.set()  # the probe at start must pass
    with serve({"m": _times(2, "v1", gate, entered)}) as server:
        url = f"{server.url}/v2/models/m/infer"
        gate.clear()
        entered.clear()
        held: list[tuple[int, dict]] = []
        first = threading.Thread(target=lambda: held.append(_post(url, ROW)))
        first.start()
        assert entered.wait(30)  # v1 is now stuck in this request's model call

        swapped: list[str] = []
        swapper = threading.Thread(target=lambda: swapped.append(server.swap("m", _times(3, "v2"))))
        swapper.start()
        for _ in range(3000):  # the new version serves once it passed its probe
            if server.version("m") == "v2":
                break
            threading.Event().wait(0.01)
        status, body = _post(url, ROW)  # answered by v2 while v1 still works on the first
        assert (status, body["model_version"], body["outputs"][0]["data"]) == (200, "v2", [3, 6])
        assert held == [] and swapped == []  # the swap waits for v1's queue to empty

        gate.set()
        first.join(30)
        swapper.join(30)
        assert held[0][0] == 200 and held[0][1]["model_version"] == "v1"
        assert held[0][1]["outputs"][0]["data"] == [2, 4]
        assert swapped == ["v2"]


def test_a_version_that_fails_its_probe_is_refused_and_the_old_one_serves() -> None:
    def broken(x: np.ndarray) -> np.ndarray:
        raise RuntimeError("weights missing")

    with serve({"m": _times(2, "v1")}) as server:
        with pytest.raises(RequestError, match="version 'v2' failed its check: .*weights missing"):
            server.swap("m", CallableModel(broken, outputs="y", shape=(2,), version="v2"))
        with pytest.raises(RequestError, match="unknown model 'z'"):
            server.swap("z", _times(3, "v3"))
        status, body = _post(f"{server.url}/v2/models/m/infer", ROW)
        assert (status, body["model_version"]) == (200, "v1")
        with urllib.request.urlopen(f"{server.url}/metrics") as answer:
            metrics = answer.read().decode()
        assert 'streamml_serve_model_loads_total{model="m",outcome="failed"} 1.0' in metrics
        status, body = _post(f"{server.url}/v2/repository/models/m/load", b"")
        assert status == 400 and "was not served from a file" in body["error"]


def test_a_server_proxies_a_remote_model(make_linear: Callable[..., bytes]) -> None:
    origin_model = OnnxModel(make_linear([1.0, 2.0, 3.0], 0.5), version="lin-1")
    with serve({"linear": origin_model}) as origin:
        remote = RemoteModel(origin.url, "linear")
        try:
            with serve({"proxy": remote}) as proxy:
                x = np.arange(6, dtype=np.float32).reshape(2, 3)
                tensor = {
                    "name": "x",
                    "datatype": "FP32",
                    "shape": [2, 3],
                    "data": x.ravel().tolist(),
                }
                status, body = _post(f"{proxy.url}/v2/models/proxy/infer", {"inputs": [tensor]})
        finally:
            remote.close()
    assert status == 200 and body["model_version"] == remote.version
    assert [o["name"] for o in body["outputs"]] == ["y", "big"]
    np.testing.assert_allclose(body["outputs"][0]["data"], (x @ [1.0, 2.0, 3.0] + 0.5).tolist())


@pytest.mark.parametrize(
    ("encoding", "squeeze"),
    [("gzip", gzip.compress), ("deflate", zlib.compress)],
)
def test_compressed_bodies_are_read_and_bounded(
    encoding: str, squeeze: Callable[[bytes], bytes]
) -> None:
    with serve({"m": _times(2, "v1")}, max_body_bytes=2000) as server:
        url = f"{server.url}/v2/models/m/infer"
        headers = {"Content-Encoding": encoding}
        status, body = _post(url, squeeze(json.dumps(ROW).encode()), headers)
        assert (status, body["outputs"][0]["data"]) == (200, [2, 4])
        bomb = squeeze(b" " * 100_000)  # small on the wire, past the limit once inflated
        assert len(bomb) < 2000
        status, body = _post(url, bomb, headers)
        assert status == 413 and "larger than 2000 bytes" in body["error"]
        status, body = _post(url, b"not compressed", headers)
        assert status == 400 and "does not decompress" in body["error"]
        status, body = _post(url, json.dumps(ROW).encode(), {"Content-Encoding": "br"})
        assert status == 400 and "unsupported Content-Encoding 'br'" in body["error"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": {}}, "at least one model"),
        ({"max_batch": 0}, "max_batch must be an int >= 1; got 0"),
        ({"max_wait": 5}, "max_wait must be a timedelta >= 0; got 5"),
        ({"watch": timedelta(seconds=1)}, "watch needs files"),
        ({"files": {"other": "x.onnx"}}, "files names ['other'], which are not among the models"),
        ({"max_body_bytes": 0}, "max_body_bytes must be >= 1"),
        (
            {"models": {"m": CallableModel(lambda x: x[:0], outputs="y", shape=(2,))}},
            "the probe (one row of zeros) got 0 rows of output 'y'",
        ),
    ],
)
def test_bad_settings_fail_before_the_server_listens(kwargs: dict, message: str) -> None:
    settings = {"models": {"m": _times(2, "v1")}, **kwargs}
    with pytest.raises(ValueError) as caught:
        serve(**settings)
    assert message in str(caught.value)


@pytest.fixture(scope="module")
def doubling_server():
    with serve({"m": _times(2, "v1")}, max_batch=4, max_body_bytes=4000) as server:
        yield server


_VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)


@settings(max_examples=60)
@given(
    datatype=st.sampled_from(["FP32", "FP64", "INT64", "BOOL", "BYTES", "FP16", "X"]),
    shape=st.lists(st.integers(-1, 5), max_size=3),
    data=st.lists(st.one_of(_VALUES, st.lists(_VALUES, max_size=3)), max_size=12),
    name=st.sampled_from(["input", "other"]),
)
def test_any_tensor_is_answered_or_refused_with_a_reason(
    doubling_server, datatype: str, shape: list[int], data: list, name: str
) -> None:
    tensor = {"name": name, "datatype": datatype, "shape": shape, "data": data}
    body = json.dumps({"inputs": [tensor]}).encode()
    status, answer = _post(f"{doubling_server.url}/v2/models/m/infer", body)
    if status == 200:
        got = np.array(answer["outputs"][0]["data"], np.float32)
        np.testing.assert_allclose(got, 2 * np.array(data, np.float32).ravel())
    else:
        assert status in (400, 413) and answer["error"]
