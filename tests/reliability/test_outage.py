"""Broker outages: a 10-second pause is ridden out; a broker gone for good fails the flow clearly.

Each test starts its own broker (pausing or killing the session's would
break other tests); tansu keeps topics in memory, so the broker process must
outlive a pause, and a killed broker takes its topics with it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamml.broker import EmbeddedBroker
from tests.reliability.flows import Topics
from tests.reliability.harness import (
    FlowProcess,
    TopicWatch,
    create_topics,
    free_port,
    generate_inputs,
    produce_inputs,
    read_outputs,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


def test_a_10_second_broker_pause_mid_stream_loses_nothing(
    own_broker: EmbeddedBroker, model: Path, tmp_path: Path
) -> None:
    topics = Topics.named("paused", "paused")
    create_topics(own_broker, topics)
    messages, inputs = generate_inputs(16, 120, bad_share=0.02, late_share=0.01)
    produce_inputs(own_broker.bootstrap, topics, messages, 16)
    watch = TopicWatch(own_broker.bootstrap, topics.scores)
    proc = FlowProcess(
        own_broker.bootstrap,
        model,
        "paused",
        "paused",
        log=tmp_path / "flow.log",
        pace=0.08,
        batch_size=20,
        broker_timeout=30.0,
    )
    try:
        wait_until(lambda: watch.count() >= inputs.good // 4, timeout=60, what="a quarter")
        assert proc.running(), proc.tail()
        os.kill(own_broker.pid, signal.SIGSTOP)
        paused_at = watch.count()
        time.sleep(10)
        assert watch.count() == paused_at  # the broker really was unavailable
        os.kill(own_broker.pid, signal.SIGCONT)
        assert proc.wait(120) == 0, proc.tail()
    finally:
        os.kill(own_broker.pid, signal.SIGCONT)
        if proc.running():
            proc.kill()
    watch.close()
    out = read_outputs(own_broker.bootstrap, topics)
    assert paused_at < inputs.good  # the pause hit mid-stream
    assert {(s["sensor_id"], s["seq"]) for s in out.scores} == {
        (f"sensor-{i:03d}", j) for i in range(16) for j in range(120)
    }
    assert len(out.distinct("scores")) == inputs.good
    late = sum(d["error_type"] == "Late" for d in out.dead_letters)
    assert len(out.dead_letter_identities()) == sum(inputs.bad.values()) + inputs.late
    assert late == inputs.late
    print(f"\npause: resumed and finished; duplicates {out.duplicates('scores')} scores")


def test_a_dead_broker_fails_the_flow_after_broker_timeout(
    own_broker: EmbeddedBroker, model: Path, tmp_path: Path
) -> None:
    topics = Topics.named("dead", "dead")
    create_topics(own_broker, topics)
    messages, inputs = generate_inputs(4, 30)
    produce_inputs(own_broker.bootstrap, topics, messages, 4)
    watch = TopicWatch(own_broker.bootstrap, topics.scores)
    args = (own_broker.bootstrap, model, "dead", "dead")
    guarded = FlowProcess(*args, log=tmp_path / "guarded.log", tail=True, broker_timeout=5.0)
    unguarded = FlowProcess(*args, log=tmp_path / "unguarded.log", tail=True)
    try:
        wait_until(lambda: watch.count() >= 2 * inputs.good, timeout=60, what="both flows' scores")
        watch.close()
        os.kill(own_broker.pid, signal.SIGKILL)
        killed = time.monotonic()
        assert guarded.wait(60) != 0
        failed_after = time.monotonic() - killed
        assert 5 <= failed_after < 30
        log = guarded.tail(200)
        assert "BrokerUnreachable" in log and "broker_timeout=5 s" in log, log
        assert unguarded.running()  # without a timeout the source retries forever
    finally:
        for proc in (guarded, unguarded):
            if proc.running():
                proc.kill()
    print(f"\ndead broker: the flow failed {failed_after:.1f} s after the broker died")


def test_a_flow_started_without_a_broker_fails_after_broker_timeout(
    model: Path, tmp_path: Path
) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    proc = FlowProcess(nobody, model, "none", "none", log=tmp_path / "flow.log", broker_timeout=3.0)
    try:
        assert proc.wait(60) != 0
    finally:
        if proc.running():
            proc.kill()
    log = proc.tail(200)
    assert "BrokerUnreachable" in log and "answered within broker_timeout=3 s at start" in log, log
