"""Run the fraud pipeline end to end: broker, models, data, dataflow with a live rollout, evaluation.

python -m examples.enrich_and_evaluate --events 50000
python -m examples.enrich_and_evaluate --brokers kafka:9092
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from bytewax.testing import run_main

from examples.common import TopicProgress, add_broker_arguments, open_broker, unique_topics
from examples.enrich_and_evaluate.data import SPAN, START, Dataset, generate
from examples.enrich_and_evaluate.flow import SCHEMA, WINDOW, Topics, build_flow
from examples.enrich_and_evaluate.model import DEFAULT_DIR, ModelFiles, build_models
from streamml.broker import create_topics
from streamml.producer import ready_producer
from streamml.serde import ConfluentAvroSerde, JsonSerde
from streamml.testing import consume_all, produce_all
from streamml.tuning import relaxed_gc

__all__ = ["Results", "main", "produce_dataset", "produce_table", "read_results", "run"]

PARTITIONS = 1
TX_STEPS = ("transactions", "enrich", "features", "fraud_model")
LABEL_STEPS = ("labels", "evaluate")
CONTROL_STEPS = ("control", "rollout")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.enrich_and_evaluate",
        description=(
            "Generate card accounts, transactions and delayed fraud labels; produce the accounts "
            "to a compacted table topic (JSON), the transactions as Avro (Confluent wire format, "
            "a few corrupt on purpose), the labels to their own topic, and a rollout of model v2 "
            "scheduled halfway through (and a broken one later) to the control topic. Then run "
            "the dataflow: stream-table enrichment, features, the fraud model in ONNX Runtime "
            "(v1 logistic regression, swapped live to v2 gradient-boosted trees), the "
            "delayed-label join and per-window, per-version metrics. Prints progress and a summary and writes it under --out. With "
            "no --brokers, an embedded tansu broker is started on a free loopback port."
        ),
    )
    parser.add_argument(
        "--events", type=int, default=50_000, help="transactions to generate (default: %(default)s)"
    )
    parser.add_argument(
        "--accounts", type=int, default=2_000, help="accounts in the table (default: %(default)s)"
    )
    add_broker_arguments(parser, registry="mock://enrich-and-evaluate")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("out/enrich_and_evaluate"),
        help="where results go (default: %(default)s)",
    )
    parser.add_argument(
        "--model-dir", type=Path, default=DEFAULT_DIR, help="model cache (default: %(default)s)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    if args.events < 1:
        parser.error(f"--events must be >= 1; got {args.events}")
    return args


def create_all(bootstrap: str, topics: Topics) -> None:
    """Create the pipeline's topics (the account table compacted)."""
    create_topics(bootstrap, [topics.accounts], config={"cleanup.policy": "compact"})
    create_topics(bootstrap, [topics.transactions, topics.labels], partitions=PARTITIONS)
    create_topics(
        bootstrap,
        [topics.control, topics.predictions, topics.outcomes, topics.metrics, topics.dead_letters],
    )


def rollout_message(models: ModelFiles, effective_at: datetime) -> dict[str, Any]:
    """The control message rolling out ``v2`` at ``effective_at`` (event time)."""
    return {
        "version": models.v2.stem,
        "model_path": str(models.v2.resolve()),
        "effective_at": effective_at.isoformat(),
    }


def produce_table(bootstrap: str, topic: str, rows: list[tuple[bytes, bytes | None]]) -> int:
    """Produce the table's rows one record per batch.

    tansu 0.6 reports a partition's end offset as if each record batch were
    one record (2,050 rows in one batch: end offset 1), and
    :func:`~streamml.operators.join.kafka_table` takes that end offset as the
    end of its bootstrap. One record per batch keeps the two equal; a real
    Kafka cluster does not need this.
    """
    producer = ready_producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 0,
            "batch.num.messages": 1,
            "enable.idempotence": True,
        },
        topic,
    )
    for key, value in rows:
        producer.produce(topic, key=key, value=value)
        producer.poll(0)
    if producer.flush(30):
        raise RuntimeError(f"the table rows were not all delivered to {topic!r}")
    return len(rows)


