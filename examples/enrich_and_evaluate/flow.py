"""The fraud dataflow: enrich transactions from an account table, score them, evaluate on delayed labels.

    accounts (JSON, compacted) ──► kafka_table ─┐
    transactions (Avro) → decode to frames ─────┴► enrich (stream–table join on frames)
        → features (derived + one-hot + assemble, column by column)
        → fraud model (ONNX Runtime, dynamic batches; swapped live from the control topic)
        ──► predictions topic (JSON)
    labels (JSON, minutes to never later, as frames) ──► label_join with the predictions
        ──► outcomes topic (each prediction with its label, or none)
        ──► metrics topic (precision, recall, ... per 15-minute window and model version)
    every rejection ──► dead-letter topic

Frames are the unit from the sources to the sinks: each step works on a
``polars.DataFrame`` of up to ``source_batch`` transactions (or a fetch of
labels), column by column; no step of this module builds a dict per event.

Run it on its own against a running broker (``streamml broker`` starts one)
whose topics hold data (``python -m examples.enrich_and_evaluate --brokers
...`` fills them), once the models are built (``python -m
examples.enrich_and_evaluate.model``)::

    python -m bytewax.run "examples.enrich_and_evaluate.flow:build_flow('127.0.0.1:9092')"

or end to end, with generated data and a summary: ``python -m examples.enrich_and_evaluate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Dataflow
from streamml.operators import infer, join

from examples.enrich_and_evaluate.features import add_features
from examples.enrich_and_evaluate.model import DEFAULT_DIR, ModelFiles, build_models
from examples.enrich_and_evaluate.rollout import load_rollout, scheduled_rollouts
from streamml import kafka
from streamml.models import OnnxModel
from streamml.serde import ConfluentAvroSerde, JsonSerde

__all__ = ["SCHEMA", "Topics", "build_flow"]

SCHEMA = Path(__file__).with_name("transaction.avsc")
WINDOW = timedelta(minutes=15)
MAX_LABEL_DELAY = timedelta(minutes=45)


@dataclass(frozen=True)
class Topics:
    """Topic names of the fraud pipeline."""

    accounts: str = "fraud-accounts"
    transactions: str = "fraud-transactions"
    labels: str = "fraud-labels"
    control: str = "fraud-model-control"
    predictions: str = "fraud-predictions"
    outcomes: str = "fraud-outcomes"
    metrics: str = "fraud-metrics"
    dead_letters: str = "fraud-dead-letters"


LABELS = pl.Schema({"tx_id": pl.String, "is_fraud": pl.Int64, "ts": pl.Int64})
"""The label messages' columns: ``ts`` in epoch milliseconds."""


def _clock(frames: list[pl.DataFrame]) -> list[datetime]:
    """The earliest event time of the frames on their way to the model (the rollout gate's clock).

    The earliest, not the latest: a frame that straddles a rollout's time
    (the burst released when the account table is loaded spans everything
    read meanwhile) is still scored by the old model, so the new one never
    scores events from before its time (up to out-of-order events).
    """
    times = [f.get_column("ts").min() for f in frames if f.height]
    return [min(times)] if times else []


def _predictions(threshold: float):
    """A scored frame to the predictions: the identity, the score of class 1 and the decision."""

    def slim(frame: pl.DataFrame) -> pl.DataFrame:
        score = frame.get_column("fraud_score").cast(pl.Float64)
        decided = (score.to_numpy() >= threshold).astype(np.int64)
        return pl.DataFrame(
            [
                *(frame.get_column(c) for c in ("tx_id", "account_id", "ts", "amount")),
                score,
                pl.Series("prediction", decided),
                frame.get_column("model_version"),
            ]
        )

    return slim


def _no_label(frame: pl.DataFrame) -> pl.DataFrame:
    """Unlabelled predictions as outcomes: ``is_fraud`` null, the label that never came."""
    return frame.hstack([pl.Series("is_fraud", dtype=pl.Int64).extend_constant(None, frame.height)])


