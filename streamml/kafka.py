"""Kafka I/O as Bytewax operators: a decoding source, an encoding sink, and a dead-letter sink.

Built on Bytewax's public input and output API and confluent-kafka: Kafka
partitions are Bytewax input partitions (the unit of parallelism, their
offsets part of Bytewax recovery, read by
:class:`streamml._kafka_partitions.PartitionReader` one fetch per item), and
the sink is :class:`~streamml.producer.ProducerSink`, which checks every
delivery. streamml decodes and encodes whole batches and routes every
failure to an error stream of :class:`~streamml.errors.Rejected` records,
which :func:`dead_letter_sink` writes to a topic as self-describing JSON.

A typical pipeline::

    src = kafka.source("in", flow, brokers=b, topics=["readings"], value_serde=avro)
    ...                                   # operators on src.oks
    errs = kafka.sink("out", results, brokers=b, topic="scores", value_serde=JsonSerde())
    kafka.dead_letter_sink("dlq", op.merge("all_errs", src.errs, errs), brokers=b, topic="dlq")
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import chain, repeat
from operator import itemgetter
from typing import Any, Generic, NamedTuple, TypeVar

import bytewax.operators as op
import numpy as np
import orjson
import polars as pl
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.dataflow import Dataflow, Stream, operator
from confluent_kafka import OFFSET_BEGINNING, Message

from streamml._kafka_partitions import (
    BrokerUnreachable,
    Fetch,
    KafkaPartitions,
    broker_list,
    check_broker_timeout,
    picklable,
    start_position,
)
from streamml.errors import Rejected
from streamml.producer import ProducerSink
from streamml.serde.base import (
    BytesSerde,
    Deserializer,
    SerdeError,
    Serializer,
    StringSerde,
    decode_frame,
    encode_frame,
)

__all__ = [
    "BrokerUnreachable",
    "Record",
    "SourceOut",
    "dead_letter_envelope",
    "dead_letter_sink",
    "sink",
    "source",
]

X = TypeVar("X")

SOURCE_DEFAULTS = {"fetch.wait.max.ms": "20"}
"""librdkafka consumer settings :func:`source` uses unless ``add_config`` overrides them."""


class Record(NamedTuple):
    """A decoded Kafka message that keeps where it came from.

    Attributes:
        value: The decoded value (``None`` for a tombstone).
        key: The decoded key (``None`` when the message had none).
        topic, partition, offset: The message's coordinates.
        timestamp_ms: The broker timestamp in epoch milliseconds, if any.
        raw_key, raw_value: The original bytes, kept so a later step's
            rejection can still be dead-lettered with them.
    """

    value: Any
    key: Any
    topic: str | None
    partition: int | None
    offset: int | None
    timestamp_ms: int | None
    raw_key: bytes | None
    raw_value: bytes | None

    @property
    def timestamp(self) -> datetime | None:
        """The broker timestamp as a timezone-aware UTC datetime."""
        if self.timestamp_ms is None:
            return None
        return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=timezone.utc)


@dataclass(frozen=True)
class SourceOut(Generic[X]):
    """The streams of :func:`source`."""

    oks: Stream[X]
    """Decoded records (``Record``), or one ``polars.DataFrame`` per fetch with ``frames=True``."""

    errs: Stream[Rejected]
    """Consumer errors and messages that did not decode, with the reason."""


@operator
def _consume(step_id: str, flow: Dataflow, source: KafkaPartitions) -> Stream[Fetch]:
    """One item per fetch, under the input step id ``bytewax.connectors.kafka`` uses.

    The step id (``{step_id}.kafka.kafka_input``), the partition names and
    the snapshots (next offsets) are those of the ``KafkaSource`` this
    source was built on until now, so a recovery store written then resumes.
    """
    return op.input("kafka_input", flow, source)


def _messages(fetches: list[Fetch]) -> list[Message]:
    """The messages of a batch of fetches, in order (usually one fetch: no copy)."""
    return fetches[0] if len(fetches) == 1 else list(chain.from_iterable(fetches))


def _keep(wanted: type) -> Callable[[list[Any]], list[Any]]:
    """A batch filter: one Python call per batch, where ``op.branch`` makes one per item."""

    def keep(batch: list[Any]) -> list[Any]:
        return [item for item in batch if type(item) is wanted]

    return keep


def _broker_timestamp(msg: KafkaSourceMessage) -> int | None:
    ts = msg.timestamp
    # (type, ms); type 0 is TIMESTAMP_NOT_AVAILABLE.
    return ts[1] if ts and ts[0] else None


_kind, _ms = itemgetter(0), itemgetter(1)


def _timestamps_ms(msgs: list[Message]) -> list[int | None]:
    """Each message's broker timestamp in ms, ``None`` where it has none (kind 0)."""
    stamps = list(map(Message.timestamp, msgs))  # (kind, ms)
    if 0 in map(_kind, stamps):  # TIMESTAMP_NOT_AVAILABLE somewhere: rare
        return [ms if kind else None for kind, ms in stamps]
    return list(map(_ms, stamps))


