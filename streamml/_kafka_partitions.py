"""Kafka partitions as Bytewax input partitions, on Bytewax's public API and confluent-kafka only.

Both of streamml's Kafka readers — :func:`streamml.kafka.source` and
``streamml.operators.join.kafka_table`` — read through one
:class:`PartitionReader`: a ``bytewax.inputs.StatefulSourcePartition`` over
a ``confluent_kafka.Consumer`` assigned to one partition (no consumer
group: the offsets live in Bytewax's recovery snapshots). Each call hands
on one *fetch*, the raw ``confluent_kafka.Message`` list ``consume()``
returned, as a single dataflow item: Bytewax pays its per-item cost once per
fetch, no message is wrapped in a Python object before the decode step
turns the whole fetch into records or a frame, and consumer errors stay in
the list, so the decode step hands them on as rejections.

Bytewax's own ``KafkaSource`` is not used: it wraps every message in a
``KafkaSourceMessage`` (a quarter of a light pipeline's time) and has no way
to hand on raw messages through its public API. What it does besides — the
partition listing, the ``"{partition}-{topic}"`` partition names, the next
offset as the snapshot, its consumer settings and its consumer-lag gauge —
is kept here, so a recovery store written through ``KafkaSource`` resumes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from bytewax.connectors.kafka import BYTEWAX_CONSUMER_LAG_GAUGE, KafkaSourceMessage
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition
from confluent_kafka import KafkaError as ConfluentKafkaError

__all__ = [
    "DEFAULT_BROKER_TIMEOUT",
    "BrokerUnreachable",
    "BrokerWatch",
    "KafkaPartitions",
    "PartitionReader",
    "broker_list",
    "check_broker_timeout",
    "list_partitions",
    "picklable",
    "start_position",
    "TopicNotFound",
    "check_timeout",
    "one_topic",
    "topic_names",
]

Fetch = list[Any]
"""One ``consume()`` result: ``confluent_kafka.Message`` objects (consumer errors
included), possibly ended by the reader's end-of-partition marker."""


class BrokerUnreachable(RuntimeError):
    """No broker has answered a :func:`~streamml.kafka.source` (or a ``join.kafka_table``) for longer than its ``broker_timeout``."""


BrokerUnreachable.__module__ = "streamml.kafka"  # where users import it from


class TopicNotFound(RuntimeError):
    """A topic a Kafka source, table or sink names does not exist on the brokers."""


TopicNotFound.__module__ = "streamml.kafka"

DEFAULT_BROKER_TIMEOUT = timedelta(seconds=60)
"""How long the Kafka source, table and sink wait for an unreachable broker
before failing the dataflow, unless told otherwise (Kafka clients' own
``default.api.timeout.ms`` is 60 s too)."""

_UNREACHABLE = frozenset(
    {
        ConfluentKafkaError._ALL_BROKERS_DOWN,
        ConfluentKafkaError._TRANSPORT,
        ConfluentKafkaError._RESOLVE,
    }
)
_UNKNOWN_TOPIC = ConfluentKafkaError.UNKNOWN_TOPIC_OR_PART
_STREAK_GAP_S = 11.0
"""Errors further apart than this start a new outage (librdkafka retries a
connection at least every ``reconnect.backoff.max.ms``, 10 s by default)."""

# How long a read waits for a fuller batch; 0 was no faster (light pipeline, 4 alternating
# runs each: 100,387 vs 101,910 ev/s).
_CONSUME_WAIT_S = 0.001


class BrokerWatch:
    """A librdkafka ``error_cb`` that fails the consumer once brokers stay unreachable.

    librdkafka reports an unreachable broker (connection refused, all brokers
    down) through ``error_cb`` again at every reconnection attempt, then
    silently retries forever. This callback times the streak of such errors
    and raises :class:`BrokerUnreachable` once it is longer than the timeout;
    confluent-kafka re-raises it from ``consume()``, so the Bytewax worker
    stops with that error. A pause without errors longer than
    :data:`_STREAK_GAP_S` ends a streak. A broker that hangs with its
    connections open (e.g. a stopped process) reports nothing here.
    """

    def __init__(self, timeout: timedelta, brokers: str) -> None:
        self._timeout_s = timeout.total_seconds()
        self._brokers = brokers
        self._since: float | None = None
        self._last = 0.0

    def __call__(self, err: ConfluentKafkaError) -> None:
        if err.code() not in _UNREACHABLE:
            return
        now = time.monotonic()
        if self._since is None or now - self._last > _STREAK_GAP_S:
            self._since = now
        self._last = now
        if now - self._since >= self._timeout_s:
            raise BrokerUnreachable(
                f"no Kafka broker of {self._brokers} reachable for {now - self._since:.0f} s "
                f"(broker_timeout={self._timeout_s:g} s); last error: {err.str()}"
            )


