"""A representative streamml pipeline, run as a separate process by the reliability tests.

It uses every stateful operator family, so a crash, a cluster or an outage
exercises all of their state::

    readings (Confluent Avro, keyed by sensor) → decode → validate
        → enrich with the sensor's site (join against a Kafka table)
        → rolling 10-minute mean/std/count per sensor (featurize)
        → z-scores → gradient-boosted anomaly score (ONNX, dynamic batches; model swaps on a topic)
        → anomaly windows of the score ──► windows topic
      scored readings ──► scores topic
      every rejection and late reading ──► dead-letter topic

Run it with Bytewax, e.g.::

    python -m bytewax.run "tests.reliability.flows:build('127.0.0.1:9092', 'model.onnx', 'run1')" \\
        -r recovery/ -s 0.5 -b 0

Results are JSON with the sensor id as the message key and an idempotent
identity (``sensor_id``, ``seq``) so a consumer can de-duplicate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from streamml.operators import anomaly, featurize, infer, join

from streamml import kafka
from streamml.errors import Rejected
from streamml.kafka import Record
from streamml.models import OnnxModel
from streamml.serde import ConfluentAvroSerde, JsonSerde, StringSerde

__all__ = [
    "SCHEMA",
    "T0",
    "Topics",
    "avro_serde",
    "build",
    "reading_time",
]

SCHEMA = {
    "type": "record",
    "name": "Reading",
    "namespace": "streamml.reliability",
    "fields": [
        {"name": "sensor_id", "type": "string"},
        {"name": "seq", "type": "long"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "temperature", "type": "double"},
        {"name": "vibration", "type": ["null", "double"], "default": None},
    ],
}
REGISTRY = {"url": "mock://reliability"}
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
FIELDS = ("temperature", "vibration")
WINDOW = timedelta(minutes=10)
UNKNOWN_SITE = {"site": "unknown"}


@dataclass(frozen=True)
class Topics:
    """The topics of one run: inputs shared between runs, outputs per run."""

    readings: str
    sites: str
    models: str
    scores: str
    windows: str
    dead_letters: str

    @classmethod
    def named(cls, inputs: str, outputs: str) -> Topics:
        return cls(
            readings=f"{inputs}-readings",
            sites=f"{inputs}-sites",
            models=f"{inputs}-models",
            scores=f"{outputs}-scores",
            windows=f"{outputs}-windows",
            dead_letters=f"{outputs}-dead-letters",
        )

    def outputs(self) -> tuple[str, str, str]:
        return self.scores, self.windows, self.dead_letters


def avro_serde() -> ConfluentAvroSerde:
    """The readings' serde; every process registers the same schema, so ids agree."""
    serde = ConfluentAvroSerde(REGISTRY, schema=SCHEMA, subject="readings-value")
    _ = serde.schema_id
    return serde


def reading_time(event: dict[str, Any]) -> datetime:
    return event["ts"]


def _problem(value: Any, now: datetime) -> str | None:
    if not isinstance(value, dict):
        return "value is not a record"
    for name in FIELDS:
        x = value.get(name)
        if x is None:
            return f"missing field {name}"
        if not math.isfinite(x):
            return f"{name} is {x!r}, not a finite number"
    ts = value["ts"]
    if not EARLIEST <= ts <= now + timedelta(days=1):
        return f"timestamp {ts.isoformat()} is outside {EARLIEST.date()} .. now + 1 day"
    return None


def _validate(records: list[Record]) -> list[tuple[str, dict[str, Any]] | Rejected]:
    now = datetime.now(timezone.utc)
    out: list[tuple[str, dict[str, Any]] | Rejected] = []
    for record in records:
        problem = _problem(record.value, now)
        if problem is None:
            out.append((record.value["sensor_id"], record.value))
        else:
            out.append(Rejected("validate", "InvalidReading", problem, record))
    return out


def _is_keyed(item: object) -> bool:
    return type(item) is tuple


def _pace(seconds: float):
    """Slow each batch down (tests only), so a kill lands in the middle of the stream."""

    def pace(batch: list[Any]) -> list[Any]:
        time.sleep(seconds)
        return batch

    return pace


