"""Start a model server in the background and hold it by a handle."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path

import uvicorn

from streamml.models import Model
from streamml.serve.app import build_app
from streamml.serve.metrics import ServerMetrics
from streamml.serve.repository import ModelRepository

__all__ = ["Server", "serve"]


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (the ``serve`` extra has it, but on Windows).

    With it (and httptools, which Uvicorn picks by itself) the MLP's one-row requests/s
    were 1.6-2.5x those on asyncio's loop and h11, 16 clients, alternating runs.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Server:
    """A running model server: its address, live version swaps, and stop.

    Made by :func:`serve`. The server runs Uvicorn on its own event loop in a
    background thread; the methods here are safe to call from any other
    thread. Use it as a context manager to stop it at the end.
    """

    def __init__(self, server: uvicorn.Server, sock: socket.socket, repository: ModelRepository):
        self._server = server
        self._sock = sock
        self._repository = repository
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="streamml-serve", daemon=True)
        host, port = sock.getsockname()[:2]
        self.host: str = host
        """The address the server listens on."""
        self.port: int = port
        """The port it listens on (the free one picked when ``port=0``)."""

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:8000``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await self._server.serve(sockets=[self._sock])

        loop = _new_loop()
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._failed = exc
        finally:  # as asyncio.run ends: the threads that loaded swapped-in versions too
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    def start(self, timeout: float = 30.0) -> Server:
        """Start serving; returns once the server accepts requests."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._sock.close()
                raise RuntimeError(f"the model server did not start: {self._failed!r}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the model server did not start within {timeout} s")
            time.sleep(0.01)
        return self

    def swap(self, name: str, model: Model, timeout: float | None = None) -> str:
        """Serve ``model`` as the new version of ``name`` once it passes its probe.

        The old version answers until then, and answers the requests it
        already queued. Returns the version now served.

        Raises:
            streamml.serve.RequestError: the name is unknown (404) or the new
                version failed its check (400); the old one keeps serving.
        """
        return self._call(self._repository.swap(name, model), timeout)

    def reload(self, name: str, timeout: float | None = None) -> str:
        """Load ``name`` again from its file (see ``files`` of :func:`serve`); returns its version."""
        return self._call(self._repository.reload(name), timeout)

    def version(self, name: str) -> str:
        """The version of ``name`` being served now."""
        return self._repository.get(name).version

    def _call(self, coro, timeout: float | None) -> str:  # noqa: ANN001 - a coroutine
        if self._loop is None or not self._thread.is_alive():
            coro.close()
            raise RuntimeError("the model server is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting requests, answer those in flight, and stop."""
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    models: Mapping[str, Model],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_batch: int = 1024,
    max_wait: timedelta = timedelta(0),
    max_body_bytes: int = 64 << 20,
    files: Mapping[str, str | os.PathLike[str]] | None = None,
    loader: Callable[[Path], Model] | None = None,
    watch: timedelta | None = None,
) -> Server:
    """Serve models over the Open Inference Protocol (KServe V2) in the background.

    Use it to put any streamml :class:`~streamml.models.Model` (ONNX, a Python
    function, a remote model) behind HTTP for clients that are not Python
    dataflows — Triton's and KServe's clients, another team's service, a
    ``streamml`` dataflow in another process. Requests that arrive together
    share one model call (up to ``max_batch`` rows, waiting at most
    ``max_wait``). Every answer carries the version that computed it. Each
    model is probed with a row of zeros before it is served.

    Args:
        models: The models to serve, by the name clients use.
        host: The address to listen on (loopback by default).
        port: The port; 0 picks a free one (see :attr:`Server.port`).
        max_batch: Most rows per model call; a request with more gets 413.
        max_wait: Longest a request waits for others to share its model call.
            With 0 (the default, as Triton's) a lone request runs at once, and the
            requests that arrive while the model runs share the next call: one-row
            round trips of the MLP took 0.5 ms at 0 and 1.8 ms at 1 ms, and 16
            clients got as many requests/s either way.
        max_body_bytes: Largest request body (after decompression); 413 above.
        files: The files the models were loaded from, by name: a model with a
            file can be reloaded (``POST /v2/repository/models/{name}/load``,
            :meth:`Server.reload`), and is watched when ``watch`` is given.
        loader: Builds a model from its file (default: ONNX Runtime, one
            intra-op thread, version ``stem@sha256[:8]``).
        watch: Check the files this often and load a changed one live.

    Returns:
        The running :class:`Server`; ``stop()`` it, or use it in ``with``.

    Raises:
        ValueError: a bad setting, or a model that fails its probe.

    Examples:
        >>> import json, urllib.request
        >>> import numpy as np
        >>> from streamml.models import CallableModel
        >>> double = CallableModel(lambda x: 2 * x, outputs="y", shape=(2,), version="v7")
        >>> with serve({"double": double}) as server:
        ...     body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2],
        ...                         "data": [1.5, 2.0]}]}
        ...     url = f"{server.url}/v2/models/double/infer"
        ...     with urllib.request.urlopen(url, json.dumps(body).encode()) as answer:
        ...         print(answer.read().decode())
        {"model_name":"double","model_version":"v7","outputs":[{"name":"y","datatype":"FP32","shape":[1,2],"data":[3.0,4.0]}]}
    """
    if not models:
        raise ValueError("serve needs at least one model")
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be an int >= 1; got {max_batch!r}")
    if not isinstance(max_wait, timedelta) or max_wait < timedelta(0):
        raise ValueError(f"max_wait must be a timedelta >= 0; got {max_wait!r}")
    if watch is not None and watch <= timedelta(0):
        raise ValueError(f"watch must be a positive timedelta; got {watch!r}")
    if watch is not None and not files:
        raise ValueError("watch needs files: the paths to watch, by model name")
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1; got {max_body_bytes}")
    metrics = ServerMetrics()
    repository = ModelRepository(
        models,
        metrics=metrics,
        max_batch=max_batch,
        max_wait_s=max_wait.total_seconds(),
        files=files,
        loader=loader,
    )
    app = build_app(
        repository,
        metrics,
        max_body_bytes=max_body_bytes,
        watch_interval_s=None if watch is None else watch.total_seconds(),
    )
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    # proto=IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off only on connections
    # of a socket that says it is TCP; with it on, every answer waited ~40 ms for an ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {exc}") from None
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5
    )
    return Server(uvicorn.Server(config), sock, repository).start()