def _decoder(
    step_id: str, consumer_step_id: str, value_serde: Deserializer, key_serde: Deserializer
) -> Callable[[list[Message]], list[Record | Rejected]]:
    def decode(msgs: list[Message]) -> list[Record | Rejected]:
        """Records in message order; rejections (consumer errors first) in their place.

        Every per-message step is a ``map`` over a C method or function: no
        Python bytecode runs per message unless a batch holds an error.
        """
        out: list[Record | Rejected] = []
        if any(map(Message.error, msgs)):  # consumer errors, rare: reported, not decoded
            out.extend(
                Rejected(consumer_step_id, "KafkaError", str(m.error()), picklable(m))
                for m in msgs
                if m.error() is not None
            )
            msgs = [m for m in msgs if m.error() is None]
        raw_values = list(map(Message.value, msgs))
        raw_keys = list(map(Message.key, msgs))
        values = value_serde.decode_batch(raw_values)
        keys = key_serde.decode_batch(raw_keys)
        fields = zip(
            values,
            keys,
            map(Message.topic, msgs),
            map(Message.partition, msgs),
            map(Message.offset, msgs),
            _timestamps_ms(msgs),
            raw_keys,
            raw_values,
        )
        if SerdeError not in map(type, values) and SerdeError not in map(type, keys):
            # tuple.__new__(Record, fields) builds a Record in C; Record(...) runs Python.
            out.extend(map(tuple.__new__, repeat(Record), fields))
            return out
        append = out.append
        for msg, record in zip(msgs, fields):
            value, key = record[0], record[1]
            if type(value) is SerdeError:
                append(Rejected(step_id, value.kind, f"value: {value}", picklable(msg)))
            elif type(key) is SerdeError:
                append(Rejected(step_id, key.kind, f"key: {key}", picklable(msg)))
            else:
                append(Record._make(record))
        return out

    return decode


METADATA = ("partition", "offset", "timestamp", "key", "topic")
"""Message fields :func:`source` can add to each frame (``metadata=``), as ``kafka_<field>`` columns."""


def _metadata_columns(msgs: list[Message], fields: Sequence[str]) -> list[pl.Series]:
    """The ``kafka_*`` columns of a fetch's messages, one value per message, no bytecode per message.

    A fetch comes from one partition (one consumer per partition), so topic
    and partition are read off its first message.
    """
    n = len(msgs)
    columns = []
    for field in fields:
        name = f"kafka_{field}"
        if field == "offset":
            columns.append(pl.Series(name, np.fromiter(map(Message.offset, msgs), np.int64, n)))
        elif field == "timestamp":
            columns.append(pl.Series(name, _timestamps_ms(msgs), pl.Int64))
        elif field == "key":
            columns.append(pl.Series(name, list(map(Message.key, msgs)), pl.Binary))
        elif field == "partition":
            columns.append(pl.Series(name, [msgs[0].partition()], pl.Int32).new_from_index(0, n))
        else:
            columns.append(pl.Series(name, [msgs[0].topic()], pl.String).new_from_index(0, n))
    return columns


