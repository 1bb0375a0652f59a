"""A schema registry that cannot be reached is waited out, then stops the flow; only "not found" is a dead letter."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from streamml import kafka
from streamml.broker import EmbeddedBroker
from streamml.serde import AvroSerde, ConfluentAvroSerde, SerdeError, ServiceUnavailable
from streamml.testing import consume_all, produce_all

SCHEMA = {"type": "record", "name": "R", "fields": [{"name": "x", "type": "long"}]}
BODY = AvroSerde(SCHEMA).encode_batch([{"x": 7}])[0]
assert isinstance(BODY, bytes)


def _payload(schema_id: int) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + BODY


class _Registry:
    """Serves schema id 1 and answers 404 for the rest, after ``outage`` failed requests (503)."""

    def __init__(self, outage: int) -> None:
        self.outage = outage
        self.requests: list[str] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                registry.requests.append(self.path)
                if len(registry.requests) <= registry.outage:
                    self._answer(503, {"error_code": 50301, "message": "down for a moment"})
                elif self.path.startswith("/schemas/ids/1"):
                    self._answer(200, {"schema": json.dumps(SCHEMA)})
                else:
                    self._answer(404, {"error_code": 40403, "message": "Schema not found"})

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def flaky_registry() -> Iterator[_Registry]:
    registry = _Registry(outage=2)
    yield registry
    registry.server.shutdown()
    registry.server.server_close()


def _serde(url: str, timeout: timedelta) -> ConfluentAvroSerde:
    # The client's own retries off: the serde's backoff is what is tested.
    return ConfluentAvroSerde({"url": url, "max.retries": 0}, registry_timeout=timeout)


def test_a_registry_that_is_down_for_a_moment_is_waited_out(flaky_registry: _Registry) -> None:
    serde = _serde(flaky_registry.url, timedelta(seconds=60))
    assert serde.decode_batch([_payload(1)]) == [{"x": 7}]
    assert len(flaky_registry.requests) == 3  # two 503s, then the schema


def test_only_a_schema_the_registry_does_not_know_is_a_dead_letter(
    flaky_registry: _Registry,
) -> None:
    flaky_registry.outage = 0
    serde = _serde(flaky_registry.url, timedelta(seconds=60))
    good, unknown = serde.decode_batch([_payload(1), _payload(42)])
    assert good == {"x": 7}
    assert isinstance(unknown, SerdeError) and unknown.kind == "UnknownSchema"
    assert "schema id 42 is not in the registry" in str(unknown)
    assert flaky_registry.requests.count("/schemas/ids/42") == 1  # asked once: no retry on 404


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("frames", [False, True])
def test_an_unreachable_registry_stops_the_flow_instead_of_dead_lettering(frames: bool) -> None:
    serde = _serde(f"http://127.0.0.1:{_closed_port()}", timedelta(seconds=0.5))
    payloads = [_payload(1)] * 40  # a batch big enough for the columnar path too
    with pytest.raises(ServiceUnavailable) as raised:
        serde.decode_frame(payloads) if frames else serde.decode_batch(payloads)
    assert re.search(
        r"did not answer \(schema id 1\) within registry_timeout=0.5 s", str(raised.value)
    )
    assert "ConnectError" in str(raised.value)


class _FailingRegistry:
    """A registry object whose calls fail ``failures`` times with ``error``, then succeed."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def get_schema(self, schema_id: int) -> Schema:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return Schema(json.dumps(SCHEMA), "AVRO")

    def register_schema(self, subject: str, schema: Schema) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return 1


def test_backoff_retries_any_failure_but_not_found() -> None:
    flaky = _FailingRegistry(3, TimeoutError("read timed out"))
    assert ConfluentAvroSerde(flaky).decode_batch([_payload(1)]) == [{"x": 7}]
    assert flaky.calls == 4
    writer = _FailingRegistry(2, ConnectionError("refused"))
    serde = ConfluentAvroSerde(writer, schema=SCHEMA, subject="r-value")
    assert serde.encode_batch([{"x": 7}]) == [_payload(1)]
    assert writer.calls == 3
    missing = _FailingRegistry(10, KeyError(5))
    [err] = ConfluentAvroSerde(missing).decode_batch([_payload(5)])
    assert isinstance(err, SerdeError) and err.kind == "UnknownSchema" and missing.calls == 1


def test_encoding_with_a_registry_that_stays_down_stops_the_flow() -> None:
    down = _FailingRegistry(10**9, ConnectionError("refused"))
    serde = ConfluentAvroSerde(
        down, schema=SCHEMA, subject="r-value", registry_timeout=timedelta(seconds=0.3)
    )
    with pytest.raises(ServiceUnavailable, match="registering subject 'r-value'"):
        serde.encode_batch([{"x": 7}])
    assert down.calls > 1


@pytest.mark.parametrize(
    ("registry", "message"),
    [
        (None, "registry must be a SchemaRegistryClient, its config dict"),
        (SchemaRegistryClient, "registry must be a SchemaRegistryClient"),
        ({"uri": "http://r:8081"}, "a schema registry config needs its url"),
        (8081, "or the registry's URL; got 8081"),
    ],
)
def test_a_registry_that_cannot_be_one_is_refused_when_built(registry: Any, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        ConfluentAvroSerde(registry)


def test_a_url_is_enough_and_the_timeout_is_checked() -> None:
    ConfluentAvroSerde("mock://by-url")
    with pytest.raises(ValueError, match="registry_timeout must be a timedelta > 0"):
        ConfluentAvroSerde("mock://by-url", registry_timeout=30)  # type: ignore[arg-type]


@pytest.mark.integration
def test_a_source_whose_registry_is_unreachable_fails_and_dead_letters_nothing(
    broker: EmbeddedBroker, topic_name: str
) -> None:
    broker.create_topic(topic_name)
    broker.create_topic(f"{topic_name}-dlq")
    produce_all(broker.bootstrap, topic_name, [(None, _payload(1))] * 5)
    flow = Dataflow("registry_down")
    src = kafka.source(
        "in",
        flow,
        brokers=broker.bootstrap,
        topics=topic_name,
        value_serde=_serde(f"http://127.0.0.1:{_closed_port()}", timedelta(seconds=0.5)),
        tail=False,
    )
    op.output("oks", src.oks, TestingSink([]))
    kafka.dead_letter_sink("dlq", src.errs, brokers=broker.bootstrap, topic=f"{topic_name}-dlq")
    with pytest.raises(Exception) as raised:  # noqa: B017 - Bytewax wraps the step's error
        run_main(flow)
    cause: BaseException | None = raised.value
    while cause is not None and not isinstance(cause, ServiceUnavailable):
        cause = cause.__cause__
    assert cause is not None, f"no ServiceUnavailable behind {raised.value!r}"
    assert consume_all(broker.bootstrap, f"{topic_name}-dlq") == []