def broker_list(brokers: str | Sequence[str]) -> list[str]:
    """``host:port`` strings from a comma-separated string or a list.

    Examples:
        >>> broker_list("a:9092, b:9092")
        ['a:9092', 'b:9092']
        >>> broker_list(9092)
        Traceback (most recent call last):
        ...
        TypeError: brokers must be 'host:port' (comma-separated) or a list of them, e.g. brokers='localhost:9092'; got 9092
    """
    if isinstance(brokers, str):
        hosts = brokers.split(",")
    elif isinstance(brokers, Sequence) and all(isinstance(h, str) for h in brokers):
        hosts = list(brokers)
    else:
        raise TypeError(
            "brokers must be 'host:port' (comma-separated) or a list of them, "
            f"e.g. brokers='localhost:9092'; got {brokers!r}"
        )
    hosts = [h.strip() for h in hosts if h.strip()]
    if not hosts:
        raise ValueError("brokers must name at least one host:port, e.g. brokers='localhost:9092'")
    return hosts


def topic_names(topics: str | Sequence[str], name: str = "topics") -> list[str]:
    """Topic names from one name or a list of them; anything else is refused with what to pass.

    Examples:
        >>> topic_names("readings"), topic_names(["a", "b"])
        (['readings'], ['a', 'b'])
        >>> topic_names(123)
        Traceback (most recent call last):
        ...
        TypeError: topics must be a topic name or a list of names, e.g. topics='readings'; got 123
    """
    found = [topics] if isinstance(topics, str) else topics
    if not isinstance(found, Sequence) or not all(isinstance(t, str) for t in found):
        raise TypeError(
            f"{name} must be a topic name or a list of names, e.g. {name}='readings'; "
            f"got {topics!r}"
        )
    if not found or not all(found):
        raise ValueError(
            f"{name} must name at least one topic, e.g. {name}='readings'; got {topics!r}"
        )
    return list(found)


def one_topic(topic: str) -> str:
    """The one topic a sink writes to, or a table reads: a non-empty name.

    Examples:
        >>> one_topic(["scores"])
        Traceback (most recent call last):
        ...
        TypeError: topic must be one topic name, e.g. topic='scores'; got ['scores']
    """
    if not isinstance(topic, str) or not topic:
        raise TypeError(f"topic must be one topic name, e.g. topic='scores'; got {topic!r}")
    return topic


def check_timeout(name: str, value: Any, *, none: str | None = None) -> None:
    """Refuse a timeout that is not a positive ``timedelta`` (``None`` only when ``none`` says what it means).

    Examples:
        >>> check_timeout("delivery_timeout", 60)
        Traceback (most recent call last):
        ...
        TypeError: delivery_timeout must be a datetime.timedelta, e.g. timedelta(seconds=60); got 60
    """
    if value is None and none is not None:
        return
    if not isinstance(value, timedelta):
        allowed = f" (or None to {none})" if none is not None else ""
        raise TypeError(
            f"{name} must be a datetime.timedelta{allowed}, e.g. timedelta(seconds=60); got {value!r}"
        )
    if value <= timedelta(0):
        allowed = f" (or None to {none})" if none is not None else ""
        raise ValueError(f"{name} must be > 0{allowed}; got {value}")


def check_broker_timeout(broker_timeout: timedelta | None, config: dict[str, Any]) -> None:
    """Refuse a ``broker_timeout`` that is not positive, or one with an ``error_cb`` of the user's.

    Examples:
        >>> check_broker_timeout(timedelta(0), {})
        Traceback (most recent call last):
        ...
        ValueError: broker_timeout must be > 0 (or None to retry forever); got 0:00:00
    """
    check_timeout("broker_timeout", broker_timeout, none="retry forever")
    if broker_timeout is not None and "error_cb" in config:
        raise ValueError(
            "broker_timeout sets error_cb; leave error_cb out of add_config "
            "(or pass broker_timeout=None to keep your own and retry forever)"
        )