def _frame_decoder(
    step_id: str, consumer_step_id: str, value_serde: Deserializer, metadata: Sequence[str]
) -> Callable[[list[Fetch]], list[pl.DataFrame | Rejected]]:
    def decode(fetches: list[Fetch]) -> list[pl.DataFrame | Rejected]:
        """One frame per fetch (none when no row decoded); rejections before it."""
        out: list[pl.DataFrame | Rejected] = []
        for msgs in fetches:
            if any(map(Message.error, msgs)):  # consumer errors, rare: reported, not decoded
                out.extend(
                    Rejected(consumer_step_id, "KafkaError", str(m.error()), picklable(m))
                    for m in msgs
                    if m.error() is not None
                )
                msgs = [m for m in msgs if m.error() is None]
                if not msgs:
                    continue
            frame, rows, errors = decode_frame(value_serde, list(map(Message.value, msgs)))
            out.extend(
                Rejected(step_id, err.kind, f"value: {err}", picklable(msgs[i]))
                for i, err in errors
            )
            if not frame.height:
                continue
            if metadata:
                columns = _metadata_columns(msgs, metadata)
                if len(rows) != len(msgs):  # some did not decode: the rows that did
                    columns = [c.gather(rows) for c in columns]
                frame = frame.with_columns(columns)
            out.append(frame)
        return out

    return decode


