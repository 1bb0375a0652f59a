"""``streamml serve`` as a real process on loopback, spoken to by Triton's own client and plain HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]
W1, B1 = [1.0, -2.0, 0.5], 0.25
W2, B2 = [0.0, 1.0, 1.0], -1.0
MAX_BATCH = 64
MAX_BODY = 50_000


@dataclass
class Served:
    url: str
    path: Path
    process: subprocess.Popen


def _start(path: Path, log: Path, *extra: str, sigint_ignored: bool = False) -> Served:
    # a shell's background job starts with SIGINT ignored; Ctrl-C must stop it all the same
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None
    with log.open("w") as err:  # the child keeps its own copy of the file
        process = subprocess.Popen(
            [sys.executable, "-m", "streamml.cli", "serve", str(path), "--port", "0", *extra],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            preexec_fn=ignore,
        )
    line = process.stdout.readline()  # the server prints its address once it listens
    found = re.search(r" at (http://\S+) ", line)
    if found is None:
        process.kill()
        raise AssertionError(f"no address in {line!r}; stderr: {log.read_text()}")
    return Served(found.group(1), path, process)


def _stop(served: Served, sig: int = signal.SIGTERM) -> None:
    served.process.send_signal(sig)
    assert served.process.wait(30) == 0
    assert "server stopped" in served.process.stdout.read()


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, make_linear: Callable[..., bytes]
) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("serve")
    path = folder / "linear.onnx"
    path.write_bytes(make_linear(W1, B1))
    running = _start(
        path,
        folder / "stderr.log",
        "--name",
        "linear",
        "--version",
        "v1",
        "--max-batch",
        str(MAX_BATCH),
        "--max-body-mb",
        str(MAX_BODY / (1 << 20)),
    )
    yield running
    _stop(running)


def _expected(x: np.ndarray, weights: list[float], bias: float) -> np.ndarray:
    return x @ np.array(weights, np.float32)[:, None] + np.float32(bias)


def _request(
    url: str, body: Any = None, *, raw: bytes | None = None, method: str | None = None
) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as answer:
            text = answer.read()
            return answer.status, json.loads(text) if text else {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _rows(x: np.ndarray) -> dict[str, Any]:
    return {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}


def _metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_triton_client_health_metadata_and_binary_infer(served: Served) -> None:
    client = triton.InferenceServerClient(served.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("linear") and client.is_model_ready("linear", "v1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("linear", "v9")
    meta = client.get_model_metadata("linear")
    assert meta["versions"] == ["v1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["outputs"] == [
        {"name": "y", "datatype": "FP32", "shape": [-1, 1]},
        {"name": "big", "datatype": "BOOL", "shape": [-1, 1]},
    ]
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data", "model_repository"]

    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    tensor = triton.InferInput("x", [5, 3], "FP32")
    tensor.set_data_from_numpy(x)  # the binary tensor extension, both ways
    result = client.infer("linear", [tensor], request_id="r-1")
    np.testing.assert_allclose(result.as_numpy("y"), _expected(x, W1, B1), rtol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("big"), _expected(x, W1, B1) > 0)
    answer = result.get_response()
    assert answer["model_version"] == "v1" and answer["id"] == "r-1"

    tensor.set_data_from_numpy(x, binary_data=False)  # JSON both ways, one output, versioned path
    wanted = [triton.InferRequestedOutput("y", binary_data=False)]
    result = client.infer("linear", [tensor], model_version="v1", outputs=wanted)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["y"]
    assert "data" in result.get_response()["outputs"][0]
    np.testing.assert_allclose(result.as_numpy("y"), _expected(x, W1, B1), rtol=1e-6)

    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as caught:
        client.infer("nope", [tensor])
    assert caught.value.status() == "404"


def test_json_infer_over_plain_http(served: Served) -> None:
    x = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    nested = {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": x.tolist()}
    status, body = _request(
        f"{served.url}/v2/models/linear/versions/v1/infer", {"id": "a-7", "inputs": [nested]}
    )
    assert status == 200
    assert body["model_name"] == "linear" and body["model_version"] == "v1" and body["id"] == "a-7"
    y, big = body["outputs"]
    assert (y["name"], y["datatype"], y["shape"]) == ("y", "FP32", [2, 1])
    np.testing.assert_allclose(y["data"], _expected(x, W1, B1).ravel(), rtol=1e-6)
    assert (big["datatype"], big["data"]) == ("BOOL", (_expected(x, W1, B1) > 0).ravel().tolist())
    assert _request(f"{served.url}/v2/health/live") == (200, {})
    status, body = _request(f"{served.url}/v2/models/linear/ready")
    assert (status, body) == (200, {"name": "linear", "version": "v1", "ready": True})


_GOOD = [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("nope/infer", {"inputs": []}, 404, "unknown model 'nope'; this server has ['linear']"),
        ("nope", None, 404, "unknown model 'nope'"),
        ("linear/versions/v9/infer", {}, 404, "model 'linear' has no version 'v9'"),
        ("linear/versions/v9", None, 404, "it serves 'v1'"),
        (
            "linear/infer",
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1] * 4}]},
            400,
            "input 'x': shape must be [rows, 3]; got [1, 4]",
        ),
        (
            "linear/infer",
            {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": _GOOD}]},
            400,
            "input 'x': the model takes FP32; got FP64",
        ),
        (
            "linear/infer",
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": ["a"] * 3}]},
            400,
            "input 'x': FP32 data must be numbers",
        ),
        (
            "linear/infer",
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 3], "data": _GOOD}]},
            400,
            "input 'x': shape [2, 3] needs 6 values; got 3",
        ),
        (
            "linear/infer",
            {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 3], "data": _GOOD}]},
            400,
            "unknown input(s) ['z']; the model takes ['x']",
        ),
        (
            "linear/infer",
            {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": _GOOD}],
                "outputs": [{"name": "q"}],
            },
            400,
            "unknown output(s) ['q']; the model has ['y', 'big']",
        ),
        ("linear/infer", b"{not json", 400, "the request is not valid JSON"),
        (
            "linear/infer",
            {"inputs": [_rows(np.zeros((MAX_BATCH + 1, 3), np.float32))]},
            413,
            f"the request has {MAX_BATCH + 1} rows; this server takes at most {MAX_BATCH}",
        ),
        ("linear/infer", b" " * (MAX_BODY + 1), 413, f"this server takes {MAX_BODY}"),
    ],
)
def test_errors_answer_status_and_reason(
    served: Served, path: str, body: Any, status: int, message: str
) -> None:
    raw = body if isinstance(body, bytes) else None
    got, answer = _request(f"{served.url}/v2/models/{path}", None if raw else body, raw=raw)
    assert got == status
    assert message in answer["error"]


def test_concurrent_clients_each_get_their_own_rows_and_metrics_count_them(
    served: Served,
) -> None:
    before = _metrics(served.url)
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(int(n), 3)).astype(np.float32) for n in rng.integers(1, 9, 96)]

    def one(x: np.ndarray) -> tuple[int, dict[str, Any]]:
        return _request(f"{served.url}/v2/models/linear/infer", {"inputs": [_rows(x)]})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, batches))
    for x, (status, body) in zip(batches, answers):
        assert status == 200 and body["model_version"] == "v1"
        np.testing.assert_allclose(
            body["outputs"][0]["data"], _expected(x, W1, B1).ravel(), rtol=1e-6
        )

    after = _metrics(served.url)
    model = (("model", "linear"),)

    def delta(name: str, labels: tuple[tuple[str, str], ...] = model) -> float:
        return after.get((name, labels), 0.0) - before.get((name, labels), 0.0)

    assert delta("streamml_serve_requests_total", (("code", "200"), ("model", "linear"))) == 96
    assert delta("streamml_serve_request_seconds_count") == 96
    assert delta("streamml_serve_batch_rows_sum") == sum(len(x) for x in batches)
    assert delta("streamml_serve_batch_requests_sum") == 96
    assert 1 <= delta("streamml_serve_batch_rows_count") <= 96  # model calls
    bad = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": _GOOD}]}
    assert _request(f"{served.url}/v2/models/nope/infer", bad)[0] == 404
    assert _request(f"{served.url}/v2/models/linear/infer", bad)[0] == 400
    assert _request(f"{served.url}/v2/models/linear/versions/v9/infer", bad)[0] == 404
    errors = _metrics(served.url)
    for labels in (
        (("model", ""), ("reason", "not_found")),
        (("model", "linear"), ("reason", "bad_request")),
        (("model", "linear"), ("reason", "not_found")),
    ):
        key = ("streamml_serve_errors_total", labels)
        assert errors[key] - before.get(key, 0.0) == 1


def test_a_new_file_is_served_live_once_it_loads_and_a_broken_one_is_not(
    tmp_path: Path, make_linear: Callable[..., bytes]
) -> None:
    path = tmp_path / "linear.onnx"
    path.write_bytes(make_linear(W1, B1))
    log = tmp_path / "stderr.log"
    served = _start(
        path, log, "--version", "v1", "--watch", "--watch-interval-ms", "50", sigint_ignored=True
    )
    try:
        infer = f"{served.url}/v2/models/linear/infer"
        x = np.array([[1.0, 2.0, 3.0]], np.float32)

        def replace(data: bytes) -> None:  # as a deployment does: write aside, rename over
            aside = tmp_path / "incoming.onnx"
            aside.write_bytes(data)
            os.replace(aside, path)

        def wait_for(check: Callable[[], bool], what: str) -> None:
            for _ in range(600):
                if check():
                    return
                time.sleep(0.05)
            raise AssertionError(f"{what} did not happen in 30 s; stderr: {log.read_text()}")

        replace(b"not an onnx model")
        failed = ("streamml_serve_model_loads_total", (("model", "linear"), ("outcome", "failed")))
        wait_for(lambda: _metrics(served.url).get(failed) == 1, "the broken load")
        status, body = _request(infer, {"inputs": [_rows(x)]})
        assert status == 200 and body["model_version"] == "v1"  # the old version still serves

        new = make_linear(W2, B2)
        replace(new)
        version = f"linear@{hashlib.sha256(new).hexdigest()[:8]}"
        wait_for(
            lambda: _request(f"{served.url}/v2/models/linear")[1]["versions"] == [version],
            "the swap",
        )
        status, body = _request(infer, {"inputs": [_rows(x)]})
        assert status == 200 and body["model_version"] == version
        np.testing.assert_allclose(body["outputs"][0]["data"], _expected(x, W2, B2).ravel())
        assert _request(f"{served.url}/v2/models/linear/versions/v1/infer", {})[0] == 404
        ok = ("streamml_serve_model_loads_total", (("model", "linear"), ("outcome", "ok")))
        assert _metrics(served.url)[ok] == 1

        # the repository extension's load reads the file again: unchanged, the same version
        status, body = _request(
            f"{served.url}/v2/repository/models/linear/load", raw=b"", method="POST"
        )
        assert (status, body) == (200, {"name": "linear", "version": version})
        status, body = _request(f"{served.url}/v2/repository/index", raw=b"", method="POST")
        assert (status, body) == (200, [{"name": "linear", "version": version, "state": "READY"}])
    finally:
        _stop(served, signal.SIGINT)