def start_position(starting_offset: int, config: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """The offset to assign and the consumer config that start where ``starting_offset`` asks.

    Assigning ``OFFSET_BEGINNING`` makes librdkafka look the offset up
    first, which waits 500 ms per start on the embedded broker (1,000
    messages: 0.53 s to read against 0.03 s from offset 0). Offset 0 is the
    first message of a partition whose log was never trimmed; when retention
    has trimmed it, the fetch is out of range and ``auto.offset.reset``
    ``earliest`` moves it to the first offset there is. A reset policy the
    user chose is left alone, and so is the lookup.

    Examples:
        >>> start_position(OFFSET_BEGINNING, {})
        (0, {'auto.offset.reset': 'earliest'})
        >>> start_position(OFFSET_BEGINNING, {"auto.offset.reset": "error"})
        (-2, {'auto.offset.reset': 'error'})
    """
    if starting_offset != OFFSET_BEGINNING or "auto.offset.reset" in config:
        return starting_offset, config
    return 0, {**config, "auto.offset.reset": "earliest"}


def list_partitions(
    config: dict[str, Any],
    topics: Sequence[str],
    *,
    broker_timeout: timedelta | None,
    wait: timedelta | None = None,
) -> dict[str, int]:
    """How many partitions each topic has, asking the brokers of ``config``.

    Topics are listed one at a time, so a broker that creates topics on
    first use does so, as with Bytewax's ``KafkaSource``. With a
    ``broker_timeout``, brokers that do not answer within it raise
    :class:`BrokerUnreachable`; without one the listing waits ``wait``
    (forever when ``None``) and then raises librdkafka's ``KafkaException``.
    A topic the broker reports an error for raises ``RuntimeError``.
    """
    listing = {k: v for k, v in config.items() if k not in ("error_cb", "stats_cb")}
    consumer = Consumer({"group.id": "BYTEWAX_IGNORED", **listing})
    timeout = broker_timeout or wait
    wait_s = -1.0 if timeout is None else timeout.total_seconds()
    counts: dict[str, int] = {}
    try:
        for topic in topics:
            try:
                meta = consumer.list_topics(topic, timeout=wait_s).topics[topic]
            except KafkaException as exc:
                if broker_timeout is None:
                    raise
                raise BrokerUnreachable(
                    f"no Kafka broker of {config.get('bootstrap.servers')} answered within "
                    f"broker_timeout={wait_s:g} s at start: {exc}"
                ) from None
            if meta.error is not None and meta.error.code() == _UNKNOWN_TOPIC:
                raise TopicNotFound(
                    f"Kafka topic {topic!r} does not exist on {config.get('bootstrap.servers')}; "
                    "create it first (e.g. AdminClient.create_topics, kafka-topics.sh --create, "
                    "or `streamml broker --topic NAME:PARTITIONS`)"
                )
            if meta.error is not None:
                raise RuntimeError(
                    f"error listing partitions for Kafka topic {topic!r}: {meta.error.str()}"
                )
            counts[topic] = len(meta.partitions)
    finally:
        consumer.close()
    return counts


def picklable(msg: Message) -> KafkaSourceMessage:
    """A picklable copy of a raw message (Bytewax's public message type), for a rejection's original.

    ``confluent_kafka.Message`` does not pickle; a rejected message may
    cross workers on its way to the dead-letter sink.
    """
    return KafkaSourceMessage(
        key=msg.key(),
        value=msg.value(),
        topic=msg.topic(),
        headers=msg.headers() or [],
        offset=msg.offset(),
        partition=msg.partition(),
        timestamp=msg.timestamp(),
    )


class PartitionReader(StatefulSourcePartition[Fetch, int]):
    """One Kafka partition read with ``assign()``; one item per fetch; the next offset as snapshot.

    Each :meth:`next_batch` returns ``[fetch]``, the raw messages of one
    ``consume()`` call (consumer errors included, for the decode step to
    reject), or ``[]`` when nothing came. The snapshot is the offset after
    the last message handed on (before any, the start offset), the int
    Bytewax's own ``KafkaSource`` snapshots, so recovery stores written by
    either resume with the other.

    End of partition (``enable.partition.eof`` in ``config``): the first
    time the reader reaches the end of the log, ``end_marker`` (when given)
    is appended to that fetch, after its messages; with ``stop_at_end`` the
    reader then ends (``StopIteration`` at the next call). Later ends are not
    reported.

    Args:
        config: librdkafka consumer settings (``group.id`` included).
        topic, partition: What to read.
        offset: Where to start: an offset, or a logical one
            (``OFFSET_BEGINNING``, ``OFFSET_END``).
        batch_size: Most messages per fetch.
        stop_at_end: End once the end of the log is reached.
        end_marker: Appended to the fetch that first reaches the end.
        step_id: Labels the consumer-lag gauge (Bytewax's
            ``bytewax_kafka_consumer_lag``), updated from librdkafka's
            statistics when ``config`` sets ``statistics.interval.ms``.
    """

    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        partition: int,
        offset: int,
        *,
        batch_size: int = 1000,
        stop_at_end: bool = False,
        end_marker: Any = None,
        step_id: str = "",
    ) -> None:
        self._offset = offset
        self._topic = topic
        self._partition = partition
        self._batch_size = batch_size
        self._stop_at_end = stop_at_end
        self._end_marker = end_marker
        self._reached_end = False
        self._ended = False
        if "statistics.interval.ms" in config and "stats_cb" not in config:
            self._lag = BYTEWAX_CONSUMER_LAG_GAUGE.labels(
                step_id=step_id, topic=topic, partition=partition
            )
            config = {**config, "stats_cb": self._on_stats}
        self._consumer = Consumer(config)
        self._consumer.assign([TopicPartition(topic, partition, offset)])

    def _on_stats(self, json_stats: str) -> None:
        """Consumer lag from librdkafka's statistics, as Bytewax's ``KafkaSource`` reports it."""
        stats = json.loads(json_stats)["topics"][self._topic]["partitions"][str(self._partition)]
        if self._offset > 0:  # a logical offset (beginning, end) gives no lag
            self._lag.set(stats["ls_offset"] - self._offset)

    def next_batch(self) -> list[Fetch]:
        if self._ended:
            raise StopIteration
        msgs = self._consumer.consume(self._batch_size, _CONSUME_WAIT_S)
        if not msgs:
            return []
        if any(map(Message.error, msgs)):  # a KafkaError is truthy, no error is None
            msgs = self._sift(msgs)
            for m in reversed(msgs):
                if type(m) is Message and m.error() is None:
                    self._offset = m.offset() + 1  # resume after the last message read
                    break
            return [msgs] if msgs else []
        self._offset = msgs[-1].offset() + 1
        return [msgs]

    def _sift(self, msgs: list[Message]) -> Fetch:
        """The fetch without end-of-partition events; the end marker in place of the first."""
        kept: Fetch = []
        for m in msgs:
            error = m.error()
            if error is None or error.code() != ConfluentKafkaError._PARTITION_EOF:
                kept.append(m)
                continue
            if not self._reached_end:
                self._reached_end = True
                if self._end_marker is not None:
                    kept.append(self._end_marker)
            if self._stop_at_end:
                self._ended = True  # hand on this fetch; stop at the next call
                break
        return kept

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class KafkaPartitions(FixedPartitionedSource[Fetch, int]):
    """Every partition of some topics, one :class:`PartitionReader` each, spread over workers.

    Partitions are named ``"{partition}-{topic}"`` and start at
    ``starting_offset`` unless a snapshot resumes them, as in Bytewax's
    ``KafkaSource``. ``tail=False`` ends each partition at the end of its log.

    Args:
        brokers: ``host:port`` strings.
        topics: Topics to read.
        tail: Keep reading at the end of the log.
        starting_offset: Where a partition without a snapshot starts.
        add_config: librdkafka settings over the reader's own (no consumer
            group, no auto commit, end-of-partition events when not tailing,
            statistics every second for the lag gauge).
        batch_size: Most messages per fetch.
        broker_timeout: With one, listing the partitions at start waits at
            most this long and every consumer gets its own
            :class:`BrokerWatch`; without, both wait for the brokers.
    """

    def __init__(
        self,
        brokers: Sequence[str],
        topics: Sequence[str],
        *,
        tail: bool = True,
        starting_offset: int = OFFSET_BEGINNING,
        add_config: dict[str, Any] | None = None,
        batch_size: int = 1000,
        broker_timeout: timedelta | None = None,
    ) -> None:
        self._brokers = ",".join(brokers)
        self._topics = list(topics)
        self._tail = tail
        self._starting_offset = starting_offset
        self._add_config = dict(add_config or {})
        self._batch_size = batch_size
        self._timeout = broker_timeout

    def _config(self) -> dict[str, Any]:
        return {
            # Offsets live in Bytewax's recovery snapshots, not in a consumer group.
            "group.id": "BYTEWAX_IGNORED",
            "enable.auto.commit": "false",
            "bootstrap.servers": self._brokers,
            "enable.partition.eof": "false" if self._tail else "true",
            "statistics.interval.ms": 1000,
            **self._add_config,
        }

    def list_parts(self) -> list[str]:
        counts = list_partitions(self._config(), self._topics, broker_timeout=self._timeout)
        return [f"{p}-{topic}" for topic, n in counts.items() for p in range(n)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> PartitionReader:
        idx, topic = for_part.split("-", 1)
        if topic not in self._topics:
            raise ValueError(
                f"cannot resume partition {for_part!r}: topic {topic!r} is not among "
                f"{self._topics}; a recovery store holds the topics it was written with"
            )
        config = self._config()
        if self._timeout is not None:  # one watch per consumer: each times its own outage
            config["error_cb"] = BrokerWatch(self._timeout, self._brokers)
        return PartitionReader(
            config,
            topic,
            int(idx),
            self._starting_offset if resume_state is None else resume_state,
            batch_size=self._batch_size,
            stop_at_end=not self._tail,
            step_id=step_id,
        )
