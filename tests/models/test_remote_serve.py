"""RemoteModel against the real ``streamml serve`` process: the same scores as the model in-process."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import numpy as np
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from streamml.operators.infer import infer

from streamml.models import OnnxModel
from streamml.models.remote import OpenInference, RemoteModel, Retry
from tests.models.test_remote_server import free_port


def _mlp_onnx() -> bytes:
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    mlp = MLPClassifier(hidden_layer_sizes=(16,), max_iter=30, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged in 30 rounds: it need not be good
        mlp.fit(x, (x[:, 0] > x[:, 1]).astype(np.int64))
    return to_onnx(mlp, x[:1], options={id(mlp): {"zipmap": False}}).SerializeToString()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes]]:
    """``streamml serve mlp.onnx`` as its own process, and the model's bytes."""
    path = Path(tmp_path_factory.mktemp("serve")) / "mlp.onnx"
    path.write_bytes(_mlp_onnx())
    port = free_port()
    command = "from streamml.cli import main; raise SystemExit(main())"
    argv = ["serve", str(path), "--name", "mlp", "--version", "7", "--port", str(port)]
    proc = subprocess.Popen([sys.executable, "-c", command, *argv, "--max-batch", "512"])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/v2/health/ready", timeout=5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("streamml serve did not start") from None
                time.sleep(0.1)
        yield url, path.read_bytes()
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("binary", [False, True])
def test_remote_scores_equal_the_model_in_process_in_a_dataflow(
    served: tuple[str, bytes], binary: bool
) -> None:
    url, onnx = served
    local = OnnxModel(onnx, intra_op_threads=1)
    remote = RemoteModel(url, OpenInference("mlp", binary=binary), max_rows=100, max_in_flight=3)
    assert remote.version == "mlp@7"
    assert remote.inputs == local.inputs and set(remote.outputs) == set(local.outputs)
    rng = np.random.default_rng(4)
    frames = [
        pl.DataFrame({"id": np.arange(i * 300, (i + 1) * 300), "x": rng.normal(size=(300, 4))})
        for i in range(5)
    ]

    def scored(model: object) -> pl.DataFrame:
        flow = Dataflow("served")
        up = op.input("in", flow, TestingSource(frames))
        out = infer("mlp", up, model, inputs="x", max_batch=512, max_wait=timedelta(0))
        oks: list = []
        op.output("oks", out.oks, TestingSink(oks))
        run_main(flow)
        return pl.concat(oks)

    there, here = scored(remote), scored(local)
    remote.close()
    assert there["id"].to_list() == list(range(1500))
    assert there["model_version"].unique().to_list() == ["mlp@7"]
    np.testing.assert_allclose(
        np.stack(there["probabilities"].to_numpy()),
        np.stack(here["probabilities"].to_numpy()),
        rtol=1e-5,
    )
    np.testing.assert_array_equal(there["label"].to_numpy(), here["label"].to_numpy())


def test_a_request_over_the_servers_limit_is_sent_again_in_halves(
    served: tuple[str, bytes],
) -> None:
    remote = RemoteModel(served[0], "mlp", max_rows=1000, retry=Retry(budget=5.0))
    x = np.random.default_rng(5).normal(size=(600, 4)).astype(np.float32)
    before = remote.stats()
    out = remote.predict(x)  # refused with HTTP 413 as a whole; its halves are answered
    after = remote.stats()
    assert after["refused"] - before["refused"] == 1 and after["rows"] - before["rows"] == 600
    parts = [remote.predict(x[:300]), remote.predict(x[300:])]
    for name, values in out.items():
        np.testing.assert_allclose(values, np.concatenate([p[name] for p in parts]), rtol=1e-6)
    remote.close()
