"""Kafka I/O through the real broker: round trips, order, nothing lost, bad bytes dead-lettered."""

from __future__ import annotations

import base64
import json
import random
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow, Stream, operator
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, run_main
from confluent_kafka.schema_registry import SchemaRegistryClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamml import kafka
from streamml.broker import EmbeddedBroker
from streamml.errors import Rejected
from streamml.serde import ConfluentAvroSerde, JsonSerde, StringSerde
from streamml.testing import consume_all, produce_all

pytestmark = pytest.mark.integration

SCHEMA = {
    "type": "record",
    "name": "Reading",
    "fields": [{"name": "sensor", "type": "string"}, {"name": "seq", "type": "long"}],
}


def _pipe(broker: EmbeddedBroker, src_topic: str, serde, *, partitions: int = 3):
    """source -> sink -> dead letters; returns the output and dead-letter topic names."""
    out_topic, dlq_topic = f"{src_topic}-out", f"{src_topic}-dlq"
    broker.create_topic(out_topic, partitions=partitions)
    broker.create_topic(dlq_topic)
    flow = Dataflow("pipe")
    src = kafka.source(
        "in",
        flow,
        brokers=broker.bootstrap,
        topics=src_topic,
        value_serde=serde,
        key_serde=StringSerde(),
        tail=False,
    )
    errs = kafka.sink(
        "out",
        src.oks,
        brokers=broker.bootstrap,
        topic=out_topic,
        value_serde=serde,
        key=lambda r: r.key,
        value=lambda r: r.value,
    )
    kafka.dead_letter_sink(
        "dlq", op.merge("errs", src.errs, errs), brokers=broker.bootstrap, topic=dlq_topic
    )
    run_main(flow)
    return out_topic, dlq_topic


def _sensor_messages(serde, n: int, sensors: int = 5) -> list[tuple[bytes, bytes]]:
    values = [{"sensor": f"s{i % sensors}", "seq": i} for i in range(n)]
    return list(zip((v["sensor"].encode() for v in values), serde.encode_batch(values)))


@pytest.mark.parametrize("fmt", ["json", "avro"])
def test_round_trip_keeps_every_message_and_per_key_order(
    broker: EmbeddedBroker, topic_name: str, fmt: str
) -> None:
    serde = (
        JsonSerde()
        if fmt == "json"
        else ConfluentAvroSerde(
            SchemaRegistryClient.new_client({"url": "mock://rt"}), schema=SCHEMA, subject="rt-value"
        )
    )
    broker.create_topic(topic_name, partitions=3)
    messages = _sensor_messages(serde, 3000)
    produce_all(broker.bootstrap, topic_name, messages)
    out_topic, dlq_topic = _pipe(broker, topic_name, serde)

    out = consume_all(broker.bootstrap, out_topic)
    assert consume_all(broker.bootstrap, dlq_topic) == []
    decoded = serde.decode_batch([m.value for m in out])
    assert sorted(d["seq"] for d in decoded) == list(range(3000))
    by_key: dict[bytes, list[int]] = {}
    for m, d in zip(out, decoded):
        assert m.key == d["sensor"].encode()
        by_key.setdefault(m.key, []).append(d["seq"])
    assert all(seqs == sorted(seqs) for seqs in by_key.values())


def test_records_keep_their_coordinates(broker: EmbeddedBroker, topic_name: str) -> None:
    broker.create_topic(topic_name, partitions=1)
    produce_all(broker.bootstrap, topic_name, [(b"k", b'{"a": 1}'), (None, b'{"a": 2}')])
    flow = Dataflow("coords")
    got: list[kafka.Record] = []
    src = kafka.source(
        "in",
        flow,
        brokers=broker.bootstrap,
        topics=[topic_name],
        value_serde=JsonSerde(),
        tail=False,
    )
    op.output("oks", src.oks, TestingSink(got))
    run_main(flow)
    assert [(r.value, r.key, r.topic, r.partition, r.offset) for r in got] == [
        ({"a": 1}, b"k", topic_name, 0, 0),
        ({"a": 2}, None, topic_name, 0, 1),
    ]
    assert got[0].raw_value == b'{"a": 1}' and got[0].timestamp is not None


