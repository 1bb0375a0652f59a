"""A cluster gives the same results as one worker: 1×1, 1 process × 2 workers, 2 processes × 1."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest

from streamml.broker import EmbeddedBroker
from tests.reliability.flows import Topics
from tests.reliability.harness import (
    FlowProcess,
    Outputs,
    create_outputs,
    create_topics,
    free_port,
    generate_inputs,
    produce_inputs,
    read_outputs,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

SENSORS, PER_SENSOR = 24, 100


def _start(
    broker: EmbeddedBroker, model: Path, inputs: str, outputs: str, tmp: Path, layout: str
) -> list[FlowProcess]:
    create_outputs(broker, Topics.named(inputs, outputs))
    args = (broker.bootstrap, model, inputs, outputs)
    if layout == "1x1":
        return [FlowProcess(*args, log=tmp / f"{layout}.log")]
    if layout == "1x2":
        return [FlowProcess(*args, log=tmp / f"{layout}.log", workers=2)]
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    return [
        FlowProcess(*args, log=tmp / f"{layout}-{i}.log", process_id=i, addresses=addresses)
        for i in range(2)
    ]


def _in_order(out: Outputs) -> None:
    """Each sensor's scores come out once each, in the sensor's order (one partition per key)."""
    for sensor, seqs in out.per_key_sequences().items():
        assert seqs == sorted(set(seqs)), f"{sensor}: {seqs}"


def test_one_worker_two_workers_and_two_processes_give_the_same_results(
    broker: EmbeddedBroker, model: Path, topic_name: str, tmp_path: Path
) -> None:
    topics = Topics.named(topic_name, topic_name)
    create_topics(broker, topics)
    messages, inputs = generate_inputs(SENSORS, PER_SENSOR, bad_share=0.03, late_share=0.01)
    produce_inputs(broker.bootstrap, topics, messages, SENSORS)

    # The three layouts run at the same time (each writes its own output topics): their
    # process start-ups overlap instead of adding up, and the results must not care.
    started = {
        layout: _start(broker, model, topic_name, f"{topic_name}-{layout}", tmp_path, layout)
        for layout in ("1x1", "1x2", "2x1")
    }
    procs = [proc for layout_procs in started.values() for proc in layout_procs]
    try:
        for proc in procs:
            assert proc.wait() == 0, proc.tail()
    finally:
        for proc in procs:
            if proc.running():
                proc.kill()
    with ThreadPoolExecutor(len(started)) as pool:  # read at once, like the topics of one run
        outputs = [Topics.named(topic_name, f"{topic_name}-{layout}") for layout in started]
        runs = dict(zip(started, pool.map(partial(read_outputs, broker.bootstrap), outputs)))
    single = runs["1x1"]
    assert len(single.scores) == inputs.good
    assert len(single.dead_letters) == sum(inputs.bad.values()) + inputs.late
    assert single.windows
    for layout, out in runs.items():
        _in_order(out)
        assert out.duplicates("scores") == 0, layout
        assert out.distinct("scores") == single.distinct("scores"), layout
        assert out.distinct("windows") == single.distinct("windows"), layout
        assert out.dead_letter_identities() == single.dead_letter_identities(), layout
