"""End to end on Kafka: the light pipeline in streamml next to what users write by hand.

The light pipeline: JSON readings in, keyed by sensor → the mean of the
sensor's last 10 temperatures → an MLP 4→64→64→2 (ONNX Runtime, one thread)
→ JSON results out. Every contender reads the same topic on the embedded
broker from the beginning and writes its results to its own topic:

- **streamml**: ``kafka.source`` → ``featurize.rolling`` → ``infer`` → ``kafka.sink``
  on one Bytewax worker, the sink waiting for the broker's acknowledgements
  at every batch (at-least-once with recovery); and the same with
  ``confirm_each_batch=False``, which confirms delivery only at the end, as
  the two loops below do;
- **per-event microservice**: a confluent-kafka consumer loop that decodes,
  updates a deque, calls the model and produces, once per event;
- **hand-batched loop**: the best a user could write without a framework —
  consume 1,000 at a time, orjson, one model call per batch, produce.

Readings come once per second per sensor, in order, so "the last 10
temperatures" and "the last 10 seconds" are the same window.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from collections import deque
from datetime import datetime, timedelta, timezone
from operator import itemgetter
from pathlib import Path

import bytewax.operators as op
import numpy as np
import orjson
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from streamml.operators import featurize
from streamml.operators.infer import infer

from benchmarks.harness import alternate, format_table
from streamml import kafka
from streamml.broker import EmbeddedBroker
from streamml.models import OnnxModel
from streamml.serde import JsonSerde
from streamml.testing import produce_all

N_SENSORS = 1000
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
_FETCH = {
    "fetch.max.bytes": str(64 << 20),
    "max.partition.fetch.bytes": str(16 << 20),
}


def build_mlp() -> bytes:
    """MLP 4→64→64→2 on [temperature, mean of last 10, vibration, pressure], as ONNX.

    Trained in a child process: scikit-learn and skl2onnx leave about 100,000
    objects on the heap of a process that imports them, and every full
    garbage collection during a run scans them all (a streamml run makes
    about 17 per 200,000 events; with them on the heap it ran at ~60k ev/s
    instead of ~80k here). A deployed pipeline loads its ONNX file and never
    imports a training library, so the benchmark process does not either.
    """
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.run(
        [sys.executable, "-c", _TRAIN],
        cwd=root,
        env=env,
        check=True,
        stdout=subprocess.PIPE,
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
    rng = np.random.default_rng(2)
    temps = rng.normal(60, 3, size=n)
    out = []
    for i in range(n):
        sensor = f"sensor-{i % N_SENSORS:04d}"
        ms = int((T0 + timedelta(seconds=i // N_SENSORS)).timestamp() * 1000)
        value = {
            "sensor_id": sensor,
            "ts": ms,
            "temperature": float(temps[i]),
            "vibration": 2.0,
            "pressure": 5.0,
        }
        out.append((sensor.encode(), orjson.dumps(value)))
    return out


def _consumer(bootstrap: str, topic: str) -> Consumer:
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
    consumer.assign([TopicPartition(topic, 0, 0)])
    return consumer


def per_event_service(bootstrap: str, topic: str, out_topic: str, model_bytes: bytes) -> int:
    """Consume, decode, featurize, score and produce one event at a time."""
    model = OnnxModel(model_bytes, intra_op_threads=1)
    session, name = model.session, model.session.get_inputs()[0].name
    consumer, producer = (
        _consumer(bootstrap, topic),
        Producer({"bootstrap.servers": bootstrap, "linger.ms": 5}),
    )
    last10: dict[str, deque] = {}
    n = 0
    while True:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                break
            raise RuntimeError(msg.error())
        reading = orjson.loads(msg.value())
        temps = last10.setdefault(reading["sensor_id"], deque(maxlen=10))
        temps.append(reading["temperature"])
        x = np.array(
            [
                [
                    reading["temperature"],
                    sum(temps) / len(temps),
                    reading["vibration"],
                    reading["pressure"],
                ]
            ],
            dtype=np.float32,
        )
        proba = session.run(None, {name: x})[1][0]
        producer.produce(out_topic, orjson.dumps({**reading, "p_hot": float(proba[1])}), msg.key())
        producer.poll(0)
        n += 1
    producer.flush()
    consumer.close()
    return n


def hand_batched(bootstrap: str, topic: str, out_topic: str, model_bytes: bytes) -> int:
    """The same work, 1,000 events per decode, model call and produce loop."""
    model = OnnxModel(model_bytes, intra_op_threads=1)
    session, name = model.session, model.session.get_inputs()[0].name
    consumer, producer = (
        _consumer(bootstrap, topic),
        Producer({"bootstrap.servers": bootstrap, "linger.ms": 5}),
    )
    last10: dict[str, deque] = {}
    n, done = 0, False
    while not done:
        msgs = consumer.consume(1000, timeout=1.0)
        good = []
        for m in msgs:
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    done = True
                    continue
                raise RuntimeError(m.error())
            good.append(m)
        if not good:
            continue
        readings = [orjson.loads(m.value()) for m in good]
        x = np.empty((len(readings), 4), dtype=np.float32)
        for i, r in enumerate(readings):
            temps = last10.setdefault(r["sensor_id"], deque(maxlen=10))
            temps.append(r["temperature"])
            x[i] = (r["temperature"], sum(temps) / len(temps), r["vibration"], r["pressure"])
        proba = session.run(None, {name: x})[1][:, 1]
        for m, r, p in zip(good, readings, proba.tolist()):
            r["p_hot"] = p
            producer.produce(out_topic, orjson.dumps(r), m.key())
        producer.poll(0)
        n += len(good)
    producer.flush()
    consumer.close()
    return n


_features = itemgetter("temperature", "temperature_mean_10s", "vibration", "pressure")
"""The MLP's input row; ``infer`` stacks a batch's rows into one float32 matrix."""


def _vector(batch: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Each event with its MLP input row as a ``features`` field (benchmarks.scaling's flow)."""
    cols = np.array(
        [
            (e["temperature"], e["temperature_mean_10s"], e["vibration"], e["pressure"])
            for _, e in batch
        ],
        dtype=np.float32,
    ).reshape(len(batch), 4)
    return [(k, {**e, "features": v}) for (k, e), v in zip(batch, cols)]


