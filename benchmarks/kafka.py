"""Kafka ceilings on the embedded broker: what the machine allows before any ML happens.

- produce: a confluent-kafka producer writing pre-encoded messages;
- consume: a confluent-kafka consumer reading them back (librdkafka's default
  fetch sizes, and the larger ones streamml's benchmarks use);
- source: ``streamml.kafka.source`` (one item per fetch, batch JSON decoding
  into ``Record``s, or into one polars frame per fetch with ``frames=True``)
  on one worker, next to Bytewax's bare ``KafkaSource`` with no decoding;
- sink: ``streamml.kafka.sink`` writing fraud-shaped prediction rows as JSON
  (from 500-row polars frames keyed by a column, and from ``(key, dict)``
  rows), next to a hand-written confluent-kafka loop that ``orjson.dumps``
  each of the same rows (dicts built before the race) and confirms every 500,
  as the sink confirms each batch: per wall second and per CPU-second of the
  process (librdkafka's threads included).

Every produce and consume figure is a rate in messages per second of
~100-byte JSON readings; the broker runs on the same two cores as the client.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import bytewax.operators as op
import numpy as np
import orjson
import polars as pl
from bytewax.connectors.kafka import operators as kop
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from benchmarks.harness import (
    CountSink,
    alternate,
    format_table,
    per_cpu_second,
    with_cpu_rates,
)
from streamml import kafka
from streamml.broker import EmbeddedBroker
from streamml.serde import JsonSerde

BIG_FETCH = {
    "fetch.max.bytes": str(64 << 20),
    "max.partition.fetch.bytes": str(16 << 20),
    **kafka.SOURCE_DEFAULTS,  # tansu holds a fetch for fetch.wait.max.ms even with data waiting
}


def _payloads(n: int) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "sensor_id": f"sensor-{i % 1000:04d}",
                "ts": 1_767_225_600_000 + i,
                "temperature": 60.0 + (i % 17) / 10,
                "vibration": 2.0,
                "pressure": 5.0,
            }
        )
        for i in range(n)
    ]


def _produce(bootstrap: str, topic: str, payloads: list[bytes]) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i, p in enumerate(payloads):
        while True:
            try:
                producer.produce(topic, p)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush()
    return len(payloads)


def _produce_batch(bootstrap: str, topic: str, payloads: list[bytes]) -> int:
    """The same messages through ``Producer.produce_batch``, 1,000 per call (the dicts included).

    Measured against :func:`_produce` to decide the sink's producer loop: 200,000
    messages, 4 alternating rounds, median 272,447 vs 274,370 msg/s (0.99x), so
    ``streamml.producer`` keeps one ``produce()`` per message.
    """
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(0, len(payloads), 1000):
        msgs = [{"value": p} for p in payloads[i : i + 1000]]
        while msgs:
            if producer.produce_batch(topic, msgs) == len(msgs):
                break
            msgs = [m for m in msgs if "_error" in m]  # queue full: retry these
            for m in msgs:
                del m["_error"]
            producer.poll(0.01)
        producer.poll(0)
    assert producer.flush() == 0
    return len(payloads)


def _consume(bootstrap: str, topic: str, config: dict[str, str]) -> int:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "ceiling",
            "enable.partition.eof": True,
            **config,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    n = 0
    while True:
        msgs = consumer.consume(1000, timeout=0.01)
        eof = False
        for m in msgs:
            if m.error() is None:
                n += 1
            elif m.error().code() == KafkaError._PARTITION_EOF:
                eof = True
        if eof:
            break
    consumer.close()
    return n


def _bytewax_source(bootstrap: str, topic: str, n: int) -> int:
    flow = Dataflow("bare_source")
    sink = CountSink()
    src = kop.input(
        "in", flow, brokers=[bootstrap], topics=[topic], tail=False, add_config=BIG_FETCH
    )
    op.output("count", src.oks, sink)
    run_main(flow)
    assert sink.counter[0] == n, (sink.counter[0], n)
    return n


def _streamml_source(bootstrap: str, topic: str, n: int, frames: bool = False) -> int:
    flow = Dataflow("streamml_source")
    sink = CountSink()
    src = kafka.source(
        "in",
        flow,
        brokers=bootstrap,
        topics=topic,
        value_serde=JsonSerde(),
        tail=False,
        add_config=BIG_FETCH,
        frames=frames,
    )
    op.output("count", src.oks, sink)
    heights: list[int] = []
    if frames:  # the sink counts frames; the rows are counted here, once per frame
        op.inspect("rows", src.oks, lambda _step, frame: heights.append(frame.height))
    run_main(flow)
    got = sum(heights) if frames else sink.counter[0]
    assert got == n, (got, n)
    return n


def _predictions(n: int, size: int = 500) -> list[pl.DataFrame]:
    """Frames of ``size`` scored transactions, as the fraud example writes them."""
    rng = np.random.default_rng(7)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    frames = []
    for first in range(0, n, size):
        ids = range(first, min(first + size, n))
        frames.append(
            pl.DataFrame(
                {
                    "tx_id": [f"tx-{i:08d}" for i in ids],
                    "account_id": [f"acct-{i % 5000:05d}" for i in ids],
                    "ts": [start + timedelta(microseconds=i * 1_000_317) for i in ids],
                    "amount": np.round(rng.gamma(2.0, 40.0, len(ids)), 2),
                    "fraud_score": rng.random(len(ids)),
                    "prediction": rng.random(len(ids)) > 0.9,
                    "model_version": ["v1"] * len(ids),
                }
            )
        )
    return frames


def _sink(bootstrap: str, topic: str, items: list, rows: int, **pick: object) -> int:
    flow = Dataflow("sink")
    frames = type(items[0]) is pl.DataFrame
    up = op.input("in", flow, TestingSource(items, batch_size=1 if frames else 500))
    errs = kafka.sink("out", up, brokers=bootstrap, topic=topic, value_serde=JsonSerde(), **pick)
    rejected: list = []
    op.output("errs", errs, TestingSink(rejected))
    run_main(flow)
    assert not rejected, rejected[:1]
    return rows


def _produce_rows(bootstrap: str, topic: str, rows: list[dict]) -> int:
    """The fair baseline: a confluent-kafka loop, orjson per row, confirmed every 500 rows."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True}
    )
    dumps, produce = orjson.dumps, producer.produce
    for i, row in enumerate(rows, 1):
        produce(topic, dumps(row), row["tx_id"].encode())
        if i % 500 == 0:
            assert producer.flush(60) == 0
    assert producer.flush(60) == 0
    return len(rows)


