"""What the Kafka source hands on: :class:`Record`, a decoded message with its coordinates, and :class:`SourceOut`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Generic, NamedTuple, TypeVar

from bytewax.connectors.kafka import KafkaSourceMessage
from bytewax.dataflow import Stream

from streamml.errors import Rejected

X = TypeVar("X")


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


def keep(wanted: type) -> Callable[[list[Any]], list[Any]]:
    """A batch filter: one Python call per batch, where ``op.branch`` makes one per item."""

    def keep(batch: list[Any]) -> list[Any]:
        return [item for item in batch if type(item) is wanted]

    return keep


def broker_timestamp(msg: KafkaSourceMessage) -> int | None:
    ts = msg.timestamp
    # (type, ms); type 0 is TIMESTAMP_NOT_AVAILABLE.
    return ts[1] if ts and ts[0] else None
