"""The broker killed and restarted mid-way: records wait in the spool, inputs pause, none lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamml.broker import EmbeddedBroker
from streamml.ingest import HttpInput, IngestAgent, LogTail
from tests.ingest.kafka_helpers import read_topic, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


def _line(i: int) -> bytes:
    return b"%06d reading from pump-%d" % (i, i % 3)


def _post_status(url: str, body: bytes) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        json.loads(exc.read())  # the refusal says why, as JSON
        return exc.code


def test_broker_killed_and_restarted_mid_way_loses_and_doubles_nothing(
    own_broker: EmbeddedBroker, topic_name: str, tmp_path: Path
) -> None:
    own_broker.create_topic(topic_name)
    log = tmp_path / "pump.log"
    log.write_bytes(b"".join(_line(i) + b"\n" for i in range(1000)))
    http = HttpInput("127.0.0.1", 0)
    agent = IngestAgent(
        own_broker.bootstrap,
        topic_name,
        tmp_path / "state",
        sources=[LogTail(log)],
        http=http,
        key=r"regex:(pump-\d)",
        spool_max_bytes=20_000,  # ~700 lines: the outage below fills it
        read_bytes=2_000,
        producer_config={"linger.ms": 5, "message.timeout.ms": 2000},
    )
    with agent:
        wait_for(lambda: agent.progress.sent == 1000, "the lines before the outage")
        assert [v for _, v, _ in read_topic(own_broker.bootstrap, topic_name)] == [
            _line(i) for i in range(1000)
        ]

        port = int(own_broker.bootstrap.rpartition(":")[2])
        os.kill(own_broker.pid, signal.SIGKILL)
        own_broker.stop()
        with open(log, "ab") as f:
            f.write(b"".join(_line(i) + b"\n" for i in range(1000, 4000)))
        wait_for(
            lambda: agent.progress.paused and agent.status()["broker"] != "up",
            "the broker reported away, the spool full and the inputs paused",
        )
        assert agent.progress.read < 4000  # back-pressure: the rest waits in the log file
        assert _post_status(f"http://127.0.0.1:{http.port}/records", b"x") == 503

        with EmbeddedBroker(port=port) as back:
            back.create_topic(topic_name)  # its storage was in memory: the topic is gone
            wait_for(
                lambda: agent.progress.read == 4000 and agent.spool.unacked_records == 0,
                "every line read and confirmed after the restart",
            )
            after = [v for _, v, _ in read_topic(back.bootstrap, topic_name)]
            assert agent.status()["broker"] == "up" and not agent.progress.paused
    assert after == [_line(i) for i in range(1000, 4000)]
