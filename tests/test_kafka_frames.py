"""Frames through the real broker: kafka.source(frames=True) and kafka.sink with DataFrame items."""

from __future__ import annotations

import base64
import json
import time
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import polars as pl
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from confluent_kafka.schema_registry import SchemaRegistryClient
from hypothesis import given, settings
from hypothesis import strategies as st

from streamml import kafka
from streamml.broker import EmbeddedBroker
from streamml.errors import Rejected
from streamml.serde import ConfluentAvroSerde, JsonSerde
from streamml.testing import consume_all, produce_all

pytestmark = pytest.mark.integration

SCHEMA = {
    "type": "record",
    "name": "Reading",
    "fields": [
        {"name": "sensor", "type": "string"},
        {"name": "seq", "type": "long"},
        {"name": "t", "type": "double"},
    ],
}
ALL_METADATA = ("partition", "offset", "timestamp", "key", "topic")


def _readings(n: int) -> list[dict]:
    return [{"sensor": f"s{i % 7}", "seq": i, "t": 20.0 + i / 4} for i in range(n)]


def _read_frames(bootstrap: str, topic: str, serde, **kwargs) -> tuple[list, list]:
    flow = Dataflow("frames")
    src = kafka.source(
        "in",
        flow,
        brokers=bootstrap,
        topics=topic,
        value_serde=serde,
        tail=False,
        frames=True,
        **kwargs,
    )
    frames: list[pl.DataFrame] = []
    errs: list[Rejected] = []
    op.output("oks", src.oks, TestingSink(frames))
    op.output("errs", src.errs, TestingSink(errs))
    run_main(flow)
    return frames, errs


@pytest.mark.parametrize("fmt", ["json", "avro"])
def test_frames_round_trip_through_source_and_sink(
    broker: EmbeddedBroker, topic_name: str, fmt: str
) -> None:
    registry = SchemaRegistryClient.new_client({"url": f"mock://frames-{fmt}"})
    serde = (
        JsonSerde()
        if fmt == "json"
        else ConfluentAvroSerde(registry, schema=SCHEMA, subject="frames-value")
    )
    readings = _readings(3000)
    broker.create_topic(topic_name, partitions=3)
    out_topic, dlq_topic = f"{topic_name}-out", f"{topic_name}-dlq"
    broker.create_topic(out_topic, partitions=3)
    broker.create_topic(dlq_topic)
    produce_all(
        broker.bootstrap,
        topic_name,
        list(zip((r["sensor"].encode() for r in readings), serde.encode_batch(readings))),
    )

    flow = Dataflow("frames_pipe")
    src = kafka.source(
        "in",
        flow,
        brokers=broker.bootstrap,
        topics=topic_name,
        value_serde=serde,
        tail=False,
        frames=True,
    )
    seen: list = []
    op.output("seen", src.oks, TestingSink(seen))
    errs = kafka.sink(
        "out", src.oks, brokers=broker.bootstrap, topic=out_topic, value_serde=serde, key="sensor"
    )
    kafka.dead_letter_sink(
        "dlq", op.merge("errs", src.errs, errs), brokers=broker.bootstrap, topic=dlq_topic
    )
    run_main(flow)

    assert all(type(f) is pl.DataFrame and f.height > 0 for f in seen)
    assert len(seen) < 3000  # frames, not one item per message
    assert consume_all(broker.bootstrap, dlq_topic) == []
    out = consume_all(broker.bootstrap, out_topic)
    decoded = serde.decode_batch([m.value for m in out])
    assert sorted(decoded, key=lambda d: d["seq"]) == readings
    by_key: dict[bytes, list[int]] = {}
    for m, d in zip(out, decoded):
        assert m.key == d["sensor"].encode()
        by_key.setdefault(m.key, []).append(d["seq"])
    assert all(seqs == sorted(seqs) for seqs in by_key.values())  # per-key order kept


def test_metadata_columns_are_the_messages_own(broker: EmbeddedBroker, topic_name: str) -> None:
    broker.create_topic(topic_name, partitions=2)
    produce_all(
        broker.bootstrap,
        topic_name,
        [(f"k{i}".encode() if i % 3 else None, json.dumps({"i": i}).encode()) for i in range(40)],
    )
    frames, errs = _read_frames(broker.bootstrap, topic_name, JsonSerde(), metadata=ALL_METADATA)
    assert errs == []
    frame = pl.concat(frames)
    assert frame.columns == ["i", *(f"kafka_{m}" for m in ALL_METADATA)]
    assert frame.schema["kafka_partition"] == pl.Int32
    assert frame.schema["kafka_offset"] == frame.schema["kafka_timestamp"] == pl.Int64
    assert frame.schema["kafka_key"] == pl.Binary and frame.schema["kafka_topic"] == pl.String
    raw = {(m.partition, m.offset): m for m in consume_all(broker.bootstrap, topic_name)}
    now_ms = time.time() * 1000
    assert frame.height == len(raw) == 40
    for row in frame.iter_rows(named=True):
        m = raw[(row["kafka_partition"], row["kafka_offset"])]
        assert json.loads(m.value) == {"i": row["i"]}
        assert row["kafka_key"] == m.key and row["kafka_topic"] == topic_name
        assert abs(row["kafka_timestamp"] - now_ms) < 600_000  # the producer's create time
    assert frames[0].select(pl.col("kafka_offset").diff().drop_nulls().min()).item() == 1