def test_unknown_schema_id_is_dead_lettered_with_reason(
    broker: EmbeddedBroker, topic_name: str
) -> None:
    registry = SchemaRegistryClient.new_client({"url": "mock://dlq"})
    serde = ConfluentAvroSerde(registry, schema=SCHEMA, subject="dlq-value")
    good = _sensor_messages(serde, 10)
    bad_value = b"\x00\x00\x00\x30\x39" + good[0][1][5:]  # schema id 12345
    broker.create_topic(topic_name, partitions=1)
    produce_all(broker.bootstrap, topic_name, good[:5] + [(b"bad-key", bad_value)] + good[5:])
    out_topic, dlq_topic = _pipe(broker, topic_name, serde, partitions=1)

    assert len(consume_all(broker.bootstrap, out_topic)) == 10
    [dead] = consume_all(broker.bootstrap, dlq_topic)
    envelope = json.loads(dead.value)
    assert dead.key == b"bad-key"
    assert envelope["error_type"] == "UnknownSchema"
    assert "schema id 12345" in envelope["reason"]
    assert envelope["step_id"] == "pipe.in.decode"  # the full Bytewax step id
    assert envelope["source"] == {
        "topic": topic_name,
        "partition": 0,
        "offset": 5,
        "timestamp_ms": envelope["source"]["timestamp_ms"],
    }
    assert base64.b64decode(envelope["value"]) == bad_value
    assert base64.b64decode(envelope["key"]) == b"bad-key"


def test_encoding_failures_are_dead_lettered_not_produced(
    broker: EmbeddedBroker, topic_name: str
) -> None:
    out_topic, dlq_topic = f"{topic_name}-out", f"{topic_name}-dlq"
    broker.create_topic(out_topic)
    broker.create_topic(dlq_topic)
    from bytewax.testing import TestingSource

    flow = Dataflow("enc")
    items = op.input("items", flow, TestingSource([{"ok": 1}, {"bad": object()}, {"ok": 2}]))
    errs = kafka.sink(
        "out", items, brokers=broker.bootstrap, topic=out_topic, value_serde=JsonSerde()
    )
    kafka.dead_letter_sink("dlq", errs, brokers=broker.bootstrap, topic=dlq_topic)
    run_main(flow)
    assert [m.value for m in consume_all(broker.bootstrap, out_topic)] == [b'{"ok":1}', b'{"ok":2}']
    [dead] = consume_all(broker.bootstrap, dlq_topic)
    envelope = json.loads(dead.value)
    assert envelope["error_type"] == "EncodeError" and envelope["source"] is None
    assert envelope["event"]["bad"]["repr"].startswith("<object object")


def test_rejection_of_a_keyed_record_keeps_its_source(
    broker: EmbeddedBroker, topic_name: str
) -> None:
    """A later step rejecting a (key, Record) pair still dead-letters the original bytes."""
    broker.create_topic(topic_name)
    dlq_topic = f"{topic_name}-dlq"
    broker.create_topic(dlq_topic)
    produce_all(broker.bootstrap, topic_name, [(b"k1", b'{"t": -1}')])
    flow = Dataflow("later")
    src = kafka.source(
        "in", flow, brokers=broker.bootstrap, topics=topic_name, value_serde=JsonSerde(), tail=False
    )
    keyed = op.key_on("key", src.oks, lambda r: r.key.decode())
    rejected = op.map("reject", keyed, lambda kv: Rejected("check", "Negative", "t < 0", kv))
    kafka.dead_letter_sink("dlq", rejected, brokers=broker.bootstrap, topic=dlq_topic)
    run_main(flow)
    [dead] = consume_all(broker.bootstrap, dlq_topic)
    envelope = json.loads(dead.value)
    assert base64.b64decode(envelope["value"]) == b'{"t": -1}'
    assert envelope["source"]["topic"] == topic_name
    assert envelope["event"][0] == "k1"


