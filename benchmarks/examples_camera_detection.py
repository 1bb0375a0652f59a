"""The camera example end to end, next to its models alone and a per-frame microservice.

One process, an embedded broker, rendered 320 × 192 frames (JPEG/PNG in Avro)
already on a topic, ONNX Runtime with one intra-op thread everywhere (the
broker and the flow share the machine's two cores):

- dataflow: ``examples.camera_detection.flow`` on one Bytewax worker, Kafka in
  and out: decode, PP-OCRv4 detector and recogniser through ``infer`` with
  dynamic batches of up to 4 frames (its default), detections produced as JSON;
- the two networks alone on tensors prepared beforehand (frames already
  scaled and normalised, crops already cut and padded): at the dataflow's
  batch size, at one frame a call and at 16 frames a call. They are the
  pipeline's slowest part by far, and the fastest of the three is its ceiling;
- microservice: a confluent-kafka consumer loop that decodes each message,
  calls the detector and the recogniser once per frame and produces each
  result, the way a small per-event service would.

Results are frames per second.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import orjson
from bytewax.testing import run_main
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from PIL import Image

from benchmarks.harness import alternate, format_table
from examples.camera_detection.build import build_models
from examples.camera_detection.flow import SCHEMA, Topics, build_flow, to_detection
from examples.camera_detection.ocr import TextDetector, TextReader, to_network_input
from examples.camera_detection.scene import render_frames
from streamml import kafka
from streamml.broker import EmbeddedBroker
from streamml.serde import ConfluentAvroSerde
from streamml.testing import produce_all

BATCH = 4
BIG_BATCH = 16


def _dataflow_run(
    bootstrap: str, topics: Topics, registry: Any, models: tuple, n: int
) -> Callable[[], int]:
    def run() -> int:
        flow = build_flow(
            bootstrap,
            topics=topics,
            registry=registry,
            tail=False,
            models=models,
            max_batch=BATCH,
            max_wait=timedelta(milliseconds=50),
        )
        run_main(flow)
        return n

    return run


def _networks_run(
    detector: TextDetector, reader: TextReader, images: np.ndarray, batch: int
) -> Callable[[], int]:
    """The detector ``batch`` frames a call, the recogniser as ``reader`` chunks the crops."""
    chunks = []
    for lo in range(0, len(images), batch):
        part = images[lo : lo + batch]
        boxes = detector.predict(part)["boxes"]
        crops, widths, _ = reader.crops(part, boxes)
        chunks.append((to_network_input(part), [x for _, x in reader.chunks(crops, widths)]))
    det, rec = detector.network, reader.network

    def run() -> int:
        for pixels, crops in chunks:
            det.predict(pixels)
            for x in crops:
                rec.predict(x)
        return len(images)

    return run


def _microservice_run(
    bootstrap: str, topic: str, out_topic: str, serde: ConfluentAvroSerde, models: tuple, n: int
) -> Callable[[], int]:
    detector, reader = models

    def run() -> int:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                **kafka.SOURCE_DEFAULTS,  # the fetch settings of the dataflow's source
            }
        )
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
        done = 0
        while done < n:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            frame = serde.decode_batch([msg.value()])[0]
            pixels = np.asarray(Image.open(io.BytesIO(frame["image"])).convert("RGB"))[None]
            boxes = detector.predict(pixels)["boxes"]
            read = reader.predict({"image": pixels, "boxes": boxes})
            event = {
                **frame,
                "width": pixels.shape[2],
                "height": pixels.shape[1],
                "boxes": boxes[0].tolist(),
                "texts": read["texts"][0].tolist(),
                "text_scores": read["text_scores"][0].tolist(),
                "detector": detector.version,
                "reader": reader.version,
            }
            producer.produce(out_topic, orjson.dumps(to_detection((frame["camera_id"], event))))
            producer.poll(0)
            done += 1
        producer.flush(30)
        consumer.close()
        return done

    return run


def main(quick: bool = False) -> dict:
    n = 16 if quick else 96
    rounds = 3
    print(f"camera_detection: preparing models and {n} frames ...", flush=True)
    files = build_models()
    models = (
        TextDetector(files.detector, intra_op_threads=1),
        TextReader(files.recognizer, files.charset, intra_op_threads=1),
    )
    big_reader = TextReader(files.recognizer, files.charset, intra_op_threads=1, chunk=BIG_BATCH)
    frames = render_frames(n, seed=3)
    images = np.stack([np.asarray(Image.open(io.BytesIO(f.image)).convert("RGB")) for f in frames])
    crops = int((models[0].predict(images)["boxes"][:, :, 4] > 0).sum())
    results: dict[str, Any] = {"frames": n, "text_boxes": crops, "rounds": rounds}
    names = {
        "flow": f"dataflow end to end, max_batch={BATCH}",
        "net": f"networks alone, {BATCH} frames a call",
        "net1": "networks alone, 1 frame a call",
        "net16": f"networks alone, {BIG_BATCH} frames a call",
        "service": "microservice: consumer loop, models per frame",
    }
    with EmbeddedBroker() as broker:
        topics = Topics(
            *(f"{t}-bench" for t in (Topics.frames, Topics.detections, Topics.dead_letters))
        )
        broker.create_topic(topics.frames, partitions=2)
        for name in (topics.detections, topics.dead_letters, "camera-microservice-bench"):
            broker.create_topic(name)
        registry = SchemaRegistryClient.new_client({"url": "mock://camera-bench"})
        serde = ConfluentAvroSerde(registry, schema=SCHEMA, subject=f"{topics.frames}-value")
        payloads = serde.encode_batch([f.as_record() for f in frames])
        produce_all(
            broker.bootstrap,
            topics.frames,
            [(f.camera_id.encode(), p) for f, p in zip(frames, payloads)],
        )
        print(f"  {n} frames on the topic, {crops} text boxes in them; {rounds} rounds", flush=True)
        t0 = time.perf_counter()
        runs = alternate(
            {
                names["flow"]: _dataflow_run(broker.bootstrap, topics, registry, models, n),
                names["net"]: _networks_run(*models, images, BATCH),
                names["net1"]: _networks_run(*models, images, 1),
                names["net16"]: _networks_run(models[0], big_reader, images, BIG_BATCH),
                names["service"]: _microservice_run(
                    broker.bootstrap,
                    topics.frames,
                    "camera-microservice-bench",
                    serde,
                    models,
                    n,
                ),
            },
            rounds=rounds,
        )
    print(format_table("camera_detection, frames/s, 1 worker, 1 ORT thread", runs, "frames/s"))
    rate = {key: m.median for key, m in zip(names, runs)}
    ceiling = max(rate["net"], rate["net1"], rate["net16"])
    print(
        f"  dataflow {rate['flow']:.1f} frames/s, ceiling {ceiling:.1f} (fastest networks-alone "
        f"row), microservice {rate['service']:.1f}\n"
        f"  dataflow / ceiling = {rate['flow'] / ceiling:.0%}; "
        f"dataflow / microservice = {rate['flow'] / rate['service']:.2f}x; "
        f"networks at {BIG_BATCH} / at 1 frame a call = {rate['net16'] / rate['net1']:.2f}x "
        f"({time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    results.update(
        runs={m.name: m.as_dict() for m in runs},
        dataflow_frames_per_second=rate["flow"],
        ceiling_frames_per_second=ceiling,
        dataflow_share_of_ceiling=rate["flow"] / ceiling,
        dataflow_vs_microservice=rate["flow"] / rate["service"],
        network_batch16_vs_batch1=rate["net16"] / rate["net1"],
    )
    return results


if __name__ == "__main__":
    main()