def test_corrupt_messages_go_to_errs_with_coordinates_and_frames_are_never_empty(
    broker: EmbeddedBroker, topic_name: str
) -> None:
    broker.create_topic(topic_name, partitions=1)
    dlq_topic = f"{topic_name}-dlq"
    broker.create_topic(dlq_topic)
    payloads = [b'{"x": 1}', b"{oops", b'{"x": 2}', b"\xff\xfe", b'"not an object"']
    produce_all(broker.bootstrap, topic_name, [(b"k", p) for p in payloads])
    # One message per fetch: the fetches of the bad ones must not give empty frames.
    flow = Dataflow("corrupt")
    src = kafka.source(
        "in",
        flow,
        brokers=broker.bootstrap,
        topics=topic_name,
        value_serde=JsonSerde(),
        tail=False,
        frames=True,
        batch_size=1,
        metadata=("offset",),
    )
    frames: list = []
    op.output("oks", src.oks, TestingSink(frames))
    kafka.dead_letter_sink("dlq", src.errs, brokers=broker.bootstrap, topic=dlq_topic)
    run_main(flow)

    assert all(f.height > 0 for f in frames)
    assert pl.concat(frames).rows() == [(1, 0), (2, 2)]
    dead = consume_all(broker.bootstrap, dlq_topic)
    envelopes = sorted((json.loads(d.value) for d in dead), key=lambda e: e["source"]["offset"])
    assert [e["source"]["offset"] for e in envelopes] == [1, 3, 4]
    for env in envelopes:
        assert env["step_id"] == "corrupt.in.decode"
        assert env["source"]["topic"] == topic_name and env["source"]["partition"] == 0
        assert base64.b64decode(env["value"]) == payloads[env["source"]["offset"]]
        assert base64.b64decode(env["key"]) == b"k"
    assert all(d.key == b"k" for d in dead)


def test_tail_false_ends_at_the_end_of_every_partition(
    broker: EmbeddedBroker, topic_name: str
) -> None:
    broker.create_topic(topic_name, partitions=3)
    produce_all(broker.bootstrap, topic_name, [(None, b'{"x": 1}')] * 10)
    frames, errs = _read_frames(broker.bootstrap, topic_name, JsonSerde())  # returns: it ended
    assert sum(f.height for f in frames) == 10 and errs == []
    empty = f"{topic_name}-empty"
    broker.create_topic(empty, partitions=2)
    assert _read_frames(broker.bootstrap, empty, JsonSerde()) == ([], [])


def test_a_resumed_frame_source_reads_on_from_its_snapshot(
    broker: EmbeddedBroker, topic_name: str, tmp_path: Path
) -> None:
    broker.create_topic(topic_name, partitions=2)
    init_db_dir(tmp_path, 1)

    def offsets_read() -> list[tuple[int, int]]:
        flow = Dataflow("resume")
        src = kafka.source(
            "in",
            flow,
            brokers=broker.bootstrap,
            topics=topic_name,
            value_serde=JsonSerde(),
            tail=False,
            frames=True,
            metadata=("partition", "offset"),
        )
        frames: list[pl.DataFrame] = []
        op.output("oks", src.oks, TestingSink(frames))
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(tmp_path)))
        return sorted(pl.concat(frames).select("kafka_partition", "kafka_offset").rows())

    produce_all(broker.bootstrap, topic_name, [(f"k{i}".encode(), b'{"x": 1}') for i in range(12)])
    first = offsets_read()
    assert len(first) == 12
    produce_all(broker.bootstrap, topic_name, [(b"k1", b'{"x": 2}'), (b"k2", b'{"x": 3}')])
    second = offsets_read()
    assert len(second) == 2 and not set(second) & set(first)


