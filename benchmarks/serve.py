"""The model server alone: ``streamml serve`` next to the same model in-process.

The model is the light pipeline's MLP 4→64→64→2 (``benchmarks.pipeline.build_mlp``),
ONNX Runtime with one intra-op thread. The server runs as its own process on
loopback (``streamml serve mlp.onnx --port 0``, its defaults: max batch 1,024
rows, max wait 0); the clients are threads of this process, each with one
kept-alive connection (``http.client``), sending pre-encoded bodies:

- **batch 1, one client**: one row a request, one request at a time —
  requests/s and the p50/p99 round trip;
- **batch 1, 16 clients**: one row a request, 16 in flight — requests/s (=
  rows/s) and how many requests the dynamic batcher put in each model call
  (from the server's ``/metrics``);
- **256 rows a request, 4 clients**, JSON tensors and binary tensors — rows/s.

The baseline is the same model in this process: ``OnnxModel.predict`` called
with one row, and with 256 rows, as fast as it goes. Every contender runs
``rounds`` times, alternating, and the medians are compared.

``python -m benchmarks.serve --url http://HOST:PORT --name MODEL`` drives an
Open Inference Protocol server that is already running (Triton, KServe,
MLServer, ``streamml serve``) with the same clients and bodies, serving a
model with this MLP's input ``X`` (FP32, 4 columns): docs/serving.md compares
frameworks that way.
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.harness import alternate, format_table
from benchmarks.pipeline import build_mlp
from streamml.models import OnnxModel

ROOT = Path(__file__).resolve().parents[1]
ROWS = 256
"""Rows a request in the batched runs."""


def _json_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    tensor = {"name": "X", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode(), {"Content-Type": "application/json"}


def _binary_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    raw = x.astype("<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "X",
                    "datatype": "FP32",
                    "shape": list(x.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return head + raw, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }


class Load:
    """``clients`` threads, each sending ``per_client`` requests over one kept-alive connection.

    Calling it runs the load once and returns the number of rows answered; the
    round-trip times of the last run are in :attr:`latencies`.
    """

    def __init__(
        self,
        url: str,
        name: str,
        body: tuple[bytes, dict[str, str]],
        rows: int,
        *,
        clients: int,
        per_client: int,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        self._host, self._port = parts.hostname, parts.port
        self._path = f"/v2/models/{name}/infer"
        self._body, self._headers = body
        self._rows, self._clients, self._per_client = rows, clients, per_client
        self.latencies: list[float] = []

    def _client(self, out: list[float], failed: list[str]) -> None:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=60)
        try:
            for _ in range(self._per_client):
                start = time.perf_counter()
                conn.request("POST", self._path, self._body, self._headers)
                answer = conn.getresponse()
                data = answer.read()
                out.append(time.perf_counter() - start)
                if answer.status != 200:
                    failed.append(f"{answer.status}: {data[:200]!r}")
                    return
        finally:
            conn.close()

    def __call__(self) -> int:
        per_thread: list[list[float]] = [[] for _ in range(self._clients)]
        failed: list[str] = []
        threads = [threading.Thread(target=self._client, args=(lat, failed)) for lat in per_thread]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failed:
            raise RuntimeError(f"the server refused a request: {failed[0]}")
        self.latencies = [x for lat in per_thread for x in lat]
        return self._clients * self._per_client * self._rows


def _in_process(model: OnnxModel, x: np.ndarray, calls: int) -> Callable[[], int]:
    def run() -> int:
        for _ in range(calls):
            model.predict(x)
        return calls * len(x)

    return run


def _batching(url: str) -> tuple[float, float]:
    """Model calls and requests so far, from the server's metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as answer:
        text = answer.read().decode()

    def total(metric: str) -> float:
        return sum(float(v) for v in re.findall(rf"^{metric}\{{[^}}]*\}} (\S+)$", text, re.M))

    return total("streamml_serve_batch_requests_count"), total("streamml_serve_batch_requests_sum")


def _ms(seconds: list[float], q: float) -> float:
    return round(float(np.quantile(seconds, q)) * 1000, 3)