def _sink_race(broker: EmbeddedBroker, n: int, rounds: int) -> tuple[list, list]:
    frames = _predictions(n)
    rows = [row for frame in frames for row in frame.to_dicts()]
    pairs = [(row["tx_id"], row) for row in rows]
    assert orjson.dumps(rows[1]) == JsonSerde().encode_frame(frames[0])[1]  # the same bytes
    topics = iter(range(10**6))

    def fresh() -> str:
        name = f"sink-{next(topics)}"
        broker.create_topic(name)
        return name

    bootstrap = broker.bootstrap
    runs, cpu = with_cpu_rates(
        {
            "kafka.sink from 500-row frames (key column)": lambda: _sink(
                bootstrap, fresh(), frames, n, key="tx_id"
            ),
            "kafka.sink from (key, dict) rows": lambda: _sink(
                bootstrap, fresh(), pairs, n, key=lambda kv: kv[0], value=lambda kv: kv[1]
            ),
            "confluent-kafka loop, orjson per row": lambda: _produce_rows(bootstrap, fresh(), rows),
        }
    )
    wall = alternate(runs, rounds=rounds)
    return wall, per_cpu_second(wall, cpu)


def main(quick: bool = False) -> dict:
    n = 100_000 if quick else 300_000
    rounds = 3
    payloads = _payloads(n)
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap
        broker.create_topic("ceiling")
        topics = iter(range(10**6))

        def produce_fresh() -> int:
            name = f"produce-{next(topics)}"
            broker.create_topic(name)
            return _produce(bootstrap, name, payloads)

        print(
            f"{n:,} JSON messages of ~{len(payloads[0])} bytes, {rounds} alternating rounds",
            flush=True,
        )

        def produce_batch_fresh() -> int:
            name = f"produce-{next(topics)}"
            broker.create_topic(name)
            return _produce_batch(bootstrap, name, payloads)

        produce = alternate(
            {
                "confluent-kafka produce": produce_fresh,
                "confluent-kafka produce_batch": produce_batch_fresh,
            },
            rounds=rounds,
        )
        print(format_table("produce", produce, "msg/s"))
        _produce(bootstrap, "ceiling", payloads)
        consume = alternate(
            {
                "confluent-kafka consume (big fetches)": lambda: _consume(
                    bootstrap, "ceiling", BIG_FETCH
                ),
                "confluent-kafka consume (fetch wait 500 ms)": lambda: _consume(
                    bootstrap, "ceiling", {}
                ),
                "Bytewax KafkaSource, no decoding": lambda: _bytewax_source(
                    bootstrap, "ceiling", n
                ),
                "streamml kafka.source + JSON decode": lambda: _streamml_source(
                    bootstrap, "ceiling", n
                ),
                "streamml kafka.source(frames=True) + JSON decode": lambda: _streamml_source(
                    bootstrap, "ceiling", n, frames=True
                ),
            },
            rounds=rounds,
        )
        print(format_table("consume", consume, "msg/s"))
        sink, sink_cpu = _sink_race(broker, n, rounds if quick else 5)
        print(format_table("sink (fraud predictions, JSON)", sink, "rows/s"))
        print(format_table("sink per CPU-second", sink_cpu, "rows/cpu-s"))
    return {
        "produce": [m.as_dict() for m in produce],
        "consume": [m.as_dict() for m in consume],
        "sink": [m.as_dict() for m in sink],
        "sink_per_cpu_second": [m.as_dict() for m in sink_cpu],
    }


if __name__ == "__main__":
    main()
