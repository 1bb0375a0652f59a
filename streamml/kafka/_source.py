"""``kafka.source``: consume topics and decode each fetch, into records or one frame."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from itertools import chain, repeat
from operator import itemgetter
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Dataflow, Stream, operator
from confluent_kafka import OFFSET_BEGINNING, Message

from streamml._kafka_partitions import (
    DEFAULT_BROKER_TIMEOUT,
    Fetch,
    KafkaPartitions,
    broker_list,
    check_broker_timeout,
    picklable,
    start_position,
    topic_names,
)
from streamml.errors import Rejected
from streamml.kafka._records import Record, SourceOut, keep
from streamml.metrics import instrumented
from streamml.progress import WithProgress, progress_interval
from streamml.serde.base import (
    BytesSerde,
    Deserializer,
    SerdeError,
    check_serde,
    decode_frame,
)

SOURCE_DEFAULTS = {"fetch.wait.max.ms": "20"}
"""librdkafka consumer settings :func:`source` uses unless ``add_config`` overrides them."""


@operator
def _consume(step_id: str, flow: Dataflow, source: KafkaPartitions | WithProgress) -> Stream[Fetch]:
    """One item per fetch, under the input step id ``bytewax.connectors.kafka`` uses.

    The step id (``{step_id}.kafka.kafka_input``), the partition names and
    the snapshots (next offsets) are those of the ``KafkaSource`` this
    source was built on until now, so a recovery store written then resumes.
    """
    return op.input("kafka_input", flow, source)


def _messages(fetches: list[Fetch]) -> list[Message]:
    """The messages of a batch of fetches, in order (usually one fetch: no copy)."""
    return fetches[0] if len(fetches) == 1 else list(chain.from_iterable(fetches))


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


def _with_columns(frame: pl.DataFrame, columns: list[pl.Series]) -> pl.DataFrame:
    """``frame.with_columns(columns)`` without its lazy query (~35 µs a call against ~1-10).

    Examples:
        >>> frame = pl.DataFrame({"kafka_offset": [9], "x": [1.5]})
        >>> _with_columns(frame, [pl.Series("kafka_offset", [3]), pl.Series("kafka_key", [b"k"])])
        shape: (1, 3)
        ┌──────────────┬─────┬───────────┐
        │ kafka_offset ┆ x   ┆ kafka_key │
        │ ---          ┆ --- ┆ ---       │
        │ i64          ┆ f64 ┆ binary    │
        ╞══════════════╪═════╪═══════════╡
        │ 3            ┆ 1.5 ┆ b"k"      │
        └──────────────┴─────┴───────────┘
    """
    names = set(frame.columns)
    if not any(c.name in names for c in columns):
        return frame.hstack(columns)
    new = {c.name: c for c in columns}
    kept = [new.pop(c.name, c) for c in frame.get_columns()]  # a value's field replaced in place
    return pl.DataFrame(kept + list(new.values()))


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
                frame = _with_columns(frame, columns)
            out.append(frame)
        return out

    return decode


@operator
@instrumented
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
    broker_timeout: timedelta | None = DEFAULT_BROKER_TIMEOUT,
    frames: bool = False,
    metadata: Sequence[str] = (),
    progress: bool | timedelta | None = None,
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
            start, instead of retrying forever; 60 s by default, ``None``
            retries forever. Recovery then resumes from the last snapshot.
            A topic that does not exist fails the dataflow at start with
            :class:`TopicNotFound` (it is never created by reading it).
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
        progress: Print events read, rate and consumer lag to stderr at most
            every 5 s (``True``) or every given ``timedelta``, and with
            ``tail=False`` a last line when every partition has been read
            to its end (:mod:`streamml.progress`); ``None`` reads the environment
            variable ``STREAMML_PROGRESS`` (seconds), so a flow run with
            ``python -m bytewax.run`` can show progress unchanged.

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
    check_serde("value_serde", value_serde, "decode_batch")
    if key_serde is not None:
        check_serde("key_serde", key_serde, "decode_batch")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
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
    topic_list = topic_names(topics)
    hosts = broker_list(brokers)
    config: dict[str, Any] = {**SOURCE_DEFAULTS, **(add_config or {})}
    starting_offset, config = start_position(starting_offset, config)
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
    every = progress_interval(progress)
    fetches = _consume(
        "kafka", flow, partitions if every is None else WithProgress(partitions, every)
    )
    if frames:
        decoded = op.flat_map_batch(
            "decode",
            fetches,
            _frame_decoder(f"{step_id}.decode", f"{step_id}.kafka", value_serde, metadata),
        )
        oks = op.flat_map_batch("oks", decoded, keep(pl.DataFrame))
    else:
        decode = _decoder(
            f"{step_id}.decode", f"{step_id}.kafka", value_serde, key_serde or BytesSerde()
        )
        decoded = op.flat_map_batch("decode", fetches, lambda batch: decode(_messages(batch)))
        oks = op.flat_map_batch("oks", decoded, keep(Record))
    return SourceOut(oks=oks, errs=op.flat_map_batch("errs", decoded, keep(Rejected)))
