"""A Bytewax sink that produces ``(key, value)`` byte pairs and never loses one silently.

Bytewax's ``KafkaSink`` ignores delivery reports: a message the broker never
acknowledges (broker down past ``message.timeout.ms``, topic missing, message
too large) is dropped without a word. :class:`ProducerSink` waits for every
delivery report at the end of each batch and raises
:class:`DeliveryError` if any message failed or is still undelivered after
``delivery_timeout``, so the worker stops with a clear error instead, and
Bytewax recovery resumes from the last snapshot (at-least-once).

It also takes plain tuples, so a pipeline builds no intermediate message
object per event, and asks librdkafka to report only failed deliveries
(``delivery.report.only.error``): the flush at the end of a batch still waits
until the broker has acknowledged every message (an acknowledged message
leaves librdkafka's queue, a failed one comes back as a report), but no
Python callback runs for each message that succeeded.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, Producer

__all__ = ["DeliveryError", "ProducerSink"]

KeyValue = tuple[bytes | None, bytes | None]


class DeliveryError(RuntimeError):
    """Messages could not be delivered to Kafka; the batch is not acknowledged."""


class _ProducerPartition(StatelessSinkPartition[KeyValue]):
    def __init__(self, config: Mapping[str, Any], topic: str, timeout_s: float) -> None:
        # The producer-wide delivery callback (not one passed with every
        # produce() call) keeps the produce loop free of keyword arguments.
        self._producer = Producer({**config, "on_delivery": self._on_delivery})
        self._topic = topic
        self._timeout_s = timeout_s
        self._failures: list[str] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._failures.append(str(err))

    def write_batch(self, items: list[KeyValue]) -> None:
        produce, poll = self._producer.produce, self._producer.poll
        topic = self._topic
        for key, value in items:
            try:
                produce(topic, value, key)
            except BufferError:  # local queue full: serve delivery reports, then retry once
                poll(1.0)
                produce(topic, value, key)
        remaining = self._producer.flush(self._timeout_s)
        if remaining or self._failures:
            failures, self._failures = self._failures, []
            raise DeliveryError(
                f"could not deliver to topic {topic!r} within {self._timeout_s:g} s: "
                f"{len(failures)} message(s) failed, {remaining} still queued; "
                f"first errors: {failures[:3]}"
            )

    def close(self) -> None:
        self._producer.flush(self._timeout_s)


class ProducerSink(DynamicSink[KeyValue]):
    """Produce ``(key, value)`` byte pairs to one topic, checking every delivery report.

    Args:
        brokers: Bootstrap servers, ``"host:port,host:port"``.
        topic: Topic to produce to.
        delivery_timeout: How long a batch may wait for the broker's
            acknowledgements before the worker fails with :class:`DeliveryError`.
        add_config: Extra librdkafka producer settings (override the defaults:
            idempotence on, ``linger.ms`` 5, ``delivery.report.only.error``
            on). Its ``on_delivery`` is replaced: the sink's own callback
            collects the failures.

    Examples:
        >>> sink = ProducerSink("127.0.0.1:9092", "scores")
        >>> sink.topic
        'scores'
    """

    def __init__(
        self,
        brokers: str,
        topic: str,
        *,
        delivery_timeout: timedelta = timedelta(seconds=60),
        add_config: Mapping[str, str] | None = None,
    ) -> None:
        if delivery_timeout <= timedelta(0):
            raise ValueError(f"delivery_timeout must be > 0; got {delivery_timeout}")
        self.topic = topic
        self._timeout_s = delivery_timeout.total_seconds()
        self._config = {
            "bootstrap.servers": brokers,
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": int(self._timeout_s * 1000),
            "delivery.report.only.error": True,
            **dict(add_config or {}),
        }

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProducerPartition:
        return _ProducerPartition(self._config, self.topic, self._timeout_s)
