"""Arbitrary bytes into every decoder: one result per payload, never an exception."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamml.serde import (
    AvroSerde,
    BytesSerde,
    ConfluentAvroSerde,
    JsonSerde,
    SerdeError,
    StringSerde,
)

SCHEMA = {
    "type": "record",
    "name": "R",
    "fields": [
        {"name": "s", "type": "string"},
        {"name": "d", "type": "double"},
        {"name": "a", "type": {"type": "array", "items": "long"}},
        {"name": "m", "type": {"type": "map", "values": "bytes"}},
        {"name": "u", "type": ["null", "int", "string"]},
    ],
}


def _decoders():
    from confluent_kafka.schema_registry import SchemaRegistryClient

    registry = SchemaRegistryClient.new_client({"url": "mock://fuzz"})
    confluent = ConfluentAvroSerde(registry, schema=SCHEMA, subject="fuzz-value")
    _ = confluent.schema_id  # registered as id 1, so b"\0\0\0\0\1..." reaches the Avro body
    return [JsonSerde(), AvroSerde(SCHEMA), confluent, StringSerde(), BytesSerde()]


DECODERS = _decoders()

payloads = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.binary(max_size=64).map(lambda b: b"\x00\x00\x00\x00\x01" + b),
        st.none(),
    ),
    max_size=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=payloads)
def test_every_payload_gets_exactly_one_result(batch: list[bytes | None]) -> None:
    for decoder in DECODERS:
        out = decoder.decode_batch(batch)
        assert len(out) == len(batch)
        for payload, result in zip(batch, out):
            if payload is None:
                assert result is None
            elif isinstance(result, SerdeError):
                assert result.kind in {"DecodeError", "UnknownSchema"} and str(result)