def build_flow(
    brokers: str,
    *,
    topics: Topics = Topics(),
    registry: Any = None,
    models: ModelFiles | None = None,
    tail: bool = False,
    threshold: float = 0.3,
    window: timedelta = WINDOW,
    max_label_delay: timedelta = MAX_LABEL_DELAY,
    lateness: timedelta = timedelta(hours=3),
    account_wait: timedelta = timedelta(seconds=5),
    max_batch: int = 1024,
    source_batch: int = 500,
    max_wait: timedelta = timedelta(milliseconds=20),
    shards: int = 1,
) -> Dataflow:
    """The fraud dataflow over ``brokers``.

    ``registry`` is a schema-registry client or config (default: an
    in-process ``mock://`` registry); ``models`` defaults to the cached
    models, built on first use; the flow starts with ``v1`` and swaps to
    whatever the control topic rolls out. With ``tail=False`` every source
    stops at the end of its topic (a bounded run over what is there).

    ``source_batch`` is the most transactions read per poll (the rows of a
    frame). It also sets how precisely a scheduled rollout lands: the frame
    that straddles its time is still scored by the old model.

    A transaction whose account has no row waits up to ``account_wait``
    for it, then goes to the dead letters (``MissingRow``).

    ``shards`` is the number of state shards of the enrichment and the
    label join (with several Bytewax workers, keep it a few times their
    number). The results do not depend on it, the cost does: each shard's
    step runs once per frame with its polars and NumPy calls, on the frame's
    rows of its shard. On one worker one shard is the cheapest (CPU medians
    of 7 alternating runs over 20,000 transactions, load 6 on 2 cores:
    40,166 transactions per CPU-second with 1 shard, 32,509 with 2).

    ``lateness`` is how far apart in event time the prediction and label
    streams may be read. Two topics read from the beginning can be apart by
    all they hold (the labels are read at once while the transactions wait
    for the table), so the default covers the generated data's two hours
    plus the label delay; a live deployment reading both at the head can use
    minutes. A window's metrics are emitted once the watermark passes its
    end + ``max_label_delay`` (or at the end of a bounded run).
    """
    registry = registry if registry is not None else {"url": "mock://enrich-and-evaluate"}
    models = models or build_models(DEFAULT_DIR)
    avro = ConfluentAvroSerde(registry, schema=SCHEMA, subject=f"{topics.transactions}-value")
    _ = avro.schema_id  # register the schema, as its producer would have
    json_serde = JsonSerde()
    flow = Dataflow("enrich_and_evaluate")

    table = join.kafka_table(
        "accounts", flow, brokers=brokers, topic=topics.accounts, value_serde=json_serde, tail=tail
    )
    txs = kafka.source(
        "transactions",
        flow,
        brokers=brokers,
        topics=topics.transactions,
        value_serde=avro,
        tail=tail,
        batch_size=source_batch,
        frames=True,
    )
    # A miss waits a little for its row: an account may be created just before its first transaction.
    enriched = join.enrich(
        "enrich",
        txs.oks,
        table.changelog,
        key="account_id",
        max_wait=account_wait,
        wait_for_bootstrap=False,
        shards=shards,
    )
    feats = add_features("features", enriched.oks)

    control = kafka.source(
        "control", flow, brokers=brokers, topics=topics.control, value_serde=json_serde, tail=tail
    )
    rollouts = scheduled_rollouts(
        "rollout", control.oks, op.flat_map_batch("model_clock", feats.oks, _clock)
    )
    v1 = OnnxModel(models.v1, version=models.v1.stem, intra_op_threads=1)
    scored = infer.infer(
        "fraud_model",
        feats.oks,
        v1,
        inputs="features",
        outputs={"fraud_score": ("probabilities", 1)},
        version_field="model_version",
        max_batch=max_batch,
        max_wait=max_wait,
        control=rollouts.control,
        loader=load_rollout,
    )
    predictions = op.map("predictions", scored.oks, _predictions(threshold))

    labels = kafka.source(
        "labels",
        flow,
        brokers=brokers,
        topics=topics.labels,
        value_serde=JsonSerde(schema=LABELS),
        tail=tail,
        frames=True,
    )
    evaluated = join.label_join(
        "evaluate",
        predictions,
        labels.oks,
        key="tx_id",
        ts="ts",
        max_delay=max_label_delay,
        window=window,
        prediction="prediction",
        label="is_fraud",
        probability="fraud_score",
        lateness=lateness,
        shards=shards,
    )
    outcomes = op.merge(
        "outcomes", evaluated.labelled, op.map("no_label", evaluated.unlabelled, _no_label)
    )

    sink_errs = [
        kafka.sink(
            "predictions_out",
            predictions,
            brokers=brokers,
            topic=topics.predictions,
            value_serde=json_serde,
            key="tx_id",
        ),
        kafka.sink(
            "outcomes_out",
            outcomes,
            brokers=brokers,
            topic=topics.outcomes,
            value_serde=json_serde,
            key="tx_id",
        ),
        kafka.sink(
            "metrics_out",
            evaluated.metrics,
            brokers=brokers,
            topic=topics.metrics,
            value_serde=json_serde,
            key=lambda r: str(r["model_version"]),
        ),
    ]
    kafka.dead_letter_sink(
        "dead_letters",
        op.merge(
            "all_rejections",
            table.errs,
            txs.errs,
            enriched.errs,
            feats.errs,
            control.errs,
            rollouts.errs,
            scored.errs,
            labels.errs,
            evaluated.errs,
            evaluated.late,
            *sink_errs,
        ),
        brokers=brokers,
        topic=topics.dead_letters,
    )
    return flow