@operator
def source(
    step_id: str,
    flow: Dataflow,
    *,
    brokers: str | Sequence[str],
    topics: str | Sequence[str],
    value_serde: Deserializer,
    key_serde: Deserializer | None = None,
    tail: bool = True,
    starting_offset: int = OFFSET_BEGINNING,
    add_config: dict[str, str] | None = None,
    batch_size: int = 1000,
    broker_timeout: timedelta | None = None,
    frames: bool = False,
    metadata: Sequence[str] = (),
) -> SourceOut:
    """Consume topics and decode each message's value (and key) in batches.

    Use it as the entry of a pipeline: decoded messages come out as
    :class:`Record` (value, key, topic, partition, offset, timestamp and the
    original bytes); anything that fails — a consumer error, bytes the serde
    cannot decode — comes out on ``errs`` as a :class:`Rejected` whose
    ``original`` is the raw message. Nothing is dropped and the dataflow does
    not stop on bad bytes.

    Partitions are spread over Bytewax workers, and consumed offsets are part
    of Bytewax's recovery snapshots.

    Args:
        step_id: Unique step id.
        flow: The dataflow.
        brokers: ``"host:port"`` (comma-separated) or a list of them.
        topics: One topic or a list.
        value_serde: Decodes values (:mod:`streamml.serde`).
        key_serde: Decodes keys; keys stay raw bytes when omitted.
        tail: Keep waiting for new messages at the end of the topic; with
            ``False`` the source ends at the end of each partition.
        starting_offset: ``confluent_kafka.OFFSET_BEGINNING`` or ``OFFSET_END``.
            From the beginning, unless ``add_config`` sets
            ``auto.offset.reset``, the source starts at offset 0 with
            ``auto.offset.reset=earliest`` (the same first message, without
            librdkafka's offset lookup, which waits 500 ms per start); that
            reset also applies when a resumed offset has been trimmed by
            retention: reading continues at the oldest message kept rather
            than skipping to the end.
        add_config: Extra librdkafka consumer settings, over streamml's
            defaults (``fetch.wait.max.ms`` 20: a fetch waits at most 20 ms
            for data; librdkafka's 500 ms added ~150 ms to the median
            end-to-end latency on tansu, which holds a fetch that long even
            when data is waiting).
        batch_size: Most messages taken per poll (and so per decode batch).
        broker_timeout: Fail the dataflow with :class:`BrokerUnreachable`
            once no broker has been reachable for this long (connections
            refused, all brokers down), or when none answers within it at
            start, instead of retrying forever; ``None`` retries forever.
            Recovery then resumes from the last snapshot.
        frames: Emit one ``polars.DataFrame`` per fetch instead of one
            :class:`Record` per message: the values are decoded with
            ``value_serde.decode_frame`` (one row per message that decoded,
            in offset order; a fetch where none did emits no frame). Keys
            are not decoded (leave ``key_serde`` out; ask for ``"key"`` in
            ``metadata``).
        metadata: With ``frames``, message fields to add as columns, any of
            ``"partition"`` (``kafka_partition``, Int32), ``"offset"``
            (``kafka_offset``, Int64), ``"timestamp"`` (``kafka_timestamp``,
            broker time in epoch ms, Int64, null when the message has none),
            ``"key"`` (``kafka_key``, the raw bytes) and ``"topic"``
            (``kafka_topic``); a field of the value with the same name is
            replaced. With topic, partition and offset, a row rejected later
            is dead-lettered with its coordinates (:func:`dead_letter_envelope`).

    Returns:
        :class:`SourceOut` with ``oks`` (records, or frames with ``frames``)
        and ``errs`` (rejections; the original of each is the raw message,
        as a ``KafkaSourceMessage``, in both modes).

    Examples:
        >>> from streamml.broker import EmbeddedBroker  # doctest: +SKIP
        >>> from streamml.serde import JsonSerde
        >>> flow = Dataflow("doc")
        >>> src = source("in", flow, brokers="127.0.0.1:9092", topics="readings",
        ...              value_serde=JsonSerde(), tail=False)
        >>> type(src).__name__
        'SourceOut'

        One frame per fetch, with the coordinates of each row (the decode
        step, on messages built by hand):

        >>> msgs = [Message(topic="readings", partition=0, offset=o, value=v, timestamp=(1, 99))
        ...         for o, v in [(0, b'{"t": 20.5}'), (1, b"{oops"), (2, b'{"t": 21.0}')]]
        >>> decode = _frame_decoder("in.decode", "in.kafka", JsonSerde(), ("partition", "offset"))
        >>> rejected, frame = decode([msgs])  # rejections first, then the frame
        >>> frame.rows()
        [(20.5, 0, 0), (21.0, 0, 2)]
        >>> rejected.error_type, rejected.original.offset
        ('DecodeError', 1)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    metadata = (metadata,) if isinstance(metadata, str) else tuple(metadata)
    unknown = [m for m in metadata if m not in METADATA]
    if unknown:
        raise ValueError(f"unknown metadata {unknown}; choose from {METADATA}")
    if metadata and not frames:
        raise ValueError(
            "metadata= adds frame columns; it needs frames=True (a Record has them all)"
        )
    if frames and key_serde is not None:
        raise ValueError(
            "frames=True keeps keys as raw bytes in the kafka_key column (metadata=('key',)); "
            "leave key_serde out and decode the column with polars"
        )
    topic_list = [topics] if isinstance(topics, str) else list(topics)
    if not topic_list:
        raise ValueError("topics must name at least one topic")
    hosts = broker_list(brokers)
    config: dict[str, Any] = {**SOURCE_DEFAULTS, **(add_config or {})}
    starting_offset, config = start_position(starting_offset, config)
    if broker_timeout is not None:
        check_broker_timeout(broker_timeout, config)
    partitions = KafkaPartitions(
        hosts,
        topic_list,
        tail=tail,
        starting_offset=starting_offset,
        add_config=config,
        batch_size=batch_size,
        broker_timeout=broker_timeout,
    )
    fetches = _consume("kafka", flow, partitions)
    if frames:
        decoded = op.flat_map_batch(
            "decode",
            fetches,
            _frame_decoder(f"{step_id}.decode", f"{step_id}.kafka", value_serde, metadata),
        )
        oks = op.flat_map_batch("oks", decoded, _keep(pl.DataFrame))
    else:
        decode = _decoder(
            f"{step_id}.decode", f"{step_id}.kafka", value_serde, key_serde or BytesSerde()
        )
        decoded = op.flat_map_batch("decode", fetches, lambda batch: decode(_messages(batch)))
        oks = op.flat_map_batch("oks", decoded, _keep(Record))
    return SourceOut(oks=oks, errs=op.flat_map_batch("errs", decoded, _keep(Rejected)))


def _encoder(
    step_id: str,
    value_serde: Serializer,
    key_serde: Serializer,
    value: Callable[[Any], Any] | None,
    key: Callable[[Any], Any] | str | None,
) -> Callable[[list[Any]], list[tuple[bytes | None, bytes | None] | Rejected]]:
    """Rows and frames to ``(key, value)`` byte pairs, rejections in place of what did not encode.

    A batch of rows is encoded as a whole; a frame with ``encode_frame``
    (see :func:`_frame_encoder`); a batch holding both keeps its order.
    """
    encode_rows = _row_encoder(
        step_id, value_serde, key_serde, value, itemgetter(key) if isinstance(key, str) else key
    )
    encode_one_frame = _frame_encoder(step_id, value_serde, key_serde, value, key)
    is_frame = pl.DataFrame

    def encode(items: list[Any]) -> list[tuple[bytes | None, bytes | None] | Rejected]:
        if is_frame not in map(type, items):
            return encode_rows(items)
        out: list[tuple[bytes | None, bytes | None] | Rejected] = []
        rows: list[Any] = []
        for item in items:
            if type(item) is is_frame:
                if rows:
                    out += encode_rows(rows)
                    rows = []
                out += encode_one_frame(item)
            else:
                rows.append(item)
        if rows:
            out += encode_rows(rows)
        return out

    return encode


def _key_payloads(key_serde: Serializer, column: pl.Series) -> list[Any]:
    """A key column's values encoded with the key serde (text and bytes in Rust)."""
    if type(key_serde) in (StringSerde, BytesSerde):
        return encode_frame(key_serde, column.alias("value").to_frame())
    return key_serde.encode_batch(column.to_list())


