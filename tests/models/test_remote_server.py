"""A deliberately faulty Open Inference Protocol server, run as its own process by the remote-model tests.

It serves one model, ``double-sum`` (``score = 2 * sum(features)`` over
``float32`` rows of 4), on Starlette and Uvicorn, and misbehaves on request:

- ``--refuse-negative``: HTTP 400 with ``{"error": ...}`` naming the row,
  for a request holding a row whose first feature is negative;
- ``--garbage-over X``: a 200 answer with one row too few when a row's first
  feature is above X; ``--garbage-always``: an HTML page for every inference;
- ``--delay S``: every inference takes S seconds (the event loop keeps
  taking requests, so concurrency is visible);
- ``--die-after N``: the process exits hard while answering its N-th
  inference (the connection is reset; nothing is answered).

``GET /stats`` gives what it did: requests, rows scored (answered 200, not garbage),
and the most inferences in flight at once. This file has no tests; the
helper :class:`FaultyServer` starts, kills and restarts it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[2]


def expected_scores(x: np.ndarray) -> np.ndarray:
    """What the served model answers for rows ``x``."""
    return 2 * np.asarray(x, dtype=np.float32).sum(axis=1, dtype=np.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultyServer:
    """The faulty server as a child process on a loopback port that stays the same across restarts."""

    def __init__(self, *args: str) -> None:
        self.args = list(args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, *args: str) -> FaultyServer:
        """Start it (with ``args`` instead of the first ones, if given) and wait until it answers."""
        argv = list(args) if args else self.args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.models.test_remote_server", "--port", str(self.port)]
            + argv,
            cwd=ROOT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the faulty server exited with {self.proc.returncode}")
            try:
                self.stats()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("the faulty server did not start within 60 s")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=5) as answer:
            return orjson.loads(answer.read())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()

    def __enter__(self) -> FaultyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def build_app(opts: argparse.Namespace) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    stats = {"requests": 0, "rows": 0, "in_flight": 0, "max_in_flight": 0}
    metadata = {
        "name": "double-sum",
        "versions": ["3"],
        "platform": "test",
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]}],
    }

    async def model_metadata(request: Request) -> Response:
        return JSONResponse(metadata)

    async def get_stats(request: Request) -> Response:
        return JSONResponse(stats)

    async def infer(request: Request) -> Response:
        stats["requests"] += 1
        stats["in_flight"] += 1
        stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
        try:
            if opts.die_after and stats["requests"] >= opts.die_after:
                os._exit(3)
            if opts.delay:
                await asyncio.sleep(opts.delay)
            if opts.garbage_always:
                return Response(b"<html>Gateway says hello</html>", media_type="text/html")
            body = orjson.loads(await request.body())
            [tensor] = body["inputs"]
            x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
            if opts.refuse_negative:
                bad = np.flatnonzero(x[:, 0] < 0)
                if len(bad):
                    reason = f"features[{bad[0]}][0] = {x[bad[0], 0]:g} is negative"
                    return JSONResponse({"error": reason}, status_code=400)
            scores = expected_scores(x)
            if opts.garbage_over is not None and (x[:, 0] > opts.garbage_over).any():
                scores = scores[:-1]
            else:
                stats["rows"] += len(scores)
            answer = {
                "model_name": "double-sum",
                "model_version": "3",
                "outputs": [
                    {"name": "score", "datatype": "FP32", "shape": [len(scores)], "data": scores}
                ],
            }
            return Response(
                orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY),
                media_type="application/json",
            )
        finally:
            stats["in_flight"] -= 1

    return Starlette(
        routes=[
            Route("/stats", get_stats),
            Route("/v2/models/double-sum", model_metadata),
            Route("/v2/models/double-sum/infer", infer, methods=["POST"]),
        ]
    )


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--refuse-negative", action="store_true")
    parser.add_argument("--garbage-over", type=float)
    parser.add_argument("--garbage-always", action="store_true")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--die-after", type=int, default=0)
    opts = parser.parse_args()
    uvicorn.run(build_app(opts), host="127.0.0.1", port=opts.port, log_level="warning")


if __name__ == "__main__":
    main()
