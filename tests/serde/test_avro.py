"""Avro: the Confluent wire format byte by byte, schema evolution, and failures as markers."""

from __future__ import annotations

import struct

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from streamml.serde import AvroSerde, ConfluentAvroSerde, SerdeError

V1 = {
    "type": "record",
    "name": "Reading",
    "fields": [
        {"name": "sensor", "type": "string"},
        {"name": "value", "type": "double"},
        {"name": "count", "type": "int"},
    ],
}
V2 = {
    "type": "record",
    "name": "Reading",
    "fields": [
        *V1["fields"],
        {"name": "unit", "type": "string", "default": "celsius"},
    ],
}


@pytest.fixture
def registry() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": "mock://test-avro"})


def test_confluent_wire_format_bytes(registry: SchemaRegistryClient) -> None:
    serde = ConfluentAvroSerde(registry, schema=V1, subject="readings-value")
    [payload] = serde.encode_batch([{"sensor": "ab", "value": 1.0, "count": -2}])
    expected = (
        b"\x00"  # magic byte
        + struct.pack(">I", serde.schema_id)  # schema id, 4 bytes big-endian
        + b"\x04ab"  # string: zigzag length 2, then UTF-8
        + struct.pack("<d", 1.0)  # double: 8 bytes little-endian
        + b"\x03"  # int -2 zigzag-encoded
    )
    assert payload == expected


def test_v2_reader_reads_v1_records(registry: SchemaRegistryClient) -> None:
    writer = ConfluentAvroSerde(registry, schema=V1, subject="readings-value")
    payloads = writer.encode_batch([{"sensor": "s", "value": 2.5, "count": 3}])
    reader = ConfluentAvroSerde(registry, reader_schema=V2)
    assert reader.decode_batch(payloads) == [
        {"sensor": "s", "value": 2.5, "count": 3, "unit": "celsius"}
    ]


def test_failures_come_back_as_markers(registry: SchemaRegistryClient) -> None:
    serde = ConfluentAvroSerde(registry, schema=V1, subject="readings-value")
    [good] = serde.encode_batch([{"sensor": "s", "value": 2.5, "count": 3}])
    unknown_id = b"\x00" + struct.pack(">I", 4242) + good[5:]
    results = serde.decode_batch(
        [good, unknown_id, b"\x01" + good[1:], good[:-3], good + b"\x00", b"\x00\x00", None]
    )
    assert results[0] == {"sensor": "s", "value": 2.5, "count": 3}
    kinds = [r.kind if isinstance(r, SerdeError) else None for r in results[1:]]
    assert kinds == [
        "UnknownSchema",
        "DecodeError",
        "DecodeError",
        "DecodeError",
        "DecodeError",
        None,
    ]
    assert "schema id 4242" in str(results[1])
    assert "magic byte is 1" in str(results[2])
    assert "truncated" in str(results[3])
    assert "unread bytes" in str(results[4])
    assert results[6] is None  # a tombstone stays a tombstone


def test_encode_rejects_values_that_do_not_fit(registry: SchemaRegistryClient) -> None:
    serde = ConfluentAvroSerde(registry, schema=V1, subject="readings-value")
    out = serde.encode_batch([{"sensor": "s", "value": "hot", "count": 1}, {"sensor": "s"}])
    assert all(isinstance(o, SerdeError) and o.kind == "EncodeError" for o in out)


def test_writer_schema_fetched_once_per_id(registry: SchemaRegistryClient) -> None:
    calls = []
    original = registry.get_schema

    def counting(schema_id: int, *args: object, **kwargs: object):
        calls.append(schema_id)
        return original(schema_id, *args, **kwargs)

    registry.get_schema = counting  # type: ignore[method-assign]
    serde = ConfluentAvroSerde(registry, schema=V1, subject="readings-value")
    payloads = serde.encode_batch(
        [{"sensor": "s", "value": float(i), "count": i} for i in range(50)]
    )
    assert len(serde.decode_batch(payloads)) == 50
    assert len(serde.decode_batch(payloads)) == 50
    assert calls == [serde.schema_id]


def test_schema_without_subject_is_a_build_error(registry: SchemaRegistryClient) -> None:
    with pytest.raises(ValueError, match="subject"):
        ConfluentAvroSerde(registry, schema=V1)


def test_plain_avro_from_avsc_file(tmp_path) -> None:
    import json

    path = tmp_path / "reading.avsc"
    path.write_text(json.dumps(V1))
    serde = AvroSerde(path, reader_schema=V2)
    payloads = AvroSerde(V1).encode_batch([{"sensor": "x", "value": 0.5, "count": 7}])
    assert serde.decode_batch(payloads) == [
        {"sensor": "x", "value": 0.5, "count": 7, "unit": "celsius"}
    ]