def _vectorize(batch: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """z-scores of each field against the sensor's rolling window, one NumPy pass per batch."""
    if not batch:
        return batch
    x = np.array([[e[f] for f in FIELDS] for _, e in batch])
    mean = np.array([[e[f"{f}_mean_10m"] for f in FIELDS] for _, e in batch])
    std = np.array([[e[f"{f}_std_10m"] for f in FIELDS] for _, e in batch])
    vectors = np.abs((x - mean) / np.maximum(std, 0.05)).astype(np.float32)
    return [(k, {**e, "features": v}) for (k, e), v in zip(batch, vectors)]


def _attach_score(event: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
    return {**event, "score": round(float(outputs["variable"]), 4)}


def _ms(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(milliseconds=1)


def _score_record(kv: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    _, e = kv
    return {
        "sensor_id": e["sensor_id"],
        "seq": e["seq"],
        "ts": _ms(e["ts"]),
        "site": e["site"],
        "temperature_mean_10m": round(e["temperature_mean_10m"], 6),
        "temperature_count_10m": e["temperature_count_10m"],
        "score": e["score"],
        "model_version": e["model_version"],
    }


def _window_record(kv: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    _, w = kv
    return {
        "window_id": w["window_id"],
        "key": w["key"],
        "start": _ms(w["start"]),
        "end": _ms(w["end"]),
        "points": w["points"],
        "peak_score": w["peak_score"],
        "closed_by": w["closed_by"],
    }


def _model_path(record: Record) -> str:
    return record.value


def build(
    brokers: str,
    model: str,
    inputs: str,
    outputs: str | None = None,
    *,
    tail: bool = False,
    pace: float = 0.0,
    batch_size: int = 50,
    broker_timeout: float | None = None,
) -> Dataflow:
    """The representative pipeline over the topics named ``inputs``-* and ``outputs``-*.

    ``model`` is the ONNX file served first (version ``v1``); a path sent on
    the models topic swaps it. ``pace`` sleeps that many seconds per input
    batch of at most ``batch_size`` messages per partition, so a test can kill
    the process mid-stream. ``broker_timeout`` (seconds) makes the source
    fail when no broker is reachable for that long.
    """
    topics = Topics.named(inputs, outputs or inputs)
    timeout = None if broker_timeout is None else timedelta(seconds=broker_timeout)
    flow = Dataflow("reliability")
    src = kafka.source(
        "readings",
        flow,
        brokers=brokers,
        topics=topics.readings,
        value_serde=avro_serde(),
        tail=tail,
        batch_size=batch_size,
        broker_timeout=timeout,
    )
    records = op.flat_map_batch("pace", src.oks, _pace(pace)) if pace > 0 else src.oks
    checked = op.flat_map_batch("validate", records, _validate)
    valid = op.branch("usable", checked, _is_keyed)

    sites = join.kafka_table(
        "sites", flow, brokers=brokers, topic=topics.sites, value_serde=JsonSerde(), tail=tail
    )
    placed = join.enrich("site", valid.trues, sites.changelog, default=UNKNOWN_SITE, shards=8)

    feats = featurize.rolling(
        "features",
        placed.oks,
        timestamp=reading_time,
        window=WINDOW,
        fields=list(FIELDS),
        aggregates=["mean", "std", "count"],
        label="10m",
    )
    vectors = op.flat_map_batch("vectorize", feats.oks, _vectorize)
    swaps = kafka.source(
        "models", flow, brokers=brokers, topics=topics.models, value_serde=StringSerde(), tail=tail
    )
    scored = infer.infer(
        "model",
        vectors,
        OnnxModel(model, version="v1", intra_op_threads=1),
        inputs="features",
        outputs=_attach_score,
        max_batch=256,
        max_wait=timedelta(milliseconds=20),
        shards=4,
        control=op.map("model_paths", swaps.oks, _model_path),
    )
    found = anomaly.anomaly_windows(
        "windows",
        scored.oks,
        timestamp=reading_time,
        score="score",
        threshold=anomaly.FixedThreshold(2.5, close_below=1.5),
        min_points=2,
        cooldown=timedelta(minutes=3),
        gap=timedelta(minutes=30),
        max_duration=timedelta(hours=2),
    )
    json_out = JsonSerde()
    score_errs = kafka.sink(
        "scores_out",
        op.map("score_records", scored.oks, _score_record),
        brokers=brokers,
        topic=topics.scores,
        value_serde=json_out,
        key=lambda r: r["sensor_id"],
    )
    window_errs = kafka.sink(
        "windows_out",
        op.map("window_records", found.windows, _window_record),
        brokers=brokers,
        topic=topics.windows,
        value_serde=json_out,
        key=lambda r: r["key"],
    )
    kafka.dead_letter_sink(
        "dead_letters",
        op.merge(
            "rejections",
            src.errs,
            valid.falses,
            sites.errs,
            placed.errs,
            feats.errs,
            feats.late,
            swaps.errs,
            scored.errs,
            found.errs,
            found.late,
            score_errs,
            window_errs,
        ),
        brokers=brokers,
        topic=topics.dead_letters,
    )
    return flow
