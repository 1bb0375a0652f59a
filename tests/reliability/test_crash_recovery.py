"""kill -9 at random points, resume from the recovery store: nothing lost, state as if never stopped."""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir

from streamml.broker import EmbeddedBroker
from streamml.testing import consume_all, produce_all
from tests.reliability.flows import Topics
from tests.reliability.harness import (
    FlowProcess,
    Inputs,
    Outputs,
    TopicWatch,
    create_outputs,
    create_topics,
    generate_inputs,
    kill_when,
    produce_inputs,
    read_outputs,
    recovery_epochs,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

SENSORS, PER_SENSOR = 32, 150
PACE = dict(pace=0.08, batch_size=20)  # about 5 s of processing, so kills land mid-stream
SNAPSHOT_S = 1
INPUTS = "crash-recovery-inputs"  # the module's input topics, produced once per session


@dataclass(frozen=True)
class Reference:
    inputs: Inputs
    expected: Outputs


@pytest.fixture(scope="module")
def reference(broker: EmbeddedBroker, model: Path, tmp_path_factory) -> Reference:
    """The inputs, produced once, and what one uninterrupted single worker makes of them.

    Both kill -9 tests read these inputs and compare with this run: it is the
    same whatever the killed runs' layout. It runs without ``PACE``, which only
    slows a run so that a kill lands mid-stream: paced and unpaced runs write
    the same scores, windows and dead letters (checked on 1 and 2 workers),
    and the unpaced one takes about 1 s instead of 7 s.
    """
    ref_topics = Topics.named(INPUTS, f"{INPUTS}-ref")
    create_topics(broker, ref_topics)
    messages, inputs = generate_inputs(SENSORS, PER_SENSOR, bad_share=0.02, late_share=0.01)
    produce_inputs(broker.bootstrap, ref_topics, messages, SENSORS)
    log = tmp_path_factory.mktemp("crash-reference") / "ref.log"
    ref = FlowProcess(broker.bootstrap, model, INPUTS, f"{INPUTS}-ref", log=log)
    assert ref.wait() == 0, ref.tail()
    return Reference(inputs, read_outputs(broker.bootstrap, ref_topics))


@pytest.mark.parametrize(("workers", "kills"), [(1, 3), (2, 2)], ids=["1-worker", "2-workers"])
def test_kill_9_then_resume_gives_the_uninterrupted_results(
    broker: EmbeddedBroker,
    model: Path,
    reference: Reference,
    topic_name: str,
    tmp_path: Path,
    workers: int,
    kills: int,
) -> None:
    """Killed ``kills`` times (with ``workers`` workers), the union of outputs is a single worker's."""
    inputs, expected = reference.inputs, reference.expected
    crash_topics = Topics.named(INPUTS, f"{topic_name}-crash")
    create_outputs(broker, crash_topics)
    assert len(expected.scores) == inputs.good and expected.duplicates("scores") == 0
    assert len(expected.windows) >= 5  # anomaly windows open and close through the run

    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    rng = random.Random(7)
    crashes = []
    watch = TopicWatch(broker.bootstrap, crash_topics.scores)
    for run in range(kills):
        produced_before = watch.count()
        kill_after = produced_before + rng.randint(inputs.good // 10, inputs.good // 4)
        proc = FlowProcess(
            broker.bootstrap,
            model,
            INPUTS,
            f"{topic_name}-crash",
            log=tmp_path / f"crash-{run}.log",
            recovery=recovery,
            snapshot_s=SNAPSHOT_S,
            workers=workers,
            **PACE,
        )
        crashes.append(kill_when(proc, watch, kill_after))
        crashes[-1]["duplicates_before"] = watch.duplicates

    final = FlowProcess(
        broker.bootstrap,
        model,
        INPUTS,
        f"{topic_name}-crash",
        log=tmp_path / "final.log",
        recovery=recovery,
        snapshot_s=SNAPSHOT_S,
        workers=workers,
        **PACE,
    )
    assert final.wait() == 0, final.tail()
    wait_until(
        lambda: watch.count() >= len(consume_all(broker.bootstrap, crash_topics.scores)),
        timeout=30,
        what="the watch to catch up",
    )
    watch.close()
    per_crash = [
        b["duplicates_before"] - a["duplicates_before"] for a, b in zip(crashes, crashes[1:])
    ] + [watch.duplicates - crashes[-1]["duplicates_before"]]
    got = read_outputs(broker.bootstrap, crash_topics)

    # Nothing lost and nothing invented: the union of outputs is the uninterrupted run's.
    assert got.distinct("scores") == expected.distinct("scores")
    assert got.distinct("windows") == expected.distinct("windows")
    assert set(got.dead_letter_identities()) == set(expected.dead_letter_identities())
    # Duplicates come only from replaying the last snapshot interval before each kill:
    # an output is written at most once per run that got to it.
    dups = {name: got.duplicates(name) for name in ("scores", "windows", "dead_letters")}
    assert max(got.dead_letter_identities().values()) <= 1 + len(crashes)
    assert dups["scores"] < inputs.good // 2
    print(
        f"\ncrash/resume: {crashes}; duplicate scores after each crash {per_crash};"
        f" duplicates {dups} over {inputs.total} inputs"
    )


def test_the_served_model_version_survives_a_crash(
    broker: EmbeddedBroker, model: Path, topic_name: str, tmp_path: Path
) -> None:
    """A model swapped in on the control topic still serves after kill -9 and resume.

    The swap's control message is consumed before the snapshot, so it is not
    read again after the restart: only the restored infer state knows it.
    """
    topics = Topics.named(topic_name, topic_name)
    create_topics(broker, topics)
    messages, inputs = generate_inputs(8, 40)
    produce_inputs(broker.bootstrap, topics, [], 8)
    v2 = tmp_path / "v2.onnx"
    shutil.copy(model, v2)
    produce_all(broker.bootstrap, topics.models, [(None, str(v2).encode())])
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    watch = TopicWatch(broker.bootstrap, topics.scores)
    args = (broker.bootstrap, model, topic_name, topic_name)
    first = FlowProcess(*args, log=tmp_path / "first.log", recovery=recovery, tail=True)
    # Trickle readings in, 10 at a time once the last 10 are scored, until one is scored by
    # the swapped-in model: the flow's pace, not the clock's (it can take 10 s to start).
    sent, swapped = 0, []
    while not swapped:
        assert sent < len(messages) // 2, "the control message should have swapped the model in"
        produce_all(broker.bootstrap, topics.readings, messages[sent : sent + 10])
        sent += 10
        wait_until(lambda n=sent: watch.count() >= n, timeout=120, what=f"{sent} scores")
        swapped = [s for s in watch.parsed() if s["model_version"] != "v1"]
    # The swap is in the state of the epoch in progress now, at most one past the stored
    # frontier; kill once that epoch is committed, so the restored state
    # holds the swap (a sleep of two snapshot intervals was not always enough under load).
    wait_until(lambda: recovery_epochs(recovery)[0] >= 0, timeout=120, what="a snapshot")
    swap_epoch = recovery_epochs(recovery)[0] + 1
    wait_until(
        lambda: recovery_epochs(recovery)[1] >= swap_epoch,
        timeout=120,
        what=f"a snapshot after epoch {swap_epoch}",
    )
    first.kill()

    seen = watch.count()
    second = FlowProcess(*args, log=tmp_path / "second.log", recovery=recovery, tail=True)
    try:
        produce_all(broker.bootstrap, topics.readings, messages[sent:])
        wait_until(lambda: watch.count() >= inputs.good, timeout=180, what="all scores")
    finally:
        second.kill()
        watch.close()
    later = watch.parsed()[seen:]
    assert {s["model_version"] for s in later} == {swapped[0]["model_version"]}
