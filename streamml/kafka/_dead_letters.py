"""``kafka.dead_letter_sink``: every rejection as a self-describing JSON envelope on a topic."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.dataflow import Stream, operator

from streamml._kafka_partitions import (
    broker_list,
)
from streamml.errors import Rejected
from streamml.kafka._records import Record, broker_timestamp
from streamml.producer import ProducerSink


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
            "timestamp_ms": broker_timestamp(src),
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
        >>> import bytewax.operators as op
        >>> from bytewax.dataflow import Dataflow
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
