"""The dataflow: telemetry from Kafka → the failure-risk model → readings with ``p_fail`` to Kafka.

The model is a parameter: a :class:`~streamml.models.RemoteModel` calling the
microservice, or the same ONNX file in-process as an
:class:`~streamml.models.OnnxModel` — nothing else in the flow changes.
Rejected records (undecodable bytes, rows the service refused) go to a
dead-letter topic, so every message ends as a result or a dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import bytewax.operators as op
import polars as pl
from bytewax.dataflow import Dataflow
from streamml.operators.infer import infer

from examples.model_microservice.generate import FEATURES
from streamml import kafka
from streamml.models import Model
from streamml.serde import JsonSerde

READING = {
    "machine_id": pl.String,
    "seq": pl.Int64,
    "ts": pl.Int64,
    "temperature": pl.Float64,
    "vibration": pl.Float64,
    "pressure": pl.Float64,
    "rpm": pl.Float64,
}
"""The readings' JSON schema: declared, so no types are inferred per batch."""
BATCH = 20_000
"""Messages per read and most rows per model call (the pipeline benchmark's best)."""
_FETCH = {"fetch.max.bytes": str(64 << 20), "max.partition.fetch.bytes": str(16 << 20)}


@dataclass(frozen=True)
class Topics:
    """The example's topics."""

    telemetry: str = "telemetry"
    scored: str = "telemetry-scored"
    dead_letters: str = "telemetry-dead-letters"


def build_flow(
    bootstrap: str,
    topics: Topics,
    model: Model,
    *,
    max_wait: timedelta = timedelta(milliseconds=5),
    tail: bool = False,
    schema: dict[str, pl.DataType] | None = None,
) -> Dataflow:
    """Score every reading of ``topics.telemetry`` with ``model`` and write the results.

    ``tail=False`` stops at the topic's end; ``True`` waits for more.
    ``schema`` replaces :data:`READING` (e.g. to carry more fields through).
    """
    flow = Dataflow("model_microservice")
    src = kafka.source(
        "telemetry",
        flow,
        brokers=bootstrap,
        topics=topics.telemetry,
        value_serde=JsonSerde(schema=READING if schema is None else schema),
        tail=tail,
        batch_size=BATCH,
        add_config=_FETCH,
        frames=True,
    )
    scored = infer(
        "failure_risk",
        src.oks,
        model,
        inputs=FEATURES,
        outputs={"p_fail": ("probabilities", 1)},
        max_batch=BATCH,
        max_wait=max_wait,
    )
    kafka.sink(
        "scored",
        scored.oks,
        brokers=bootstrap,
        topic=topics.scored,
        value_serde=JsonSerde(),
        key="machine_id",
    )
    kafka.dead_letter_sink(
        "dead_letters",
        op.merge("rejected", src.errs, scored.errs),
        brokers=bootstrap,
        topic=topics.dead_letters,
    )
    return flow
