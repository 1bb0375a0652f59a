"""End to end on Kafka: the light pipeline in streamml next to what users write by hand.

The workload, as a user would try it: JSON readings from 1,000 sensors on a
2-partition topic (keyed by sensor, so each sensor stays in one partition),
the sensors in a new random order every second → the mean of each sensor's
last 10 temperatures → an MLP 4→64→64→2 (ONNX Runtime, one thread) → the
reading with ``p_hot`` as JSON to a results topic, keyed by sensor. Every
contender reads the same topic on the embedded broker from the beginning
and writes to its own topic:

- **streamml**: ``kafka.source(frames=True)`` → ``featurize.rolling(last=10)``
  → ``infer`` → ``kafka.sink`` on one Bytewax worker, polars frames between
  the steps, the sink waiting for the broker's acknowledgements at every
  batch (at-least-once with recovery); and the same with
  ``confirm_each_batch=False``, which confirms delivery only at the end, as
  the two loops below do;
- **hand-batched loop**: the best a competent user writes without a
  framework — 5,000 messages per ``consume`` (its best; 20,000 is no
  faster for it), orjson, a deque per sensor, NumPy feature columns, one
  model call per batch, produce;
- **per-event microservice**: decode, update the deque, call the model and
  produce, once per event.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta, timezone
from pathlib import Path

import bytewax.operators as op
import numpy as np
import orjson
import polars as pl
from bytewax.dataflow import Dataflow, Stream
from bytewax.testing import run_main
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from streamml.operators import featurize
from streamml.operators.infer import infer

from benchmarks.harness import alternate, format_table
from streamml import kafka
from streamml.broker import EmbeddedBroker
from streamml.metrics import SWITCH_ENV
from streamml.models import OnnxModel
from streamml.serde import JsonSerde
from streamml.testing import produce_all

N_SENSORS = 1000
PARTITIONS = 2
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
FEATURES = ["temperature", "temperature_mean_last10", "vibration", "pressure"]
"""The MLP's input row."""

_FETCH = {
    "fetch.max.bytes": str(64 << 20),
    "max.partition.fetch.bytes": str(16 << 20),
}
_CONSUME = 5000
"""Messages per read of the hand-batched loop: its best (1M events, alternating: 5,000 gave
114-126k ev/s, 20,000 gave 112-113k; the loop's cost is per event, not per read)."""
_STREAMML_BATCH = 20_000
"""Messages per read (and rows per model call) for streamml: its best (1M events: 20,000
gave 259-266k ev/s, 10,000 241-258k, 5,000 207-216k; fewer broker round trips per event,
the sink waits for one acknowledgement per batch)."""
READING = {
    "sensor_id": pl.String,
    "ts": pl.Int64,
    "temperature": pl.Float64,
    "vibration": pl.Float64,
    "pressure": pl.Float64,
}
"""The readings' JSON schema: declared, streamml decodes without inferring types per batch."""


def build_mlp() -> bytes:
    """MLP 4→64→64→2 on [temperature, mean of last 10, vibration, pressure], as ONNX.

    Trained in a child process: scikit-learn and skl2onnx leave about 100,000
    objects on the heap of a process that imports them, and every full
    garbage collection during a run scans them all. A deployed pipeline
    loads its ONNX file and never imports a training library, so the
    benchmark process does not either.
    """
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.run(
        [sys.executable, "-c", _TRAIN], cwd=root, env=env, check=True, stdout=subprocess.PIPE
    )
    return child.stdout


_TRAIN = (
    "import sys; from benchmarks.pipeline import _train_mlp; sys.stdout.buffer.write(_train_mlp())"
)


def _train_mlp() -> bytes:
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(1)
    x = rng.normal([60, 60, 2, 5], [3, 1, 0.3, 0.1], size=(5000, 4)).astype(np.float32)
    y = (x[:, 0] - x[:, 1] > 2.0).astype(np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=50, random_state=0).fit(x, y)
    return to_onnx(mlp, x[:1], options={id(mlp): {"zipmap": False}}).SerializeToString()


