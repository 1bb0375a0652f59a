"""Prometheus metrics of every streamml step, and one call to serve them over HTTP.

Each streamml operator counts the events (rows, not batches: a frame counts
its rows) on its input and on each of its output streams, once per Bytewax
batch, and the sizes of the batches it receives:

- ``streamml_events_total{step, port}``: ``port`` is ``in`` (the main
  input), ``in_<name>`` (another input, e.g. a join's ``right``), or the
  output's field name (``oks``, ``errs``, ``late``);
- ``streamml_batch_rows{step}``: rows per frame (or per Bytewax batch of
  row events) arriving at the step's main input.

:func:`~streamml.operators.infer.infer` adds ``streamml_infer_queue_wait_seconds``
(the oldest row's wait of each model call), ``streamml_model_latency_seconds``
(each model call) and ``streamml_model_info{step, version}`` (1 for the
version serving); the Kafka source's consumer lag per partition is Bytewax's
own gauge ``bytewax_kafka_consumer_lag{step_id, topic, partition}``.

Everything is in ``prometheus_client``'s default registry, next to Bytewax's
metrics. :func:`serve` (or the environment variable
``STREAMML_METRICS_PORT``, read when the first streamml step is built)
exposes them at ``http://HOST:PORT/metrics``.

Examples:
    >>> import bytewax.operators as op
    >>> import polars as pl
    >>> from bytewax.dataflow import Dataflow
    >>> from bytewax.testing import TestingSink, TestingSource, run_main
    >>> from streamml.models import CallableModel
    >>> from streamml.operators.infer import infer
    >>> model = CallableModel(lambda x: x.sum(axis=1), outputs="score", shape=(1,), version="v1")
    >>> flow = Dataflow("metrics_eg")
    >>> up = op.input("in", flow, TestingSource([pl.DataFrame({"x": [1.0, 2.0, None]})]))
    >>> out = infer("score", up, model, inputs=["x"])
    >>> op.output("oks", out.oks, TestingSink([]))
    >>> op.output("errs", out.errs, TestingSink([]))
    >>> run_main(flow)
    >>> [events("metrics_eg.score", port) for port in ("in", "oks", "errs")]
    [3.0, 2.0, 1.0]
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import bytewax.operators as op
import polars as pl
from bytewax.dataflow import Stream
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

__all__ = [
    "BATCH_ROWS",
    "EVENTS",
    "MODEL_INFO",
    "MODEL_LATENCY",
    "PORT_ENV",
    "QUEUE_WAIT",
    "SWITCH_ENV",
    "count_rows",
    "counting",
    "delivered",
    "events",
    "instrumented",
    "is_instrumented",
    "serve",
    "serve_from_env",
]

PORT_ENV = "STREAMML_METRICS_PORT"
"""Environment variable: serve the metrics on this port (``HOST:PORT`` also works)."""

SWITCH_ENV = "STREAMML_METRICS"
"""Environment variable: ``0`` or ``off`` builds steps without their counting (read at build time)."""

_ROW_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)
_SECOND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

EVENTS = Counter(
    "streamml_events",
    "Events (rows) into and out of each streamml step, by port: in, oks, errs, late.",
    ["step", "port"],
)
BATCH_ROWS = Histogram(
    "streamml_batch_rows",
    "Rows per frame (or per Bytewax batch of row events) at each step's input.",
    ["step"],
    buckets=_ROW_BUCKETS,
)
QUEUE_WAIT = Histogram(
    "streamml_infer_queue_wait_seconds",
    "How long the oldest row of each model call waited in infer's batch queue.",
    ["step"],
    buckets=_SECOND_BUCKETS,
)
MODEL_LATENCY = Histogram(
    "streamml_model_latency_seconds",
    "Time of each model call in infer (a batch split on a model error counts as one).",
    ["step"],
    buckets=_SECOND_BUCKETS,
)
MODEL_INFO = Gauge(
    "streamml_model_info",
    "1 for the model version an infer step serves, 0 for versions it served before.",
    ["step", "version"],
)

_serving: dict[tuple[str, int], Any] = {}
_serving_lock = threading.Lock()


def serve(port: int, addr: str = "0.0.0.0") -> int:
    """Serve every metric at ``http://addr:port/metrics`` from a background thread.

    Call it once before running the flow (a second call for the same
    address does nothing). Under ``python -m bytewax.run`` with several
    processes on one machine, give each process its own port.

    Args:
        port: TCP port; 0 picks a free one.
        addr: Address to listen on.

    Returns:
        The port listened on.

    Examples:
        >>> import urllib.request
        >>> port = serve(0, "127.0.0.1")
        >>> body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        >>> "# TYPE streamml_events_total counter" in body
        True
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int from 0 to 65535; got {port!r}")
    with _serving_lock:
        if port and (addr, port) in _serving:
            return port
        try:
            server, _thread = start_http_server(port, addr, registry=REGISTRY)
        except OSError as exc:
            raise OSError(
                f"cannot serve metrics on {addr}:{port}: {exc}; another process may be using "
                f"the port (give each Bytewax process its own {PORT_ENV})"
            ) from exc
        bound = server.server_address[1]
        _serving[(addr, bound)] = server
        return bound


