"""Broker outages: a 10-second pause is ridden out; a broker gone for good fails the flow clearly.

Each test starts its own broker (pausing or killing the session's would
break other tests); tansu keeps topics in memory, so the broker process must
outlive a pause, and a killed broker takes its topics with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import init_db_dir
from bytewax.testing import TestingSource

from streamml import kafka
from streamml.broker import EmbeddedBroker
from streamml.serde import JsonSerde
from streamml.testing import consume_all
from tests.reliability.flows import Topics
from tests.reliability.harness import (
    ROOT,
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


def _paced(batch: list[int]) -> list[int]:
    time.sleep(0.1)
    return batch


def sink_flow(brokers: str, topic: str, n: int) -> Dataflow:
    """``0..n-1`` from a recoverable source, five a batch, 0.1 s a batch, to ``topic`` as JSON."""
    flow = Dataflow("sink_outage")
    numbers = op.input("numbers", flow, TestingSource(range(n), batch_size=5))
    kafka.sink(
        "out",
        op.flat_map_batch("pace", numbers, _paced),
        brokers=brokers,
        topic=topic,
        value_serde=JsonSerde(),
        delivery_timeout=timedelta(seconds=3),
    )
    return flow


def _run_sink_flow(bootstrap: str, recovery: Path, log: Path, n: int) -> subprocess.Popen:
    flow = f"tests.reliability.test_outage:sink_flow({bootstrap!r}, 'sunk', {n})"
    return subprocess.Popen(
        [sys.executable, "-m", "bytewax.run", flow, "-r", str(recovery), "-s", "1", "-b", "0"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def test_a_sink_whose_broker_stops_fails_with_delivery_error_and_resumes_losing_nothing(
    own_broker: EmbeddedBroker, tmp_path: Path
) -> None:
    """The flow stops with DeliveryError and the reason (not exit 134, a Rust abort); a rerun completes."""
    own_broker.create_topic("sunk")
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    n = 300  # 6 s of output at least: the pause lands mid-stream even on a loaded machine
    watch = TopicWatch(own_broker.bootstrap, "sunk", partitions=1)
    first = _run_sink_flow(own_broker.bootstrap, recovery, tmp_path / "first.log", n)
    try:
        wait_until(lambda: watch.count() >= n // 4, timeout=60, what="a quarter of the output")
        os.kill(own_broker.pid, signal.SIGSTOP)
        paused_at = watch.seen
        code = first.wait(60)
    finally:
        os.kill(own_broker.pid, signal.SIGCONT)
        if first.poll() is None:
            first.kill()
    watch.close()
    assert paused_at < n  # the broker went away mid-stream
    log = (tmp_path / "first.log").read_text(errors="replace")
    assert code == 1, log[-3000:]  # a Python error, not SIGABRT (-6) from a panic in a destructor
    assert "panic in a destructor" not in log
    assert "DeliveryError: could not deliver to topic 'sunk' within 3 s" in log, log[-3000:]
    assert "Message timed out" in log
    second = _run_sink_flow(own_broker.bootstrap, recovery, tmp_path / "second.log", n)
    assert second.wait(120) == 0, (tmp_path / "second.log").read_text(errors="replace")[-3000:]
    values = [int(m.value) for m in consume_all(own_broker.bootstrap, "sunk")]
    assert set(values) == set(range(n))  # at least once: the failed batches again, nothing lost
