"""Misconfigured Kafka steps are refused when the dataflow is built; missing topics fail at start."""

from __future__ import annotations

import inspect
import re
from datetime import timedelta
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from confluent_kafka.admin import AdminClient
from streamml.operators.join import kafka_table

from streamml import kafka
from streamml.broker import EmbeddedBroker
from streamml.kafka import TopicNotFound
from streamml.serde import JsonSerde, StringSerde

BROKERS = "127.0.0.1:9092"  # never contacted: every case fails before a run


def _source(**kwargs: Any) -> None:
    args = {"brokers": BROKERS, "topics": "t", "value_serde": JsonSerde(), **kwargs}
    kafka.source("in", Dataflow("src"), **args)


def _sink(**kwargs: Any) -> None:
    flow = Dataflow("sink")
    up = op.input("in", flow, TestingSource([{"user": "ann"}]))
    kafka.sink(
        "out", up, **{"brokers": BROKERS, "topic": "t", "value_serde": JsonSerde(), **kwargs}
    )


def _table(**kwargs: Any) -> None:
    args = {"brokers": BROKERS, "topic": "t", "value_serde": JsonSerde(), **kwargs}
    kafka_table("table", Dataflow("table"), **args)


def _dead_letters(**kwargs: Any) -> None:
    flow = Dataflow("dlq")
    up = op.input("in", flow, TestingSource([]))
    kafka.dead_letter_sink("dlq", up, **{"brokers": BROKERS, "topic": "dlq", **kwargs})


@pytest.mark.parametrize(
    ("build", "kwargs", "message"),
    [
        (_source, {"topics": 123}, "topics must be a topic name or a list of names"),
        (_source, {"topics": []}, "topics must name at least one topic"),
        (_source, {"brokers": 9092}, "brokers must be 'host:port' (comma-separated)"),
        (_source, {"value_serde": JsonSerde}, "not the class JsonSerde: pass JsonSerde()"),
        (_source, {"key_serde": "utf-8"}, "key_serde must be a serde with decode_batch()"),
        (_source, {"batch_size": "100"}, "batch_size must be an int >= 1"),
        (_source, {"broker_timeout": 30}, "broker_timeout must be a datetime.timedelta"),
        (_sink, {"value_serde": JsonSerde}, "not the class JsonSerde: pass JsonSerde()"),
        (_sink, {"key_serde": StringSerde}, "not the class StringSerde: pass StringSerde()"),
        (_sink, {"key": 3}, "key must be a function or a field name"),
        (_sink, {"value": "score"}, "value must be a function"),
        (_sink, {"topic": ["a", "b"]}, "topic must be one topic name"),
        (_sink, {"delivery_timeout": 60}, "delivery_timeout must be a datetime.timedelta"),
        (_sink, {"broker_timeout": timedelta(0)}, "broker_timeout must be > 0"),
        (_table, {"topic": None}, "topic must be one topic name"),
        (_table, {"value_serde": JsonSerde}, "not the class JsonSerde: pass JsonSerde()"),
        (_table, {"broker_timeout": -1}, "broker_timeout must be a datetime.timedelta"),
        (
            _sink,
            {"add_config": {"fetch.wait.max.ms": "20"}},
            "fetch.wait.max.ms is a consumer setting",
        ),
        (_dead_letters, {"add_config": {"group.id": "g"}}, "group.id is a consumer setting"),
        (_dead_letters, {"topic": 5}, "topic must be one topic name"),
        (_dead_letters, {"brokers": None}, "brokers must be 'host:port'"),
    ],
)
def test_misconfiguration_is_refused_at_build(build: Any, kwargs: dict, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        build(**kwargs)


@pytest.mark.parametrize("step", [kafka.source, kafka.sink, kafka.dead_letter_sink, kafka_table])
def test_broker_timeout_defaults_to_a_minute(step: Any) -> None:
    assert inspect.signature(step).parameters["broker_timeout"].default == timedelta(seconds=60)


def test_a_field_name_key_on_items_that_are_not_dicts_says_what_to_pass() -> None:
    """``key="user"`` on (key, value) tuples: every item rejected with the fix in the reason."""
    from streamml.kafka._sink import _encoder

    encode = _encoder("out.encode", JsonSerde(), StringSerde(), None, "user")
    [rejected] = encode([("ann", {"score": 1})])
    assert rejected.error_type == "BadItem"
    assert "key='user' picks item['user'], but the item is a tuple" in rejected.reason
    assert "key=lambda item: ..." in rejected.reason


@pytest.mark.integration
@pytest.mark.parametrize("reader", ["source", "table"])
def test_reading_a_missing_topic_fails_at_start_without_creating_it(
    broker: EmbeddedBroker, reader: str
) -> None:
    flow = Dataflow("missing")
    if reader == "source":
        read = kafka.source(
            "in", flow, brokers=broker.bootstrap, topics="absent-in", value_serde=JsonSerde()
        ).oks
    else:
        read = kafka_table(
            "in", flow, brokers=broker.bootstrap, topic="absent-in", value_serde=JsonSerde()
        ).changelog
    op.output("out", read, TestingSink([]))
    with pytest.raises(Exception) as raised:  # noqa: B017 - Bytewax wraps the step's error
        run_main(flow)
    cause: BaseException | None = raised.value
    while cause is not None and not isinstance(cause, TopicNotFound):
        cause = cause.__cause__
    assert cause is not None, f"no TopicNotFound behind {raised.value!r}"
    assert "Kafka topic 'absent-in' does not exist" in str(cause) and "create it" in str(cause)
    topics = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics
    assert "absent-in" not in topics