def test_sink_rejects_a_frame_row_that_does_not_encode_and_dead_letters_it_with_its_source(
    broker: EmbeddedBroker, topic_name: str
) -> None:
    out_topic, dlq_topic = f"{topic_name}-out", f"{topic_name}-dlq"
    broker.create_topic(out_topic)
    broker.create_topic(dlq_topic)
    frame = pl.DataFrame(
        {
            "sensor": ["s1", "s2", "s3"],
            "score": [0.5, float("nan"), 0.25],
            "kafka_topic": ["readings"] * 3,
            "kafka_partition": pl.Series([2, 2, 2], dtype=pl.Int32),
            "kafka_offset": [40, 41, 42],
            "kafka_key": [b"s1", b"s2", b"s3"],
        }
    )
    flow = Dataflow("frame_sink")
    items = op.input("items", flow, TestingSource([frame, {"sensor": "s4", "score": 1.0}]))
    errs = kafka.sink(
        "out",
        items,
        brokers=broker.bootstrap,
        topic=out_topic,
        value_serde=JsonSerde(allow_nan=False),
        value=lambda f: f.select("sensor", "score") if isinstance(f, pl.DataFrame) else f,
        key="sensor",
    )
    rejected: list[Rejected] = []
    op.output("rejected", errs, TestingSink(rejected))
    kafka.dead_letter_sink("dlq", errs, brokers=broker.bootstrap, topic=dlq_topic)
    run_main(flow)

    out = consume_all(broker.bootstrap, out_topic)
    assert [(m.key, json.loads(m.value)) for m in out] == [
        (b"s1", {"sensor": "s1", "score": 0.5}),
        (b"s3", {"sensor": "s3", "score": 0.25}),
        (b"s4", {"sensor": "s4", "score": 1.0}),
    ]
    [bad] = rejected
    assert bad.step_id == "frame_sink.out.encode" and bad.error_type == "EncodeError"
    assert bad.original["sensor"] == "s2" and bad.original["kafka_offset"] == 41
    [dead] = consume_all(broker.bootstrap, dlq_topic)
    envelope = json.loads(dead.value)
    assert dead.key == b"s2"
    assert envelope["source"] == {
        "topic": "readings",
        "partition": 2,
        "offset": 41,
        "timestamp_ms": None,
    }
    assert base64.b64decode(envelope["key"]) == b"s2"
    assert envelope["event"]["sensor"] == "s2"


def test_a_missing_key_column_rejects_every_row_of_the_frame(
    broker: EmbeddedBroker, topic_name: str
) -> None:
    broker.create_topic(topic_name)
    flow = Dataflow("no_key")
    items = op.input("items", flow, TestingSource([pl.DataFrame({"x": [1, 2]})]))
    errs = kafka.sink(
        "out", items, brokers=broker.bootstrap, topic=topic_name, value_serde=JsonSerde(), key="id"
    )
    rejected: list[Rejected] = []
    op.output("rejected", errs, TestingSink(rejected))
    run_main(flow)
    assert [(r.error_type, r.original) for r in rejected] == [
        ("BadItem", {"x": 1}),
        ("BadItem", {"x": 2}),
    ]
    assert consume_all(broker.bootstrap, topic_name) == []


def test_frame_options_are_checked_when_the_dataflow_is_built() -> None:
    flow = Dataflow("bad")
    with pytest.raises(ValueError, match="needs frames=True"):
        kafka.source(
            "a", flow, brokers="b:1", topics="t", value_serde=JsonSerde(), metadata=("offset",)
        )
    with pytest.raises(ValueError, match="unknown metadata"):
        kafka.source(
            "b",
            flow,
            brokers="b:1",
            topics="t",
            value_serde=JsonSerde(),
            frames=True,
            metadata=("headers",),
        )


@given(
    metadata=st.lists(st.sampled_from(ALL_METADATA), unique=True, min_size=1),
    fields=st.lists(st.sampled_from(["x", *(f"kafka_{m}" for m in ALL_METADATA)]), unique=True),
)
@settings(max_examples=40)
def test_metadata_columns_join_the_frame_as_with_columns_would(
    metadata: list[str], fields: list[str]
) -> None:
    """Added after the value's columns; a value's field of the same name replaced in its place."""
    from confluent_kafka import Message

    from streamml.kafka._source import _frame_decoder, _metadata_columns

    values = [json.dumps({f: i for f in fields}).encode() for i in range(3)]
    msgs = [
        Message(topic="t", partition=2, offset=10 + i, key=b"k", value=v, timestamp=(1, 99 + i))
        for i, v in enumerate(values)
    ]
    [frame] = _frame_decoder("s.decode", "s.kafka", JsonSerde(), metadata)([msgs])
    value = JsonSerde().decode_frame(values).frame
    assert frame.equals(value.with_columns(_metadata_columns(msgs, metadata)))
    assert frame.columns[: len(fields)] == value.columns
