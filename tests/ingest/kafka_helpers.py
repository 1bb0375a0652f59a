"""Reading a whole topic back, and waiting for the agent, for the ingest integration tests."""

from __future__ import annotations

import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, TopicPartition

Row = tuple[bytes | None, bytes, dict[str, bytes]]


def read_topic(bootstrap: str, topic: str, partitions: int = 1) -> list[Row]:
    """Every record of ``topic``, partition by partition, in offset order."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "ingest-tests",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 20,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    rows: dict[int, list[Row]] = {p: [] for p in range(partitions)}
    at_end: set[int] = set()
    give_up = time.monotonic() + 60
    try:
        while len(at_end) < partitions:
            assert time.monotonic() < give_up, f"{topic} not read to its end within 60 s"
            for msg in consumer.consume(10_000, 0.2):
                err = msg.error()
                if err is not None:
                    assert err.code() == KafkaError._PARTITION_EOF, err.str()
                    at_end.add(msg.partition())
                    continue
                rows[msg.partition()].append((msg.key(), msg.value(), dict(msg.headers() or ())))
    finally:
        consumer.close()
    return [row for p in range(partitions) for row in rows[p]]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after a generous ``timeout``."""
    give_up = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < give_up, f"gave up waiting for {what}"
        time.sleep(0.02)
