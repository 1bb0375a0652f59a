"""``kafka.sink``: encode rows or frames in batches and produce them, rejections on a stream."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from operator import itemgetter
from typing import Any, TypeVar

import bytewax.operators as op
import polars as pl
from bytewax.dataflow import Stream, operator

from streamml._kafka_partitions import (
    DEFAULT_BROKER_TIMEOUT,
    broker_list,
    check_timeout,
    one_topic,
)
from streamml.errors import Rejected
from streamml.kafka._records import keep
from streamml.metrics import delivered, instrumented
from streamml.producer import Messages, ProducerSink, count_messages
from streamml.serde.base import (
    BytesSerde,
    SerdeError,
    Serializer,
    StringSerde,
    check_serde,
    encode_frame,
)

X = TypeVar("X")
Encoded = list[Messages | Rejected]


def _encoder(
    step_id: str,
    value_serde: Serializer,
    key_serde: Serializer,
    value: Callable[[Any], Any] | None,
    key: Callable[[Any], Any] | str | None,
) -> Callable[[list[Any]], Encoded]:
    """Rows and frames to :class:`Messages` (one per batch of rows, one per frame) and
    a :class:`Rejected` for each item or row that did not encode.

    A batch of rows is encoded as a whole; a frame with ``encode_frame``
    (see :func:`_frame_encoder`); a batch holding both keeps its order.
    """
    encode_rows = _row_encoder(
        step_id, value_serde, key_serde, value, _field(key) if isinstance(key, str) else key
    )
    encode_one_frame = _frame_encoder(step_id, value_serde, key_serde, value, key)
    is_frame = pl.DataFrame

    def encode(items: list[Any]) -> Encoded:
        if is_frame not in map(type, items):
            return encode_rows(items)
        out: Encoded = []
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


def _field(name: str) -> Callable[[Any], Any]:
    """``item[name]`` for a row, and an error that says what to pass when the item has no such field.

    Examples:
        >>> _field("user")({"user": "ann"})
        'ann'
        >>> _field("user")(("ann", {"score": 1}))
        Traceback (most recent call last):
        ...
        TypeError: key='user' picks item['user'], but the item is a tuple; pass a function, e.g. key=lambda item: ...
    """
    get = itemgetter(name)

    def field(item: Any) -> Any:
        try:
            return get(item)
        except (TypeError, KeyError, IndexError):
            if isinstance(item, dict):
                raise KeyError(f"key={name!r}: the item has no field {name!r}") from None
            raise TypeError(
                f"key={name!r} picks item[{name!r}], but the item is a {type(item).__name__}; "
                "pass a function, e.g. key=lambda item: ..."
            ) from None

    return field


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
) -> Callable[[pl.DataFrame], Encoded]:
    """One frame to :class:`Messages`: values by ``value_serde.encode_frame``, keys from a column.

    ``value(frame)`` (when given) picks the frame to encode; ``key`` is a
    column name, or a function called on each row as a dict. A row that
    does not encode comes back as a :class:`Rejected` with the row as a dict.
    """

    def rejected_all(frame: pl.DataFrame, err: SerdeError, what: str) -> list[Rejected]:
        return [
            Rejected(step_id, err.kind, f"{what}: {err}", row)
            for row in frame.iter_rows(named=True)
        ]

    def encode(frame: pl.DataFrame) -> Encoded:
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
            return [Messages(keys, payloads)]
        rejected: Encoded = []
        kept_keys, kept_values = [], []
        for i, (raw_key, raw_value) in enumerate(zip(keys, payloads)):
            if type(raw_value) is SerdeError:
                rejected.append(
                    Rejected(
                        step_id, raw_value.kind, f"value: {raw_value}", frame.row(i, named=True)
                    )
                )
            elif type(raw_key) is SerdeError:
                rejected.append(
                    Rejected(step_id, raw_key.kind, f"key: {raw_key}", frame.row(i, named=True))
                )
            else:
                kept_keys.append(raw_key)
                kept_values.append(raw_value)
        return [Messages(kept_keys, kept_values), *rejected] if kept_values else rejected

    return encode


def _row_encoder(
    step_id: str,
    value_serde: Serializer,
    key_serde: Serializer,
    value: Callable[[Any], Any] | None,
    key: Callable[[Any], Any] | None,
) -> Callable[[list[Any]], Encoded]:
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

    def encode(items: list[Any]) -> Encoded:
        if not items:
            return []
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
            return [Messages(keys, payloads)]
        rejected: Encoded = []
        kept_keys, kept_values = [], []
        for item, raw_value, picked, raw_key, picked_key in zip(
            items, payloads, values, keys, picked_keys
        ):
            if type(raw_value) is SerdeError or type(picked) is SerdeError:
                err = raw_value if type(raw_value) is SerdeError else picked
                rejected.append(Rejected(step_id, err.kind, f"value: {err}", item))
            elif type(raw_key) is SerdeError or type(picked_key) is SerdeError:
                err = picked_key if type(picked_key) is SerdeError else raw_key
                rejected.append(Rejected(step_id, err.kind, f"key: {err}", item))
            else:
                kept_keys.append(raw_key)
                kept_values.append(raw_value)
        return [Messages(kept_keys, kept_values), *rejected] if kept_values else rejected

    return encode


@operator
@instrumented(down="errs")
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
    broker_timeout: timedelta | None = DEFAULT_BROKER_TIMEOUT,
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
        broker_timeout: How long the producer waits at start for a broker
            to answer before the dataflow fails with
            :class:`~streamml.kafka.BrokerUnreachable` (60 s by default,
            ``None`` waits forever). The topic must exist: one that does not
            fails the dataflow at start with
            :class:`~streamml.kafka.TopicNotFound` (writing never creates it).

    Returns:
        The stream of items that could not be encoded.

    Examples:
        >>> from streamml.serde import JsonSerde
        >>> import bytewax.operators as op
        >>> from bytewax.dataflow import Dataflow
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
        >>> messages, rejected = _encoder("out.encode", strict, StringSerde(), None, "sensor")([frame])
        >>> list(zip(messages.keys, messages.values))
        [(b's1', b'{"sensor":"s1","score":0.5}')]
        >>> rejected
        Rejected(step_id='out.encode', error_type='EncodeError', reason='value: ...', original={'sensor': 's2', 'score': nan})
    """
    hosts = broker_list(brokers)
    topic = one_topic(topic)
    check_serde("value_serde", value_serde, "encode_batch")
    if key_serde is not None:
        check_serde("key_serde", key_serde, "encode_batch")
    for name, fn in (("value", value), ("key", key)):
        if fn is not None and not callable(fn) and not (name == "key" and isinstance(fn, str)):
            what = "a function or a field name" if name == "key" else "a function"
            raise TypeError(
                f"{name} must be {what} (e.g. {name}=lambda item: item[...]); got {fn!r}"
            )
    check_timeout("delivery_timeout", delivery_timeout)
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
    messages = op.flat_map_batch("messages", encoded, keep(Messages))
    producer = ProducerSink(
        ",".join(hosts),
        topic,
        delivery_timeout=delivery_timeout,
        confirm_each_batch=confirm_each_batch,
        add_config=add_config,
        broker_timeout=broker_timeout,
    )
    op.output("kafka", messages, delivered(producer, count_messages))
    return op.flat_map_batch("rejected", encoded, keep(Rejected))
