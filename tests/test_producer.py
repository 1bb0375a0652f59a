"""The producer sink fails loudly instead of dropping what it could not deliver."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from confluent_kafka.admin import AdminClient

from streamml.broker import EmbeddedBroker
from streamml.kafka import BrokerUnreachable, TopicNotFound
from streamml.producer import DeliveryError, Messages, ProducerSink, count_messages
from streamml.testing import consume_all

pytestmark = pytest.mark.integration


def _stop(pid: int) -> None:
    """SIGSTOP ``pid`` and return once it is stopped (the signal is delivered asynchronously)."""
    os.kill(pid, signal.SIGSTOP)
    while Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "T":
        time.sleep(0.001)


@contextmanager
def paused_broker() -> Iterator[EmbeddedBroker]:
    """A broker of its own with topic ``t``, let go on (SIGCONT) before it is stopped."""
    with EmbeddedBroker() as own:
        own.create_topic("t")
        try:
            yield own
        finally:
            os.kill(own.pid, signal.SIGCONT)


def _flow(
    bootstrap: str,
    topic: str,
    n: int,
    timeout: timedelta,
    add_config: dict | None = None,
    confirm_each_batch: bool = True,
    pause: EmbeddedBroker | None = None,
) -> Dataflow:
    """``n`` pairs to ``topic``; with ``pause``, that broker is paused as the first pair arrives.

    The sink's producer is built (and has checked the topic) at the start
    of the run, before any pair: pausing the broker (SIGSTOP) then makes
    every delivery time out. (A killed broker can leave a message queued
    past its ``message.timeout.ms``; the sink then says "still queued".)
    """
    flow = Dataflow("produce")
    pairs = op.input("pairs", flow, TestingSource([(b"k", str(i).encode()) for i in range(n)]))
    if pause is not None:
        pairs = op.map("pause_broker", pairs, lambda kv: (_stop(pause.pid), kv)[1])
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
    with paused_broker() as paused, pytest.raises(Exception) as raised:  # noqa: B017 - Bytewax wraps the sink's error
        # Messages time out (0.5 s) before the flush gives up (2 s); with both at 2 s,
        # the flush sometimes won the race and reported "still queued" instead.
        config = {"message.timeout.ms": 500}
        run_main(
            _flow(
                paused.bootstrap, "t", 10, timedelta(seconds=2), config, confirm_each_batch, paused
            )
        )
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
    with paused_broker() as paused, pytest.raises(Exception) as raised:  # noqa: B017 - Bytewax wraps the sink's error
        # Messages time out (0.5 s) well before the flush gives up (2 s): the failure
        # must come back through the delivery callback, not as "still queued".
        config = {**add_config, "message.timeout.ms": 500}
        run_main(_flow(paused.bootstrap, "t", 10, timedelta(seconds=2), config, pause=paused))
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


def test_messages_batches_and_pairs_are_delivered_in_order(
    broker: EmbeddedBroker, topic_name: str
) -> None:
    """A Messages item is its messages in order, next to plain pairs; a full local queue
    (20 messages here) waits for room inside a Messages batch too, and loses nothing."""
    broker.create_topic(topic_name)
    first = Messages([f"k{i}".encode() for i in range(150)], [b"%d" % i for i in range(150)])
    last = Messages([None] * 50, [b"%d" % i for i in range(151, 201)])
    flow = Dataflow("produce_messages")
    items = op.input("items", flow, TestingSource([first, (b"pair", b"150"), last], batch_size=3))
    config = {"queue.buffering.max.messages": "20"}
    op.output("kafka", items, ProducerSink(broker.bootstrap, topic_name, add_config=config))
    run_main(flow)
    got = [(m.key, m.value) for m in consume_all(broker.bootstrap, topic_name)]
    assert [v for _, v in got] == [b"%d" % i for i in range(201)]
    assert [k for k, _ in got] == first.keys + [b"pair"] + last.keys
    assert count_messages([first, (b"pair", b"150"), last]) == 201


def test_delivery_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="delivery_timeout must be > 0"):
        ProducerSink("127.0.0.1:9092", "t", delivery_timeout=timedelta(0))


def _cause(raised: BaseException, kind: type[BaseException]) -> BaseException:
    cause: BaseException | None = raised
    while cause is not None and not isinstance(cause, kind):
        cause = cause.__cause__
    assert cause is not None, f"no {kind.__name__} behind {raised!r}"
    return cause


def test_a_missing_topic_fails_at_start_and_is_not_created(broker: EmbeddedBroker) -> None:
    with pytest.raises(Exception) as raised:  # noqa: B017 - Bytewax wraps the sink's error
        run_main(_flow(broker.bootstrap, "no-such-topic", 3, timedelta(seconds=5)))
    assert "Kafka topic 'no-such-topic' does not exist" in str(_cause(raised.value, TopicNotFound))
    topics = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics
    assert "no-such-topic" not in topics


def test_no_broker_at_start_fails_after_broker_timeout() -> None:
    # A port held bound but not listening refuses every connection, and no other process
    # can take it meanwhile (the port of a stopped broker could be reused by another
    # broker on the machine, one with a topic 't': the run then did not raise).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        bootstrap = f"127.0.0.1:{held.getsockname()[1]}"
        flow = Dataflow("produce")
        pairs = op.input("pairs", flow, TestingSource([(b"k", b"v")]))
        sink = ProducerSink(bootstrap, "t", broker_timeout=timedelta(seconds=1))
        op.output("kafka", pairs, sink)
        with pytest.raises(Exception) as raised:  # noqa: B017 - Bytewax wraps the sink's error
            run_main(flow)
    assert "within broker_timeout=1 s at start" in str(_cause(raised.value, BrokerUnreachable))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delivery_timeout": 60}, "delivery_timeout must be a datetime.timedelta"),
        ({"broker_timeout": timedelta(0)}, "broker_timeout must be > 0 (or None to wait forever)"),
    ],
)
def test_timeouts_are_checked_when_built(kwargs: dict, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        ProducerSink("127.0.0.1:9092", "t", **kwargs)