def serve_from_env() -> int | None:
    """Serve the metrics if ``STREAMML_METRICS_PORT`` is set (``PORT`` or ``HOST:PORT``).

    Every streamml step calls this when it is built, so a flow run with
    ``STREAMML_METRICS_PORT=9100 python -m bytewax.run ...`` serves them
    with no code. A value that is not a port raises ``ValueError``.

    Returns:
        The port, or None when the variable is unset or empty.
    """
    value = os.environ.get(PORT_ENV, "").strip()
    if not value:
        return None
    host, _, port = value.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"{PORT_ENV} must be PORT or HOST:PORT, e.g. 9100; got {value!r}")
    return serve(int(port), host or "0.0.0.0")


def counting() -> bool:
    """Whether steps built now count their events: yes unless ``STREAMML_METRICS`` is ``0`` or ``off``.

    Counting is on by default; turning it off (for a benchmark, or a flow
    that wants no counting steps at all) leaves the flow's results unchanged.

    Examples:
        >>> import os
        >>> os.environ.pop(SWITCH_ENV, None) and None
        >>> counting()
        True
    """
    value = os.environ.get(SWITCH_ENV, "").strip().lower()
    if value in ("", "1", "on", "true", "yes"):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    raise ValueError(f"{SWITCH_ENV} must be on or off (1 or 0); got {value!r}")


def count_rows(items: list[Any]) -> int:
    """Events in a Bytewax batch: a ``polars.DataFrame`` counts its rows, anything else 1.

    Examples:
        >>> count_rows([pl.DataFrame({"x": [1, 2, 3]}), ("k", {"x": 1})])
        4
        >>> count_rows([("k", {"x": 1})] * 5)
        5
    """
    if pl.DataFrame not in set(map(type, items)):  # row events: no bytecode per item
        return len(items)
    return sum(x.height if type(x) is pl.DataFrame else 1 for x in items)


def events(step: str, port: str) -> float:
    """The current count of ``streamml_events_total`` for a step's full id and a port (0 if none)."""
    value = REGISTRY.get_sample_value("streamml_events_total", {"step": step, "port": port})
    return value or 0.0


class _Counting:
    """A ``flat_map_batch`` function that counts a batch's rows and hands the batch on (or not)."""

    __slots__ = ("events", "sizes", "emit")

    def __init__(self, *, emit: bool) -> None:
        self.emit = emit
        self.events: Any = None  # bound once the step's full id is known
        self.sizes: Any = None

    def __call__(self, items: list[Any]) -> list[Any]:
        if pl.DataFrame not in set(map(type, items)):  # row events: one look at the types, in C
            n = len(items)
            if self.sizes is not None:
                self.sizes.observe(n)
        else:
            n = sum(x.height if type(x) is pl.DataFrame else 1 for x in items)
            if self.sizes is not None:
                for x in items:
                    if type(x) is pl.DataFrame:
                        self.sizes.observe(x.height)
        self.events.inc(n)
        return items if self.emit else []


def _owner(stream: Stream[Any]) -> str:
    """The full id of the operator a counting step was added to (``flow.op.count_x.down``)."""
    return stream.stream_id.rsplit(".", 2)[0]


def _count_input(name: str, port: str, up: Stream[Any], *, sizes: bool) -> None:
    counting = _Counting(emit=False)
    side = op.flat_map_batch(name, up, counting)  # a branch beside the operator: nothing after it
    step = _owner(side)
    counting.events = EVENTS.labels(step=step, port=port)
    counting.sizes = BATCH_ROWS.labels(step=step) if sizes else None


def _count_output(port: str, stream: Stream[Any]) -> Stream[Any]:
    counting = _Counting(emit=True)
    counted = op.flat_map_batch(f"count_{port}", stream, counting)
    counting.events = EVENTS.labels(step=_owner(counted), port=port)
    return counted


F = TypeVar("F", bound=Callable[..., Any])


