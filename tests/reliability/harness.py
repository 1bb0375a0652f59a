"""What the reliability tests share: input data, the model, running the flow as a process, reading results."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from streamml.broker import EmbeddedBroker
from streamml.testing import consume_all, produce_all
from tests.reliability.flows import T0, Topics, avro_serde

__all__ = [
    "Inputs",
    "Outputs",
    "FlowProcess",
    "TopicWatch",
    "build_model",
    "create_topics",
    "generate_inputs",
    "read_outputs",
    "free_port",
    "recovery_epochs",
]

ROOT = Path(__file__).resolve().parents[2]
STEP = timedelta(seconds=60)


def build_model(path: Path, *, seed: int = 0) -> Path:
    """A small gradient-boosted regressor of "how anomalous" from |z| scores, as ONNX."""
    from skl2onnx import to_onnx
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(seed)
    x = np.abs(rng.normal(0, 2.5, size=(4000, 2))).astype(np.float32)
    y = np.sqrt((x**2).sum(axis=1))
    model = GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=seed).fit(x, y)
    path.write_bytes(to_onnx(model, x[:1]).SerializeToString())
    return path


@dataclass(frozen=True)
class Inputs:
    """What was produced to the input topics, with what each record should become."""

    good: int
    bad: dict[str, int]
    late: int
    kind_of: dict[bytes, str]
    """The kind of each bad payload (``garbage_bytes``, ``nan``, ...)."""

    @property
    def total(self) -> int:
        return self.good + sum(self.bad.values()) + self.late


def generate_inputs(
    sensors: int, per_sensor: int, *, bad_share: float = 0.0, late_share: float = 0.0, seed: int = 1
) -> tuple[list[tuple[bytes, bytes]], Inputs]:
    """Readings of ``sensors`` sensors, one a minute each, with spikes, bad records and late ones.

    Each sensor's readings are in time order (the topic is keyed by sensor,
    so each sensor's order is kept); a late record repeats an old timestamp
    of its sensor. Bad records are, in turn: garbage bytes, an unknown schema
    id, a NaN temperature, a missing vibration, a timestamp in 2200.
    """
    rng = np.random.default_rng(seed)
    serde = avro_serde()
    good_values = []
    for s in range(sensors):
        sid = f"sensor-{s:03d}"
        temps = 20 + s % 7 + rng.normal(0, 0.5, per_sensor)
        vibs = 1 + rng.normal(0, 0.1, per_sensor)
        for start in rng.choice(np.arange(15, per_sensor - 5), size=max(1, per_sensor // 40)):
            temps[start : start + 3] += 10  # a 3-minute spike: one anomaly window
        for i in range(per_sensor):
            good_values.append(
                {
                    "sensor_id": sid,
                    "seq": i,
                    "ts": T0 + i * STEP,
                    "temperature": float(temps[i]),
                    "vibration": float(vibs[i]),
                }
            )
    # interleave sensors by time, as a fleet would send them
    good_values.sort(key=lambda v: (v["ts"], v["sensor_id"]))
    encoded = serde.encode_batch(good_values)
    messages: list[tuple[bytes, bytes]] = [
        (v["sensor_id"].encode(), payload) for v, payload in zip(good_values, encoded)
    ]
    kinds = ("garbage_bytes", "unknown_schema_id", "nan", "missing_field", "absurd_timestamp")
    n_bad = round(len(good_values) * bad_share)
    n_late = round(len(good_values) * late_share)
    bad: Counter[str] = Counter()
    kind_of: dict[bytes, str] = {}
    extra: list[tuple[int, tuple[bytes, bytes]]] = []
    template = good_values[len(good_values) // 2]
    for j in range(n_bad):
        kind = kinds[j % len(kinds)]
        at = int(rng.integers(1, len(messages)))
        v = dict(good_values[at])
        key = v["sensor_id"].encode()
        if kind == "garbage_bytes":
            payload = rng.bytes(int(rng.integers(1, 40)))
        elif kind == "unknown_schema_id":
            payload = b"\x00\x00\x0f\x42\x3f" + serde.encode_batch([template])[0][5:]
        elif kind == "nan":
            payload = serde.encode_batch([{**v, "seq": -1, "temperature": math.nan}])[0]
        elif kind == "missing_field":
            payload = serde.encode_batch([{**v, "seq": -1, "vibration": None}])[0]
        else:
            payload = serde.encode_batch([{**v, "seq": -1, "ts": T0.replace(year=2200)}])[0]
        bad[kind] += 1
        kind_of[payload] = kind
        extra.append((at, (key, payload)))
    for _ in range(n_late):
        at = int(rng.integers(len(messages) // 2, len(messages)))
        v = dict(good_values[at])
        old = {**v, "seq": -2, "ts": v["ts"] - 5 * STEP}  # 5 minutes behind its sensor
        extra.append((at + 1, (v["sensor_id"].encode(), serde.encode_batch([old])[0])))
    for at, msg in sorted(extra, key=lambda p: p[0], reverse=True):
        messages.insert(at, msg)
    return messages, Inputs(len(good_values), dict(bad), n_late, kind_of)


def create_topics(broker: EmbeddedBroker, topics: Topics, *, partitions: int = 4) -> None:
    broker.create_topic(topics.readings, partitions=partitions)
    broker.create_topic(topics.sites, partitions=1)
    broker.create_topic(topics.models, partitions=1)
    for name in topics.outputs():
        broker.create_topic(name, partitions=partitions)


def create_outputs(broker: EmbeddedBroker, topics: Topics, *, partitions: int = 4) -> None:
    for name in topics.outputs():
        broker.create_topic(name, partitions=partitions)


def produce_inputs(
    bootstrap: str, topics: Topics, messages: Sequence[tuple[bytes, bytes]], sensors: int
) -> None:
    produce_all(bootstrap, topics.readings, messages)
    # every sensor but each fifth has a site row; those get the join's default
    rows = [
        (f"sensor-{s:03d}".encode(), orjson.dumps({"site": f"hall-{s % 3}"}))
        for s in range(sensors)
        if s % 5
    ]
    produce_all(bootstrap, topics.sites, rows)


@dataclass(frozen=True)
class Outputs:
    """Everything one run wrote: JSON values of scores, windows and dead letters."""

    scores: list[dict]
    windows: list[dict]
    dead_letters: list[dict]
    score_partitions: list[int]

    def distinct(self, name: str) -> set[str]:
        return {_canon(v) for v in getattr(self, name)}

    def duplicates(self, name: str) -> int:
        return len(getattr(self, name)) - len(self.distinct(name))

    def dead_letter_identities(self) -> Counter:
        """Dead letters without their wall-clock ``time`` field (which a replay changes)."""
        return Counter(
            _canon({k: v for k, v in d.items() if k != "time"}) for d in self.dead_letters
        )

    def per_key_sequences(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for s in self.scores:
            out.setdefault(s["sensor_id"], []).append(s["seq"])
        return out


def _canon(value: dict) -> str:
    return json.dumps(value, sort_keys=True)


def read_outputs(bootstrap: str, topics: Topics) -> Outputs:
    # The three topics are read at the same time: consume_all spends its 0.6 s per topic
    # waiting on polls for each partition's end, and the waits overlap (1.8 s -> 0.6 s).
    with ThreadPoolExecutor(3) as pool:
        scores, windows, dead_letters = pool.map(partial(consume_all, bootstrap), topics.outputs())
    return Outputs(
        scores=[orjson.loads(m.value) for m in scores],
        windows=[orjson.loads(m.value) for m in windows],
        dead_letters=[orjson.loads(m.value) for m in dead_letters],
        score_partitions=[m.partition for m in scores],
    )


class TopicWatch:
    """Counts a topic's messages, and repeated values, as they arrive (polled without blocking)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int = 4) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "watch", "enable.auto.commit": False}
        )
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)]
        )
        self.values: Counter[bytes] = Counter()
        self.seen = 0

    def count(self) -> int:
        for msg in self._consumer.consume(10_000, timeout=0.02):
            if msg.error() is None:
                self.values[msg.value()] += 1
                self.seen += 1
        return self.seen

    @property
    def duplicates(self) -> int:
        return self.seen - len(self.values)

    def parsed(self) -> list[dict]:
        return [orjson.loads(v) for v, n in self.values.items() for _ in range(n)]

    def close(self) -> None:
        self._consumer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FlowProcess:
    """The reliability flow run by ``python -m bytewax.run`` in its own process."""

    def __init__(
        self,
        bootstrap: str,
        model: Path,
        inputs: str,
        outputs: str,
        *,
        log: Path,
        recovery: Path | None = None,
        snapshot_s: int = 1,
        workers: int = 1,
        process_id: int | None = None,
        addresses: Sequence[str] = (),
        **flow_kwargs: object,
    ) -> None:
        args = ", ".join(
            [repr(bootstrap), repr(str(model)), repr(inputs), repr(outputs)]
            + [f"{k}={v!r}" for k, v in flow_kwargs.items()]
        )
        cmd = [sys.executable, "-m", "bytewax.run", f"tests.reliability.flows:build({args})"]
        if recovery is not None:
            cmd += ["-r", str(recovery), "-s", str(snapshot_s), "-b", "0"]
        if workers > 1:
            cmd += ["-w", str(workers)]
        if process_id is not None:
            cmd += ["-i", str(process_id), "-a", ";".join(addresses)]
        self.log = log
        self._log_file = log.open("ab")
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        self.started = time.monotonic()

    def wait(self, timeout: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log_file.close()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log_file.close()

    def running(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def kill_when(proc: FlowProcess, watch: TopicWatch, target: int, *, timeout: float = 90) -> dict:
    """SIGKILL ``proc`` once ``watch`` has counted ``target`` messages; how long output took to start."""
    before = watch.count()
    first_output_s = None
    deadline = time.monotonic() + timeout
    while (n := watch.count()) < target:
        if first_output_s is None and n > before:
            first_output_s = round(time.monotonic() - proc.started, 2)
        if not proc.running():
            raise AssertionError(f"the flow ended before {target} outputs:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {target} outputs within {timeout:g} s:\n{proc.tail()}")
        time.sleep(0.01)
    proc.kill()
    return {"outputs_before": before, "killed_at": n, "first_output_s": first_output_s}


def recovery_epochs(recovery: Path) -> tuple[int, int]:
    """The running flow's epoch and its last committed epoch, read from its recovery store.

    The epoch is the highest worker frontier (stored when an epoch closes, so
    the epoch in progress may be one more); the committed epoch is the lowest
    over the partitions of the last epoch whose snapshots are all stored (a
    resume starts at the next one). ``(-1, -1)`` until the first commit, so it
    can be polled under :func:`wait_until`.
    """
    epoch = resume = -1
    for part in sorted(recovery.glob("*.sqlite3")):
        try:
            with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=10)) as db:
                front = db.execute("SELECT MAX(worker_frontier) FROM fronts").fetchone()[0]
                commit = db.execute("SELECT MAX(commit_epoch) FROM commits").fetchone()[0]
        except sqlite3.OperationalError:  # locked by the writer
            return -1, -1
        if front is None or commit is None:
            return -1, -1
        epoch = max(epoch, front)
        resume = commit if resume < 0 else min(resume, commit)
    return epoch, resume


def wait_until(
    condition: Callable[[], bool], *, timeout: float, every: float = 0.1, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what or condition}")
        time.sleep(every)
