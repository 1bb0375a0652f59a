"""The fraud example's speed: its dataflow next to its model's ceiling and a per-event service.

All contenders work on the same generated transactions (Avro, one partition,
on an embedded broker) with the same ONNX models (one ONNX Runtime thread
each), in one process, alternating:

- **dataflow end to end**: ``examples.enrich_and_evaluate.flow`` on one
  Bytewax worker — the account table read from its topic, enrichment,
  features, the fraud model (v1, swapped to v2 halfway by the control
  topic), the delayed-label join with per-window metrics, and the
  predictions, outcomes, metrics and dead-letter topics;
- **raw model** (the slowest part alone): ``OnnxModel.predict`` over the
  pre-computed feature rows at batch 1,024 for v1 (logistic regression) and
  v2 (gradient-boosted trees, the slower; its rate is the ceiling), and v2
  at batch 1;
- **per-event microservice**: a confluent-kafka consumer loop that loads the
  account table into a dict, then per transaction decodes it, looks up its
  account, computes its features, calls the model once for it and produces
  its prediction as JSON. It does less than the dataflow (no labels, no
  metrics, no outcomes topic), so the ratio flatters it.

``python -m benchmarks.examples_enrich_and_evaluate`` (``--quick`` for fewer transactions).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import orjson
from bytewax.testing import run_main
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from benchmarks.harness import alternate, format_table
from examples.enrich_and_evaluate.__main__ import create_all, produce_dataset
from examples.enrich_and_evaluate.data import CATEGORIES, generate
from examples.enrich_and_evaluate.features import SCHEMA as FEATURES
from examples.enrich_and_evaluate.flow import SCHEMA, Topics, build_flow
from examples.enrich_and_evaluate.model import build_models, featurize_offline
from streamml.broker import EmbeddedBroker, create_topics
from streamml.models import OnnxModel
from streamml.serde import ConfluentAvroSerde

BATCH = 1024
_OUTPUTS = ("predictions", "outcomes", "metrics", "dead_letters")


def _raw(model: OnnxModel, x: np.ndarray, batch: int) -> Callable[[], int]:
    def run() -> int:
        for start in range(0, len(x), batch):
            model.predict(x[start : start + batch])
        return len(x)

    return run


def _dataflow(bootstrap: str, topics: Topics, registry: Any, models: Any, n: int):
    runs = itertools.count()

    def run() -> int:
        i = next(runs)
        out = replace(topics, **{name: f"bench-{name}-{i}" for name in _OUTPUTS})
        create_topics(bootstrap, [getattr(out, name) for name in _OUTPUTS])
        run_main(build_flow(bootstrap, topics=out, registry=registry, models=models))
        return n

    return run


def _features_one(e: dict[str, Any], row: dict[str, Any]) -> np.ndarray:
    """One transaction's feature vector, computed by hand in :data:`FEATURES` order."""
    amount, limit, hour = e["amount"], row["credit_limit"], e["local_hour"]
    one_hot = [0.0] * (len(CATEGORIES) + 1)
    cat = e["merchant_category"]
    one_hot[CATEGORIES.index(cat) if cat in CATEGORIES else len(CATEGORIES)] = 1.0
    return np.array(
        [
            [
                math.log1p(amount),
                amount / limit,
                float(e["country"] != row["home_country"]),
                float(e["card_present"]),
                float(1 <= hour <= 4),
                math.log1p(e["distance_km"]),
                math.log1p(max(row["account_age_days"], 0)),
                float(row["risk_tier"]),
                *one_hot,
            ]
        ],
        dtype=np.float32,
    )


