"""The camera dataflow: frames in, text found and read in them, detections out.

::

    frames topic (Avro: camera, frame id, time, JPEG/PNG bytes)
      -> decode images (Pillow), one fixed size, keyed by camera
      -> infer "detect": PP-OCRv4 DB detector, frames batched dynamically
      -> infer "read":   PP-OCRv4 recogniser over every box of the batch
      -> detections topic (JSON, keyed by camera)
    anything that fails on the way -> dead-letter topic

Run it on its own against a running broker (``streamml broker`` starts one)::

    python -m bytewax.run "examples.camera_detection.flow:build_flow('127.0.0.1:9092')"

or end to end, with rendered frames and a scored summary, with
``python -m examples.camera_detection``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from PIL import Image
from streamml.operators.infer import infer

from examples.camera_detection.build import build_models
from examples.camera_detection.ocr import TextDetector, TextReader
from examples.camera_detection.scene import FRAME_SIZE
from streamml import kafka
from streamml.errors import Rejected
from streamml.kafka import Record
from streamml.serde import ConfluentAvroSerde, JsonSerde

__all__ = ["SCHEMA", "Topics", "build_flow", "decode_frames", "to_detection"]

SCHEMA = Path(__file__).with_name("frame.avsc")
MAX_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class Topics:
    """Topic names of the camera pipeline."""

    frames: str = "camera-frames"
    detections: str = "camera-detections"
    dead_letters: str = "camera-dead-letters"


def _decode_one(value: Any, size: tuple[int, int]) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("image"), bytes):
        raise ValueError("value is not a frame record with image bytes")
    with Image.open(io.BytesIO(value["image"])) as img:
        if img.width * img.height > MAX_PIXELS:
            raise ValueError(f"image is {img.width}x{img.height}, over {MAX_PIXELS:,} pixels")
        rgb = img.convert("RGB")
    width, height = rgb.size
    if (width, height) != size:
        rgb = rgb.resize(size, Image.BILINEAR)
    return {
        "camera_id": value["camera_id"],
        "frame_id": value["frame_id"],
        "ts": value["ts"],
        "width": width,
        "height": height,
        "image": np.asarray(rgb),
    }


def decode_frames(
    step_id: str, size: tuple[int, int] = FRAME_SIZE
) -> Callable[[list[Record]], list[tuple[str, dict[str, Any]] | Rejected]]:
    """A batch function: frame records to ``(camera_id, frame)`` with the image as ``uint8`` pixels.

    Frames of another size are scaled to ``size`` (``width`` and ``height``
    keep the original, so boxes can be mapped back). Images that do not
    decode are rejected as ``"BadImage"`` with the reason.

    Examples:
        >>> from examples.camera_detection.scene import render_frames
        >>> frame = render_frames(1)[0].as_record()
        >>> record = Record(frame, None, "frames", 0, 7, None, None, None)
        >>> bad = record._replace(value={**frame, "image": b"lens cap on"})
        >>> out = decode_frames("decode")([record, bad])
        >>> out[0][0], out[0][1]["image"].shape
        ('gate-1', (192, 320, 3))
        >>> out[1].error_type
        'BadImage'
    """

    def decode(records: list[Record]) -> list[tuple[str, dict[str, Any]] | Rejected]:
        out: list[tuple[str, dict[str, Any]] | Rejected] = []
        for record in records:
            try:
                frame = _decode_one(record.value, size)
            except Exception as exc:  # Pillow raises many types on bad bytes
                out.append(Rejected(step_id, "BadImage", f"{type(exc).__name__}: {exc}", record))
                continue
            out.append((frame["camera_id"], frame))
        return out

    return decode


def to_detection(keyed: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """The JSON result of one frame: its boxes (in the frame's own pixels) and what they read.

    Examples:
        >>> from datetime import datetime, timezone
        >>> boxes = np.zeros((2, 5), np.float32)
        >>> boxes[0] = (10, 20, 110, 44, 0.91)
        >>> frame = {"camera_id": "gate-1", "frame_id": 3, "width": 640, "height": 384,
        ...          "ts": datetime(2026, 1, 1, tzinfo=timezone.utc), "image": None,
        ...          "boxes": boxes.tolist(), "texts": ["AB12 CDE", ""],
        ...          "text_scores": [0.98, 0.0], "detector": "det@1", "reader": "rec@1"}
        >>> to_detection(("gate-1", frame))["detections"]
        [{'box': [20, 40, 220, 88], 'score': 0.91, 'text': 'AB12 CDE', 'text_score': 0.98}]
    """
    _, frame = keyed
    sx, sy = frame["width"] / FRAME_SIZE[0], frame["height"] / FRAME_SIZE[1]
    detections = [
        {
            "box": [round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy)],
            "score": round(score, 3),
            "text": text,
            "text_score": round(text_score, 3),
        }
        for (x0, y0, x1, y1, score), text, text_score in zip(
            frame["boxes"], frame["texts"], frame["text_scores"]
        )
        if score > 0
    ]
    return {
        "camera_id": frame["camera_id"],
        "frame_id": frame["frame_id"],
        "ts": frame["ts"],
        "detections": detections,
        "models": {"detector": frame["detector"], "reader": frame["reader"]},
    }


def _without_pixels(rejected: Rejected) -> Rejected:
    """A later step's rejection carries ``(key, frame)``; keep the frame, not its pixels."""
    original = rejected.original
    if isinstance(original, tuple) and len(original) == 2 and isinstance(original[1], dict):
        key, frame = original
        slim = {k: v for k, v in frame.items() if k != "image"}
        return rejected._replace(original=(key, slim))
    return rejected


def _is_frame(item: object) -> bool:
    return type(item) is tuple


def build_flow(
    brokers: str,
    *,
    topics: Topics = Topics(),
    registry: Any = None,
    tail: bool = True,
    models: tuple[TextDetector, TextReader] | None = None,
    max_batch: int = 4,
    max_wait: timedelta = timedelta(milliseconds=50),
    threads: int | None = 1,
    shards: int = 1,
) -> Dataflow:
    """The camera dataflow over ``brokers``.

    ``registry`` is a schema-registry client or config (default: an
    in-process ``mock://`` registry; the frame schema is registered at build
    time, as its producer would have). ``models`` defaults to the PP-OCRv4
    pair prepared by :func:`~examples.camera_detection.build.build_models`.
    ``max_batch`` and ``max_wait`` bound the frames each model call takes
    (4 by default: on a CPU these convolutional networks are no faster per
    frame in bigger batches, and small ones keep latency low; use 16–64 on
    a GPU);
    ``threads`` is ONNX Runtime's threads per model call (1 by default: the
    broker and the rest of the flow share the machine; ``None``: one per core).
    ``shards`` is the number of batch queues of each model step: 1 for one
    worker, the number of workers to run the models on all of them.

    Examples:
        >>> flow = build_flow("127.0.0.1:9092")  # builds; connects only when run
        >>> flow.flow_id
        'camera_detection'
    """
    registry = registry if registry is not None else {"url": "mock://camera-detection"}
    serde = ConfluentAvroSerde(registry, schema=SCHEMA, subject=f"{topics.frames}-value")
    _ = serde.schema_id
    if models is None:
        files = build_models()
        models = (
            TextDetector(files.detector, size=FRAME_SIZE, intra_op_threads=threads),
            TextReader(files.recognizer, files.charset, size=FRAME_SIZE, intra_op_threads=threads),
        )
    detector, reader = models

    flow = Dataflow("camera_detection")
    src = kafka.source(
        "frames",
        flow,
        brokers=brokers,
        topics=topics.frames,
        value_serde=serde,
        tail=tail,
        batch_size=max_batch,  # frames are big: take a model batch at a time, not thousands
    )
    decoded = op.flat_map_batch(
        "decode", src.oks, decode_frames("camera_detection.decode", FRAME_SIZE)
    )
    split = op.branch("decoded", decoded, _is_frame)
    found = infer(
        "detect",
        split.trues,
        detector,
        inputs="image",
        version_field="detector",
        max_batch=max_batch,
        max_wait=max_wait,
        shards=shards,
    )
    read = infer(
        "read",
        found.oks,
        reader,
        inputs={"image": "image", "boxes": "boxes"},
        version_field="reader",
        max_batch=max_batch,
        max_wait=timedelta(0),  # frames leave the detector a batch at a time
        shards=shards,
    )
    detections = op.map("to_detection", read.oks, to_detection)
    sink_errs = kafka.sink(
        "detections",
        detections,
        brokers=brokers,
        topic=topics.detections,
        value_serde=JsonSerde(),
        key=lambda d: d["camera_id"],
    )
    model_errs = op.map(
        "slim_rejections", op.merge("model_errors", found.errs, read.errs), _without_pixels
    )
    kafka.dead_letter_sink(
        "dead_letters",
        op.merge("all_errors", src.errs, split.falses, model_errs, sink_errs),
        brokers=brokers,
        topic=topics.dead_letters,
    )
    return flow
