"""A changelog table: rows keyed by id, a tombstone deletes, and a signal that the bootstrap is done.

The table side of :func:`~streamml.operators.join.enrich` and
:func:`~streamml.operators.join.asof_join` is a keyed changelog stream
``(key, value)`` where ``value is None`` is a tombstone. When it comes from a
compacted Kafka topic, :func:`kafka_table` reads the topic from the beginning
and, per partition, emits a :class:`TableReady` once it has read up to the end
offset the partition had when the reader started: the joins hold events until
every partition is ready, so no event is enriched from a half-loaded table.

The broker may not compact at all (tansu accepts ``cleanup.policy=compact`` and
keeps every version), so the joins keep only the last value per key themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streamml.errors import Rejected
from streamml.kafka import (
    SOURCE_DEFAULTS,
    BrokerUnreachable,
    _broker_list,
    _BrokerWatch,
    _check_broker_timeout,
)
from streamml.serde.base import Deserializer, SerdeError, StringSerde

__all__ = ["Table", "TableReady", "kafka_table"]


class TableReady(NamedTuple):
    """One partition of a table topic has been read up to where it ended at start.

    Attributes:
        topic: The table's topic.
        partition: The partition that is loaded.
        partitions: How many partitions the topic has (the joins wait for all).
    """

    topic: str
    partition: int
    partitions: int


@dataclass(frozen=True)
class Table:
    """A changelog table with a bootstrap signal.

    Attributes:
        changelog: Rows ``(key, value)`` in the order read (``value is None``
            deletes the key), with one :class:`TableReady` per partition
            placed right after the last row of that partition's bootstrap.
            Keeping rows and markers in one stream keeps their order.
        errs: Messages whose key or value did not decode, as ``Rejected``.
    """

    changelog: Stream[tuple[str, Any] | TableReady]
    errs: Stream[Rejected]


class _Message(NamedTuple):
    key: bytes | None
    value: bytes | None
    partition: int
    offset: int


class _TablePartition(StatefulSourcePartition[Any, int]):
    """Reads one partition from ``start``; emits TableReady when it first reaches the end of the log."""

    def __init__(
        self,
        step_id: str,
        config: dict[str, Any],
        topic: str,
        partition: int,
        partitions: int,
        start: int,
        tail: bool,
    ) -> None:
        self._step_id = step_id
        self._tail = tail
        self._consumer = Consumer(config)
        self._consumer.assign([TopicPartition(topic, partition, start)])
        self._topic = topic
        self._partition = partition
        self._partitions = partitions
        self._next = start
        self._announced = False

    def next_batch(self) -> list[Any]:
        if self._announced and not self._tail:
            raise StopIteration
        out: list[Any] = []
        for msg in self._consumer.consume(1000, 0.001):
            error = msg.error()
            if error is None:
                out.append(_Message(msg.key(), msg.value(), msg.partition(), msg.offset()))
                self._next = msg.offset() + 1
            elif error.code() == KafkaError._PARTITION_EOF:
                if not self._announced:  # the first end of the log: the bootstrap is read
                    self._announced = True
                    out.append(TableReady(self._topic, self._partition, self._partitions))
            else:
                out.append(Rejected(self._step_id, "KafkaError", str(error), None))
        return out

    def snapshot(self) -> int:
        return self._next

    def close(self) -> None:
        self._consumer.close()


class _TableSource(FixedPartitionedSource[Any, int]):
    """The table topic's partitions; with a ``broker_timeout``, unreachable brokers fail the read.

    Each partition's consumer gets its own :class:`streamml.kafka._BrokerWatch`
    (the ``error_cb`` :func:`streamml.kafka.source` uses), and listing the
    partitions waits at most ``broker_timeout`` instead of 10 s.
    """

    def __init__(
        self,
        brokers: Sequence[str],
        topic: str,
        add_config: dict[str, str],
        tail: bool,
        broker_timeout: timedelta | None = None,
    ) -> None:
        self._tail = tail
        self._brokers = list(brokers)
        self._topic = topic
        self._add_config = add_config
        self._timeout = broker_timeout

    def _config(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": ",".join(self._brokers),
            "group.id": "streamml-table",  # required by librdkafka; assign() bypasses the group
            "enable.auto.commit": "false",
            # The bootstrap ends at the first partition EOF, which comes from fetch
            # responses. The ListOffsets end offset cannot be used: tansu 0.6 answers
            # with a count of record batches, so a table produced in large batches
            # looked read after its first batch.
            "enable.partition.eof": "true",
            **SOURCE_DEFAULTS,
            **self._add_config,
            # A table is read from its first row. The reader starts at offset 0, not at
            # OFFSET_BEGINNING, whose offset query waits 500 ms in librdkafka before the
            # first fetch; if the log no longer starts at 0, the fetch is out of range
            # and this reset moves it to the first offset there is.
            "auto.offset.reset": "earliest",
        }

    def _partitions(self) -> int:
        consumer = Consumer(self._config())
        wait_s = 10.0 if self._timeout is None else self._timeout.total_seconds()
        try:
            try:
                meta = consumer.list_topics(self._topic, timeout=wait_s).topics[self._topic]
            except KafkaException as exc:
                if self._timeout is None:
                    raise
                raise BrokerUnreachable(
                    f"no Kafka broker of {','.join(self._brokers)} answered within "
                    f"broker_timeout={wait_s:g} s at start: {exc}"
                ) from None
            if meta.error is not None:
                raise RuntimeError(f"cannot read table topic {self._topic!r}: {meta.error}")
            return len(meta.partitions)
        finally:
            consumer.close()

    def list_parts(self) -> list[str]:
        return [str(p) for p in range(self._partitions())]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _TablePartition:
        start = 0 if resume_state is None else resume_state
        config = self._config()
        if self._timeout is not None:  # one watch per consumer: each times its own outage
            config["error_cb"] = _BrokerWatch(self._timeout, ",".join(self._brokers))
        return _TablePartition(
            step_id,
            config,
            self._topic,
            int(for_part),
            self._partitions(),
            start,
            self._tail,
        )


def _decoder(
    step_id: str, key_serde: Deserializer, value_serde: Deserializer
) -> Callable[[list[Any]], list[tuple[list[Any], list[Rejected]]]]:
    """A batch function: read items to one ``(changelog items, rejections)`` pair per batch."""

    def decode(batch: list[Any]) -> list[tuple[list[Any], list[Rejected]]]:
        msgs = [m for m in batch if type(m) is _Message]
        decoded = iter(
            zip(
                key_serde.decode_batch([m.key for m in msgs]),
                value_serde.decode_batch([m.value for m in msgs]),
                strict=True,
            )
        )
        out: list[Any] = []
        errs: list[Rejected] = []
        for msg in batch:  # markers stay behind the rows read before them
            if type(msg) is not _Message:
                (errs if type(msg) is Rejected else out).append(msg)
                continue
            key, value = next(decoded)
            bad = key if type(key) is SerdeError else value if type(value) is SerdeError else None
            if bad is not None:
                errs.append(Rejected(step_id, bad.kind, str(bad), msg))
            elif not isinstance(key, str):
                errs.append(Rejected(step_id, "MissingKey", "a table row needs a text key", msg))
            else:
                out.append((key, value))
        return [(out, errs)]

    return decode


def _rows(pairs: list[tuple[list[Any], list[Rejected]]]) -> list[Any]:
    return [x for rows, _ in pairs for x in rows]


def _errs(pairs: list[tuple[list[Any], list[Rejected]]]) -> list[Rejected]:
    return [x for _, errs in pairs for x in errs]


@operator
def kafka_table(
    step_id: str,
    flow: Dataflow,
    *,
    brokers: str | Sequence[str],
    topic: str,
    value_serde: Deserializer,
    key_serde: Deserializer | None = None,
    add_config: dict[str, str] | None = None,
    tail: bool = True,
    broker_timeout: timedelta | None = None,
) -> Table:
    """Read a (compacted) Kafka topic from the beginning as a changelog table.

    Use it as the ``table`` of :func:`~streamml.operators.join.enrich`: keys are
    decoded with ``key_serde`` (UTF-8 text by default), values with
    ``value_serde``; a null value (tombstone) deletes its key. The reader keeps
    following the topic after the bootstrap, so later updates reach the join.
    Partitions are spread across Bytewax workers; the next offset of each is
    part of Bytewax's recovery snapshots.

    Args:
        step_id: Unique step id.
        flow: The dataflow.
        brokers: ``"host:port"`` (comma-separated) or a list of them.
        topic: The table's topic.
        value_serde: Decodes values (:mod:`streamml.serde`).
        key_serde: Decodes keys; UTF-8 text when omitted.
        add_config: Extra librdkafka consumer settings, over the defaults
            :func:`streamml.kafka.source` uses (``fetch.wait.max.ms`` 20: the
            bootstrap's end is seen without the broker's 500 ms fetch wait).
        tail: Keep following the topic after the bootstrap; with ``False``
            each partition ends once read to its start-time end offset (batch jobs,
            back-fills, tests).
        broker_timeout: Fail the dataflow with
            :class:`streamml.kafka.BrokerUnreachable` once no broker has been
            reachable for this long while the table is read or tailed
            (connections refused, all brokers down), or when none answers
            within it while the table's partitions are listed at start,
            instead of retrying forever; as in :func:`streamml.kafka.source`.
            ``None`` retries forever while reading (listing the partitions
            at start gives up after 10 s).

    Returns:
        A :class:`Table`: ``changelog`` (rows, and one :class:`TableReady`
        per partition when its bootstrap is read) and ``errs``.

    Examples:
        >>> from bytewax.dataflow import Dataflow
        >>> from streamml.serde import JsonSerde
        >>> flow = Dataflow("doc")
        >>> table = kafka_table("devices", flow, brokers="127.0.0.1:9092",
        ...                     topic="devices", value_serde=JsonSerde())
        >>> type(table).__name__
        'Table'
        >>> from datetime import timedelta
        >>> kafka_table("late", flow, brokers="127.0.0.1:9092", topic="devices",
        ...             value_serde=JsonSerde(), broker_timeout=timedelta(0))
        Traceback (most recent call last):
        ...
        ValueError: broker_timeout must be > 0 (or None to retry forever); got 0:00:00
    """
    hosts = _broker_list(brokers)
    if not topic:
        raise ValueError("topic must name the table's topic")
    config = dict(add_config or {})
    if broker_timeout is not None:
        _check_broker_timeout(broker_timeout, config)
    raw = op.input("read", flow, _TableSource(hosts, topic, config, tail, broker_timeout))
    decoded = op.flat_map_batch(
        "decode", raw, _decoder(f"{step_id}.decode", key_serde or StringSerde(), value_serde)
    )
    # Batch steps split rows from rejections: no per-row op.branch predicate.
    return Table(
        changelog=op.flat_map_batch("rows", decoded, _rows),
        errs=op.flat_map_batch("errs", decoded, _errs),
    )