def _keys_of_rows(
    key_serde: Serializer, key: Callable[[Any], Any], frame: pl.DataFrame
) -> list[Any]:
    """``key(row)`` of each row as a dict, encoded; a SerdeError where either failed."""
    picked: list[Any] = []
    for row in frame.iter_rows(named=True):
        try:
            picked.append(key(row))
        except Exception as exc:  # noqa: BLE001
            picked.append(SerdeError("BadItem", f"{type(exc).__name__}: {exc}"))
    keys = key_serde.encode_batch(picked)
    return [p if type(p) is SerdeError else k for p, k in zip(picked, keys)]


def _frame_encoder(
    step_id: str,
    value_serde: Serializer,
    key_serde: Serializer,
    value: Callable[[Any], Any] | None,
    key: Callable[[Any], Any] | str | None,
) -> Callable[[pl.DataFrame], list[tuple[bytes | None, bytes | None] | Rejected]]:
    """One frame to byte pairs: values by ``value_serde.encode_frame``, keys from a column.

    ``value(frame)`` (when given) picks the frame to encode; ``key`` is a
    column name, or a function called on each row as a dict. A row that
    does not encode comes back as a :class:`Rejected` with the row as a dict.
    """

    def rejected_all(frame: pl.DataFrame, err: SerdeError, what: str) -> list[Rejected]:
        return [
            Rejected(step_id, err.kind, f"{what}: {err}", row)
            for row in frame.iter_rows(named=True)
        ]

    def encode(frame: pl.DataFrame) -> list[tuple[bytes | None, bytes | None] | Rejected]:
        if not frame.height:
            return []
        picked = frame
        if value is not None:
            try:
                picked = value(frame)
                if type(picked) is not pl.DataFrame or picked.height != frame.height:
                    raise TypeError(f"value(frame) must give a frame of {frame.height} rows")
            except Exception as exc:  # noqa: BLE001 - every row rejected, nothing raised
                return rejected_all(
                    frame, SerdeError("BadItem", f"{type(exc).__name__}: {exc}"), "value"
                )
        payloads = encode_frame(value_serde, picked)
        if key is None:
            keys: list[Any] = [None] * frame.height
        elif isinstance(key, str):
            if key not in frame.columns:
                return rejected_all(frame, SerdeError("BadItem", f"no key column {key!r}"), "key")
            keys = _key_payloads(key_serde, frame.get_column(key))
        else:
            keys = _keys_of_rows(key_serde, key, frame)
        if SerdeError not in map(type, payloads) and SerdeError not in map(type, keys):
            return list(zip(keys, payloads))
        out: list[tuple[bytes | None, bytes | None] | Rejected] = []
        for i, (raw_key, raw_value) in enumerate(zip(keys, payloads)):
            if type(raw_value) is SerdeError:
                out.append(
                    Rejected(
                        step_id, raw_value.kind, f"value: {raw_value}", frame.row(i, named=True)
                    )
                )
            elif type(raw_key) is SerdeError:
                out.append(
                    Rejected(step_id, raw_key.kind, f"key: {raw_key}", frame.row(i, named=True))
                )
            else:
                out.append((raw_key, raw_value))
        return out

    return encode


