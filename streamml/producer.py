"""A Bytewax sink that produces ``(key, value)`` byte pairs and never loses one silently.

Bytewax's ``KafkaSink`` ignores delivery reports: a message the broker never
acknowledges (broker down past ``message.timeout.ms``, topic missing, message
too large) is dropped without a word. :class:`ProducerSink` waits for every
delivery report at the end of each batch and raises
:class:`DeliveryError` if any message failed or is still undelivered after
``delivery_timeout``, so the worker stops with a clear error instead, and
Bytewax recovery resumes from the last snapshot (at-least-once).

It also takes plain tuples, so a pipeline builds no intermediate message
object per event, or a whole batch as one :class:`Messages` item (two lists,
keys and values), so a batch crosses Bytewax's steps as one item, not one per
message; and it asks librdkafka to report only failed deliveries
(``delivery.report.only.error``): the flush at the end of a batch still waits
until the broker has acknowledged every message (an acknowledged message
leaves librdkafka's queue, a failed one comes back as a report), but no
Python callback runs for each message that succeeded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import suppress
from datetime import timedelta
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Producer

from streamml._kafka_partitions import (
    DEFAULT_BROKER_TIMEOUT,
    BrokerUnreachable,
    TopicNotFound,
    check_timeout,
)

__all__ = [
    "DeliveryError",
    "Messages",
    "ProducerSink",
    "check_topic",
    "count_messages",
    "ready_producer",
]

logger = logging.getLogger(__name__)

# How long a new producer waits for its first broker connection before it goes on regardless.
_CONNECT_WAIT_S = 1.0
# How long a flush that timed out waits more for the expired messages' reports.
_REPORT_GRACE_S = 2.0


def ready_producer(config: Mapping[str, Any], topic: str) -> Producer:
    """A ``Producer`` that is connected, and holds its producer id, before its first message.

    An idempotent producer cannot send before a broker has given it a
    producer id. librdkafka asks for one when the producer is created,
    before any connection is up, and again on each metadata response while
    a broker is up; otherwise it retries on a 500 ms timer. The first
    metadata response comes over the bootstrap connection, which librdkafka
    then replaces by one to the broker's own id, so a second request is
    what reliably finds a broker up. Measured on the embedded broker, 30
    producers each: first delivery 0.5 to 1 s after creation by default;
    with connections opened at creation (``enable.sparse.connections``
    false) and one metadata request, 0 s for half of them and 0.5 s for
    the rest; with two requests, 0 s for all. A broker that does not answer
    within 1 s is not an error here: the first delivery reports it.

    The requests ask for every topic's metadata, not ``topic``'s: a
    producer's request for one topic makes a broker that creates topics on
    first use create it (tansu does, and Kafka with
    ``auto.create.topics.enable``), which would hide a misspelt name.

    Examples:
        >>> producer = ready_producer({"bootstrap.servers": "127.0.0.1:9"}, "t")  # doctest: +SKIP
    """
    producer = Producer({"enable.sparse.connections": False, **config})
    with suppress(KafkaException):  # unreachable for now: the delivery reports will say so
        for _ in range(2):
            producer.list_topics(timeout=_CONNECT_WAIT_S)
    return producer


def check_topic(producer: Producer, topic: str, broker_timeout: timedelta | None) -> None:
    """Fail unless the brokers answer within ``broker_timeout`` and have ``topic``.

    Raises :class:`~streamml.kafka.BrokerUnreachable` when no broker answers
    in time (``None`` waits for one forever) and
    :class:`~streamml.kafka.TopicNotFound` when the topic does not exist,
    so a sink fails at start with the reason instead of retrying in silence
    or writing to a topic a typo created.
    """
    wait_s = -1.0 if broker_timeout is None else broker_timeout.total_seconds()
    try:
        topics = producer.list_topics(timeout=wait_s).topics  # all topics: see ready_producer
    except KafkaException as exc:
        raise BrokerUnreachable(
            f"no Kafka broker answered the sink of topic {topic!r} within "
            f"broker_timeout={wait_s:g} s at start: {exc}"
        ) from None
    if topic not in topics:
        raise TopicNotFound(
            f"Kafka topic {topic!r} does not exist; create it before writing to it "
            "(e.g. AdminClient.create_topics, kafka-topics.sh --create, "
            "or `streamml broker --topic NAME:PARTITIONS`)"
        )


# librdkafka settings that only a consumer reads: a producer ignores them with a CONFWARN
# line on stderr (the same add_config given to a source and a sink does that).
_CONSUMER_ONLY = (
    "auto.commit.",
    "auto.offset.reset",
    "check.crcs",
    "consume.callback.max.messages",
    "coordinator.query.interval.ms",
    "enable.auto.",
    "enable.partition.eof",
    "fetch.",
    "group.",
    "heartbeat.interval.ms",
    "isolation.level",
    "max.partition.fetch.bytes",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "queued.",
    "session.timeout.ms",
)


def _refuse_consumer_settings(add_config: Mapping[str, Any]) -> None:
    """Refuse consumer settings in a producer's ``add_config``, which librdkafka would ignore.

    Examples:
        >>> _refuse_consumer_settings({"linger.ms": 20})
        >>> _refuse_consumer_settings({"fetch.wait.max.ms": 20, "group.id": "g"})
        Traceback (most recent call last):
        ...
        ValueError: fetch.wait.max.ms, group.id are consumer settings, which a producer ignores; leave them out of the sink's add_config
    """
    found = [k for k in add_config if isinstance(k, str) and k.startswith(_CONSUMER_ONLY)]
    if len(found) == 1:
        raise ValueError(
            f"{found[0]} is a consumer setting, which a producer ignores; "
            "leave it out of the sink's add_config"
        )
    if found:
        raise ValueError(
            f"{', '.join(found)} are consumer settings, which a producer ignores; "
            "leave them out of the sink's add_config"
        )


KeyValue = tuple[bytes | None, bytes | None]


class Messages:
    """Messages to produce as one item: ``keys[i]`` and ``values[i]`` are message ``i``.

    A sink step hands a whole encoded batch on as one of these (see
    :func:`streamml.kafka.sink`): Bytewax moves one item between steps
    instead of one ``(key, value)`` pair per message, and no pair is built.
    Its ``len`` is the number of messages.

    Examples:
        >>> batch = Messages([b"k1", None], [b"v1", b"v2"])
        >>> len(batch), list(zip(batch.keys, batch.values))
        (2, [(b'k1', b'v1'), (None, b'v2')])
    """

    __slots__ = ("keys", "values")

    def __init__(self, keys: list[bytes | None], values: list[bytes | None]) -> None:
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys for {len(values)} values")
        self.keys, self.values = keys, values

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"Messages({len(self)} messages)"


def count_messages(items: list[KeyValue | Messages]) -> int:
    """The messages in a batch of ``(key, value)`` pairs and :class:`Messages`.

    Examples:
        >>> count_messages([Messages([None] * 3, [b"a", b"b", b"c"]), (b"k", b"v")])
        4
    """
    return sum(len(item) if type(item) is Messages else 1 for item in items)


class DeliveryError(RuntimeError):
    """Messages could not be delivered to Kafka; the batch is not acknowledged."""


class _ProducerPartition(StatelessSinkPartition[KeyValue | Messages]):
    def __init__(
        self,
        config: Mapping[str, Any],
        topic: str,
        timeout_s: float,
        confirm_each_batch: bool,
        broker_timeout: timedelta | None,
    ) -> None:
        self._user_error_cb = config.get("error_cb")
        self._broker_error: str | None = None
        # The producer-wide delivery callback (not one passed with every
        # produce() call) keeps the produce loop free of keyword arguments.
        self._producer = ready_producer(
            {**config, "on_delivery": self._on_delivery, "error_cb": self._on_error}, topic
        )
        self._topic = topic
        self._timeout_s = timeout_s
        self._confirm_each_batch = confirm_each_batch
        self._failures: list[str] = []
        self._failed = False  # a DeliveryError was raised: close() must not raise again
        try:
            check_topic(self._producer, topic, broker_timeout)
        except Exception:
            self._producer.close()
            raise

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._failures.append(err.str())

    def _on_error(self, err: KafkaError) -> None:
        """Keep the client's last error (connection refused, all brokers down) for a DeliveryError."""
        self._broker_error = err.str()
        if self._user_error_cb is not None:
            self._user_error_cb(err)

    def _flush(self) -> int:
        """Wait up to the delivery timeout; what is still queued then gets a moment to report why.

        Messages expire after the same timeout, but librdkafka scans for
        expired ones about once a second: a short second flush collects
        their "Message timed out" reports instead of a bare count.
        """
        remaining = self._producer.flush(self._timeout_s)
        if remaining:
            remaining = self._producer.flush(_REPORT_GRACE_S)
        return remaining

    def write_batch(self, items: list[KeyValue | Messages]) -> None:
        produce, poll = self._producer.produce, self._producer.poll
        topic = self._topic
        for item in items:
            pairs = zip(item.keys, item.values) if type(item) is Messages else (item,)
            for key, value in pairs:  # type: ignore[misc]
                try:
                    produce(topic, value, key)
                except BufferError:  # local queue full: wait for the broker to drain it
                    self._produce_when_room(key, value)
        if self._confirm_each_batch:
            self._confirm(self._flush())
        else:
            poll(0)  # serve the reports that arrived; fail on any failure seen so far
            self._confirm(0)

    def _produce_when_room(self, key: bytes | None, value: bytes | None) -> None:
        give_up = time.monotonic() + self._timeout_s
        while True:
            self._producer.poll(0.1)
            try:
                self._producer.produce(self._topic, value, key)
                return
            except BufferError:
                if time.monotonic() > give_up:
                    self._confirm(len(self._producer))

    def _confirm(self, remaining: int) -> None:
        if remaining or self._failures:
            failures, self._failures = self._failures, []
            self._failed = True
            raise DeliveryError(
                f"could not deliver to topic {self._topic!r} within {self._timeout_s:g} s: "
                f"{len(failures)} message(s) failed, {remaining} still queued; "
                f"reasons: {sorted(set(failures))[:3]}; last client error: {self._broker_error}"
            )

    def close(self) -> None:
        """Confirm what is still queued, then close the producer (its connections and threads).

        Bytewax calls ``close`` at the end of a run, and also while a failed
        worker unwinds; an exception raised then aborts the process (exit
        134, "panic in a destructor during cleanup") and hides the first
        error. So ``close`` raises only what it alone can find: messages
        still undelivered when nothing has failed before (possible only with
        ``confirm_each_batch=False``: with the default every batch was
        confirmed as it was written). After a :class:`DeliveryError`, the
        messages left are dropped from the queue (Bytewax recovery replays
        the batches they came from) and nothing is raised again. The error
        ``close`` raises is logged first: should the worker be unwinding from
        another step's failure, Bytewax aborts, and the log still says why.
        """
        try:
            if self._failed:
                self._producer.purge()
                self._producer.flush(0)
                return
            remaining = self._flush()
            if remaining or self._failures:
                self._producer.purge()
                self._producer.flush(0)
                try:
                    self._confirm(remaining)
                except DeliveryError as exc:
                    logger.error("%s", exc)
                    raise
        finally:
            self._producer.close()