def _result(event: dict, outputs: dict) -> dict:
    """The reading with its rolling mean and ``p_hot`` (as the loops: the reading and ``p_hot``)."""
    return {**event, "p_hot": outputs["probabilities"][1]}


def _keyed(records: list) -> list[tuple[str, dict]]:
    return [(r.value["sensor_id"], r.value) for r in records]


def _reading_time(event: dict) -> datetime:
    return datetime.fromtimestamp(event["ts"] / 1000, _UTC)  # tz by position: faster


_UTC = timezone.utc


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
) -> Dataflow:
    """The light pipeline as a streamml dataflow (``model``: ONNX bytes or a path).

    ``confirm_each_batch=False`` produces the results without waiting for the
    broker's acknowledgements at each batch (failures still stop the flow),
    as the hand-written loops do; the default waits (at-least-once).

    Runs under ``python -m bytewax.run`` too, for several workers or processes::

        python -m bytewax.run "benchmarks.pipeline:streamml_flow('127.0.0.1:9092', 'in', 'out', 'mlp.onnx', shards=2)" -w 2
    """
    model = OnnxModel(model, intra_op_threads=1)
    flow = Dataflow("light_pipeline")
    src = kafka.source(
        "in",
        flow,
        brokers=bootstrap,
        topics=topic,
        value_serde=JsonSerde(),
        tail=tail,
        batch_size=2000,
        add_config=_FETCH,
    )
    keyed = op.flat_map_batch("key", src.oks, _keyed)
    feats = featurize.rolling(
        "last10",
        keyed,
        timestamp=_reading_time,
        window=timedelta(seconds=10),
        fields=["temperature"],
        aggregates=["mean"],
        shards=shards,
    )
    scored = infer(
        "mlp",
        feats.oks,
        model,
        inputs=_features,
        outputs=_result,
        version_field=None,
        max_batch=1024,
        max_wait=timedelta(milliseconds=max_wait_ms),
        shards=shards,
    )
    kafka.sink(
        "out",
        scored.oks,
        brokers=bootstrap,
        topic=out_topic,
        value_serde=JsonSerde(),
        key=itemgetter(0),  # C getters: no Python call per event
        value=itemgetter(1),
        confirm_each_batch=confirm_each_batch,
    )
    return flow


def main(quick: bool = False) -> dict:
    n = 50_000 if quick else 200_000
    rounds = 3
    model_bytes = build_mlp()
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap
        broker.create_topic("readings")
        print(
            f"producing {n:,} JSON readings from {N_SENSORS:,} sensors to the embedded broker ...",
            flush=True,
        )
        produce_all(bootstrap, "readings", _readings(n))
        outputs = iter(range(10**6))

        def fresh_topic() -> str:
            name = f"results-{next(outputs)}"
            broker.create_topic(name)
            return name

        def run_streamml(confirm_each_batch: bool = True) -> int:
            flow = streamml_flow(
                bootstrap,
                "readings",
                fresh_topic(),
                model_bytes,
                confirm_each_batch=confirm_each_batch,
            )
            run_main(flow)
            return n

        contenders = {
            "streamml (1 worker)": run_streamml,
            # The loops below confirm delivery only at the end; this is the same trade.
            "streamml, delivery confirmed at the end": lambda: run_streamml(False),
            "hand-batched loop": lambda: hand_batched(
                bootstrap, "readings", fresh_topic(), model_bytes
            ),
            "per-event microservice": lambda: per_event_service(
                bootstrap, "readings", fresh_topic(), model_bytes
            ),
        }
        print(f"{rounds} alternating rounds of {len(contenders)} contenders", flush=True)
        start = time.perf_counter()
        results = alternate(contenders, rounds=rounds, warmup=False)
        print(
            format_table(
                "light pipeline end to end (JSON → rolling mean → MLP → JSON), events/s",
                results,
                "ev/s",
            )
        )
        print(f"({time.perf_counter() - start:.0f} s)")
    return {"light_pipeline": [m.as_dict() for m in results], "events": n}


if __name__ == "__main__":
    main()
