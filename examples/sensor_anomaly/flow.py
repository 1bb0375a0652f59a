"""The sensor-anomaly dataflow: Avro readings in, anomaly windows out, bad records dead-lettered.

    readings (Avro) → decode → validate → rolling 1-min features per sensor
        → IsolationForest (ONNX Runtime, dynamic batches) ──► scores topic (JSON)
        → anomaly windows of the model's score ─┐
                    → z-score windows of the readings ──┴──► alerts topic (JSON: "opened" alerts and closed windows)
    every rejection and late reading ──► dead-letter topic

Run it on its own against a running broker (``streamml broker`` starts one)
once the model is built (``python -m examples.sensor_anomaly.model``)::

    python -m bytewax.run "examples.sensor_anomaly.flow:build_flow('127.0.0.1:9092')"

or end to end, with generated data and a summary: ``python -m examples.sensor_anomaly``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from operator import itemgetter
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from streamml.operators import anomaly, infer

from examples.sensor_anomaly.features import FIELDS, MAX_DELAY, add_features, reading_time
from examples.sensor_anomaly.model import DEFAULT_DIR, ModelFiles, build_model
from streamml import kafka
from streamml.errors import Rejected
from streamml.kafka import Record
from streamml.models import OnnxModel
from streamml.serde import ConfluentAvroSerde, JsonSerde

__all__ = ["SCHEMA", "Topics", "build_flow", "validate_readings"]

SCHEMA = Path(__file__).with_name("reading.avsc")
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
MAX_CLOCK_SKEW = timedelta(days=1)


@dataclass(frozen=True)
class Topics:
    """Topic names of the sensor pipeline."""

    readings: str = "sensor-readings"
    scores: str = "sensor-scores"
    alerts: str = "sensor-alerts"
    dead_letters: str = "sensor-dead-letters"


def _check(value: dict[str, Any], now: datetime) -> str | None:
    """Why a decoded reading is unusable, or None when it is fine."""
    for name in FIELDS:
        x = value.get(name)
        if not isinstance(x, float) or not math.isfinite(x):
            return f"{name} is {x!r}, not a finite number"
    ts = value.get("ts")
    if (
        not isinstance(ts, datetime)
        or ts.tzinfo is None
        or not EARLIEST <= ts <= now + MAX_CLOCK_SKEW
    ):
        return f"timestamp {ts!r} is outside {EARLIEST.date()} .. now + {MAX_CLOCK_SKEW}"
    return None


_MEASURES = itemgetter(*FIELDS)
_FLOATS = (float,) * len(FIELDS)


def _plainly_fine(value: Any, limit: datetime) -> bool:
    """The common case in a few operations: plain finite floats and an aware time in range.

    ``False`` only means "look closer" (:func:`_check` decides): a sum of
    finite floats can overflow, and subclasses of ``float`` or ``datetime``
    are not plain.
    """
    try:
        xs = _MEASURES(value)
        ts = value["ts"]
        return (
            tuple(map(type, xs)) == _FLOATS
            and math.isfinite(sum(xs))
            and type(ts) is datetime
            and EARLIEST <= ts <= limit
        )
    except Exception:  # a missing field, or a naive time (it does not compare with aware ones)
        return False


def validate_readings(step_id: str):
    """A batch function: keep usable readings as ``(sensor_id, reading)``, reject the rest."""

    def validate(records: list[Record]) -> list[tuple[str, dict[str, Any]] | Rejected]:
        now = datetime.now(timezone.utc)
        limit = now + MAX_CLOCK_SKEW
        out: list[tuple[str, dict[str, Any]] | Rejected] = []
        for record in records:
            value = record.value
            if _plainly_fine(value, limit):
                out.append((value["sensor_id"], value))
                continue
            problem = _check(value, now) if isinstance(value, dict) else "value is not a record"
            if problem is None:
                out.append((value["sensor_id"], value))
            else:
                out.append(Rejected(step_id, "InvalidReading", problem, record))
        return out

    return validate


def _usable(batch: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [x for x in batch if type(x) is tuple]


def _unusable(batch: list[Any]) -> list[Rejected]:
    return [x for x in batch if type(x) is not tuple]


def _score_attacher(version: str):
    """The forest's anomaly score (higher = stranger; 0 while the sensor's baseline is thin) and its version.

    Written into the event itself, not a copy: the events reaching the model
    are the feature step's new dicts, and the model step is their only reader.
    """

    def attach_score(event: dict[str, Any], outputs: dict[str, Any]) -> dict[str, Any]:
        event["if_score"] = -float(outputs["scores"]) if event["warm"] else 0.0
        event["model_version"] = version
        return event

    return attach_score


def _score_records(batch: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """The scores topic's records, built once per batch."""
    return [
        {
            "sensor_id": e["sensor_id"],
            "ts": e["ts"],
            "if_score": round(e["if_score"], 5),
            "model_version": e["model_version"],
        }
        for _, e in batch
    ]