def _row_encoder(
    step_id: str,
    value_serde: Serializer,
    key_serde: Serializer,
    value: Callable[[Any], Any] | None,
    key: Callable[[Any], Any] | None,
) -> Callable[[list[Any]], list[tuple[bytes | None, bytes | None] | Rejected]]:
    def pick(fn: Callable[[Any], Any] | None, items: list[Any]) -> list[Any]:
        if fn is None:  # the item itself
            return items
        try:
            return list(map(fn, items))  # a C getter (operator.itemgetter) runs no bytecode
        except Exception:  # noqa: BLE001 - redo item by item to find the culprits
            out = []
            for item in items:
                try:
                    out.append(fn(item))
                except Exception as exc:  # noqa: BLE001
                    out.append(SerdeError("BadItem", f"{type(exc).__name__}: {exc}"))
            return out

    def encode(items: list[Any]) -> list[tuple[bytes | None, bytes | None] | Rejected]:
        values = pick(value, items)
        payloads = value_serde.encode_batch(values)
        if key is None:
            picked_keys = keys = [None] * len(items)
        else:
            picked_keys = pick(key, items)
            keys = key_serde.encode_batch(picked_keys)
        if (
            SerdeError not in map(type, payloads)
            and SerdeError not in map(type, values)
            and SerdeError not in map(type, keys)
            and SerdeError not in map(type, picked_keys)
        ):
            return list(zip(keys, payloads))
        out: list[tuple[bytes | None, bytes | None] | Rejected] = []
        for item, raw_value, picked, raw_key, picked_key in zip(
            items, payloads, values, keys, picked_keys
        ):
            if type(raw_value) is SerdeError or type(picked) is SerdeError:
                err = raw_value if type(raw_value) is SerdeError else picked
                out.append(Rejected(step_id, err.kind, f"value: {err}", item))
            elif type(raw_key) is SerdeError or type(picked_key) is SerdeError:
                err = picked_key if type(picked_key) is SerdeError else raw_key
                out.append(Rejected(step_id, err.kind, f"key: {err}", item))
            else:
                out.append((raw_key, raw_value))
        return out

    return encode


@operator
def sink(
    step_id: str,
    up: Stream[X],
    *,
    brokers: str | Sequence[str],
    topic: str,
    value_serde: Serializer,
    value: Callable[[X], Any] | None = None,
    key: Callable[[X], Any] | str | None = None,
    key_serde: Serializer | None = None,
    delivery_timeout: timedelta = timedelta(seconds=60),
    confirm_each_batch: bool = True,
    add_config: dict[str, str] | None = None,
) -> Stream[Rejected]:
    """Encode items in batches and produce them to a topic.

    Each item's message value is ``value(item)`` (the item itself by default)
    encoded with ``value_serde``; its key is ``key(item)`` encoded with
    ``key_serde`` (UTF-8 text by default), or no key. Items that cannot be
    encoded are not produced: they come back on the returned stream as
    :class:`Rejected`, ready for :func:`dead_letter_sink`.

    An item that is a ``polars.DataFrame`` is a batch of rows: it is encoded
    with ``value_serde.encode_frame`` (one message per row, in order;
    ``value(frame)``, when given, picks the frame to encode), and ``key`` is
    then the name of a column whose values are encoded with ``key_serde``
    (text to UTF-8 bytes by the default ``StringSerde``), or a function
    called on each row as a dict. A row that cannot be encoded comes back as
    a :class:`Rejected` whose ``original`` is the row as a dict (with the
    ``kafka_*`` columns of :func:`source`, :func:`dead_letter_envelope`
    finds its source). For row items, a ``key`` string means ``item[key]``.

    Args:
        step_id: Unique step id.
        up: Items to write.
        brokers: ``"host:port"`` (comma-separated) or a list of them.
        topic: Topic to produce to.
        value_serde: Encodes values (:mod:`streamml.serde`).
        value: Picks the value to encode from an item; the item itself when omitted.
        key: Picks the message key from an item (a column name for frames,
            ``item[key]`` for rows); no key when omitted.
        key_serde: Encodes keys; UTF-8 text when omitted.
        delivery_timeout: How long a batch may wait for the broker's
            acknowledgements; past it the worker fails with
            :class:`~streamml.producer.DeliveryError` (no message is ever
            dropped silently; recovery resumes from the last snapshot).
        confirm_each_batch: Wait for the broker's acknowledgements at the
            end of each batch (the default; at-least-once with recovery).
            ``False`` trades that for not stalling a broker round trip per
            batch: failures still stop the worker, but a crash can lose the
            last moments' messages (see :class:`~streamml.producer.ProducerSink`).
        add_config: Extra librdkafka producer settings.

    Returns:
        The stream of items that could not be encoded.

    Examples:
        >>> from streamml.serde import JsonSerde
        >>> from bytewax.testing import TestingSource
        >>> flow = Dataflow("doc")
        >>> scores = op.input("scores", flow, TestingSource([("pump-1", {"score": 0.9})]))
        >>> errs = sink("out", scores, brokers="127.0.0.1:9092", topic="scores",
        ...             value_serde=JsonSerde(), key=lambda kv: kv[0], value=lambda kv: kv[1])
        >>> type(errs).__name__
        'Stream'

        Frames: one message per row, keyed by a column; a row that does not
        encode (here NaN, which ``allow_nan=False`` refuses) comes back as a dict:

        >>> import polars as pl
        >>> frame = pl.DataFrame({"sensor": ["s1", "s2"], "score": [0.5, float("nan")]})
        >>> strict = JsonSerde(allow_nan=False)
        >>> for out in _encoder("out.encode", strict, StringSerde(), None, "sensor")([frame]):
        ...     print(out)
        (b's1', b'{"sensor":"s1","score":0.5}')
        Rejected(step_id='out.encode', error_type='EncodeError', reason='value: ...', original={'sensor': 's2', 'score': nan})
    """
    encoded = op.flat_map_batch(
        "encode",
        up,
        _encoder(
            f"{step_id}.encode",
            value_serde,
            key_serde or StringSerde(),
            value,
            key,
        ),
    )
    pairs = op.flat_map_batch("pairs", encoded, _keep(tuple))  # a Rejected is a tuple subclass
    producer = ProducerSink(
        ",".join(broker_list(brokers)),
        topic,
        delivery_timeout=delivery_timeout,
        confirm_each_batch=confirm_each_batch,
        add_config=add_config,
    )
    op.output("kafka", pairs, producer)
    return op.flat_map_batch("rejected", encoded, _keep(Rejected))


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