def produce_dataset(
    bootstrap: str,
    topics: Topics,
    registry: Any,
    data: Dataset,
    models: ModelFiles,
    *,
    corrupt: int,
) -> dict[str, int]:
    """Produce the table, transactions (with ``corrupt`` bad messages), labels and the rollouts.

    The rollouts: v2 at the middle of the event time, and at three quarters
    a "v3" whose file does not exist (it must be rejected while v2 serves on).
    """
    js = JsonSerde()
    avro = ConfluentAvroSerde(registry, schema=SCHEMA, subject=f"{topics.transactions}-value")
    accounts = produce_table(
        bootstrap,
        topics.accounts,
        [(k.encode(), None if v is None else orjson.dumps(v)) for k, v in data.accounts],
    )
    messages = list(
        zip(
            (t["account_id"].encode() for t in data.transactions),
            avro.encode_batch(data.transactions),
        )
    )
    stride = max(1, len(messages) // (corrupt + 1))
    for i in range(corrupt):  # a truncated Avro body, then bytes that are not Avro at all
        good = messages[(i + 1) * stride - 1][1]
        bad = good[: len(good) // 2] if i % 2 == 0 else b"\x00garbage"
        messages.insert((i + 1) * stride + i, (b"corrupt", bad))
    transactions = produce_all(bootstrap, topics.transactions, messages)
    labels = produce_all(
        bootstrap,
        topics.labels,
        zip((lb["tx_id"].encode() for lb in data.labels), js.encode_batch(data.labels)),
    )
    rollouts = [
        rollout_message(models, START + SPAN / 2),
        # a broken rollout: the model file is not there, so v2 must keep serving
        {
            **rollout_message(models, START + SPAN * 3 / 4),
            "version": "v3-missing",
            "model_path": str(models.v2.resolve().with_name("v3-missing.onnx")),
        },
    ]
    produce_all(bootstrap, topics.control, [(b"fraud_model", orjson.dumps(r)) for r in rollouts])
    return {"accounts": accounts, "transactions": transactions, "labels": labels}


class Results:
    """What the pipeline wrote, read back from its output topics."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        def read(topic: str) -> list[Any]:
            return [orjson.loads(m.value) for m in consume_all(bootstrap, topic)]

        self.predictions = read(topics.predictions)
        self.outcomes = read(topics.outcomes)
        self.metrics = read(topics.metrics)
        self.dead_letters = read(topics.dead_letters)

    def dead_by(self, steps: tuple[str, ...]) -> list[dict[str, Any]]:
        """Dead letters from the given top-level steps; models the model step rejected are not its."""
        return [d for d in self.dead_letters if _side(d) in steps]


def _side(dead: dict[str, Any]) -> str:
    """The top-level step a dead letter comes from (``control`` for rejected models)."""
    if dead["error_type"] == "ModelRejected":
        return "control"
    parts = dead["step_id"].split(".")  # "flow.step.inner..." or an operator's own id
    return parts[1] if parts[0] == "enrich_and_evaluate" and len(parts) > 1 else parts[0]


def read_results(bootstrap: str, topics: Topics) -> Results:
    return Results(bootstrap, topics)


def _prf(rows: list[dict[str, Any]]) -> dict[str, Any]:
    tp = sum(1 for r in rows if r["prediction"] == 1 and r["is_fraud"] == 1)
    fp = sum(1 for r in rows if r["prediction"] == 1 and r["is_fraud"] == 0)
    fn = sum(1 for r in rows if r["prediction"] == 0 and r["is_fraud"] == 1)
    return {
        "labelled": len(rows),
        "frauds": tp + fn,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
    }


def summarize(produced: dict[str, int], data: Dataset, results: Results) -> dict[str, Any]:
    """Accounting, per-version quality and the metric windows, as a JSON-able dict."""
    tx_dead = results.dead_by(TX_STEPS)
    label_dead = results.dead_by(LABEL_STEPS)
    labelled = [o for o in results.outcomes if o["is_fraud"] is not None]
    versions = sorted({p["model_version"] for p in results.predictions})
    truth_ok = all(o["is_fraud"] == data.is_fraud[o["tx_id"]] for o in labelled)
    return {
        "transactions_in": produced["transactions"],
        "predictions": len(results.predictions),
        "transactions_dead_lettered": len(tx_dead),
        "transaction_dead_letter_reasons": dict(Counter(d["error_type"] for d in tx_dead)),
        "transactions_accounted_for": produced["transactions"]
        == len(results.predictions) + len(tx_dead),
        "predictions_by_version": dict(Counter(p["model_version"] for p in results.predictions)),
        "labels_in": produced["labels"],
        "labelled_predictions": len(labelled),
        "labels_dead_lettered": len(label_dead),
        "label_dead_letter_reasons": dict(Counter(d["error_type"] for d in label_dead)),
        "labels_accounted_for": produced["labels"] == len(labelled) + len(label_dead),
        "outcomes_equal_predictions": len(results.outcomes) == len(results.predictions),
        "never_labelled": sum(m["unlabelled"] for m in results.metrics),
        "labels_match_ground_truth": truth_ok,
        "rollouts_rejected": [
            {"version": (d.get("event") or {}).get("version"), "reason": d["reason"]}
            for d in results.dead_by(CONTROL_STEPS)
            if d["error_type"] == "ModelRejected"
        ],
        "other_dead_letters": len(results.dead_letters)
        - len(tx_dead)
        - len(label_dead)
        - len(results.dead_by(CONTROL_STEPS)),
        "by_version": {v: _prf([o for o in labelled if o["model_version"] == v]) for v in versions},
        "windows": [
            {
                k: m[k]
                for k in (
                    "window_start",
                    "model_version",
                    "predictions",
                    "labelled",
                    "unlabelled",
                    "precision",
                    "recall",
                    "f1",
                    "log_loss",
                )
            }
            for m in results.metrics
        ],
    }


def run(
    bootstrap: str,
    topics: Topics,
    registry: Any,
    data: Dataset,
    models: ModelFiles,
    *,
    corrupt: int,
    progress: bool = False,
) -> tuple[dict[str, Any], float]:
    """Create the topics, produce ``data``, run the flow to the end; the summary and the flow's wall time."""
    create_all(bootstrap, topics)
    produced = produce_dataset(bootstrap, topics, registry, data, models, corrupt=corrupt)
    flow = build_flow(bootstrap, topics=topics, registry=registry, models=models)
    t0 = time.perf_counter()
    with (
        TopicProgress(
            bootstrap,
            [topics.predictions, topics.dead_letters],
            produced["transactions"],
            unit="tx",
            enabled=progress,
        ),
        relaxed_gc(),
    ):  # see streamml.tuning
        run_main(flow)
    wall = time.perf_counter() - t0
    summary = summarize(produced, data, read_results(bootstrap, topics))
    summary["wall_seconds"] = round(wall, 3)
    summary["transactions_per_second"] = round(produced["transactions"] / wall)
    return summary, wall


def _pct(x: float | None) -> str:
    return "   -" if x is None else f"{x:4.2f}"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    models = build_models(args.model_dir)
    print(f"models: {models.v1} (serving first), {models.v2} (rolled out halfway)")
    data = generate(args.events, n_accounts=args.accounts)
    corrupt = max(4, args.events // 5000)
    print(
        f"generated {len(data.transactions):,} transactions over {SPAN} of event time from "
        f"{args.accounts:,} accounts ({sum(data.is_fraud.values()):,} fraud), "
        f"{len(data.labels):,} labels, plus {corrupt} corrupt messages"
    )
    from confluent_kafka.schema_registry import SchemaRegistryClient

    registry = SchemaRegistryClient.new_client({"url": args.registry})
    with ExitStack() as stack:
        bootstrap = open_broker(stack, args.brokers)
        topics = unique_topics(Topics()) if args.brokers else Topics()
        summary, wall = run(
            bootstrap, topics, registry, data, models, corrupt=corrupt, progress=not args.quiet
        )
    summary["topics"] = {k: getattr(topics, k) for k in Topics.__dataclass_fields__}
    summary["models"] = {"v1": str(models.v1), "v2": str(models.v2)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    s = summary
    print("\nsummary")
    print(f"  transactions in     {s['transactions_in']:>8,}   ({corrupt} corrupt on purpose)")
    print(f"  predictions         {s['predictions']:>8,}   -> topic {topics.predictions!r}")
    print(f"    by model version  {s['predictions_by_version']}")
    print(
        f"  dead-lettered       {s['transactions_dead_lettered']:>8,}   -> topic "
        f"{topics.dead_letters!r}  {s['transaction_dead_letter_reasons']}"
    )
    ok = s["transactions_accounted_for"]
    print(f"  in = predicted + dead   {'yes' if ok else 'NO'}")
    print(
        f"  labels in           {s['labels_in']:>8,}   labelled {s['labelled_predictions']:,}, "
        f"dead-lettered {s['labels_dead_lettered']:,} {s['label_dead_letter_reasons']}  "
        f"(in = labelled + dead: {'yes' if s['labels_accounted_for'] else 'NO'})"
    )
    print(f"  label never came    {s['never_labelled']:>8,}   predictions")
    for r in s["rollouts_rejected"]:
        print(f"  rollout rejected    {r['version']}: {r['reason'][:60]}...  (v2 kept serving)")
    print(
        f"  wall time           {wall:>8.2f} s  ({s['transactions_per_second']:,} transactions/s)"
    )
    minutes = int(WINDOW.total_seconds() // 60)
    print(f"  metrics per {minutes}-minute window and model version -> topic {topics.metrics!r}")
    print(
        f"    {'window':<6} {'version':<10} {'preds':>6} {'labelled':>8} {'no label':>8} "
        f"{'precision':>9} {'recall':>6}"
    )
    for w in s["windows"]:
        print(
            f"    {w['window_start'][11:16]:<6} {w['model_version']:<10} {w['predictions']:>6} "
            f"{w['labelled']:>8} {w['unlabelled']:>8} {_pct(w['precision']):>9} {_pct(w['recall']):>6}"
        )
    for v, q in s["by_version"].items():
        print(
            f"  {v:<10} overall: precision {q['precision']:.2f}, recall {q['recall']:.2f} "
            f"on {q['labelled']:,} labelled ({q['frauds']} frauds)"
        )
    print(f"  results             {args.out / 'summary.json'}")
    good = ok and s["labels_accounted_for"] and s["outcomes_equal_predictions"]
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
