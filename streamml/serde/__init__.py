"""Serializers and deserializers that work on whole batches.

Per-message Python overhead decides throughput, so every serde here takes a
list of payloads and returns a list of the same length. A payload that cannot
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
    SerdeError,
    Serializer,
    StringSerde,
    is_error,
)
from streamml.serde.json import JsonSerde

__all__ = [
    "AvroSerde",
    "BytesSerde",
    "ConfluentAvroSerde",
    "Deserializer",
    "JsonSerde",
    "SerdeError",
    "Serializer",
    "StringSerde",
    "is_error",
]