_COORDINATES = ("kafka_topic", "kafka_partition", "kafka_offset")


def _is_frame_row(obj: Any) -> bool:
    """A row of a source frame (as a dict) that kept its message's coordinates."""
    return isinstance(obj, dict) and all(name in obj for name in _COORDINATES)


def _is_source(obj: Any) -> bool:
    return isinstance(obj, (Record, KafkaSourceMessage)) or _is_frame_row(obj)


def _find_source(original: Any) -> Record | KafkaSourceMessage | dict[str, Any] | None:
    if _is_source(original):
        return original
    if isinstance(original, tuple) and not isinstance(original, Rejected):
        for part in original:
            if _is_source(part):
                return part
    return None


def _source_key(src: Any) -> bytes | None:
    """The original message key of a source, when it is known as bytes."""
    if isinstance(src, Record):
        key = src.raw_key
    elif isinstance(src, dict):
        key = src.get("kafka_key")
    else:
        key = getattr(src, "key", None)
    return key if isinstance(key, bytes) else None


def _json_safe(obj: Any) -> Any:
    """A JSON-safe rendering of a rejected event (orjson handles the rest)."""
    if isinstance(obj, Record):
        return obj.value
    if isinstance(obj, (bytes, bytearray)):
        return {"base64": base64.b64encode(obj).decode("ascii")}
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return repr(obj)


