"""Decode ceilings: streamml's batch serdes next to the per-message ways users write today.

- JSON: ``JsonSerde.decode_batch`` (orjson) vs ``json.loads`` per message.
- Avro, Confluent wire format: ``ConfluentAvroSerde.decode_batch`` (a flat
  record schema, so NumPy decodes each field for the whole batch at once) vs
  fastavro's ``schemaless_reader`` per message (what ``decode_batch`` does
  for other schemas) vs confluent-kafka's own ``AvroDeserializer`` called per
  message, all with the same in-process mock registry; and the batch path
  with one truncated payload in every 1,000 (read around, not a reason to
  decode the batch per message), for rows and frames.
- Frames: ``decode_frame`` (a polars DataFrame per batch: ``pl.read_ndjson``
  for JSON, the flat decoder's columns for Avro) vs ``decode_batch`` (a dict
  per event) followed by ``pl.from_dicts`` (what a columnar step would do
  with rows), and ``encode_frame`` (``write_ndjson``; rows through fastavro
  for Avro) vs ``frame.to_dicts()`` + ``encode_batch``. 5,000 readings a
  batch, the size of one Kafka fetch.
"""

from __future__ import annotations

import io
import json

import polars as pl
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro import parse_schema, schemaless_reader

from benchmarks.harness import alternate, format_table
from streamml.serde import ConfluentAvroSerde, JsonSerde

SCHEMA = {
    "type": "record",
    "name": "Reading",
    "fields": [
        {"name": "sensor_id", "type": "string"},
        {"name": "ts", "type": "long"},
        {"name": "temperature", "type": "double"},
        {"name": "vibration", "type": "double"},
        {"name": "pressure", "type": "double"},
    ],
}


def _readings(n: int) -> list[dict]:
    return [
        {
            "sensor_id": f"sensor-{i % 1000:04d}",
            "ts": 1_767_225_600_000 + i,
            "temperature": 60.0 + i % 7,
            "vibration": 2.0 + (i % 5) / 10,
            "pressure": 5.0 - (i % 3) / 100,
        }
        for i in range(n)
    ]


