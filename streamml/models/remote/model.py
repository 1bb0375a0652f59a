"""A model served by another process over HTTP, behind the :class:`~streamml.models.Model` protocol."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import urllib3
from urllib3.exceptions import HTTPError

from streamml.models._declared import Declared
from streamml.models.protocol import ModelInputError, RowErrors, TensorSpec, as_feeds
from streamml.models.remote.errors import BadAnswer, RemoteRejected, RemoteUnavailable
from streamml.models.remote.policy import CircuitBreaker, Retry
from streamml.models.remote.protocols import (
    HEADER_LENGTH,
    JsonRest,
    OpenInference,
    error_reason,
)

__all__ = ["RemoteModel"]

logger = logging.getLogger(__name__)

TRANSIENT = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Statuses retried with backoff: the service is overloaded, restarting or timed out."""
REFUSED = frozenset({400, 413, 422})
"""Statuses that refuse the rows sent: they go to ``errs`` with the service's reason."""
_JSON = {"Content-Type": "application/json", "Accept": "application/json"}


class RemoteModel(Declared):
    """A model another process serves — Triton, KServe, MLServer, ``streamml serve``, a REST API.

    Use it with :func:`~streamml.operators.infer.infer` when the model runs
    as a microservice: the operator calls it once per batch, and it cuts the
    batch into requests of at most ``max_rows`` rows, sends them at once over
    one pool of kept-alive connections (at most ``max_in_flight`` requests in
    flight, for all shards together) and returns when every answer is in.
    So a slow service slows the stream instead of filling memory: the
    operator keeps at most a few batches in the model per shard, and the
    Kafka source is not read while they wait.

    Failures, by kind:

    - connection refused or reset, a timeout (``timeout`` seconds a try),
      HTTP 408, 425, 429 and 5xx: retried with exponential backoff and
      jitter (``retry``); a :class:`CircuitBreaker` shared by all requests
      stops sending while the service is down and probes until it is back;
    - HTTP 400, 413, 422: the service refused those rows — the model raises
      :class:`RemoteRejected` with the service's reason. Only the refused
      request's rows are sent again, in halves, until each refused row is
      found; the model then raises :class:`~streamml.models.RowErrors` with
      the answered rows' outputs and each refused row's reason, and
      ``infer`` sends only those rows to ``errs``. Every good row is scored
      by the service once;
    - an answer that is not valid (not JSON, an output missing, the wrong
      number of rows): :class:`BadAnswer`, handled like a refusal;
    - no answer within ``retry.budget`` seconds, or a status that refuses
      everything (401, 403, 404, ...): :class:`RemoteUnavailable`, which
      stops the dataflow with that message; Bytewax recovery resumes from
      the last snapshot, which counts the batches in flight as waiting.

    The model is described, checked and warmed up when it is built: its
    inputs and outputs come from the server's metadata (Open Inference) or
    ``inputs=`` (any REST API), and one row of zeros is scored, so a wrong
    URL, model name or mapping fails here with a ``ValueError``.

    Args:
        url: The server's base URL, e.g. ``"http://127.0.0.1:8000"``.
        protocol: The model's name on an Open Inference Protocol server (or
            an :class:`OpenInference` to pin a version), or a
            :class:`JsonRest` mapping for another API.
        inputs: Input specs by name; default: from the server's metadata (a
            :class:`JsonRest` model: one ``float32`` input ``"input"``).
        version: The label attached to predictions; default: the model's
            name and the version that answered the warm-up
            (``"mlp@1"``), or the URL.
        max_rows: Most rows in one request.
        max_in_flight: Most requests in flight at once (and connections kept).
        timeout: Seconds one try may take (connect, then read).
        retry: How long to retry one request, and the backoff.
        breaker: The circuit breaker (default: opens after 5 failures in a
            row, probes every second).
        headers: Extra HTTP headers for every request (e.g. authorization).
        warmup: Score one row of zeros when built.

    Raises:
        ValueError: the service cannot be reached or described, refuses the
            warm-up, or a setting is out of range.

    Examples:
        A JSON REST service that sums each row (a tiny Starlette app, run
        in a thread here):

        >>> import socket, threading, uvicorn
        >>> from starlette.applications import Starlette
        >>> from starlette.responses import JSONResponse
        >>> from starlette.routing import Route
        >>> async def predict(request):
        ...     rows = (await request.json())["instances"]
        ...     return JSONResponse({"predictions": [sum(r) for r in rows]})
        >>> app = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
        >>> sock = socket.socket(); sock.bind(("127.0.0.1", 0))
        >>> server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
        >>> thread = threading.Thread(target=server.run, args=([sock],), daemon=True)
        >>> thread.start()
        >>> url = "http://127.0.0.1:%d" % sock.getsockname()[1]
        >>> model = RemoteModel(
        ...     url, JsonRest("/predict"), inputs={"x": TensorSpec(np.dtype("float32"), (2,))},
        ...     version="sum-1", retry=Retry(budget=10.0), max_rows=2,
        ... )
        >>> model.predict(np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32))
        {'predictions': array([ 3.,  7., 11.])}
        >>> model.stats()["rows"]  # the warm-up's row, then these three (in two requests)
        4
        >>> model.close(); server.should_exit = True; thread.join()
    """

    def __init__(
        self,
        url: str,
        protocol: str | OpenInference | JsonRest,
        *,
        inputs: Mapping[str, TensorSpec] | None = None,
        version: str | None = None,
        max_rows: int = 1024,
        max_in_flight: int = 8,
        timeout: float = 10.0,
        retry: Retry | None = None,
        breaker: CircuitBreaker | None = None,
        headers: Mapping[str, str] | None = None,
        warmup: bool = True,
    ) -> None:
        if isinstance(protocol, str):
            protocol = OpenInference(protocol)
        if not isinstance(protocol, (OpenInference, JsonRest)):
            raise ValueError(
                "protocol must be a model name, OpenInference(...) or JsonRest(...); "
                f"got {protocol!r}"
            )
        for name, value in (("max_rows", max_rows), ("max_in_flight", max_in_flight)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1; got {value!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds; got {timeout!r}")
        parsed = urllib3.util.parse_url(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"url must be http(s)://host[:port][/prefix]; got {url!r}")
        self._url = url.rstrip("/")
        self._prefix = (parsed.path or "").rstrip("/")
        self._protocol = protocol
        self._max_rows = max_rows
        self._retry = retry if retry is not None else Retry()
        self._breaker = breaker if breaker is not None else CircuitBreaker()
        self._headers = {**_JSON, **(headers or {})}
        self._timeout = urllib3.Timeout(connect=timeout, read=timeout)
        self._http = urllib3.connection_from_url(
            self._url, maxsize=max_in_flight, block=True, retries=False
        )
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._threads = ThreadPoolExecutor(max_in_flight, thread_name_prefix="remote-model")
        self._counts = {"requests": 0, "rows": 0, "retries": 0, "refused": 0, "bad_answers": 0}
        self._count_lock = threading.Lock()
        self._answered_version: str | None = None
        try:
            self._inputs, self._outputs = self._describe(inputs)
            if warmup:
                self.predict(
                    {
                        name: np.zeros((1, *(d or 1 for d in spec.shape or ())), spec.dtype)
                        for name, spec in self._inputs.items()
                    }
                )
        except Exception as exc:
            self.close()
            raise ValueError(f"remote model at {self._url}: {exc}") from None
        self._version = version if version is not None else self._default_version()
        logger.info("remote model %s at %s: inputs %s", self._version, self._url, self._inputs)

    # -- the Model protocol ---------------------------------------------------------------
    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, Any]:
        """Score one batch remotely, in requests of at most ``max_rows`` rows sent concurrently.

        Blocks until every answer is in. Raises
        :class:`~streamml.models.RowErrors` when the service refused or
        answered badly some rows (found by sending the failed requests
        again in halves), with the other rows' outputs and each failed row's
        reason (``RemoteRejected: ...`` or ``BadAnswer: ...``), and
        :class:`RemoteUnavailable` when the service stayed unreachable for
        the retry budget.
        """
        feeds = as_feeds(self._inputs, inputs)
        lengths = {len(a) for a in feeds.values()}
        if len(lengths) != 1:
            raise ModelInputError(f"the inputs have different numbers of rows: {sorted(lengths)}")
        cuts = _cuts(lengths.pop(), self._max_rows)
        parts = [{name: a[lo:hi] for name, a in feeds.items()} for lo, hi in cuts]
        answers, failures = self._send_all(parts)
        if not failures:
            if len(answers) == 1:
                return answers[0]
            return {name: np.concatenate([a[name] for a in answers]) for name in self._outputs}
        answered: list[dict[str, np.ndarray]] = []
        errors: dict[int, str] = {}
        for (lo, _), part, outs, exc in zip(cuts, parts, answers, failures, strict=True):
            if exc is None:
                answered.append(outs)
            else:
                self._isolate(part, lo, exc, answered, errors)
        merged = (
            {name: np.concatenate([a[name] for a in answered]) for name in self._outputs}
            if answered
            else {}
        )
        if not errors:  # the request was refused as a whole (too big): its halves were answered
            return merged
        raise RowErrors(merged, errors)

    def _isolate(
        self,
        part: dict[str, np.ndarray],
        at: int,
        exc: Exception,
        answered: list[dict[str, np.ndarray]],
        errors: dict[int, str],
    ) -> None:
        """Rows ``at:`` of a refused request: send halves again until each failure is one row."""
        rows = len(next(iter(part.values())))
        if rows == 1:
            errors[at] = f"{type(exc).__name__}: {exc}"
            return
        mid = rows // 2
        for lo, hi in ((0, mid), (mid, rows)):
            half = {name: a[lo:hi] for name, a in part.items()}
            try:
                outs = self._request(half)
            except (RemoteRejected, BadAnswer) as again:
                self._isolate(half, at + lo, again, answered, errors)
            else:
                answered.append(outs)

    # -- requests -----------------------------------------------------------------------
    def _send_all(
        self, parts: list[dict[str, np.ndarray]]
    ) -> tuple[list[dict[str, np.ndarray] | None], list[Exception | None] | None]:
        """Each part's outputs (``None`` where it failed) and, if any failed, each one's failure.

        A refused request or a garbage answer fails only its part;
        :class:`RemoteUnavailable` fails the call.
        """
        if len(parts) == 1:  # no thread hop for a batch of one request
            try:
                return [self._request(parts[0])], None
            except (RemoteRejected, BadAnswer) as exc:
                return [None], [exc]
        futures: list[Future] = [self._threads.submit(self._request, p) for p in parts]
        answers: list[dict[str, np.ndarray] | None] = []
        failures: list[Exception | None] = []
        for future in futures:
            try:
                answers.append(future.result())
                failures.append(None)
            except (RemoteRejected, BadAnswer) as exc:
                answers.append(None)
                failures.append(exc)
            except BaseException:
                for other in futures:
                    other.cancel()
                raise
        return answers, (failures if any(f is not None for f in failures) else None)

    def _request(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request: its rows' outputs."""
        rows = len(next(iter(feeds.values())))
        body, headers = self._protocol.encode(feeds, self._inputs)
        with self._slots:
            data, answer_headers = self._send("POST", self._protocol.infer_path, body, headers)
        try:
            length = answer_headers.get(HEADER_LENGTH)
            if length is not None and not length.isdigit():
                raise BadAnswer(f"{HEADER_LENGTH} is {length!r}, not a length")
            outs, version = self._protocol.decode(data, rows, int(length) if length else None)
            missing = [name for name in self._outputs if name not in outs]
            if missing:
                raise BadAnswer(f"the answer lacks outputs {missing}; it has {sorted(outs)}")
        except BadAnswer as exc:
            self._count("bad_answers")
            raise BadAnswer(f"{self._url} answered garbage: {exc}") from None
        if version is not None:
            self._answered_version = version
        self._count("rows", rows)
        return {name: outs[name] for name in self._outputs}

    def _send(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str] | None = None
    ) -> tuple[bytes, Mapping[str, str]]:
        """The body and headers of a 2xx answer, retrying transient failures within the budget."""
        where = f"{self._url}{path}"
        deadline = time.monotonic() + self._retry.budget
        failures, last = 0, "the circuit breaker is open"
        while True:
            wait = self._breaker.wait()
            if wait == 0.0:
                self._count("requests")
                try:
                    answer = self._http.urlopen(
                        method,
                        self._prefix + path,
                        body=body,
                        headers={**self._headers, **headers} if headers else self._headers,
                        retries=False,
                        redirect=False,
                        timeout=self._timeout,
                    )
                except (HTTPError, OSError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    status = answer.status
                    if status < 300:
                        self._breaker.success()
                        return answer.data, answer.headers
                    reason = error_reason(status, answer.data)
                    if status not in TRANSIENT:
                        self._breaker.success()  # it answered: it is up
                        if status in REFUSED:
                            self._count("refused")
                            raise RemoteRejected(reason)
                        raise RemoteUnavailable(f"{where} refuses the request: {reason}")
                    last = reason
                self._breaker.failure()
                wait = self._retry.delay(failures)
                failures += 1
                self._count("retries")
            if time.monotonic() + wait > deadline:
                raise RemoteUnavailable(
                    f"no answer from {where} within the retry budget of {self._retry.budget:g} s "
                    f"({failures} failed tries; last: {last})"
                )
            time.sleep(wait)

    # -- helpers ------------------------------------------------------------------------
    def _describe(
        self, inputs: Mapping[str, TensorSpec] | None
    ) -> tuple[dict[str, TensorSpec], tuple[str, ...]]:
        metadata = None
        if self._protocol.metadata_path is not None:
            data, _ = self._send("GET", self._protocol.metadata_path, None)
            try:
                metadata = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise BadAnswer(f"the model metadata is not JSON: {data[:200]!r}") from None
            self._metadata = metadata
        return self._protocol.describe(metadata, inputs)

    def _default_version(self) -> str:
        if not isinstance(self._protocol, OpenInference):
            return f"{self._url}{self._protocol.infer_path}"
        versions = (getattr(self, "_metadata", None) or {}).get("versions") or [None]
        version = self._protocol.version or self._answered_version or versions[-1]
        return self._protocol.model if version is None else f"{self._protocol.model}@{version}"

    def _count(self, what: str, k: int = 1) -> None:
        with self._count_lock:
            self._counts[what] += k

    def stats(self) -> dict[str, int]:
        """Counters since the model was built: HTTP requests (tries), rows answered, retries, refused, bad answers."""
        with self._count_lock:
            return dict(self._counts)

    def close(self) -> None:
        """Stop the request threads and close the kept-alive connections."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def __repr__(self) -> str:
        return f"RemoteModel({self._url!r}, version={getattr(self, '_version', None)!r})"


def _cuts(n: int, most: int) -> list[tuple[int, int]]:
    """``[0, n)`` in the fewest near-equal pieces of at most ``most`` rows.

    Examples:
        >>> _cuts(5, 2), _cuts(4, 4), _cuts(0, 3)
        ([(0, 1), (1, 3), (3, 5)], [(0, 4)], [])
    """
    if n == 0:
        return []
    pieces = -(-n // most)
    bounds = [i * n // pieces for i in range(pieces + 1)]
    return list(zip(bounds[:-1], bounds[1:]))