def test_thousands_of_random_payloads_all_accounted_for(
    broker: EmbeddedBroker, topic_name: str
) -> None:
    rng = random.Random(5)
    registry = SchemaRegistryClient.new_client({"url": "mock://many"})
    serde = ConfluentAvroSerde(registry, schema=SCHEMA, subject="many-value")
    good = _sensor_messages(serde, 2000)
    noise = [(None, rng.randbytes(rng.randrange(0, 40))) for _ in range(2000)]
    noise += [(None, good[0][1][:5] + rng.randbytes(rng.randrange(0, 20))) for _ in range(500)]
    messages = good + noise
    rng.shuffle(messages)
    broker.create_topic(topic_name, partitions=2)
    produce_all(broker.bootstrap, topic_name, messages)
    out_topic, dlq_topic = _pipe(broker, topic_name, serde, partitions=2)
    outs, dead = consume_all(broker.bootstrap, out_topic), consume_all(broker.bootstrap, dlq_topic)
    assert len(outs) + len(dead) == len(messages)
    assert len(outs) >= 2000  # every good record, plus random bodies that happen to parse
    for d in dead:
        assert json.loads(d.value)["reason"]


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(payloads=st.lists(st.binary(max_size=48), min_size=1, max_size=30))
def test_arbitrary_bytes_never_crash_the_source(
    broker: EmbeddedBroker, payloads: list[bytes]
) -> None:
    import uuid

    topic = f"fuzz-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic)
    produce_all(broker.bootstrap, topic, [(None, p) for p in payloads])
    flow = Dataflow("fuzz")
    oks: list = []
    errs: list = []
    src = kafka.source(
        "in", flow, brokers=broker.bootstrap, topics=topic, value_serde=JsonSerde(), tail=False
    )
    op.output("oks", src.oks, TestingSink(oks))
    op.output("errs", src.errs, TestingSink(errs))
    run_main(flow)
    assert len(oks) + len(errs) == len(payloads)
    assert all(isinstance(e, Rejected) and e.error_type == "DecodeError" for e in errs)


def _recovering_run(flow: Dataflow, store: Path) -> None:
    run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(store)))


def _offsets_read(bootstrap: str, topic: str, store: Path) -> list[tuple[int, int]]:
    """(partition, offset) of every record kafka.source reads in one recovering run."""
    flow = Dataflow("resume")
    got: list[kafka.Record] = []
    src = kafka.source(
        "in", flow, brokers=bootstrap, topics=topic, value_serde=JsonSerde(), tail=False
    )
    op.output("oks", src.oks, TestingSink(got))
    _recovering_run(flow, store)
    return sorted((r.partition, r.offset) for r in got)


def test_a_resumed_source_reads_on_from_its_snapshot(
    broker: EmbeddedBroker, topic_name: str, tmp_path: Path
) -> None:
    broker.create_topic(topic_name, partitions=2)
    init_db_dir(tmp_path, 1)
    produce_all(broker.bootstrap, topic_name, [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")] * 4)
    first = _offsets_read(broker.bootstrap, topic_name, tmp_path)
    assert len(first) == 12
    produce_all(broker.bootstrap, topic_name, [(b"a", b"4"), (b"b", b"5")])
    second = _offsets_read(broker.bootstrap, topic_name, tmp_path)
    assert len(second) == 2 and not set(second) & set(first)


@operator
def _bytewax_kafka_input(step_id: str, flow: Dataflow, source: KafkaSource) -> Stream:
    return op.input("kafka_input", flow, source)


@operator
def _as_written_before(step_id: str, flow: Dataflow, bootstrap: str, topic: str) -> Stream:
    """Bytewax's KafkaSource at the step id kafka.source used while it was built on it."""
    return _bytewax_kafka_input("kafka", flow, KafkaSource([bootstrap], [topic], tail=False))


def test_a_recovery_store_written_through_bytewaxs_kafka_source_resumes(
    broker: EmbeddedBroker, topic_name: str, tmp_path: Path
) -> None:
    broker.create_topic(topic_name, partitions=2)
    init_db_dir(tmp_path, 1)
    produce_all(broker.bootstrap, topic_name, [(b"a", b"1"), (b"b", b"2"), (b"c", b"3")] * 4)
    flow = Dataflow("resume")
    before: list = []
    op.output(
        "all", _as_written_before("in", flow, broker.bootstrap, topic_name), TestingSink(before)
    )
    _recovering_run(flow, tmp_path)
    assert len(before) == 12
    produce_all(broker.bootstrap, topic_name, [(b"a", b"4"), (b"b", b"5")])
    after = _offsets_read(broker.bootstrap, topic_name, tmp_path)
    assert len(after) == 2
    assert not set(after) & {(m.partition, m.offset) for m in before}
