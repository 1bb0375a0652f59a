"""Serve streamml models over the Open Inference Protocol (KServe V2 over HTTP).

:func:`serve` puts any :class:`~streamml.models.Model` behind the protocol's
REST endpoints — health, model metadata, readiness and inference with JSON or
binary tensors — with dynamic batching, a version on every answer, live
version swaps (checked before they serve) and Prometheus metrics at
``/metrics``. The ``streamml serve MODEL.onnx --name NAME`` command runs it
from a shell. It is built on Starlette and Uvicorn, the ``serve`` extra
(``pip install 'streamml[serve]'``); docs/serving.md says why those, and not
KServe's or MLServer's server.
"""

from __future__ import annotations

from typing import Any

from streamml.serve.errors import RequestError

__all__ = ["RequestError", "Server", "serve"]


def __getattr__(name: str) -> Any:
    # The server needs the `serve` extra; importing this package (the CLI does, to list
    # its commands) must not, so the server's module is imported on first use.
    if name in ("Server", "serve"):
        from streamml.serve import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