def _read_table(bootstrap: str, topic: str) -> dict[str, Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    table: dict[str, Any] = {}
    try:
        while True:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    return table
                continue
            key = msg.key().decode()
            if msg.value() is None:
                table.pop(key, None)
            else:
                table[key] = orjson.loads(msg.value())
    finally:
        consumer.close()


def _per_event(
    bootstrap: str, topics: Topics, serde: ConfluentAvroSerde, model: OnnxModel, n: int
) -> Callable[[], int]:
    runs = itertools.count()

    def run() -> int:
        out_topic = f"bench-per-event-{next(runs)}"
        create_topics(bootstrap, [out_topic])
        table = _read_table(bootstrap, topics.accounts)
        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "bench", "enable.auto.commit": False}
        )
        consumer.assign([TopicPartition(topics.transactions, 0, OFFSET_BEGINNING)])
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        done = 0
        try:
            while done < n:
                msg = consumer.poll(1.0)
                if msg is None or msg.error() is not None:
                    continue
                done += 1
                [tx] = serde.decode_batch([msg.value()])
                row = table.get(tx["account_id"]) if isinstance(tx, dict) else None
                if row is None:
                    continue  # a corrupt message or an unknown account (dead letters in the flow)
                p = float(model.predict(_features_one(tx, row))["probabilities"][0, 1])
                value = {
                    "tx_id": tx["tx_id"],
                    "account_id": tx["account_id"],
                    "ts": tx["ts"],
                    "amount": tx["amount"],
                    "fraud_score": p,
                    "prediction": int(p >= 0.3),
                    "model_version": model.version,
                }
                producer.produce(out_topic, key=tx["tx_id"], value=orjson.dumps(value))
                producer.poll(0)
            producer.flush(30)
        finally:
            consumer.close()
        return done

    return run


def main(quick: bool = False) -> dict:
    n = 5_000 if quick else 20_000
    rounds = 2 if quick else 3
    corrupt = 4
    print(f"enrich_and_evaluate: models (cached) and {n:,} transactions ...", flush=True)
    models = build_models()
    data = generate(n)
    _, x = featurize_offline(data.accounts, data.transactions)
    v1 = OnnxModel(models.v1, version=models.v1.stem, intra_op_threads=1, inter_op_threads=1)
    v2 = OnnxModel(models.v2, version=models.v2.stem, intra_op_threads=1, inter_op_threads=1)

    from confluent_kafka.schema_registry import SchemaRegistryClient

    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap
        registry = SchemaRegistryClient.new_client({"url": "mock://bench-enrich-and-evaluate"})
        topics = Topics()
        create_all(bootstrap, topics)
        produced = produce_dataset(bootstrap, topics, registry, data, models, corrupt=corrupt)
        total = produced["transactions"]
        serde = ConfluentAvroSerde(registry, schema=SCHEMA, subject=f"{topics.transactions}-value")
        table = _read_table(bootstrap, topics.accounts)
        sample = [t for t in data.transactions if t["account_id"] in table][:200]
        by_hand = np.concatenate([_features_one(t, table[t["account_id"]]) for t in sample])
        if not np.allclose(by_hand, featurize_offline(data.accounts, sample)[1], atol=1e-6):
            raise RuntimeError("the per-event service's features differ from the dataflow's")
        runs = alternate(
            {
                "dataflow end to end (Kafka -> Kafka)": _dataflow(
                    bootstrap, topics, registry, models, total
                ),
                f"raw model v2 (GBM), batch {BATCH}": _raw(v2, x, BATCH),
                f"raw model v1 (logreg), batch {BATCH}": _raw(v1, x, BATCH),
                "raw model v2 (GBM), batch 1": _raw(v2, x, 1),
                "per-event microservice (v2 per event)": _per_event(
                    bootstrap, topics, serde, v2, total
                ),
            },
            rounds=rounds,
        )
    title = (
        "enrich_and_evaluate, transactions/s: 1 Bytewax worker, 1 ORT thread "
        f"({len(FEATURES.names)} features; machine load {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores)"
    )
    print(format_table(title, runs, "tx/s"))
    flow_rate, ceiling, v1_rate, single, per_event = (m.median for m in runs)
    print(
        f"  dataflow / raw v2 at batch {BATCH} = {flow_rate / ceiling:.0%} (issue 7 goal for the "
        f"sensor pipeline: >= 60%); dataflow / per-event service = {flow_rate / per_event:.1f}x "
        f"(goal there: >= 10x); raw v2 batch {BATCH} vs batch 1 = {ceiling / single:.0f}x"
    )
    return {
        "transactions": total,
        "rounds": rounds,
        "max_batch": BATCH,
        "runs": {m.name: m.as_dict() for m in runs},
        "model_ceiling": ceiling,
        "share_of_model_ceiling": flow_rate / ceiling,
        "speedup_vs_per_event": flow_rate / per_event,
        "batch_vs_single_gain": ceiling / single,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.examples_enrich_and_evaluate")
    parser.add_argument("--quick", action="store_true", help="fewer transactions and rounds")
    main(quick=parser.parse_args().quick)
    sys.exit(0)
