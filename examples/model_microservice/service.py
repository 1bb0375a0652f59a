"""The model's microservice: ``streamml serve`` in its own process, started and stopped by the example."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

NAME = "failure-risk"
"""The model's name on the server."""


class ModelService:
    """``streamml serve MODEL --name failure-risk`` on a free loopback port, as a context manager.

    Args:
        model: The ONNX file to serve.
        max_batch: The server's largest request, in rows (413 above).
    """

    def __init__(self, model: Path, *, max_batch: int = 20_000) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._argv = [
            sys.executable,
            "-c",
            "from streamml.cli import main; raise SystemExit(main())",
            "serve",
            str(model),
            "--name",
            NAME,
            "--port",
            str(self.port),
            "--max-batch",
            str(max_batch),
            # Every request here is a batch already (or, for the per-event router, must not
            # wait for company): no waiting for other requests to share a model call.
            "--max-wait-ms",
            "0",
        ]
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> ModelService:
        self._proc = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=5).close()
                return self
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"streamml serve did not start: {self._argv}") from None
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
