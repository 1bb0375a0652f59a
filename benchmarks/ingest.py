"""``streamml ingest`` into the embedded broker, next to a plain producer loop reading the same input.

- log lines: a file of ~100-byte lines tailed by the agent (``LogTail``), and
  the baseline: a confluent-kafka producer loop that reads the same file line by
  line and produces each, then flushes;
- frames: a directory of 100 kB files watched by the agent (``DirWatch``, key =
  file name), and the baseline: a loop that lists the directory, reads each
  file and produces it with its name as key, then flushes.

Both sides use the same producer settings (lz4, ``linger.ms`` 20, 1 MB
batches, idempotence) and write to a fresh topic each round. A round is timed
from the start (the agent built and started, or the baseline's producer
created) until the broker has confirmed every record. The agent does more: it
writes every record to its on-disk spool (``fsync`` per block), adds its
``streamml-ingest`` header and commits positions after each confirmation; the
baseline loses records if the broker is down and sends them again after a
restart. A third contender is the agent with ``--no-fsync`` (its spool then
survives a killed agent, not a power cut), to show what the ``fsync`` costs.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from confluent_kafka import Producer

from benchmarks.harness import alternate, format_table
from streamml.broker import EmbeddedBroker
from streamml.ingest import DirWatch, IngestAgent, LogTail, Source
from streamml.ingest.sender import PRODUCER_DEFAULTS

SETTINGS = {k: v for k, v in PRODUCER_DEFAULTS.items() if k != "delivery.report.only.error"}


def _write_log(path: Path, n: int) -> None:
    with open(path, "wb") as f:
        for start in range(0, n, 10_000):
            f.write(
                b"".join(
                    b"2026-12-05T20:00:00.%06dZ INFO pump-%03d temperature=%0.2f vibration=2.0 ok\n"
                    % (i, i % 500, 60 + (i % 17) / 10)
                    for i in range(start, min(n, start + 10_000))
                )
            )


def _write_frames(folder: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(n):
        (folder / f"cam{i % 4}_{i:06d}.jpg").write_bytes(rng.bytes(size))


def _baseline_lines(bootstrap: str, topic: str, log: Path) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, **SETTINGS})
    n = 0
    with open(log, "rb") as f:
        for line in f:
            while True:
                try:
                    producer.produce(topic, line[:-1])
                    break
                except BufferError:
                    producer.poll(0.01)
            n += 1
    assert producer.flush(60) == 0, "baseline: records left undelivered"
    return n


def _baseline_frames(bootstrap: str, topic: str, folder: Path) -> int:
    producer = Producer({"bootstrap.servers": bootstrap, **SETTINGS})
    names = sorted(p.name for p in folder.iterdir())
    for name in names:
        data = (folder / name).read_bytes()
        while True:
            try:
                producer.produce(topic, data, name.encode())
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(60) == 0, "baseline: records left undelivered"
    return len(names)


def _agent(bootstrap: str, topic: str, source: Source, n: int, key: str, fsync: bool = True) -> int:
    state = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        agent = IngestAgent(
            bootstrap, topic, state, sources=[source], key=key, poll_interval=0.02, fsync=fsync
        )
        with agent:
            while agent.progress.sent < n:
                if agent.error is not None:
                    raise agent.error
                time.sleep(0.005)
        return agent.progress.sent
    finally:
        shutil.rmtree(state)


def main(quick: bool = False) -> dict:
    lines = 200_000 if quick else 1_000_000
    frames = 200 if quick else 1_000
    rounds = 3
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-input-"))
    topics = iter(range(10**6))
    try:
        log = work / "app.log"
        _write_log(log, lines)
        folder = work / "frames"
        _write_frames(folder, frames, 100_000)
        with EmbeddedBroker() as broker:
            bootstrap = broker.bootstrap

            def fresh() -> str:
                name = f"ingest-{next(topics)}"
                broker.create_topic(name)
                return name

            size = log.stat().st_size / lines
            print(
                f"{lines:,} log lines of ~{size:.0f} bytes, {rounds} alternating rounds", flush=True
            )
            line_results = alternate(
                {
                    "streamml ingest --tail": lambda: _agent(
                        bootstrap, fresh(), LogTail(log), lines, "none"
                    ),
                    "confluent-kafka loop over the file": lambda: _baseline_lines(
                        bootstrap, fresh(), log
                    ),
                    "streamml ingest --tail --no-fsync": lambda: _agent(
                        bootstrap, fresh(), LogTail(log), lines, "none", fsync=False
                    ),
                },
                rounds=rounds,
            )
            print(format_table("log lines", line_results, "lines/s"))
            print(f"{frames:,} frames of 100 kB, {rounds} alternating rounds", flush=True)
            frame_results = alternate(
                {
                    "streamml ingest --dir": lambda: _agent(
                        bootstrap, fresh(), DirWatch(folder), frames, "name"
                    ),
                    "confluent-kafka loop over the directory": lambda: _baseline_frames(
                        bootstrap, fresh(), folder
                    ),
                    "streamml ingest --dir --no-fsync": lambda: _agent(
                        bootstrap, fresh(), DirWatch(folder), frames, "name", fsync=False
                    ),
                },
                rounds=rounds,
            )
            print(format_table("frames", frame_results, "frames/s"))
    finally:
        shutil.rmtree(work)
    ratio_lines = line_results[0].median / line_results[1].median
    ratio_frames = frame_results[0].median / frame_results[1].median
    print(
        f"targets: >= 100,000 lines/s ({line_results[0].median:,.0f}, {ratio_lines:.2f}x the loop), "
        f">= 200 frames/s ({frame_results[0].median:,.0f}, {ratio_frames:.2f}x the loop)"
    )
    return {
        "log_lines": [m.as_dict() for m in line_results],
        "frames_100kB": [m.as_dict() for m in frame_results],
        "targets": [
            {
                "what": "log lines/s",
                "target": 100_000,
                "agent_median": round(line_results[0].median),
                "ratio_to_loop": round(ratio_lines, 3),
            },
            {
                "what": "frames/s (100 kB)",
                "target": 200,
                "agent_median": round(frame_results[0].median),
                "ratio_to_loop": round(ratio_frames, 3),
            },
        ],
    }


if __name__ == "__main__":
    main()