def instrumented(builder: F | None = None, *, down: str = "down") -> Any:
    """Count a streamml operator's events in and out; put it under ``@operator``.

    The operator's main input (its second parameter) is counted as port
    ``in`` with its batch sizes, its other stream parameters as
    ``in_<name>``, and every stream it returns (each stream field of its
    output dataclass, or the one stream) under the field's name (``down``
    for a single stream, or the name given: ``@instrumented(down="errs")``
    for a sink that returns its rejections). Counting steps run once per
    Bytewax batch, inside the operator (``<step>.count_oks``, ...), so the
    operator's ports are the counted streams. A sink counts what it wrote
    with :func:`delivered`. With ``STREAMML_METRICS=0`` (:func:`counting`)
    the operator is built without counting steps.

    Examples:
        >>> from bytewax.dataflow import Dataflow, operator
        >>> from bytewax.testing import TestingSink, TestingSource, run_main
        >>> @operator
        ... @instrumented
        ... def doubled(step_id: str, up: Stream[int]) -> Stream[int]:
        ...     return op.map("double", up, lambda x: 2 * x)
        >>> flow = Dataflow("instrumented_eg")
        >>> op.output("out", doubled("twice", op.input("in", flow, TestingSource([1, 2]))), TestingSink([]))
        >>> run_main(flow)
        >>> events("instrumented_eg.twice", "in"), events("instrumented_eg.twice", "down")
        (2.0, 2.0)
    """
    if builder is None:
        return functools.partial(instrumented, down=down)
    params = list(inspect.signature(builder).parameters)
    main = params[1]

    @functools.wraps(builder)
    def build(*args: Any, **kwargs: Any) -> Any:
        if not counting():
            return builder(*args, **kwargs)
        serve_from_env()
        bound = inspect.signature(builder).bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            if isinstance(value, Stream):
                port = "in" if name == main else f"in_{name}"
                _count_input(f"count_{port}", port, value, sizes=name == main)
        out = builder(*args, **kwargs)
        if isinstance(out, Stream):
            return _count_output(down, out)
        if dataclasses.is_dataclass(out):
            counted = {
                f.name: _count_output(f.name, getattr(out, f.name))
                for f in dataclasses.fields(out)
                if isinstance(getattr(out, f.name), Stream)
            }
            return dataclasses.replace(out, **counted)
        return out

    build._streamml_counted = True  # type: ignore[attr-defined]
    return build


class _CountedPartition(StatelessSinkPartition[Any]):
    """A sink partition that counts the rows of each batch once the inner one has written it."""

    def __init__(self, inner: Any, events: Any, rows: Callable[[list[Any]], int]) -> None:
        self._inner, self._events, self._rows = inner, events, rows

    def write_batch(self, items: list[Any]) -> None:
        self._inner.write_batch(items)
        self._events.inc(self._rows(items))

    def close(self) -> None:
        self._inner.close()


class _CountedStatefulPartition(_CountedPartition, StatefulSinkPartition[Any, Any]):
    def snapshot(self) -> Any:
        return self._inner.snapshot()


def _delivered(output_step: str) -> Any:
    """The ``delivered`` counter of the operator an output step (``flow.sink.write``) is in."""
    return EVENTS.labels(step=output_step.rsplit(".", 1)[0], port="delivered")


class _CountedDynamicSink(DynamicSink[Any]):
    def __init__(self, sink: DynamicSink[Any], rows: Callable[[list[Any]], int]):
        self._sink, self._rows = sink, rows

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CountedPartition:
        inner = self._sink.build(step_id, worker_index, worker_count)
        return _CountedPartition(inner, _delivered(step_id), self._rows)


class _CountedFixedSink(FixedPartitionedSink[Any, Any]):
    def __init__(self, sink: FixedPartitionedSink[Any, Any], rows: Callable[[list[Any]], int]):
        self._sink, self._rows = sink, rows

    def list_parts(self) -> list[str]:
        return self._sink.list_parts()

    def part_fn(self, item_key: str) -> int:
        return self._sink.part_fn(item_key)

    def build_part(
        self, step_id: str, for_part: str, resume_state: Any
    ) -> _CountedStatefulPartition:
        inner = self._sink.build_part(step_id, for_part, resume_state)
        return _CountedStatefulPartition(inner, _delivered(step_id), self._rows)


def delivered(
    sink: DynamicSink[Any] | FixedPartitionedSink[Any, Any],
    rows: Callable[[list[Any]], int] = len,
) -> DynamicSink[Any] | FixedPartitionedSink[Any, Any]:
    """``sink`` counting what it wrote, as port ``delivered`` of the operator it is output in.

    A batch is counted once the sink's ``write_batch`` has returned (for
    :func:`streamml.kafka.sink`, once the broker acknowledged it), by
    ``rows(items)`` (its length by default). Use it inside a sink operator,
    in its ``op.output`` step; with counting off
    (:func:`counting`) it returns ``sink`` itself.

    Examples:
        >>> from bytewax.dataflow import Dataflow, operator
        >>> from bytewax.testing import TestingSink, TestingSource, run_main
        >>> @operator
        ... @instrumented
        ... def collect(step_id: str, up: Stream[int], into: list) -> None:
        ...     kept = op.filter("positive", up, lambda x: x > 0)
        ...     op.output("write", kept, delivered(TestingSink(into)))
        >>> flow, got = Dataflow("delivered_eg"), []
        >>> collect("out", op.input("in", flow, TestingSource([3, -1, 4])), got)
        >>> run_main(flow)
        >>> got, events("delivered_eg.out", "in"), events("delivered_eg.out", "delivered")
        ([3, 4], 3.0, 2.0)
    """
    if not counting():
        return sink
    if isinstance(sink, FixedPartitionedSink):
        return _CountedFixedSink(sink, rows)
    return _CountedDynamicSink(sink, rows)


def is_instrumented(fn: Callable[..., Any]) -> bool:
    """Whether an operator function counts its events (:func:`instrumented` is among its wrappers).

    Examples:
        >>> from streamml.operators.infer import infer
        >>> is_instrumented(infer), is_instrumented(op.map)
        (True, False)
    """
    while fn is not None:
        if getattr(fn, "_streamml_counted", False):
            return True
        fn = getattr(fn, "__wrapped__", None)
    return False
