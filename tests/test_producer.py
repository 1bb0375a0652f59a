"""The producer sink fails loudly instead of dropping what it could not deliver."""

from __future__ import annotations

from datetime import timedelta

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from streamml.broker import EmbeddedBroker
from streamml.producer import DeliveryError, ProducerSink
from streamml.testing import consume_all

pytestmark = pytest.mark.integration


def _flow(
    bootstrap: str,
    topic: str,
    n: int,
    timeout: timedelta,
    add_config: dict | None = None,
    confirm_each_batch: bool = True,
) -> Dataflow:
    flow = Dataflow("produce")
    pairs = op.input("pairs", flow, TestingSource([(b"k", str(i).encode()) for i in range(n)]))
    sink = ProducerSink(
        bootstrap,
        topic,
        delivery_timeout=timeout,
        confirm_each_batch=confirm_each_batch,
        add_config=add_config,
    )
    op.output("kafka", pairs, sink)
    return flow


@pytest.mark.parametrize("confirm_each_batch", [True, False])
def test_every_pair_is_delivered(
    broker: EmbeddedBroker, topic_name: str, confirm_each_batch: bool
) -> None:
    broker.create_topic(topic_name)
    run_main(
        _flow(broker.bootstrap, topic_name, 500, timedelta(seconds=30), None, confirm_each_batch)
    )
    values = [m.value for m in consume_all(broker.bootstrap, topic_name)]
    assert values == [str(i).encode() for i in range(500)]


@pytest.mark.parametrize("confirm_each_batch", [True, False])
def test_undeliverable_batch_fails_the_worker_with_a_clear_error(confirm_each_batch: bool) -> None:
    """Also without a wait per batch: the failure surfaces at a later batch or at the end."""
    with EmbeddedBroker() as gone:
        gone.create_topic("t")
        bootstrap = gone.bootstrap
    with pytest.raises(Exception) as raised:  # noqa: B017 - Bytewax wraps the sink's error
        # Messages time out (0.5 s) before the flush gives up (2 s); with both at 2 s,
        # the flush sometimes won the race and reported "still queued" instead.
        config = {"message.timeout.ms": 500}
        run_main(_flow(bootstrap, "t", 10, timedelta(seconds=2), config, confirm_each_batch))
    cause = raised.value
    while cause is not None and not isinstance(cause, DeliveryError):
        cause = cause.__cause__
    assert cause is not None, f"no DeliveryError behind {raised.value!r}"
    assert "could not deliver to topic 't' within 2 s" in str(cause)
    assert "Message timed out" in str(cause)


@pytest.mark.parametrize(
    "add_config",
    [
        {"delivery.report.only.error": False},  # a report for every message, as before
        {"on_delivery": lambda err, msg: None},  # a user's callback does not hide failures
    ],
)
def test_failures_are_reported_whatever_the_delivery_report_settings(add_config: dict) -> None:
    with EmbeddedBroker() as gone:
        gone.create_topic("t")
        bootstrap = gone.bootstrap
    with pytest.raises(Exception) as raised:  # noqa: B017 - Bytewax wraps the sink's error
        # Messages time out (0.5 s) well before the flush gives up (2 s): the failure
        # must come back through the delivery callback, not as "still queued".
        config = {**add_config, "message.timeout.ms": 500}
        run_main(_flow(bootstrap, "t", 10, timedelta(seconds=2), config))
    cause = raised.value
    while cause is not None and not isinstance(cause, DeliveryError):
        cause = cause.__cause__
    assert cause is not None, f"no DeliveryError behind {raised.value!r}"
    assert "1 message(s) failed" in str(cause)  # TestingSource: one message per batch
    assert "Message timed out" in str(cause)


def test_every_pair_is_delivered_with_every_report(broker: EmbeddedBroker, topic_name: str) -> None:
    broker.create_topic(topic_name)
    config = {"delivery.report.only.error": False}
    run_main(_flow(broker.bootstrap, topic_name, 300, timedelta(seconds=30), config))
    values = [m.value for m in consume_all(broker.bootstrap, topic_name)]
    assert values == [str(i).encode() for i in range(300)]


def test_delivery_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="delivery_timeout must be > 0"):
        ProducerSink("127.0.0.1:9092", "t", delivery_timeout=timedelta(0))
