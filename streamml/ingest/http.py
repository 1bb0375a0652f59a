"""Accept records over HTTP: each POST is spooled before it is answered.

``POST /records`` takes the body as one record; with ``?lines=1`` (or a
``Content-Type`` of ``application/x-ndjson``) each line of the body is a
record, which is how a device sends many at once. ``?key=K`` gives the
records the key ``K``; without it the agent's key spec applies, with
``?name=N`` as the name a ``name`` or ``name-regex`` spec reads (``http``
by default).

The answer comes only once the records are in the on-disk spool
(``200 {"accepted": n, "first_seq": s}``): a client that got a 200 can
forget the records, they will reach Kafka. When the spool is full the
answer is ``503`` with ``Retry-After`` — the client keeps the records and
tries again (back-pressure over HTTP; nothing is taken that could be
dropped). ``GET /health`` serves the agent's counters as JSON.

Built on Starlette and Uvicorn (``pip install 'streamml[ingest]'``), the
same server ``streamml serve`` uses.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from streamml.ingest.source import Read

if TYPE_CHECKING:
    from streamml.ingest.agent import IngestAgent

__all__ = ["HttpInput"]

logger = logging.getLogger(__name__)

_NDJSON = "application/x-ndjson"


def _import_server() -> tuple[Any, Any]:
    try:
        import starlette
        import uvicorn
    except ImportError:
        raise ImportError(
            "the HTTP input needs Starlette and Uvicorn: pip install 'streamml[ingest]'"
        ) from None
    return starlette, uvicorn


class HttpInput:
    """An HTTP endpoint feeding the agent's spool (see the module docstring).

    Args:
        host: Address to listen on (``0.0.0.0`` for every interface).
        port: Port to listen on; ``0`` picks a free one (see :attr:`port` once started).
        max_body: Largest body accepted, in bytes (``413`` above it).
        source: The name records from here carry in the spool.

    Examples:
        >>> http = HttpInput("127.0.0.1", 0)
        >>> http.max_body
        16777216
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8080,
        *,
        max_body: int = 16 << 20,
        source: str = "http",
    ) -> None:
        if max_body <= 0:
            raise ValueError(f"max_body must be > 0; got {max_body}")
        _import_server()
        self.host = host
        self.port = port
        self.max_body = max_body
        self.source = source
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def app(self, agent: IngestAgent) -> Any:
        """The Starlette application, bound to ``agent``."""
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        from streamml.ingest.agent import SpoolFull

        async def records(request: Request) -> JSONResponse:
            length = request.headers.get("content-length")
            if length is not None and int(length) > self.max_body:
                return JSONResponse({"error": f"body over {self.max_body} bytes"}, 413)
            body = await request.body()
            if len(body) > self.max_body:
                return JSONResponse({"error": f"body over {self.max_body} bytes"}, 413)
            query = request.query_params
            as_lines = query.get("lines") in ("1", "true") or request.headers.get(
                "content-type", ""
            ).startswith(_NDJSON)
            values = [v for v in body.split(b"\n") if v] if as_lines else [body]
            if not values or not body:
                return JSONResponse({"error": "empty body: nothing to send"}, 400)
            key = query.get("key")
            read = Read(
                values,
                [query.get("name", "http")],
                None,
                keys=None if key is None else [key.encode()] * len(values),
            )
            try:
                first = await run_in_threadpool(agent.offer, self.source, read)
            except SpoolFull as exc:
                return JSONResponse(
                    {"error": f"spool full, try again later: {exc}"}, 503, {"Retry-After": "1"}
                )
            return JSONResponse({"accepted": len(values), "first_seq": first})

        async def health(request: Request) -> JSONResponse:
            return JSONResponse(agent.status())

        return Starlette(
            routes=[
                Route("/records", records, methods=["POST"]),
                Route("/health", health, methods=["GET"]),
            ]
        )

    def start(self, agent: IngestAgent) -> None:
        """Serve in a background thread until :meth:`stop` (nothing if already serving)."""
        if self._server is not None:
            return
        _, uvicorn = _import_server()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(agent), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="ingest-http", daemon=True
        )
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            time.sleep(0.01)
        logger.info("accepting POST http://%s:%d/records", self.host, self.port)

    def stop(self) -> None:
        """Stop serving (requests in progress finish first)."""
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join()
            self._server = self._thread = None
