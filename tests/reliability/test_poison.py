"""Poison data at scale: 5 % malformed records, every one dead-lettered with its reason, in = out + dead + late."""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path

import pytest

from streamml.broker import EmbeddedBroker
from streamml.testing import consume_all
from tests.reliability.flows import Topics
from tests.reliability.harness import (
    FlowProcess,
    create_topics,
    generate_inputs,
    produce_inputs,
    read_outputs,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

SENSORS, PER_SENSOR = 64, 250

REASONS = {  # kind of bad record -> (error types it may get, words its reason must contain)
    "garbage_bytes": ({"DecodeError", "UnknownSchema"}, ""),
    "unknown_schema_id": ({"UnknownSchema"}, "schema id 999999"),
    "nan": ({"InvalidReading"}, "temperature is nan"),
    "missing_field": ({"InvalidReading"}, "missing field vibration"),
    "absurd_timestamp": ({"InvalidReading"}, "timestamp 2200-01-01"),
}


def test_five_percent_poison_every_record_accounted_for(
    broker: EmbeddedBroker, model: Path, topic_name: str, tmp_path: Path
) -> None:
    topics = Topics.named(topic_name, topic_name)
    create_topics(broker, topics)
    messages, inputs = generate_inputs(SENSORS, PER_SENSOR, bad_share=0.05, late_share=0.005)
    produce_inputs(broker.bootstrap, topics, messages, SENSORS)
    proc = FlowProcess(broker.bootstrap, model, topic_name, topic_name, log=tmp_path / "flow.log")
    assert proc.wait(180) == 0, proc.tail()
    out = read_outputs(broker.bootstrap, topics)

    n_in = len(consume_all(broker.bootstrap, topics.readings))
    late = [d for d in out.dead_letters if d["error_type"] == "Late"]
    dead = [d for d in out.dead_letters if d["error_type"] != "Late"]
    assert n_in == inputs.total == len(out.scores) + len(dead) + len(late)

    # every good record gives its result, once
    assert sorted((s["sensor_id"], s["seq"]) for s in out.scores) == [
        (f"sensor-{i:03d}", j) for i in range(SENSORS) for j in range(PER_SENSOR)
    ]
    # every bad record is in the dead-letter topic, with its coordinates and reason
    kinds: Counter[str] = Counter()
    for d in dead:
        kind = inputs.kind_of[base64.b64decode(d["value"])]
        error_types, words = REASONS[kind]
        assert d["error_type"] in error_types and words in d["reason"], (kind, d)
        assert d["source"]["topic"] == topics.readings and d["source"]["offset"] >= 0
        kinds[kind] += 1
    assert kinds == inputs.bad
    # late readings are dead-lettered as such, with the event that came too late
    assert len(late) == inputs.late
    assert all(d["event"][1]["seq"] == -2 and "watermark" in d["reason"] for d in late)
