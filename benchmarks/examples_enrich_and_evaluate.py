"""The fraud example's speed: its dataflow next to its model's ceiling and a per-event service.

All contenders work on the same generated transactions (Avro, one partition,
on an embedded broker) with the same ONNX models (one ONNX Runtime thread
each), in one process, alternating:

- **dataflow end to end**: ``examples.enrich_and_evaluate.flow`` on one
  Bytewax worker, on polars frames from the sources to the sinks — the
  account table read from its topic, enrichment, features, the fraud model
  (v1, swapped to v2 halfway by the control topic), the delayed-label join
  with per-window metrics, and the predictions, outcomes, metrics and
  dead-letter topics;
- **raw model** (the slowest part alone): ``OnnxModel.predict`` over the
  pre-computed feature rows at batch 1,024 for v1 (logistic regression) and
  v2 (gradient-boosted trees, the slower; its rate is the ceiling), and v2
  at batch 1;
- **per-event microservice**: a confluent-kafka consumer loop doing the same
  work one message at a time, as a user writes it without streamml: it
  loads the account table into a dict, then per transaction decodes it
  (fastavro, after checking the Confluent header), looks up its account,
  computes its features, calls the ONNX Runtime session once and produces
  the prediction; per label it finds the prediction, produces the outcome
  and counts it in its window; at the end it writes the unlabelled outcomes
  and the window metrics. (No watermarks, no dead letters, no recovery
  state: it is still the lighter of the two.) It scores every transaction
  with v2, where the dataflow swaps v1 for v2 halfway: at batch 1 the two
  cost about the same (7.1 vs 6.3 us a call of ``InferenceSession.run``);
- **Kafka I/O alone** (what every contender pays): read both input topics
  in batches (``consume``, 500 at a time) and write two messages per
  transaction (a prediction and an outcome of the same size) with the
  dataflow's sink settings, one flush per batch read, no decoding nor work.
  The dataflow cannot beat it, so ``its rate / the per-event service's`` is
  the example's ceiling.

Wall-clock rates on the shared two-core machine swing with others' work,
so the CPU seconds of this process per run are reported too (the broker's
are not in them).

``python -m benchmarks.examples_enrich_and_evaluate`` (``--quick`` for fewer transactions,
``--events N`` for N of them, ``--rounds R`` for R alternating rounds).
"""

from __future__ import annotations

import argparse
import io
import itertools
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import fastavro
import numpy as np
import onnxruntime as ort
import orjson
from bytewax.testing import run_main
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from benchmarks.harness import alternate, format_table
from examples.enrich_and_evaluate.__main__ import create_all, produce_dataset
from examples.enrich_and_evaluate.data import CATEGORIES, generate
from examples.enrich_and_evaluate.features import SCHEMA as FEATURES
from examples.enrich_and_evaluate.flow import SCHEMA, WINDOW, Topics, build_flow
from examples.enrich_and_evaluate.model import build_models, featurize_offline
from streamml import kafka
from streamml.broker import EmbeddedBroker, create_topics
from streamml.models import OnnxModel
from streamml.producer import ProducerSink
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


_FROM_START = {"auto.offset.reset": "earliest"}
"""With offset 0 assigned, where the dataflow's sources start too: assigning
``OFFSET_BEGINNING`` makes librdkafka look the offset up first, about 0.5 s
per consumer on the embedded broker (the loop paid it twice a run: 0.52 s
more to its first 10 messages, measured here), a start-up cost the sources
no longer pay (``streamml._kafka_partitions.start_position``)."""


def _inputs_consumer(bootstrap: str, topics: Any) -> Consumer:
    """A consumer of the transactions and labels from offset 0, with the dataflow source's fetch settings."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench",
            "enable.auto.commit": False,
            **kafka.SOURCE_DEFAULTS,
            **_FROM_START,
        }
    )
    consumer.assign(
        [TopicPartition(topics.transactions, 0, 0), TopicPartition(topics.labels, 0, 0)]
    )
    return consumer


def _read_table(bootstrap: str, topic: str) -> dict[str, Any]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **kafka.SOURCE_DEFAULTS,  # the fetch settings of the dataflow's source
            **_FROM_START,
        }
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
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


def _session(path: Any) -> ort.InferenceSession:
    """An ONNX Runtime session on one thread, as the dataflow's models run."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _avro_reader(schema_id: int) -> Callable[[bytes], dict[str, Any] | None]:
    """One Confluent-framed Avro transaction to a dict; ``None`` for a corrupt message."""
    parsed = fastavro.parse_schema(orjson.loads(SCHEMA.read_bytes()))
    header = b"\x00" + schema_id.to_bytes(4, "big")

    def read(value: bytes) -> dict[str, Any] | None:
        if value[:5] != header:
            return None
        try:
            return fastavro.schemaless_reader(io.BytesIO(value[5:]), parsed)
        except Exception:  # noqa: BLE001 - a truncated body
            return None

    return read