def _tag(detector: str, kind: str):
    def tag(kv: tuple[str, dict[str, Any]]) -> dict[str, Any]:
        record = {"type": kind, "detector": detector, **kv[1]}
        record.pop("peak_event", None)
        if kind == "window":
            peak = kv[1]["peak_event"]
            record["peak_reading"] = {f: peak.get(f) for f in ("ts", *FIELDS) if f in peak}
        return record

    return tag


def build_flow(
    brokers: str,
    *,
    topics: Topics = Topics(),
    registry: Any = None,
    model: ModelFiles | None = None,
    tail: bool = False,
    max_wait: timedelta = timedelta(milliseconds=20),
) -> Dataflow:
    """The sensor-anomaly dataflow over ``brokers``.

    ``registry`` is a schema-registry client or config; by default an
    in-process ``mock://`` registry. The reading schema is registered at
    build time, as its producer would have (idempotent on a real registry).
    ``model`` defaults to the cached model, built on first use.
    """
    registry = registry if registry is not None else {"url": "mock://sensor-anomaly"}
    model = model or build_model(DEFAULT_DIR)
    serde = ConfluentAvroSerde(registry, schema=SCHEMA, subject=f"{topics.readings}-value")
    _ = serde.schema_id
    flow = Dataflow("sensor_anomaly")

    src = kafka.source(
        "readings",
        flow,
        brokers=brokers,
        topics=topics.readings,
        value_serde=serde,
        tail=tail,
        batch_size=2000,
    )
    checked = op.flat_map_batch("validate", src.oks, validate_readings("sensor_anomaly.validate"))
    readings = op.flat_map_batch("usable", checked, _usable)

    feats = add_features("features", readings)
    forest = OnnxModel(model.onnx, version=model.version, intra_op_threads=1)
    scored = infer.infer(
        "isoforest",
        feats.oks,
        forest,
        inputs="features",
        outputs=_score_attacher(forest.version),
        version_field=None,  # attached by the outputs function, in the same dict
        max_batch=1024,
        max_wait=max_wait,
    )
    model_windows = anomaly.anomaly_windows(
        "isoforest_windows",
        scored.oks,
        timestamp=reading_time,
        score="if_score",
        threshold=anomaly.FixedThreshold(
            model.quantiles["q999"], close_below=model.quantiles["q990"]
        ),
        min_points=3,
        cooldown=timedelta(seconds=20),
        gap=timedelta(seconds=60),
        max_duration=timedelta(minutes=30),
        lateness=MAX_DELAY,
        alerts=True,
    )
    z_windows = anomaly.anomaly_windows(
        "zscore_windows",
        scored.oks,  # the same in-order, on-time readings the model scored
        timestamp=reading_time,
        score=anomaly.RobustZScore(list(FIELDS), window=timedelta(minutes=10), min_points=30),
        threshold=anomaly.FixedThreshold(6.0, close_below=3.0),
        min_points=2,
        cooldown=timedelta(seconds=20),
        gap=timedelta(seconds=60),
        max_duration=timedelta(minutes=30),
        lateness=MAX_DELAY,
        alerts=True,
    )
    alerts = op.merge(
        "alerts",
        op.map("model_opened", model_windows.opened, _tag("isoforest", "opened")),
        op.map("model_closed", model_windows.windows, _tag("isoforest", "window")),
        op.map("z_opened", z_windows.opened, _tag("zscore", "opened")),
        op.map("z_closed", z_windows.windows, _tag("zscore", "window")),
    )
    json_out = JsonSerde()
    score_errs = kafka.sink(
        "scores",
        op.flat_map_batch("score_records", scored.oks, _score_records),
        brokers=brokers,
        topic=topics.scores,
        value_serde=json_out,
        key=itemgetter("sensor_id"),
    )
    alert_errs = kafka.sink(
        "alerts_out",
        alerts,
        brokers=brokers,
        topic=topics.alerts,
        value_serde=json_out,
        key=itemgetter("key"),
    )
    kafka.dead_letter_sink(
        "dead_letters",
        op.merge(
            "all_rejections",
            src.errs,
            op.flat_map_batch("unusable", checked, _unusable),
            feats.errs,
            feats.late,
            scored.errs,
            model_windows.errs,
            model_windows.late,
            z_windows.errs,
            z_windows.late,
            score_errs,
            alert_errs,
        ),
        brokers=brokers,
        topic=topics.dead_letters,
    )
    return flow
