"""The Open Inference Protocol (KServe V2) over HTTP, as a Starlette application."""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from streamml.serve.errors import RequestError
from streamml.serve.metrics import ServerMetrics
from streamml.serve.repository import ModelRepository
from streamml.serve.tensors import check_inputs, decode_request, encode_response

__all__ = ["build_app"]

logger = logging.getLogger(__name__)

_JSON = "application/json"
_HEADER_LENGTH = "inference-header-content-length"
_SERVER = {"name": "streamml", "extensions": ["binary_tensor_data", "model_repository"]}


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type=_JSON)


def _error(exc: RequestError) -> Response:
    return _json({"error": str(exc)}, exc.status)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, decompressed if the client compressed it; 413 past ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"the request has {declared} bytes; this server takes {limit}")
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise RequestError(400, f"unsupported Content-Encoding {encoding!r}")
    inflate = (
        None
        if encoding == "identity"
        else zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    )
    parts, size = [], 0
    async for chunk in request.stream():
        if inflate is not None:
            try:
                chunk = inflate.decompress(chunk, limit + 1 - size)
            except zlib.error as exc:
                raise RequestError(400, f"the {encoding} body does not decompress: {exc}") from None
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"the request is larger than {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def build_app(
    repository: ModelRepository,
    metrics: ServerMetrics,
    *,
    max_body_bytes: int = 64 << 20,
    watch_interval_s: float | None = None,
) -> Starlette:
    """The HTTP application of a model server.

    Routes: ``GET /v2`` (server metadata), ``/v2/health/live``,
    ``/v2/health/ready``, ``/v2/models/{name}[/versions/{v}]`` (model
    metadata), ``.../ready``, ``POST .../infer``, the model repository
    extension's ``POST /v2/repository/index`` and
    ``POST /v2/repository/models/{name}/load`` (reload from the model's file),
    and ``GET /metrics`` (Prometheus).

    Args:
        repository: The models it serves.
        metrics: Where requests, latencies, batch sizes and errors are counted.
        max_body_bytes: Largest request body, after decompression (413 above).
        watch_interval_s: Poll the models' files this often and load a
            changed one live; ``None`` does not watch.
    """

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        return Response(status_code=200)

    async def server_metadata(request: Request) -> Response:
        return _json(_SERVER)

    async def model_metadata(request: Request) -> Response:
        try:
            loaded = repository.get(request.path_params["name"], request.path_params.get("version"))
        except RequestError as exc:
            return _error(exc)
        return _json(loaded.metadata)

    async def model_ready(request: Request) -> Response:
        try:
            loaded = repository.get(request.path_params["name"], request.path_params.get("version"))
        except RequestError as exc:
            return _error(exc)
        return _json({"name": loaded.name, "version": loaded.version, "ready": True})

    async def infer(request: Request) -> Response:
        start = time.perf_counter()
        name = request.path_params["name"]
        label = name
        try:
            loaded = repository.get(name, request.path_params.get("version"))
        except RequestError as exc:
            if name not in repository.names():
                label = ""  # a client's unknown names are not label values
            response = _error(exc)
        else:
            try:
                response = await _infer(request, loaded)
            except RequestError as exc:
                response = _error(exc)
            except Exception as exc:  # noqa: BLE001 - a bug answers 500 with its reason, counted
                logger.exception("model %s: request failed", name)
                response = _json({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)
        status = response.status_code
        metrics.requests.labels(model=label, code=str(status)).inc()
        if status != 200:
            metrics.errors.labels(model=label, reason=_REASONS.get(status, str(status))).inc()
        metrics.latency.labels(model=label).observe(time.perf_counter() - start)
        return response

    async def _infer(request: Request, loaded: Any) -> Response:
        body = await _read_body(request, max_body_bytes)
        header = request.headers.get(_HEADER_LENGTH)
        if header is not None and not header.isdigit():
            raise RequestError(
                400, f"Inference-Header-Content-Length must be a number; got {header!r}"
            )
        req = decode_request(body, None if header is None else int(header))
        feeds, rows = check_inputs(loaded.model.inputs, req.inputs)
        if rows > repository.max_batch:
            raise RequestError(
                413,
                f"the request has {rows} rows; this server takes at most {repository.max_batch} "
                "a request (split it, or start the server with a larger max batch)",
            )
        outputs = await loaded.batcher.submit(feeds, rows)
        payload, json_length = encode_response(
            model_name=loaded.name,
            model_version=loaded.version,
            request=req,
            outputs=outputs,
            order=loaded.model.outputs,
        )
        if json_length is None:
            return Response(payload, media_type=_JSON)
        return Response(
            payload,
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(json_length)},
        )

    async def repository_index(request: Request) -> Response:
        return _json(
            [
                {"name": n, "version": repository.get(n).version, "state": "READY"}
                for n in repository.names()
            ]
        )

    async def repository_load(request: Request) -> Response:
        try:
            version = await repository.reload(request.path_params["name"])
        except RequestError as exc:
            return _error(exc)
        return _json({"name": request.path_params["name"], "version": version})

    async def scrape(request: Request) -> Response:
        return Response(metrics.scrape(), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        watcher = None
        if watch_interval_s is not None:
            watcher = asyncio.get_running_loop().create_task(repository.watch(watch_interval_s))
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
            await repository.close()

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", repository_load, methods=["POST"]),
        Route("/metrics", scrape),
    ]
    for path in (model, versioned):
        routes += [
            Route(path, model_metadata),
            Route(path + "/ready", model_ready),
            Route(path + "/infer", infer, methods=["POST"]),
        ]
    return Starlette(routes=routes, lifespan=lifespan)


_REASONS = {400: "bad_request", 404: "not_found", 413: "too_large", 500: "model_error"}
