"""Serializers and deserializers that work on whole batches.

Per-message Python overhead decides throughput, so every serde here takes a
list of payloads and returns a list of the same length (``decode_batch``,
``encode_batch``), or decodes a batch straight into a ``polars.DataFrame``
and encodes one back (``decode_frame``, ``encode_frame``: the columnar path,
with a :class:`FrameDecoded` telling which input each row came from). A payload that cannot
be decoded (or a value that cannot be encoded) comes back as a
:class:`SerdeError` in its place — never raised — so the Kafka operators can
route it to the dead-letter stream with the reason.

- :class:`JsonSerde` — JSON via orjson.
- :class:`ConfluentAvroSerde` — Avro in the Confluent wire format, schemas
  resolved through a Confluent-compatible schema registry.
- :class:`AvroSerde` — plain schemaless Avro from a local ``.avsc`` schema.
- :class:`BytesSerde` and :class:`StringSerde` — pass-through and UTF-8.
"""

from streamml.serde.avro import AvroSerde, ConfluentAvroSerde
from streamml.serde.base import (
    BytesSerde,
    Deserializer,
    FrameDecoded,
    SerdeError,
    Serializer,
    ServiceUnavailable,
    StringSerde,
    decode_frame,
    encode_frame,
    is_error,
)
from streamml.serde.json import JsonSerde

__all__ = [
    "AvroSerde",
    "BytesSerde",
    "ConfluentAvroSerde",
    "Deserializer",
    "FrameDecoded",
    "JsonSerde",
    "SerdeError",
    "Serializer",
    "ServiceUnavailable",
    "StringSerde",
    "decode_frame",
    "encode_frame",
    "is_error",
]