def main(quick: bool = False) -> dict:
    n = 50_000 if quick else 200_000
    rounds = 3 if quick else 5
    readings = _readings(n)
    batch = 1000

    json_payloads = JsonSerde().encode_batch(readings)
    serde_json = JsonSerde()

    def ours_json() -> int:
        for i in range(0, n, batch):
            serde_json.decode_batch(json_payloads[i : i + batch])
        return n

    def stdlib_json() -> int:
        loads = json.loads
        for p in json_payloads:
            loads(p)
        return n

    registry = SchemaRegistryClient.new_client({"url": "mock://bench"})
    avro = ConfluentAvroSerde(registry, schema=SCHEMA, subject="bench-value")
    avro_payloads = avro.encode_batch(readings)
    confluent = AvroDeserializer(registry)
    ctx = SerializationContext("bench", MessageField.VALUE)

    def ours_avro() -> int:
        for i in range(0, n, batch):
            avro.decode_batch(avro_payloads[i : i + batch])
        return n

    # A truncated payload in every 1,000, as a corrupt message in a fetch: the batch path
    # reads around it and decodes only it by fastavro.
    spoiled = list(avro_payloads)
    for i in range(batch // 2, n, batch):
        spoiled[i] = spoiled[i][:-3]

    def ours_avro_spoiled() -> int:
        for i in range(0, n, batch):
            avro.decode_batch(spoiled[i : i + batch])
        return n

    parsed = parse_schema(SCHEMA)

    def fastavro_per_message() -> int:
        for p in avro_payloads:
            body = io.BytesIO(p)
            body.seek(5)  # the Confluent header: magic byte and schema id
            schemaless_reader(body, parsed, None)
        return n

    def confluent_avro() -> int:
        for p in avro_payloads:
            confluent(p, ctx)
        return n

    print(f"decoding {n:,} sensor readings, {rounds} alternating rounds")
    json_results = alternate(
        {"JsonSerde.decode_batch (orjson)": ours_json, "json.loads per message": stdlib_json},
        rounds=rounds,
    )
    print(format_table("JSON decode", json_results, "msg/s"))
    avro_results = alternate(
        {
            "ConfluentAvroSerde.decode_batch": ours_avro,
            "ConfluentAvroSerde.decode_batch, 1 corrupt in 1,000": ours_avro_spoiled,
            "fastavro schemaless_reader per message": fastavro_per_message,
            "confluent_kafka AvroDeserializer": confluent_avro,
        },
        rounds=rounds,
    )
    print(format_table("Avro (Confluent wire format) decode", avro_results, "msg/s"))
    frame_results = frames(n, rounds, readings, json_payloads, avro, avro_payloads, spoiled)
    return {
        "json_decode": [m.as_dict() for m in json_results],
        "avro_decode": [m.as_dict() for m in avro_results],
        **frame_results,
    }


def frames(
    n: int,
    rounds: int,
    readings: list[dict],
    json_payloads: list,
    avro: ConfluentAvroSerde,
    avro_payloads: list,
    spoiled: list,
    batch: int = 5000,
) -> dict:
    """decode_frame / encode_frame next to the row paths, 5,000 readings a batch."""
    serde_json = JsonSerde()
    typed_json = JsonSerde(
        schema={
            "sensor_id": pl.String,
            "ts": pl.Int64,
            "temperature": pl.Float64,
            "vibration": pl.Float64,
            "pressure": pl.Float64,
        }
    )
    starts = range(0, n, batch)

    def decoder(fn):
        def run() -> int:
            for i in starts:
                fn(i)
            return n

        return run

    json_decoders = {
        "JsonSerde.decode_frame (read_ndjson)": decoder(
            lambda i: serde_json.decode_frame(json_payloads[i : i + batch])
        ),
        "JsonSerde(schema=).decode_frame": decoder(
            lambda i: typed_json.decode_frame(json_payloads[i : i + batch])
        ),
        "decode_batch (orjson) + pl.from_dicts": decoder(
            lambda i: pl.from_dicts(serde_json.decode_batch(json_payloads[i : i + batch]))
        ),
        "decode_batch (orjson), dicts only": decoder(
            lambda i: serde_json.decode_batch(json_payloads[i : i + batch])
        ),
    }
    avro_decoders = {
        "ConfluentAvroSerde.decode_frame (flat columns)": decoder(
            lambda i: avro.decode_frame(avro_payloads[i : i + batch])
        ),
        "decode_frame, 1 corrupt in 1,000": decoder(
            lambda i: avro.decode_frame(spoiled[i : i + batch])
        ),
        "decode_batch (flat) + pl.from_dicts": decoder(
            lambda i: pl.from_dicts(avro.decode_batch(avro_payloads[i : i + batch]))
        ),
        "decode_batch (flat), dicts only": decoder(
            lambda i: avro.decode_batch(avro_payloads[i : i + batch])
        ),
    }
    frames_ = [serde_json.decode_frame(json_payloads[i : i + batch]).frame for i in starts]
    dicts = [f.to_dicts() for f in frames_]

    def each_frame(fn):
        def run() -> int:
            for k in range(len(frames_)):
                fn(k)
            return n

        return run

    encoders = {
        "JsonSerde.encode_frame (write_ndjson)": each_frame(
            lambda k: serde_json.encode_frame(frames_[k])
        ),
        "frame.to_dicts() + JsonSerde.encode_batch": each_frame(
            lambda k: serde_json.encode_batch(frames_[k].to_dicts())
        ),
        "JsonSerde.encode_batch, dicts given": each_frame(
            lambda k: serde_json.encode_batch(dicts[k])
        ),
        "ConfluentAvroSerde.encode_frame (rows)": each_frame(
            lambda k: avro.encode_frame(frames_[k])
        ),
    }
    print(f"\nframes: {n:,} readings in batches of {batch:,}, {rounds} alternating rounds")
    results = {}
    for key, title, contenders in (
        ("json_decode_frame", "JSON decode into a frame", json_decoders),
        ("avro_decode_frame", "Avro (Confluent) decode into a frame", avro_decoders),
        ("encode_frame", "encode a frame", encoders),
    ):
        measured = alternate(contenders, rounds=rounds)
        print(format_table(title, measured, "msg/s"))
        results[key] = [m.as_dict() for m in measured]
    return results


if __name__ == "__main__":
    main()
