"""The agent killed (SIGKILL) mid-way and started again: every line in the topic exactly once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from streamml.broker import EmbeddedBroker
from tests.ingest.kafka_helpers import read_topic, wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LINES = 60_000


def _agent(broker: EmbeddedBroker, topic: str, log: Path, state: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "streamml.cli",
        "ingest",
        "--brokers",
        broker.bootstrap,
        "--topic",
        topic,
        "--state",
        str(state),
        "--tail",
        str(log),
        "--key",
        "none",
        "--progress",
        "0.05",
    ]
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def _sent(line: str) -> int:
    return int(line.split("| sent ")[1].split(" ")[0].replace(",", "")) if "| sent " in line else 0


def test_an_agent_killed_mid_way_then_restarted_sends_every_line_once(
    broker: EmbeddedBroker, topic_name: str, tmp_path: Path
) -> None:
    broker.create_topic(topic_name, partitions=2)
    log = tmp_path / "app.log"
    written = 0

    def append(n: int) -> None:  # the application writing its log while the agent runs
        nonlocal written
        with open(log, "ab") as f:
            f.write(b"".join(b"line %06d\n" % i for i in range(written, written + n)))
        written += n

    append(5_000)
    state = tmp_path / "state"
    first = _agent(broker, topic_name, log, state)
    assert first.stdout is not None
    for line in first.stdout:  # a progress line every 0.05 s; lines keep coming meanwhile
        append(2_000)
        if _sent(line) > 0 and written >= LINES // 2:
            break  # it has sent some, more is being read and sent: kill it now
    first.send_signal(signal.SIGKILL)
    first.wait()
    append(LINES - written)

    second = _agent(broker, topic_name, log, state)
    try:
        wait_for(
            lambda: (
                json.loads((state / "positions.json").read_text())["sources"].get(str(log))
                == {"ino": log.stat().st_ino, "offset": log.stat().st_size}
            ),
            "the restarted agent to commit the end of the log",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    values = sorted(v for _, v, _ in read_topic(broker.bootstrap, topic_name, 2))
    assert len(values) == LINES
    assert values == [b"line %06d" % i for i in range(LINES)]
