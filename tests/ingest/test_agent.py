"""The agent end to end on the embedded broker: exact topic contents, keys, headers."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import orjson
import pytest

from streamml.broker import EmbeddedBroker
from streamml.ingest import DirWatch, EdgeModel, HttpInput, IngestAgent, LogTail
from streamml.ingest.sender import Sender
from streamml.models import CallableModel
from tests.ingest.kafka_helpers import read_topic, wait_for

pytestmark = pytest.mark.integration

FAST = {"linger.ms": 5, "message.timeout.ms": 3000}


def _lines(start: int, stop: int) -> bytes:
    return b"".join(b"%d user=u%d\n" % (i, i % 5) for i in range(start, stop))


def test_log_lines_arrive_once_each_in_order_across_a_rotation(
    broker: EmbeddedBroker, topic_name: str, tmp_path: Path
) -> None:
    broker.create_topic(topic_name)
    log = tmp_path / "app.log"
    log.write_bytes(_lines(0, 3000))
    agent = IngestAgent(
        broker.bootstrap,
        topic_name,
        tmp_path / "state",
        sources=[LogTail(log)],
        key=r"regex:user=(\w+)",
        producer_config={**FAST, "compression.type": "zstd"},
    )
    with agent:
        wait_for(lambda: agent.progress.sent == 3000, "the first 3,000 lines")
        os.rename(log, tmp_path / "app.log.1")
        log.write_bytes(_lines(3000, 6000))
        wait_for(lambda: agent.progress.sent == 6000, "the lines of the new file")
    rows = read_topic(broker.bootstrap, topic_name)
    assert [v for _, v, _ in rows] == [b"%d user=u%d" % (i, i % 5) for i in range(6000)]
    assert [k for k, _, _ in rows] == [b"u%d" % (i % 5) for i in range(6000)]
    seqs = [h["streamml-ingest"].split(b":")[1] for _, _, h in rows]
    assert seqs == [b"%d" % i for i in range(6000)]
    assert agent.status()["spool_records"] == 0


def test_frames_from_a_directory_keyed_by_camera_and_deleted_once_sent(
    broker: EmbeddedBroker, topic_name: str, tmp_path: Path
) -> None:
    broker.create_topic(topic_name)
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    sent = {}
    for i in range(12):
        name = f"cam{i % 3}_{i:04d}.jpg"
        sent[name] = rng.bytes(100_000)
        (frames / name).write_bytes(sent[name])
    agent = IngestAgent(
        broker.bootstrap,
        topic_name,
        tmp_path / "state",
        sources=[DirWatch(frames, pattern="*.jpg", delete_sent=True)],
        key=r"name-regex:^(cam\d)_",
        producer_config=FAST,
    )
    with agent:
        wait_for(lambda: not any(frames.iterdir()), "every frame sent and deleted")
    rows = read_topic(broker.bootstrap, topic_name)
    assert sorted(v for _, v, _ in rows) == sorted(sent.values())
    by_value = {v: k for k, v, _ in rows}
    assert {name: by_value[data] for name, data in sent.items()} == {
        name: name[:4].encode() for name in sent
    }


def test_an_edge_model_result_travels_with_each_line(
    broker: EmbeddedBroker, topic_name: str, tmp_path: Path
) -> None:
    broker.create_topic(topic_name)
    log = tmp_path / "readings.log"
    log.write_bytes(b"1.5\n2\nnot a number\n4\n")
    edge = EdgeModel(
        CallableModel(lambda x: x[:, 0] > 1.8, outputs="hot", version="t1"),
        prepare=lambda values: np.array([[float(v)] for v in values], dtype=np.float32),
    )
    agent = IngestAgent(
        broker.bootstrap,
        topic_name,
        tmp_path / "state",
        sources=[LogTail(log)],
        edge=edge,
        producer_config=FAST,
    )
    with agent:
        wait_for(lambda: agent.progress.sent == 4, "four readings")
    rows = read_topic(broker.bootstrap, topic_name)
    assert [v for _, v, _ in rows] == [b"1.5", b"2", b"not a number", b"4"]
    results = [h.get("streamml-result") for _, _, h in rows]
    assert [orjson.loads(r)["hot"] for r in results if r] == [False, True, True]
    assert results[2] is None and b"ValueError" in rows[2][2]["streamml-error"]
    assert agent.status()["model_errors"] == 1


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_http_posts_are_spooled_then_sent(
    broker: EmbeddedBroker, topic_name: str, tmp_path: Path
) -> None:
    broker.create_topic(topic_name)
    http = HttpInput("127.0.0.1", 0)
    agent = IngestAgent(
        broker.bootstrap,
        topic_name,
        tmp_path / "state",
        http=http,
        key="json:device",
        producer_config=FAST,
    )
    with agent:
        base = f"http://127.0.0.1:{http.port}"
        batch = b'{"device": "d1", "t": 1}\n{"device": "d2", "t": 2}\n'
        assert _post(f"{base}/records?lines=1", batch) == (200, {"accepted": 2, "first_seq": 0})
        assert _post(f"{base}/records?key=cam9", b"\x89PNG...")[0] == 200
        assert _post(f"{base}/records", b"")[0] == 400
        wait_for(lambda: agent.progress.sent == 3, "three posted records")
        with urllib.request.urlopen(f"{base}/health", timeout=30) as answer:
            health = json.loads(answer.read())
    assert health["sent"] == 3 and health["broker"] == "up"
    rows = read_topic(broker.bootstrap, topic_name)
    assert [(k, v) for k, v, _ in rows] == [
        (b"d1", b'{"device": "d1", "t": 1}'),
        (b"d2", b'{"device": "d2", "t": 2}'),
        (b"cam9", b"\x89PNG..."),
    ]


class _Crash(BaseException):
    """Stands for the agent dying between the broker's acknowledgement and the commit."""


def test_records_delivered_but_never_committed_are_not_sent_again(
    broker: EmbeddedBroker, topic_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker.create_topic(topic_name, partitions=2)
    log = tmp_path / "app.log"
    log.write_bytes(_lines(0, 2000))

    def crash(self: Sender, blocks: list) -> None:
        raise _Crash

    monkeypatch.setattr(Sender, "_commit", crash)
    first = IngestAgent(
        broker.bootstrap,
        topic_name,
        tmp_path / "state",
        sources=[LogTail(log)],
        key="regex:user=(\\w+)",
        producer_config=FAST,
    )
    first.start()
    wait_for(lambda: first.error is not None, "the crash after delivery")
    first.stop()
    assert len(read_topic(broker.bootstrap, topic_name, 2)) == 2000  # delivered, not committed
    monkeypatch.undo()

    with open(log, "ab") as f:
        f.write(_lines(2000, 2500))
    second = IngestAgent(
        broker.bootstrap,
        topic_name,
        tmp_path / "state",
        sources=[LogTail(log)],
        key="regex:user=(\\w+)",
        producer_config=FAST,
    )
    with second:
        wait_for(lambda: second.progress.sent == 2500, "the 2,000 found in the topic, 500 new")
    values = sorted(v for _, v, _ in read_topic(broker.bootstrap, topic_name, 2))
    assert values == sorted(b"%d user=u%d" % (i, i % 5) for i in range(2500))
    assert second.progress.resent == 0