def _per_event(
    bootstrap: str,
    topics: Topics,
    schema_id: int,
    model_path: Any,
    n_transactions: int,
    n_labels: int,
) -> Callable[[], int]:
    """One consumer on both topics; per message: decode, and score or label one transaction.

    Per transaction: look up the account, compute the features, call the
    model, produce the prediction. Per label: find its prediction (or keep
    the label until the prediction comes), produce the outcome, count it in
    its window. At the end: the unlabelled outcomes and the window metrics.
    """
    runs = itertools.count()
    window_ms = int(WINDOW.total_seconds() * 1000)
    model_version = model_path.stem
    decode = _avro_reader(schema_id)

    def run() -> int:
        i = next(runs)
        session = _session(model_path)  # loaded at start, as the dataflow loads its model
        input_name = session.get_inputs()[0].name
        out = replace(topics, **{name: f"bench-loop-{name}-{i}" for name in _OUTPUTS})
        create_topics(bootstrap, [getattr(out, name) for name in _OUTPUTS])
        table = _read_table(bootstrap, topics.accounts)
        consumer = _inputs_consumer(bootstrap, topics)
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        pending: dict[str, dict[str, Any]] = {}
        early: dict[str, int] = {}
        counts: dict[tuple[int, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
        txs = labels = 0

        def outcome(pred: dict[str, Any], y: int | None) -> None:
            c = counts[(int(pred["ts"].timestamp() * 1000) // window_ms, pred["model_version"])]
            if y is not None:
                c[
                    0
                    if pred["prediction"] == 1 and y == 1
                    else 1
                    if pred["prediction"]
                    else 2
                    if y
                    else 3
                ] += 1
            else:
                c[4] += 1
            value = {**pred, "is_fraud": y}
            producer.produce(out.outcomes, key=pred["tx_id"], value=orjson.dumps(value))

        try:
            while txs < n_transactions or labels < n_labels:
                msg = consumer.poll(1.0)
                if msg is None or msg.error() is not None:
                    continue
                if msg.topic() == topics.labels:
                    labels += 1
                    label = orjson.loads(msg.value())
                    pred = pending.pop(label["tx_id"], None)
                    if pred is None:
                        early[label["tx_id"]] = label["is_fraud"]
                    else:
                        outcome(pred, label["is_fraud"])
                    continue
                txs += 1
                tx = decode(msg.value())
                row = None if tx is None else table.get(tx["account_id"])
                if row is None:
                    continue  # a corrupt message or an unknown account (dead letters in the flow)
                [proba] = session.run(["probabilities"], {input_name: _features_one(tx, row)})
                p = float(proba[0, 1])
                pred = {
                    "tx_id": tx["tx_id"],
                    "account_id": tx["account_id"],
                    "ts": tx["ts"],
                    "amount": tx["amount"],
                    "fraud_score": p,
                    "prediction": int(p >= 0.3),
                    "model_version": model_version,
                }
                producer.produce(out.predictions, key=tx["tx_id"], value=orjson.dumps(pred))
                producer.poll(0)
                if tx["tx_id"] in early:
                    outcome(pred, early.pop(tx["tx_id"]))
                else:
                    pending[tx["tx_id"]] = pred
            for pred in pending.values():
                outcome(pred, None)
            for (w, version), (tp, fp, fn, _tn, unlabelled) in sorted(counts.items()):
                metrics = {
                    "window_start": w * window_ms,
                    "model_version": version,
                    "unlabelled": unlabelled,
                    "precision": tp / (tp + fp) if tp + fp else 0.0,
                    "recall": tp / (tp + fn) if tp + fn else 0.0,
                }
                producer.produce(out.metrics, key=version, value=orjson.dumps(metrics))
            producer.flush(30)
        finally:
            consumer.close()
        return txs

    return run


def _io_alone(bootstrap: str, topics: Topics, n_messages: int) -> Callable[[], int]:
    """Read both input topics in batches and write two messages a transaction; nothing else.

    The floor every contender stands on: the dataflow's sources read in
    batches with the same settings, and its predictions and outcomes sinks
    write through the same :class:`~streamml.producer.ProducerSink` (one
    flush per batch). Each written message is as long as a prediction.
    """
    runs = itertools.count()
    value = b"x" * 190  # about a prediction's JSON

    def run() -> int:
        i = next(runs)
        names = [f"bench-io-{name}-{i}" for name in ("predictions", "outcomes")]
        create_topics(bootstrap, names)
        sinks = [ProducerSink(bootstrap, name).build("io", 0, 1) for name in names]
        consumer = _inputs_consumer(bootstrap, topics)
        read = txs = 0
        try:
            while read < n_messages:
                batch = consumer.consume(min(500, n_messages - read), 1.0)
                read += len(batch)
                pairs = [(m.key(), value) for m in batch if m.topic() == topics.transactions]
                txs += len(pairs)
                for sink in sinks:
                    sink.write_batch(pairs)
        finally:
            consumer.close()
            for sink in sinks:
                sink.close()
        return txs

    return run


class _Cpu:
    """Wraps contenders to also record the CPU seconds of this process per run."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = defaultdict(list)

    def wrap(self, name: str, fn: Callable[[], int]) -> Callable[[], int]:
        def run() -> int:
            start = time.process_time()
            items = fn()
            self.seconds[name].append(time.process_time() - start)
            return items

        return run


def main(quick: bool = False, events: int | None = None, rounds: int = 3) -> dict:
    n = events or (5_000 if quick else 20_000)
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
        schema_id = ConfluentAvroSerde(
            registry, schema=SCHEMA, subject=f"{topics.transactions}-value"
        ).schema_id
        table = _read_table(bootstrap, topics.accounts)
        sample = [t for t in data.transactions if t["account_id"] in table][:200]
        by_hand = np.concatenate([_features_one(t, table[t["account_id"]]) for t in sample])
        if not np.allclose(by_hand, featurize_offline(data.accounts, sample)[1], atol=1e-6):
            raise RuntimeError("the per-event service's features differ from the dataflow's")
        cpu = _Cpu()
        contenders = {
            "dataflow end to end (Kafka -> Kafka)": _dataflow(
                bootstrap, topics, registry, models, total
            ),
            f"raw model v2 (GBM), batch {BATCH}": _raw(v2, x, BATCH),
            f"raw model v1 (logreg), batch {BATCH}": _raw(v1, x, BATCH),
            "raw model v2 (GBM), batch 1": _raw(v2, x, 1),
            "per-event microservice (v2 per event)": _per_event(
                bootstrap, topics, schema_id, models.v2, total, produced["labels"]
            ),
            "Kafka I/O alone (batched, no work)": _io_alone(
                bootstrap, topics, total + produced["labels"]
            ),
        }
        runs = alternate(
            {name: cpu.wrap(name, fn) for name, fn in contenders.items()}, rounds=rounds
        )
    title = (
        "enrich_and_evaluate, transactions/s: 1 Bytewax worker, 1 ORT thread "
        f"({len(FEATURES.names)} features; machine load {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores)"
    )
    print(format_table(title, runs, "tx/s"))
    per_cpu = {m.name: m.items / statistics.median(cpu.seconds[m.name][-rounds:]) for m in runs}
    print("  per CPU-second of this process (the broker and other users' work excluded):")
    for name, rate in per_cpu.items():
        print(f"    {name:<40} {rate:>14,.0f} tx/cpu-s")
    flow_rate, ceiling, _, single, per_event, io_rate = (m.median for m in runs)
    flow_cpu, ceiling_cpu = per_cpu[runs[0].name], per_cpu[runs[1].name]
    per_event_cpu, io_cpu = per_cpu[runs[4].name], per_cpu[runs[5].name]
    print(
        f"  dataflow / raw v2 at batch {BATCH} = {flow_rate / ceiling:.0%} (issue 7 goal for the "
        f"sensor pipeline: >= 60%); dataflow / per-event service = {flow_rate / per_event:.1f}x "
        f"(issue 14 goal: >= 5x); raw v2 batch {BATCH} vs batch 1 = {ceiling / single:.0f}x; "
        f"per CPU-second: {flow_cpu / ceiling_cpu:.0%} of the model and "
        f"{flow_cpu / per_event_cpu:.1f}x the per-event service\n"
        f"  ceiling (Kafka I/O alone / per-event service): {io_rate / per_event:.1f}x by wall, "
        f"{io_cpu / per_event_cpu:.1f}x per CPU-second; the dataflow reaches "
        f"{flow_rate / io_rate:.0%} and {flow_cpu / io_cpu:.0%} of it"
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
        "per_cpu_second": per_cpu,
        "share_of_model_ceiling_per_cpu": flow_cpu / ceiling_cpu,
        "speedup_vs_per_event_per_cpu": flow_cpu / per_event_cpu,
        "io_ceiling_vs_per_event": io_rate / per_event,
        "io_ceiling_vs_per_event_per_cpu": io_cpu / per_event_cpu,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.examples_enrich_and_evaluate")
    parser.add_argument("--quick", action="store_true", help="fewer transactions and rounds")
    parser.add_argument("--events", type=int, help="transactions (default: 20,000; quick 5,000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default: 3)")
    args = parser.parse_args()
    main(quick=args.quick, events=args.events, rounds=args.rounds)
    sys.exit(0)