def _readings(n: int) -> list[tuple[bytes, bytes]]:
    """``n`` keyed JSON readings: every second each sensor once, in a new random order."""
    rng = np.random.default_rng(2)
    temps = rng.normal(60, 3, size=n)
    vibration = rng.normal(2, 0.3, size=n)
    names = [f"sensor-{i:04d}" for i in range(N_SENSORS)]
    out = []
    for second in range((n + N_SENSORS - 1) // N_SENSORS):
        ms = int((T0 + timedelta(seconds=second)).timestamp() * 1000)
        for s in rng.permutation(N_SENSORS)[: n - second * N_SENSORS].tolist():
            i = len(out)
            value = {
                "sensor_id": names[s],
                "ts": ms,
                "temperature": float(temps[i]),
                "vibration": float(vibration[i]),
                "pressure": 5.0,
            }
            out.append((names[s].encode(), orjson.dumps(value)))
    return out


def _consumer(bootstrap: str, topic: str) -> tuple[Consumer, int]:
    """A consumer assigned every partition of ``topic`` from offset 0, and their number."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "bench",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
            **kafka.SOURCE_DEFAULTS,  # the same fetch settings as streamml's source: a fair race
            **_FETCH,
        }
    )
    parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    return consumer, len(parts)


def _producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})


def per_event_service(bootstrap: str, topic: str, out_topic: str, model_bytes: bytes) -> int:
    """Consume, decode, featurize, score and produce one event at a time."""
    session = OnnxModel(model_bytes, intra_op_threads=1).session
    name = session.get_inputs()[0].name
    (consumer, parts), producer = _consumer(bootstrap, topic), _producer(bootstrap)
    last10: dict[str, deque] = {}
    n = ended = 0
    while ended < parts:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                ended += 1
                continue
            raise RuntimeError(msg.error())
        r = orjson.loads(msg.value())
        temps = last10.get(r["sensor_id"])
        if temps is None:
            temps = last10[r["sensor_id"]] = deque(maxlen=10)
        temps.append(r["temperature"])
        x = np.array(
            [[r["temperature"], sum(temps) / len(temps), r["vibration"], r["pressure"]]],
            dtype=np.float32,
        )
        r["p_hot"] = float(session.run(None, {name: x})[1][0, 1])
        producer.produce(out_topic, orjson.dumps(r), msg.key())
        producer.poll(0)
        n += 1
    producer.flush()
    consumer.close()
    return n


def hand_batched(bootstrap: str, topic: str, out_topic: str, model_bytes: bytes) -> int:
    """The same work, 5,000 events per decode, feature build, model call and produce loop."""
    session = OnnxModel(model_bytes, intra_op_threads=1).session
    name = session.get_inputs()[0].name
    (consumer, parts), producer = _consumer(bootstrap, topic), _producer(bootstrap)
    produce, loads, dumps = producer.produce, orjson.loads, orjson.dumps
    last10: dict[str, deque] = {}
    n = ended = 0
    while ended < parts:
        good = []
        for m in consumer.consume(_CONSUME, timeout=1.0):
            if m.error() is None:
                good.append(m)
            elif m.error().code() == KafkaError._PARTITION_EOF:
                ended += 1
            else:
                raise RuntimeError(m.error())
        if not good:
            continue
        readings = [loads(m.value()) for m in good]
        temps = [r["temperature"] for r in readings]
        means = []
        for r, t in zip(readings, temps):
            window = last10.get(r["sensor_id"])
            if window is None:
                window = last10[r["sensor_id"]] = deque(maxlen=10)
            window.append(t)
            means.append(sum(window) / len(window))
        x = np.empty((len(readings), 4), dtype=np.float32)
        x[:, 0] = temps
        x[:, 1] = means
        x[:, 2] = [r["vibration"] for r in readings]
        x[:, 3] = [r["pressure"] for r in readings]
        p_hot = session.run(None, {name: x})[1][:, 1].tolist()
        for m, r, p in zip(good, readings, p_hot):
            r["p_hot"] = p
            produce(out_topic, dumps(r), m.key())
        producer.poll(0)
        n += len(good)
    producer.flush()
    consumer.close()
    return n


def _drop_features(frame: pl.DataFrame) -> pl.DataFrame:
    """The reading and ``p_hot``, as the loops write it."""
    return frame.drop("temperature_mean_last10")


def light_results(
    flow: Dataflow,
    bootstrap: str,
    topic: str,
    model: bytes | str,
    *,
    tail: bool = False,
    max_wait_ms: float = 5.0,
    shards: int = 1,
    sent_field: bool = False,
) -> Stream[pl.DataFrame]:
    """The light pipeline's steps from ``topic`` to the scored readings (with ``p_hot``).

    What every streamml contender shares, whatever sinks it adds; see
    :func:`streamml_flow` for the arguments.
    """
    src = kafka.source(
        "in",
        flow,
        brokers=bootstrap,
        topics=topic,
        value_serde=JsonSerde(schema={**READING, "sent": pl.Float64} if sent_field else READING),
        tail=tail,
        batch_size=_STREAMML_BATCH,
        add_config=_FETCH,
        frames=True,
    )
    feats = featurize.rolling(
        "last10",
        src.oks,
        key="sensor_id",
        timestamp="ts",
        last=10,
        fields=["temperature"],
        aggregates=["mean"],
        shards=shards,
    )
    scored = infer(
        "mlp",
        feats.oks,
        OnnxModel(model, intra_op_threads=1),
        inputs=FEATURES,
        outputs={"p_hot": ("probabilities", 1)},
        version_field=None,
        max_batch=_STREAMML_BATCH,
        max_wait=timedelta(milliseconds=max_wait_ms),
    )
    return op.map("reading_and_score", scored.oks, _drop_features)


def streamml_flow(
    bootstrap: str,
    topic: str,
    out_topic: str,
    model: bytes | str,
    *,
    tail: bool = False,
    max_wait_ms: float = 5.0,
    shards: int = 1,
    confirm_each_batch: bool = True,
    sent_field: bool = False,
) -> Dataflow:
    """The light pipeline as a streamml dataflow (``model``: ONNX bytes or a path).

    ``sent_field=True`` keeps the readings' ``sent`` field (the producer's
    wall-clock ms), which the latency benchmark reads back from the results.

    ``confirm_each_batch=False`` produces the results without waiting for the
    broker's acknowledgements at each batch (failures still stop the flow),
    as the hand-written loops do; the default waits (at-least-once).

    Runs under ``python -m bytewax.run`` too, for several workers or processes::

        python -m bytewax.run "benchmarks.pipeline:streamml_flow('127.0.0.1:9092', 'in', 'out', 'mlp.onnx', shards=2)" -w 2
    """
    flow = Dataflow("light_pipeline")
    results = light_results(
        flow,
        bootstrap,
        topic,
        model,
        tail=tail,
        max_wait_ms=max_wait_ms,
        shards=shards,
        sent_field=sent_field,
    )
    kafka.sink(
        "out",
        results,
        brokers=bootstrap,
        topic=out_topic,
        value_serde=JsonSerde(),
        key="sensor_id",
        confirm_each_batch=confirm_each_batch,
    )
    return flow


@contextmanager
def uncounted() -> Iterator[None]:
    """Flows built inside have no counting steps (``STREAMML_METRICS=0``)."""
    saved = os.environ.get(SWITCH_ENV)
    os.environ[SWITCH_ENV] = "0"
    try:
        yield
    finally:
        if saved is None:
            del os.environ[SWITCH_ENV]
        else:
            os.environ[SWITCH_ENV] = saved


def _check_same_scores(bootstrap: str, topics: list[str]) -> None:
    """Every contender wrote a ``p_hot`` for each reading, the same up to float32 rounding."""
    from streamml.testing import consume_all

    def scores(topic: str) -> np.ndarray:
        rows = sorted(
            (r["sensor_id"], r["ts"], r["p_hot"])
            for r in map(orjson.loads, (m.value for m in consume_all(bootstrap, topic)))
        )
        return np.array([p for _, _, p in rows])

    reference = scores(topics[0])
    for topic in topics[1:]:
        other = scores(topic)
        if len(other) != len(reference) or not np.allclose(other, reference, atol=1e-5):
            raise AssertionError(f"{topic} and {topics[0]} disagree on the scores")


def main(
    quick: bool = False, events: int | None = None, rounds: int = 3, metrics: str = "on"
) -> dict:
    """Run every contender, alternating, on the same readings.

    ``metrics="off"`` builds streamml's flows without counting
    (``STREAMML_METRICS=0``); ``"both"`` adds the uncounted flow as a
    contender of its own, next to the counted one.
    """
    if metrics not in ("on", "off", "both"):
        raise ValueError(f"metrics must be on, off or both; got {metrics!r}")
    n = events or (50_000 if quick else 200_000)
    model_bytes = build_mlp()
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap
        broker.create_topic("readings", partitions=PARTITIONS)
        print(
            f"producing {n:,} JSON readings from {N_SENSORS:,} sensors in random order "
            f"to {PARTITIONS} partitions ...",
            flush=True,
        )
        produce_all(bootstrap, "readings", _readings(n))
        outputs = iter(range(10**6))
        written: dict[str, str] = {}

        def fresh_topic(contender: str) -> str:
            name = f"results-{next(outputs)}"
            broker.create_topic(name)
            written[contender] = name
            return name

        def run_streamml(confirm_each_batch: bool = True, counted: bool = metrics != "off") -> int:
            label = "streamml" if confirm_each_batch else "streamml-end"
            out = fresh_topic(label if counted else f"{label}-uncounted")
            with nullcontext() if counted else uncounted():
                flow = streamml_flow(
                    bootstrap, "readings", out, model_bytes, confirm_each_batch=confirm_each_batch
                )
            run_main(flow)
            return n

        contenders = {
            "streamml (1 worker)": run_streamml,
            **(
                {"streamml (1 worker), metrics off": lambda: run_streamml(counted=False)}
                if metrics == "both"
                else {}
            ),
            # The loops below confirm delivery only at the end; this is the same trade.
            "streamml, delivery confirmed at the end": lambda: run_streamml(False),
            "hand-batched loop": lambda: hand_batched(
                bootstrap, "readings", fresh_topic("hand"), model_bytes
            ),
            "per-event microservice": lambda: per_event_service(
                bootstrap, "readings", fresh_topic("per-event"), model_bytes
            ),
        }
        print(f"{rounds} alternating rounds of {len(contenders)} contenders", flush=True)
        start = time.perf_counter()
        results = alternate(contenders, rounds=rounds, warmup=False)
        print(
            format_table(
                f"light pipeline end to end, {n:,} events, {PARTITIONS} partitions, "
                "keys in random order (JSON → last-10 mean → MLP → JSON), events/s",
                results,
                "ev/s",
            )
        )
        print(f"({time.perf_counter() - start:.0f} s)")
        _check_same_scores(bootstrap, list(written.values()))
        print("every contender wrote the same scores", flush=True)
    return {"light_pipeline": [m.as_dict() for m in results], "events": n}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline",
        description="The light pipeline end to end: streamml next to hand-written loops.",
    )
    parser.add_argument("--events", type=int, default=200_000, help="readings (default 200,000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument(
        "--metrics",
        choices=("on", "off", "both"),
        default="on",
        help="streamml's counting (STREAMML_METRICS): on (default), off, or both as two contenders",
    )
    args = parser.parse_args()
    main(events=args.events, rounds=args.rounds, metrics=args.metrics)
