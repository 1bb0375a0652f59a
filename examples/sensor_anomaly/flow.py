"""The sensor dataflow: Avro readings in, validated readings out, bad records dead-lettered.

Run it on its own against a running broker (``streamml broker`` starts one)::

    python -m bytewax.run "examples.sensor_anomaly.flow:build_flow('127.0.0.1:9092')"

or end to end, with generated data and a summary, with
``python -m examples.sensor_anomaly``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from streamml import kafka
from streamml.errors import Rejected
from streamml.kafka import Record
from streamml.serde import ConfluentAvroSerde

__all__ = ["SCHEMA", "Topics", "build_flow", "validate_readings"]

SCHEMA = Path(__file__).with_name("reading.avsc")
FIELDS = ("temperature", "vibration", "pressure")
EARLIEST = datetime(2000, 1, 1, tzinfo=timezone.utc)
MAX_CLOCK_SKEW = timedelta(days=1)


@dataclass(frozen=True)
class Topics:
    """Topic names of the sensor pipeline."""

    readings: str = "sensor-readings"
    results: str = "sensor-validated"
    dead_letters: str = "sensor-dead-letters"


def _check(value: dict[str, Any], now: datetime) -> str | None:
    """Why a decoded reading is unusable, or None when it is fine."""
    for name in FIELDS:
        x = value.get(name)
        if not isinstance(x, float) or not math.isfinite(x):
            return f"{name} is {x!r}, not a finite number"
    ts = value.get("ts")
    if not isinstance(ts, datetime) or not EARLIEST <= ts <= now + MAX_CLOCK_SKEW:
        return f"timestamp {ts!r} is outside {EARLIEST.date()} .. now + {MAX_CLOCK_SKEW}"
    return None


def validate_readings(step_id: str):
    """A batch function: keep usable readings, reject the rest with the reason."""

    def validate(records: list[Record]) -> list[dict[str, Any] | Rejected]:
        now = datetime.now(timezone.utc)
        out: list[dict[str, Any] | Rejected] = []
        for record in records:
            value = record.value
            problem = _check(value, now) if isinstance(value, dict) else "value is not a record"
            out.append(
                value if problem is None else Rejected(step_id, "InvalidReading", problem, record)
            )
        return out

    return validate


def _is_reading(item: object) -> bool:
    return type(item) is dict


def build_flow(
    brokers: str,
    *,
    topics: Topics = Topics(),
    registry: Any = None,
    tail: bool = False,
) -> Dataflow:
    """The sensor dataflow over ``brokers``.

    ``registry`` is a schema-registry client or config; by default an
    in-process ``mock://`` registry. The reading schema is registered at
    build time, as its producer would have (idempotent on a real registry).
    """
    registry = registry if registry is not None else {"url": "mock://sensor-anomaly"}
    serde = ConfluentAvroSerde(registry, schema=SCHEMA, subject=f"{topics.readings}-value")
    _ = serde.schema_id
    flow = Dataflow("sensor_anomaly")
    src = kafka.source(
        "readings", flow, brokers=brokers, topics=topics.readings, value_serde=serde, tail=tail
    )
    checked = op.flat_map_batch("validate", src.oks, validate_readings("sensor_anomaly.validate"))
    split = op.branch("usable", checked, _is_reading)
    sink_errs = kafka.sink(
        "results",
        split.trues,
        brokers=brokers,
        topic=topics.results,
        value_serde=serde,
        key=lambda reading: reading["sensor_id"],
    )
    kafka.dead_letter_sink(
        "dead_letters",
        op.merge("all_errors", src.errs, split.falses, sink_errs),
        brokers=brokers,
        topic=topics.dead_letters,
    )
    return flow