def compare(
    url: str,
    name: str,
    *,
    quick: bool,
    rounds: int,
    model: OnnxModel | None = None,
    batching_metrics: bool = False,
    binary: bool = True,
) -> dict:
    """Drive a running server with every scenario (and the in-process model, if given)."""
    rng = np.random.default_rng(3)
    one = rng.normal([60, 60, 2, 5], [3, 1, 0.3, 0.1], size=(1, 4)).astype(np.float32)
    many = rng.normal([60, 60, 2, 5], [3, 1, 0.3, 0.1], size=(ROWS, 4)).astype(np.float32)
    scale = 1 if quick else 4
    single = Load(url, name, _json_body(one), 1, clients=1, per_client=500 * scale)
    concurrent = Load(url, name, _json_body(one), 1, clients=16, per_client=100 * scale)
    batched = Load(url, name, _json_body(many), ROWS, clients=4, per_client=100 * scale)
    report: dict = {}

    one_row = {"server, batch 1, 1 client": single, "server, batch 1, 16 clients": concurrent}
    if model is not None:
        one_row["in-process, 1 row a call"] = _in_process(model, one, 5000 * scale)
    before = _batching(url) if batching_metrics else None
    results = alternate(one_row, rounds=rounds)
    print(format_table("MLP 4→64→64→2, one row a request, rows/s", results, "rows/s"))
    report["one_row"] = [m.as_dict() for m in results]
    report["latency_ms_batch1_1client"] = {
        "p50": _ms(single.latencies, 0.5),
        "p99": _ms(single.latencies, 0.99),
    }
    report["latency_ms_batch1_16clients"] = {
        "p50": _ms(concurrent.latencies, 0.5),
        "p99": _ms(concurrent.latencies, 0.99),
    }
    print(f"  round trip, 1 client:   p50/p99 {report['latency_ms_batch1_1client']} ms")
    print(f"  round trip, 16 clients: p50/p99 {report['latency_ms_batch1_16clients']} ms")
    if before is not None:
        calls, requests = (a - b for a, b in zip(_batching(url), before, strict=True))
        report["requests_per_model_call"] = round(requests / calls, 2)
        print(f"  requests per model call (all one-row runs): {requests / calls:.2f}")

    many_rows: dict[str, Callable[[], int]] = {
        f"server, {ROWS} rows a request (JSON), 4 clients": batched
    }
    if binary:
        many_rows[f"server, {ROWS} rows a request (binary), 4 clients"] = Load(
            url, name, _binary_body(many), ROWS, clients=4, per_client=100 * scale
        )
    if model is not None:
        many_rows[f"in-process, {ROWS} rows a call"] = _in_process(model, many, 2000 * scale)
    results = alternate(many_rows, rounds=rounds)
    print(format_table(f"MLP 4→64→64→2, {ROWS} rows a request, rows/s", results, "rows/s"))
    report["batched"] = [m.as_dict() for m in results]
    report["median_ms_batched_json"] = _ms(batched.latencies, 0.5)
    return report


def _start(path: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "streamml.cli", "serve", str(path), "--name", "mlp", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()
    found = re.search(r" at (http://\S+) ", line)
    if found is None:
        process.kill()
        raise RuntimeError(f"streamml serve did not start: {line!r}")
    return process, found.group(1)


def main(quick: bool = False, rounds: int = 3) -> dict:
    model_bytes = build_mlp()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mlp.onnx"
        path.write_bytes(model_bytes)
        process, url = _start(path)
        try:
            report = compare(
                url,
                "mlp",
                quick=quick,
                rounds=rounds,
                model=OnnxModel(model_bytes, intra_op_threads=1),
                batching_metrics=True,
            )
        finally:
            process.terminate()
            process.wait(30)
    by_name = {m["name"]: m["median"] for m in report["one_row"] + report["batched"]}
    json_rows = by_name[f"server, {ROWS} rows a request (JSON), 4 clients"]
    report["ratios"] = {
        "batch1_16clients_vs_1client": round(
            by_name["server, batch 1, 16 clients"] / by_name["server, batch 1, 1 client"], 2
        ),
        "batched_json_vs_in_process": round(
            json_rows / by_name[f"in-process, {ROWS} rows a call"], 3
        ),
    }
    print(f"ratios: {report['ratios']}", flush=True)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serve",
        description="streamml serve next to the same model in-process, or any running "
        "Open Inference Protocol server serving the MLP (--url, --name).",
    )
    parser.add_argument("--url", help="a running server to drive instead of starting one")
    parser.add_argument("--name", default="mlp", help="the model's name on --url")
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument(
        "--no-binary", action="store_true", help="the server has no binary tensor extension"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    args = parser.parse_args()
    if args.url:
        compare(
            args.url, args.name, quick=args.quick, rounds=args.rounds, binary=not args.no_binary
        )
    else:
        main(quick=args.quick, rounds=args.rounds)
