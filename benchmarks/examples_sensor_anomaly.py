"""The sensor-anomaly pipeline end to end, next to its model's ceiling and a per-event service.

On the embedded broker, one worker, the same Avro readings for every contender:

- **streamml**: ``examples.sensor_anomaly.flow`` — decode, validate, rolling
  1- and 10-minute features, the IsolationForest (ONNX Runtime, one thread,
  dynamic batches), two anomaly-window detectors, scores and alerts out;
- **per-event microservice**: a confluent-kafka consumer loop that decodes a
  reading, updates the sensor's 1- and 10-minute windows (deques, statistics
  recomputed per reading), calls the forest on that one row and produces its
  score — the same features and model, without the window detectors (it
  reads the first quarter of the readings; its rate is per reading);
- **ceiling**: the forest alone in ONNX Runtime over pre-stacked rows of its
  input shape (standard normal: the pipeline's own feature vectors score at
  the same rate, 43k-67k against 43k-62k rows/s in three alternating rounds),
  at batch 1,024 (and at batch 1, for scale).
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import numpy as np
import orjson
from bytewax.testing import run_main
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from benchmarks.harness import alternate, format_table
from examples.sensor_anomaly.features import FIELDS, MIN_BASELINE
from examples.sensor_anomaly.flow import SCHEMA, Topics, build_flow
from examples.sensor_anomaly.generate import generate_fleet
from examples.sensor_anomaly.model import DEFAULT_DIR, build_model
from streamml import kafka
from streamml.broker import EmbeddedBroker
from streamml.models import OnnxModel
from streamml.serde import ConfluentAvroSerde
from streamml.testing import produce_all

_MIN_STD = np.array([0.05, 0.015, 0.005])


class _Windows:
    """One sensor's last minute and last ten minutes of readings, as a hand-written service keeps them."""

    def __init__(self) -> None:
        self.short: deque = deque()
        self.long: deque = deque()

    def features(self, ts_ms: int, x: np.ndarray) -> tuple[np.ndarray, bool]:
        for window, span in ((self.short, 60_000), (self.long, 600_000)):
            window.append((ts_ms, x))
            while window[0][0] <= ts_ms - span:
                window.popleft()
        short = np.array([v for _, v in self.short])
        long = np.array([v for _, v in self.long])
        base_std = np.maximum(long.std(axis=0), _MIN_STD)
        z = (x - long.mean(axis=0)) / base_std
        shift = (short.mean(axis=0) - long.mean(axis=0)) / base_std
        spread = np.maximum(short.std(axis=0), _MIN_STD) / base_std
        return np.hstack([z, shift, spread]).astype(np.float32), len(self.long) >= MIN_BASELINE


def per_event_service(
    bootstrap: str, topic: str, out_topic: str, serde: ConfluentAvroSerde, onnx: Path
) -> int:
    model = OnnxModel(onnx, intra_op_threads=1)
    session, name = model.session, model.session.get_inputs()[0].name
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "svc",
            "enable.partition.eof": True,
            **kafka.SOURCE_DEFAULTS,
        }
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    windows: dict[str, _Windows] = {}
    n, ended = 0, set()
    while len(ended) < len(parts):
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                ended.add(msg.partition())
                continue
            raise RuntimeError(msg.error())
        [reading] = serde.decode_batch([msg.value()])
        ts_ms = int(reading["ts"].timestamp() * 1000)
        x = np.array([reading[f] for f in FIELDS])
        vector, warm = windows.setdefault(reading["sensor_id"], _Windows()).features(ts_ms, x)
        score = -float(
            session.run(["scores"], {name: vector[None, :]})[0][0, 0]
        )  # as the flow: always
        score = score if warm else 0.0
        producer.produce(
            out_topic,
            orjson.dumps({"sensor_id": reading["sensor_id"], "ts": ts_ms, "if_score": score}),
            msg.key(),
        )
        producer.poll(0)
        n += 1
    producer.flush()
    consumer.close()
    return n


def main(quick: bool = False) -> dict:
    n = 8_000 if quick else 100_000
    sensors = 20
    model = build_model(DEFAULT_DIR)
    fleet = generate_fleet(n, n_sensors=sensors)
    with EmbeddedBroker() as broker:
        registry = SchemaRegistryClient.new_client({"url": "mock://bench-sensor"})
        serde = ConfluentAvroSerde(registry, schema=SCHEMA, subject="sensor-readings-value")
        broker.create_topic("sensor-readings", partitions=3)
        messages = list(
            zip((e["sensor_id"].encode() for e in fleet.events), serde.encode_batch(fleet.events))
        )
        produce_all(broker.bootstrap, "sensor-readings", messages)
        # The per-event service is ~40x slower: it reads the first quarter (an eighth in quick mode; same sensors, its rate is per reading).
        broker.create_topic("sensor-readings-head", partitions=3)
        produce_all(broker.bootstrap, "sensor-readings-head", messages[: n // (8 if quick else 4)])
        runs = iter(range(10**6))

        def run_streamml() -> int:
            i = next(runs)
            topics = Topics("sensor-readings", f"scores-{i}", f"alerts-{i}", f"dead-{i}")
            for t in (topics.scores, topics.alerts, topics.dead_letters):
                broker.create_topic(t)
            run_main(build_flow(broker.bootstrap, topics=topics, registry=registry, model=model))
            return n

        def run_service() -> int:
            out = f"svc-scores-{next(runs)}"
            broker.create_topic(out)
            return per_event_service(
                broker.bootstrap, "sensor-readings-head", out, serde, model.onnx
            )

        forest = OnnxModel(model.onnx, intra_op_threads=1)
        session, name = forest.session, forest.session.get_inputs()[0].name
        rows = np.random.default_rng(0).normal(size=(n, len(FIELDS) * 3)).astype(np.float32)

        def raw(batch: int, count: int = n):
            def run() -> int:
                for i in range(0, count, batch):
                    session.run(["scores"], {name: rows[i : i + batch]})
                return count

            return run

        print(f"{n:,} readings from {sensors} sensors, 3 alternating rounds", flush=True)
        start = time.perf_counter()
        results = alternate(
            {
                "streamml sensor pipeline (1 worker)": run_streamml,
                "IsolationForest alone, batch 1,024 (ceiling)": raw(1024),
                "per-event microservice": run_service,
                "IsolationForest alone, batch 1": raw(1, n // 20),  # ~1k rows/s: a sample is enough
            },
            rounds=3,
            warmup=False,
        )
        print(format_table("sensor pipeline end to end, readings/s", results, "ev/s"))
        print(f"({time.perf_counter() - start:.0f} s)")
    by = {m.name: m.median for m in results}
    pipeline = by["streamml sensor pipeline (1 worker)"]
    return {
        "sensor_pipeline": [m.as_dict() for m in results],
        "share_of_ceiling": pipeline / by["IsolationForest alone, batch 1,024 (ceiling)"],
        "vs_per_event_service": pipeline / by["per-event microservice"],
    }


if __name__ == "__main__":
    import sys

    out = main(quick="--quick" in sys.argv)
    print(
        f"share of ceiling {out['share_of_ceiling']:.0%}, vs per-event service {out['vs_per_event_service']:.1f}x"
    )
