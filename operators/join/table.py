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
from bytewax.inputs import FixedPartitionedSource
from confluent_kafka import Message

from streamml._kafka_partitions import (
    DEFAULT_BROKER_TIMEOUT,
    BrokerWatch,
    Fetch,
    PartitionReader,
    broker_list,
    check_broker_timeout,
    list_partitions,
    one_topic,
    picklable,
)
from streamml.errors import Rejected
from streamml.kafka import SOURCE_DEFAULTS
from streamml.metrics import instrumented
from streamml.serde.base import Deserializer, SerdeError, StringSerde, check_serde

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


class _TableSource(FixedPartitionedSource[Fetch, int]):
    """The table topic's partitions, each read by a :class:`~streamml._kafka_partitions.PartitionReader`.

    Each reader hands on its fetches and ends the fetch that first reaches
    the end of the log with the partition's :class:`TableReady`. Partitions
    are named by number and snapshot their next offset. With a
    ``broker_timeout``, every consumer gets its own ``BrokerWatch`` (the
    ``error_cb`` :func:`streamml.kafka.source` uses) and listing the
    partitions waits at most that long instead of 10 s.
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
        counts = list_partitions(
            self._config(), [self._topic], broker_timeout=self._timeout, wait=timedelta(seconds=10)
        )
        return counts[self._topic]

    def list_parts(self) -> list[str]:
        return [str(p) for p in range(self._partitions())]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> PartitionReader:
        config = self._config()
        if self._timeout is not None:  # one watch per consumer: each times its own outage
            config["error_cb"] = BrokerWatch(self._timeout, ",".join(self._brokers))
        partition = int(for_part)
        return PartitionReader(
            config,
            self._topic,
            partition,
            0 if resume_state is None else resume_state,
            stop_at_end=not self._tail,
            end_marker=TableReady(self._topic, partition, self._partitions()),
            step_id=step_id,
        )


def _decoder(
    step_id: str, reader_step_id: str, key_serde: Deserializer, value_serde: Deserializer
) -> Callable[[list[Fetch]], list[tuple[list[Any], list[Rejected]]]]:
    """A batch function: fetches to one ``(changelog items, rejections)`` pair per batch.

    A fetch's :class:`TableReady` (its last item, if any) follows the rows of
    that fetch. Consumer errors are rejected by ``reader_step_id``, rows that
    do not decode or have no text key by ``step_id``; the original of each
    rejection is a copy of the raw message, so a dead letter keeps its
    topic, partition, offset and bytes.
    """

    def decode(fetches: list[Fetch]) -> list[tuple[list[Any], list[Rejected]]]:
        out: list[Any] = []
        errs: list[Rejected] = []
        for fetch in fetches:
            marker = fetch[-1] if fetch and type(fetch[-1]) is TableReady else None
            msgs = fetch[:-1] if marker is not None else fetch
            if any(map(Message.error, msgs)):  # consumer errors, rare
                errs.extend(
                    Rejected(reader_step_id, "KafkaError", str(m.error()), picklable(m))
                    for m in msgs
                    if m.error() is not None
                )
                msgs = [m for m in msgs if m.error() is None]
            keys = key_serde.decode_batch(list(map(Message.key, msgs)))
            values = value_serde.decode_batch(list(map(Message.value, msgs)))
            for msg, key, value in zip(msgs, keys, values, strict=True):
                if type(key) is SerdeError or type(value) is SerdeError:
                    bad = key if type(key) is SerdeError else value
                    errs.append(Rejected(step_id, bad.kind, str(bad), picklable(msg)))
                elif not isinstance(key, str):
                    errs.append(
                        Rejected(
                            step_id,
                            "MissingKey",
                            "a table row needs a text key",
                            picklable(msg),
                        )
                    )
                else:
                    out.append((key, value))
            if marker is not None:
                out.append(marker)
        return [(out, errs)]

    return decode


def _rows(pairs: list[tuple[list[Any], list[Rejected]]]) -> list[Any]:
    return [x for rows, _ in pairs for x in rows]


def _errs(pairs: list[tuple[list[Any], list[Rejected]]]) -> list[Rejected]:
    return [x for _, errs in pairs for x in errs]


@operator
@instrumented
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
    broker_timeout: timedelta | None = DEFAULT_BROKER_TIMEOUT,
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
            60 s by default; ``None`` retries forever while reading (listing
            the partitions at start gives up after 10 s). A topic that does
            not exist fails the dataflow at start with
            :class:`streamml.kafka.TopicNotFound`.

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
    hosts = broker_list(brokers)
    topic = one_topic(topic)
    check_serde("value_serde", value_serde, "decode_batch")
    if key_serde is not None:
        check_serde("key_serde", key_serde, "decode_batch")
    config = dict(add_config or {})
    check_broker_timeout(broker_timeout, config)
    raw = op.input("read", flow, _TableSource(hosts, topic, config, tail, broker_timeout))
    decoded = op.flat_map_batch(
        "decode",
        raw,
        _decoder(f"{step_id}.decode", f"{step_id}.read", key_serde or StringSerde(), value_serde),
    )
    # Batch steps split rows from rejections: no per-row op.branch predicate.
    return Table(
        changelog=op.flat_map_batch("rows", decoded, _rows),
        errs=op.flat_map_batch("errs", decoded, _errs),
    )