def dead_letter_envelope(rejected: Rejected, now: datetime | None = None) -> dict[str, Any]:
    """The self-describing JSON envelope :func:`dead_letter_sink` writes for one rejection.

    Fields: ``step_id``, ``error_type``, ``reason``, ``time`` (RFC 3339 UTC),
    ``source`` (topic, partition, offset, timestamp_ms of the original
    message, or ``None`` when the item did not come from Kafka), ``key`` and
    ``value`` (the original bytes, base64, when known) and ``event`` (the
    rejected item itself as JSON when it was not raw bytes).

    A rejected row of a source frame (a dict, e.g. from :func:`sink`) that
    has the ``kafka_topic``, ``kafka_partition`` and ``kafka_offset`` columns
    (``metadata=`` of :func:`source`) fills ``source`` from them, and ``key``
    from ``kafka_key`` when it has that column too.

    Examples:
        >>> from datetime import datetime, timedelta, timezone
        >>> r = Rejected("decode", "DecodeError", "not JSON", b"{oops")
        >>> env = dead_letter_envelope(r, now=datetime(2026, 1, 1, tzinfo=timezone.utc))
        >>> env["value"], env["time"], env["source"]
        ('e29vcHM=', '2026-01-01T00:00:00+00:00', None)
        >>> row = {"t": -1.0, "kafka_topic": "readings", "kafka_partition": 1, "kafka_offset": 7}
        >>> env = dead_letter_envelope(Rejected("check", "Negative", "t < 0", row))
        >>> env["source"], env["event"]["t"]
        ({'topic': 'readings', 'partition': 1, 'offset': 7, 'timestamp_ms': None}, -1.0)
    """
    src = _find_source(rejected.original)
    envelope: dict[str, Any] = {
        "step_id": rejected.step_id,
        "error_type": rejected.error_type,
        "reason": rejected.reason,
        "time": (now or datetime.now(timezone.utc)).isoformat(),
        "source": None,
        "key": None,
        "value": None,
    }
    if isinstance(src, dict):  # a frame row with its kafka_* columns
        envelope["source"] = {
            "topic": src["kafka_topic"],
            "partition": src["kafka_partition"],
            "offset": src["kafka_offset"],
            "timestamp_ms": src.get("kafka_timestamp"),
        }
        envelope["key"] = _b64(_source_key(src))
    elif isinstance(src, Record):
        envelope["source"] = {
            "topic": src.topic,
            "partition": src.partition,
            "offset": src.offset,
            "timestamp_ms": src.timestamp_ms,
        }
        envelope["key"], envelope["value"] = _b64(src.raw_key), _b64(src.raw_value)
    elif isinstance(src, KafkaSourceMessage):
        envelope["source"] = {
            "topic": src.topic,
            "partition": src.partition,
            "offset": src.offset,
            "timestamp_ms": _broker_timestamp(src),
        }
        if isinstance(src.key, (bytes, type(None))):
            envelope["key"] = _b64(src.key)
        if isinstance(src.value, (bytes, type(None))):
            envelope["value"] = _b64(src.value)
    if isinstance(rejected.original, (bytes, bytearray)):
        envelope["value"] = _b64(bytes(rejected.original))
    elif src is None or src is not rejected.original or isinstance(src, dict):
        envelope["event"] = rejected.original  # a frame row is the event itself
    return envelope


def _encode_envelopes(rejections: list[Rejected]) -> list[tuple[bytes | None, bytes]]:
    now = datetime.now(timezone.utc)
    out = []
    for rejected in rejections:
        envelope = dead_letter_envelope(rejected, now)
        key = _source_key(_find_source(rejected.original))
        out.append(
            (
                key,
                orjson.dumps(
                    envelope,
                    default=_json_safe,
                    option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
                ),
            )
        )
    return out


@operator
def dead_letter_sink(
    step_id: str,
    up: Stream[Rejected],
    *,
    brokers: str | Sequence[str],
    topic: str,
    delivery_timeout: timedelta = timedelta(seconds=60),
    add_config: dict[str, str] | None = None,
) -> None:
    """Write rejections to a dead-letter topic as self-describing JSON envelopes.

    Merge every error stream of a pipeline into this one sink, so that every
    input ends as an output or a dead letter. Each message's key is the
    original message key; its value is :func:`dead_letter_envelope` as JSON
    (original bytes in base64, source coordinates, the rejecting step, the
    error type and message, and the time). Delivery is checked as in
    :func:`sink`.

    Examples:
        >>> from bytewax.testing import TestingSource
        >>> flow = Dataflow("doc")
        >>> errs = op.input("errs", flow, TestingSource([Rejected("s", "E", "why", b"x")]))
        >>> dead_letter_sink("dlq", errs, brokers="127.0.0.1:9092", topic="dead-letters")
    """
    envelopes = op.flat_map_batch("envelope", up, _encode_envelopes)
    producer = ProducerSink(
        ",".join(broker_list(brokers)),
        topic,
        delivery_timeout=delivery_timeout,
        add_config=add_config,
    )
    op.output("kafka", envelopes, producer)