class ProducerSink(DynamicSink[KeyValue | Messages]):
    """Produce ``(key, value)`` byte pairs (or :class:`Messages`) to one topic, checking every
    delivery report.

    Args:
        brokers: Bootstrap servers, ``"host:port,host:port"``.
        topic: Topic to produce to.
        delivery_timeout: How long a batch may wait for the broker's
            acknowledgements before the worker fails with :class:`DeliveryError`.
        confirm_each_batch: Wait at the end of every batch until the broker
            has acknowledged all its messages (the default): with Bytewax
            recovery, nothing is lost even in a crash (at-least-once).
            ``False`` lets batches go without waiting, so the dataflow does
            not stall for a broker round trip per batch; a failed delivery
            still stops the worker with :class:`DeliveryError` (at a later
            batch or at the end), but a crash can lose the messages sent in
            the moments before it, as with Bytewax's own ``KafkaSink`` or a
            hand-written producer loop.
        add_config: Extra librdkafka producer settings (override the defaults:
            idempotence on, ``linger.ms`` 5, ``delivery.report.only.error``
            on). Its ``on_delivery`` is replaced: the sink's own callback
            collects the failures; its ``error_cb`` is still called.
        broker_timeout: How long each worker's producer waits at start for
            a broker to answer before failing with
            :class:`~streamml.kafka.BrokerUnreachable` (60 s by default;
            ``None`` waits forever). A topic that does not exist fails it
            with :class:`~streamml.kafka.TopicNotFound`.

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
        confirm_each_batch: bool = True,
        add_config: Mapping[str, str] | None = None,
        broker_timeout: timedelta | None = DEFAULT_BROKER_TIMEOUT,
    ) -> None:
        check_timeout("delivery_timeout", delivery_timeout)
        check_timeout("broker_timeout", broker_timeout, none="wait forever")
        self.topic = topic
        self._broker_timeout = broker_timeout
        self._timeout_s = delivery_timeout.total_seconds()
        self._confirm_each_batch = bool(confirm_each_batch)
        _refuse_consumer_settings(add_config or {})
        self._config = {
            "bootstrap.servers": brokers,
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": int(self._timeout_s * 1000),
            "delivery.report.only.error": True,
            **dict(add_config or {}),
        }

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProducerPartition:
        return _ProducerPartition(
            self._config,
            self.topic,
            self._timeout_s,
            self._confirm_each_batch,
            self._broker_timeout,
        )
