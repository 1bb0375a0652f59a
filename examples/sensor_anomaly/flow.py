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
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Dataflow
from streamml.operators import anomaly, infer

from examples.sensor_anomaly.features import FEATURE_NAMES, FIELDS, MAX_DELAY, add_features
from examples.sensor_anomaly.model import DEFAULT_DIR, ModelFiles, build_model
from streamml import kafka
from streamml.errors import Rejected
from streamml.flow import check_flow, collect_rejections
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


def _columns_problem(frame: pl.DataFrame) -> str | None:
    """Why no row of the frame can be a reading (a column missing or of another type), or None."""
    schema = frame.schema
    for name in FIELDS:
        if name not in schema or not schema[name].is_float():
            return f"{name} is {schema.get(name)}, not a column of floats"
    ts = schema.get("ts")
    if not isinstance(ts, pl.Datetime) or ts.time_zone is None:
        return f"ts is {ts}, not a time-zone-aware datetime column"
    if schema.get("sensor_id") != pl.String:
        return f"sensor_id is {schema.get('sensor_id')}, not a text column"
    return None


def validate_readings(step_id: str):
    """A frame function: the usable readings as one frame, then a ``Rejected`` per unusable one.

    Usable: finite floats in every field and a time between 2000 and one day
    past the wall clock, checked with one polars expression per frame; the
    reason of each rejection comes from :func:`_check` on that row alone.
    """

    def validate(frame: pl.DataFrame) -> list[pl.DataFrame | Rejected]:
        now = datetime.now(timezone.utc)
        problem = _columns_problem(frame)
        if problem is not None:
            return [Rejected(step_id, "InvalidReading", problem, row) for row in frame.to_dicts()]
        fine = frame.select(
            pl.all_horizontal(*(pl.col(f).is_finite().fill_null(False) for f in FIELDS))
            & pl.col("ts").is_between(EARLIEST, now + MAX_CLOCK_SKEW).fill_null(False)
            & pl.col("sensor_id").is_not_null()
        ).to_series()
        if fine.all():
            return [frame]
        out: list[pl.DataFrame | Rejected] = [frame.filter(fine)] if fine.any() else []
        for row in frame.filter(~fine).to_dicts():
            why = _check(row, now) or "sensor_id is missing"
            out.append(Rejected(step_id, "InvalidReading", why, row))
        return out

    return validate


def _usable(frames: list[Any]) -> list[pl.DataFrame]:
    return [x for x in frames if isinstance(x, pl.DataFrame)]


def _unusable(frames: list[Any]) -> list[Rejected]:
    return [x for x in frames if isinstance(x, Rejected)]


def _score_attacher(version: str):
    """The forest's anomaly score (higher = stranger; 0 while the sensor's baseline is thin) and its version."""

    def attach_score(frame: pl.DataFrame, outputs: dict[str, np.ndarray]) -> pl.DataFrame:
        scores = -np.asarray(outputs["scores"], dtype=np.float64).reshape(-1)
        warm = frame.get_column("warm").to_numpy()
        return frame.hstack(
            [
                pl.Series("if_score", np.where(warm, scores, 0.0)),
                pl.Series("model_version", [version]).new_from_index(0, len(frame)),
            ]
        )

    return attach_score


def _score_records(frame: pl.DataFrame) -> pl.DataFrame:
    """The scores topic's records: the reading's key and time, its score and the model version."""
    return frame.select("sensor_id", "ts", pl.col("if_score").round(5), "model_version")


def _tag(detector: str, kind: str):
    def tag(record: dict[str, Any]) -> dict[str, Any]:
        tagged = {"type": kind, "detector": detector, **record}
        tagged.pop("peak_event", None)
        if kind == "window":
            peak = record["peak_event"]
            tagged["peak_reading"] = {f: peak.get(f) for f in ("ts", *FIELDS) if f in peak}
        return tagged

    return tag


def build_flow(
    brokers: str,
    *,
    topics: Topics = Topics(),
    registry: Any = None,
    model: ModelFiles | None = None,
    tail: bool = False,
    max_wait: timedelta = timedelta(milliseconds=20),
    shards: int = 1,
) -> Dataflow:
    """The sensor-anomaly dataflow over ``brokers``.

    ``registry`` is a schema-registry client or config; by default an
    in-process ``mock://`` registry. The reading schema is registered at
    build time, as its producer would have (idempotent on a real registry).
    ``model`` defaults to the cached model, built on first use. ``shards``:
    the state shards of the feature and window steps; 1 is fastest on one
    worker (one frame per batch instead of several small ones), and about
    twice the workers spreads the sensors over a cluster (``-w``/``-i``).
    Results do not depend on it.
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
        frames=True,
        metadata=("partition", "offset"),
    )
    checked = op.flat_map("validate", src.oks, validate_readings("sensor_anomaly.validate"))
    readings = op.flat_map_batch("usable", checked, _usable)

    feats = add_features("features", readings, shards=shards)
    forest = OnnxModel(model.onnx, version=model.version, intra_op_threads=1)
    scored = infer.infer(
        "isoforest",
        feats.oks,
        forest,
        inputs=list(FEATURE_NAMES),
        outputs=_score_attacher(forest.version),
        version_field=None,  # attached by the outputs function
        max_batch=1024,
        max_wait=max_wait,
    )
    model_windows = anomaly.anomaly_windows(
        "isoforest_windows",
        scored.oks,
        key="sensor_id",
        timestamp="ts",
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
        shards=shards,
    )
    z_windows = anomaly.anomaly_windows(
        "zscore_windows",
        scored.oks,  # the same in-order, on-time readings the model scored
        key="sensor_id",
        timestamp="ts",
        score=anomaly.RobustZScore(
            list(FIELDS), window=timedelta(minutes=10), min_points=30, exclude_above=6.0
        ),
        threshold=anomaly.FixedThreshold(6.0, close_below=3.0),
        min_points=2,
        cooldown=timedelta(seconds=20),
        gap=timedelta(seconds=60),
        max_duration=timedelta(minutes=30),
        lateness=MAX_DELAY,
        alerts=True,
        shards=shards,
    )
    alerts = op.merge(
        "alerts",
        op.map("model_opened", model_windows.opened, _tag("isoforest", "opened")),
        op.map("model_closed", model_windows.windows, _tag("isoforest", "window")),
        op.map("z_opened", z_windows.opened, _tag("zscore", "opened")),
        op.map("z_closed", z_windows.windows, _tag("zscore", "window")),
    )
    json_out = JsonSerde()
    kafka.sink(
        "scores",
        op.map("score_records", scored.oks, _score_records),
        brokers=brokers,
        topic=topics.scores,
        value_serde=json_out,
        key="sensor_id",
    )
    kafka.sink(
        "alerts_out",
        alerts,
        brokers=brokers,
        topic=topics.alerts,
        value_serde=json_out,
        key="key",
    )
    kafka.dead_letter_sink(
        "dead_letters",
        # the validation's rejects, and every errs and late stream of every operator above
        collect_rejections("all_rejections", op.flat_map_batch("unusable", checked, _unusable)),
        brokers=brokers,
        topic=topics.dead_letters,
    )
    return check_flow(flow)
