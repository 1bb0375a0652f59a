"""The camera example: every frame accounted for, text found and read within known ranges."""

from __future__ import annotations

import doctest
import importlib
import io
import json
import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from bytewax.testing import run_main
from confluent_kafka.schema_registry import SchemaRegistryClient
from PIL import Image

from examples.camera_detection.build import build_models
from examples.camera_detection.flow import SCHEMA, Topics, build_flow
from examples.camera_detection.ocr import TextDetector, TextReader
from examples.camera_detection.scene import Frame, TextTruth, corrupt_payloads, render_frames
from examples.camera_detection.score import score_detections
from streamml.serde import ConfluentAvroSerde
from streamml.testing import consume_all, produce_all

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("scene", "build", "ocr", "flow", "score")


@pytest.fixture(scope="module")
def models() -> tuple[TextDetector, TextReader]:
    files = build_models()
    return (
        TextDetector(files.detector, intra_op_threads=1),
        TextReader(files.recognizer, files.charset, intra_op_threads=1),
    )


def _pixels(frames: list[Frame]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(f.image)).convert("RGB")) for f in frames])


def _doubled(frame: Frame) -> Frame:
    """The frame as a camera with twice the resolution would send it."""
    img = Image.open(io.BytesIO(frame.image)).convert("RGB")
    buf = io.BytesIO()
    img.resize((img.width * 2, img.height * 2), Image.BILINEAR).save(buf, "PNG")
    truths = tuple(replace(t, box=tuple(2 * v for v in t.box)) for t in frame.truths)
    return replace(frame, content_type="image/png", image=buf.getvalue(), truths=truths)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(f"examples.camera_detection.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_batching_gives_the_same_boxes_and_texts_as_one_frame_at_a_time(models) -> None:
    detector, reader = models
    images = _pixels([f for f in render_frames(12, seed=11) if f.truths][:4])
    boxes = detector.predict(images)["boxes"]
    read = reader.predict({"image": images, "boxes": boxes})
    for i in range(len(images)):
        alone = detector.predict(images[i : i + 1])["boxes"]
        np.testing.assert_allclose(alone[0], boxes[i], atol=1e-3)
        one = reader.predict({"image": images[i : i + 1], "boxes": alone})
        assert one["texts"][0].tolist() == read["texts"][i].tolist()
    assert (boxes[:, :, 4] > 0).sum() >= 4  # the frames did have text in them


@pytest.mark.integration
def test_frames_through_kafka_are_all_accounted_for_and_read(broker, topic_name, models) -> None:
    frames = render_frames(36, cameras=3, seed=7)
    frames.append(_doubled(replace(render_frames(1, seed=8)[0], camera_id="gate-9")))
    topics = Topics(*(f"{topic_name}-{t}" for t in ("frames", "detections", "dead")))
    broker.create_topic(topics.frames, partitions=2)
    broker.create_topic(topics.detections)
    broker.create_topic(topics.dead_letters)
    registry = SchemaRegistryClient.new_client({"url": f"mock://{topic_name}"})
    serde = ConfluentAvroSerde(registry, schema=SCHEMA, subject=f"{topics.frames}-value")
    payloads = serde.encode_batch([f.as_record() for f in frames])
    bad = corrupt_payloads(lambda r: serde.encode_batch([r])[0], frames[0], 3)
    messages = [(f.camera_id.encode(), p) for f, p in zip(frames, payloads)]
    messages[10:10] = [(b"gate-1", p) for _, p in bad]
    assert produce_all(broker.bootstrap, topics.frames, messages) == len(frames) + 3

    flow = build_flow(
        broker.bootstrap,
        topics=topics,
        registry=registry,
        tail=False,
        models=models,
        max_batch=8,
        max_wait=timedelta(milliseconds=20),
    )
    run_main(flow)

    results = [json.loads(m.value) for m in consume_all(broker.bootstrap, topics.detections)]
    dead = [json.loads(m.value) for m in consume_all(broker.bootstrap, topics.dead_letters)]
    assert len(results) == len(frames)  # one message per good frame, none lost or doubled
    assert {(r["camera_id"], r["frame_id"]) for r in results} == {
        (f.camera_id, f.frame_id) for f in frames
    }
    assert sorted(d["error_type"] for d in dead) == ["BadImage", "BadImage", "DecodeError"]
    assert all(d["source"]["topic"] == topics.frames for d in dead)
    assert all(r["models"]["detector"].startswith("ppocrv4_det@") for r in results)

    score = score_detections(frames, results)
    assert score.truths >= 40
    assert score.recall >= 0.85
    assert score.precision >= 0.85
    assert score.read_accuracy >= 0.8
    assert score.plate_read_accuracy >= 0.8
    assert score.char_accuracy >= 0.95
    assert score.false_alarm_frames <= 1

    big = next(r for r in results if r["camera_id"] == "gate-9")
    found = score_detections([frames[-1]], [big])
    assert found.recall == 1.0  # boxes come back in the big frame's own pixels


class _BrokenForOneCamera:
    """The reader, except that it raises on any batch holding a frame of ``camera``'s size."""

    def __init__(self, reader: TextReader) -> None:
        self._reader = reader
        self.version, self.inputs, self.outputs = reader.version, reader.inputs, reader.outputs

    def predict(self, inputs):
        if (inputs["image"][:, 0, 0] == 0).all(axis=1).any():  # the black frames
            raise RuntimeError("recogniser crashed")
        return self._reader.predict(inputs)


@pytest.mark.integration
def test_a_model_failure_dead_letters_only_its_frames(broker, topic_name, models) -> None:
    detector, reader = models
    frames = render_frames(6, cameras=2, seed=5)
    black = io.BytesIO()
    Image.new("RGB", (320, 192)).save(black, "PNG")
    frames.append(replace(frames[0], camera_id="gate-dark", image=black.getvalue(), truths=()))
    topics = Topics(*(f"{topic_name}-{t}" for t in ("frames", "detections", "dead")))
    for name in (topics.frames, topics.detections, topics.dead_letters):
        broker.create_topic(name)
    registry = SchemaRegistryClient.new_client({"url": f"mock://{topic_name}"})
    serde = ConfluentAvroSerde(registry, schema=SCHEMA, subject=f"{topics.frames}-value")
    payloads = serde.encode_batch([f.as_record() for f in frames])
    produce_all(broker.bootstrap, topics.frames, [(b"k", p) for p in payloads])

    flow = build_flow(
        broker.bootstrap,
        topics=topics,
        registry=registry,
        tail=False,
        models=(detector, _BrokenForOneCamera(reader)),
        max_batch=4,
    )
    run_main(flow)

    results = [json.loads(m.value) for m in consume_all(broker.bootstrap, topics.detections)]
    dead = [json.loads(m.value) for m in consume_all(broker.bootstrap, topics.dead_letters)]
    assert sorted(r["camera_id"] for r in results) == ["gate-1"] * 3 + ["gate-2"] * 3
    assert [d["error_type"] for d in dead] == ["ModelError"]
    assert dead[0]["event"][1]["camera_id"] == "gate-dark"
    assert "image" not in dead[0]["event"][1]  # pixels are not dead-lettered, the frame is


def test_scoring_counts_misses_false_alarms_and_misreads() -> None:
    truth = TextTruth("plate", "AB12 CDE", (10, 10, 90, 30))
    frames = [
        Frame("c", 0, None, "image/png", b"", (truth,)),  # type: ignore[arg-type]
        Frame("c", 1, None, "image/png", b"", ()),  # type: ignore[arg-type]
        Frame("c", 2, None, "image/png", b"", (truth,)),  # type: ignore[arg-type]
    ]
    results = [
        {
            "camera_id": "c",
            "frame_id": 0,
            "detections": [{"box": [10, 10, 90, 30], "text": "AB12CDF"}],
        },
        {"camera_id": "c", "frame_id": 1, "detections": [{"box": [0, 0, 5, 5], "text": "X"}]},
        {
            "camera_id": "c",
            "frame_id": 2,
            "detections": [{"box": [100, 100, 150, 120], "text": "AB12CDE"}],
        },
    ]
    s = score_detections(frames, results)
    assert (s.found, s.read, s.detections, s.false_alarm_frames) == (1, 0, 3, 1)
    assert s.recall == 0.5 and s.precision == pytest.approx(1 / 3)
    assert s.char_accuracy == pytest.approx(6 / 7)


@pytest.mark.integration
def test_command_runs_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "examples.camera_detection",
            "--events",
            "12",
            "--corrupt",
            "3",
            "--quiet",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "frames/s" in proc.stdout and "read right" in proc.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["events_in"] == 15
    assert summary["detections_out"] == 12 and summary["dead_lettered"] == 3
    assert summary["accounted_for"] is True
    assert (tmp_path / "frames.png").stat().st_size > 10_000


def test_help_explains_itself() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "examples.camera_detection", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "--brokers" in proc.stdout and "--events" in proc.stdout
