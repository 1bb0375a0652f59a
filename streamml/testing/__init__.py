"""Helpers for tests and examples: run an operator on lists, produce and read Kafka topics.

- :func:`run_operator` runs one operator on a list of items (events,
  ``(key, event)`` pairs or frames) and returns every output stream
  (:class:`Outputs`: ``oks``, ``errs``, ``late``); :func:`capture` sends
  named streams of any flow to lists;
- :mod:`streamml.testing.strategies` (needs hypothesis): keyed event
  streams out of order with late events and duplicates, bad items, corrupt
  Kafka payloads;
- :func:`produce_all` and :func:`consume_all` use confluent-kafka directly
  (``assign()``, no consumer group, so there is no rebalance wait) and are
  meant for bounded data: fixtures, demos and integration tests, not
  production consumers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import NamedTuple

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from streamml.producer import ready_producer
from streamml.testing._run import Outputs, capture, run_operator

__all__ = ["Message", "Outputs", "capture", "consume_all", "produce_all", "run_operator"]


class Message(NamedTuple):
    """One consumed message."""

    key: bytes | None
    value: bytes | None
    partition: int
    offset: int


def produce_all(
    bootstrap: str,
    topic: str,
    messages: Iterable[tuple[bytes | None, bytes | None]],
    *,
    partition: int | None = None,
    timeout: float = 30.0,
) -> int:
    """Produce ``(key, value)`` pairs to ``topic`` and wait until all are acknowledged.

    Returns the number of messages produced; raises ``RuntimeError`` if any
    delivery failed.
    """
    producer = ready_producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}, topic
    )
    failures: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    count = 0
    extra = {} if partition is None else {"partition": partition}
    for key, value in messages:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery, **extra)
                break
            except BufferError:
                producer.poll(0.05)
        count += 1
        if count % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(timeout)
    if remaining or failures:
        raise RuntimeError(
            f"{remaining} message(s) undelivered, {len(failures)} failed: {failures[:3]}"
        )
    return count


def _partitions(consumer: Consumer, topic: str, timeout: float) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise KafkaException(f"topic {topic!r} not found")
    return sorted(metadata.partitions)


def consume_all(bootstrap: str, topic: str, *, timeout: float = 30.0) -> list[Message]:
    """Read every message currently in ``topic``, in partition then offset order.

    The end of each partition is found by reading until the broker reports
    partition EOF, not from ``get_watermark_offsets``: tansu's ListOffsets
    answer can lag the log (seen here: 90,002 reported for 100,000 stored
    records), while its fetch responses are exact.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "streamml-read",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            # offset 0, reset to the earliest kept: OFFSET_BEGINNING's lookup waits 500 ms
            "auto.offset.reset": "earliest",
        }
    )
    try:
        deadline = time.monotonic() + timeout
        partitions = _partitions(consumer, topic, timeout)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        pending = set(partitions)
        out: list[Message] = []
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic!r}: partitions {sorted(pending)} did not end")
            for msg in consumer.consume(10_000, timeout=0.02):  # each empty poll waits it out
                err = msg.error()
                if err is None:
                    out.append(Message(msg.key(), msg.value(), msg.partition(), msg.offset()))
                elif err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                else:
                    raise KafkaException(err)
        out.sort(key=lambda m: (m.partition, m.offset))
        return out
    finally:
        consumer.close()
