"""Run the camera pipeline end to end: broker, rendered frames, the dataflow, a scored summary.

python -m examples.camera_detection --events 200
python -m examples.camera_detection --brokers kafka:9092 --registry http://registry:8081
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections import Counter
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax.testing import run_main
from confluent_kafka.admin import AdminClient
from PIL import Image, ImageDraw

from examples.camera_detection.build import build_models
from examples.camera_detection.flow import SCHEMA, Topics, build_flow
from examples.camera_detection.ocr import TextDetector, TextReader
from examples.camera_detection.scene import FRAME_SIZE, Frame, corrupt_payloads, render_frames
from examples.camera_detection.score import score_detections
from examples.common import TopicProgress, open_broker, unique_topics
from streamml.broker import create_topics
from streamml.serde import ConfluentAvroSerde
from streamml.testing import consume_all, produce_all
from streamml.tuning import relaxed_gc


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.camera_detection",
        description=(
            "Render gate-camera frames (cars with number plates, street signs, empty "
            "scenes) with known ground truth, publish them as JPEG/PNG inside Avro records "
            "with a few corrupt messages, run the camera dataflow (PP-OCRv4 text detector "
            "and recogniser in ONNX Runtime, frames batched dynamically) over Kafka, and "
            "print what came out: detections, dead letters, frames per second, and how "
            "many plates and signs were found and read right. With no --brokers, an "
            "embedded tansu broker is started on a free loopback port and stopped at the end."
        ),
    )
    parser.add_argument(
        "--events", type=int, default=200, help="frames to render (default: %(default)s)"
    )
    parser.add_argument(
        "--cameras", type=int, default=4, help="cameras publishing (default: %(default)s)"
    )
    parser.add_argument(
        "--corrupt",
        type=int,
        default=None,
        help="corrupt messages to mix in (default: 2%% of --events, at least 3)",
    )
    parser.add_argument("--seed", type=int, default=0, help="scene seed (default: %(default)s)")
    parser.add_argument(
        "--brokers", help="host:port of an existing Kafka cluster (default: embedded broker)"
    )
    parser.add_argument(
        "--registry",
        default="mock://camera-detection",
        help="schema registry URL (default: an in-process mock)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=2,
        help="partitions of the frames topic (default: %(default)s)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=4,
        help="most frames per model call (default: %(default)s)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="ONNX Runtime threads per model call (default: %(default)s; 0: one per core)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("out/camera_detection"), help="where to write results"
    )
    parser.add_argument(
        "--produce-only",
        action="store_true",
        help=(
            "with --brokers: only put the frames on the topic 'camera-frames' (created if "
            "missing) and exit, for a flow started with python -m bytewax.run"
        ),
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    if args.produce_only and not args.brokers:
        parser.error("--produce-only needs --brokers (the cluster the flow will read from)")
    if args.events < 1:
        parser.error(f"--events must be >= 1; got {args.events}")
    if args.cameras < 1:
        parser.error(f"--cameras must be >= 1; got {args.cameras}")
    args.threads = args.threads or None
    if args.corrupt is None:
        args.corrupt = max(3, args.events // 50)
    return args


def _create_missing(bootstrap: str, topics: Topics, partitions: int) -> None:
    existing = set(AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics)
    if topics.frames not in existing:
        create_topics(bootstrap, [topics.frames], partitions=partitions)
    missing = [t for t in (topics.detections, topics.dead_letters) if t not in existing]
    if missing:
        create_topics(bootstrap, missing, partitions=1)


def _contact_sheet(
    frames: list[Frame], results: dict[tuple[str, int], dict[str, Any]], path: Path
) -> None:
    """The first frames with true boxes (green) and detections with their reading (red)."""
    cols, rows = 4, 3
    w, h = FRAME_SIZE
    sheet = Image.new("RGB", (cols * w, rows * h), "white")
    for i, frame in enumerate(frames[: cols * rows]):
        img = Image.open(io.BytesIO(frame.image)).convert("RGB")
        draw = ImageDraw.Draw(img)
        for truth in frame.truths:
            draw.rectangle(truth.box, outline=(0, 230, 0), width=2)
        result = results.get((frame.camera_id, frame.frame_id), {"detections": []})
        for det in result["detections"]:
            x0, y0, x1, y1 = det["box"]
            draw.rectangle((x0, y0, x1, y1), outline=(230, 0, 0), width=1)
            label = f"{det['text']} {det['text_score']:.2f}"
            draw.rectangle((x0, y1, x0 + 7 * len(label), y1 + 12), fill=(230, 0, 0))
            draw.text((x0 + 2, y1), label, fill="white")
        sheet.paste(img, ((i % cols) * w, (i // cols) * h))
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    t_build = time.perf_counter()
    files = build_models()
    models = (
        TextDetector(files.detector, size=FRAME_SIZE, intra_op_threads=args.threads),
        TextReader(files.recognizer, files.charset, size=FRAME_SIZE, intra_op_threads=args.threads),
    )
    print(
        f"models ready in {time.perf_counter() - t_build:.1f} s: "
        f"{models[0].version} (text detector), {models[1].version} (recogniser), "
        f"from {files.manifest['package']}"
    )
    with ExitStack() as stack:
        if args.produce_only:
            bootstrap, topics = args.brokers, Topics()
            _create_missing(bootstrap, topics, args.partitions)
        else:
            bootstrap = open_broker(stack, args.brokers)
            topics = unique_topics(Topics()) if args.brokers else Topics()
        if not args.produce_only:
            create_topics(bootstrap, [topics.frames], partitions=args.partitions)
            create_topics(bootstrap, [topics.detections, topics.dead_letters], partitions=1)

        from confluent_kafka.schema_registry import SchemaRegistryClient

        registry = SchemaRegistryClient.new_client({"url": args.registry})
        serde = ConfluentAvroSerde(registry, schema=SCHEMA, subject=f"{topics.frames}-value")

        t0 = time.perf_counter()
        frames = render_frames(args.events, cameras=args.cameras, seed=args.seed)
        truths = Counter(t.kind for f in frames for t in f.truths)
        print(
            f"rendered {len(frames):,} frames from {args.cameras} cameras in "
            f"{time.perf_counter() - t0:.1f} s: {truths['plate']:,} plates, "
            f"{truths['sign']:,} signs, {sum(not f.truths for f in frames):,} empty scenes; "
            f"plus {args.corrupt} corrupt messages"
        )
        payloads = serde.encode_batch([f.as_record() for f in frames])
        messages = [(f.camera_id.encode(), p) for f, p in zip(frames, payloads)]
        bad = corrupt_payloads(lambda r: serde.encode_batch([r])[0], frames[0], args.corrupt)
        stride = max(1, len(messages) // (len(bad) + 1))
        for i, (_kind, payload) in enumerate(bad):
            messages.insert((i + 1) * stride + i, (b"gate-1", payload))
        produced = produce_all(bootstrap, topics.frames, messages)
        megabytes = sum(len(p) for _, p in messages) / 1e6
        print(f"produced {produced:,} messages ({megabytes:.1f} MB) to {topics.frames!r}")
        if args.produce_only:
            print(
                "now run the flow on them:\n  python -m bytewax.run "
                f"\"examples.camera_detection.flow:build_flow('{bootstrap}')\""
            )
            return 0

        flow = build_flow(
            bootstrap,
            topics=topics,
            registry=registry,
            tail=False,
            models=models,
            max_batch=args.max_batch,
            max_wait=timedelta(milliseconds=50),
        )
        outputs = [topics.detections, topics.dead_letters]
        with TopicProgress(bootstrap, outputs, produced, unit="frames", enabled=not args.quiet):
            t0 = time.perf_counter()
            with relaxed_gc():  # see streamml.tuning
                run_main(flow)
            wall = time.perf_counter() - t0

        results = [json.loads(m.value) for m in consume_all(bootstrap, topics.detections)]
        dead = [json.loads(m.value) for m in consume_all(bootstrap, topics.dead_letters)]

    reasons = Counter(d["error_type"] for d in dead)
    score = score_detections(frames, results)
    by_frame = {(r["camera_id"], r["frame_id"]): r for r in results}
    args.out.mkdir(parents=True, exist_ok=True)
    sheet = args.out / "frames.png"
    _contact_sheet(frames, by_frame, sheet)
    (args.out / "detections.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    summary = {
        "events_in": produced,
        "frames_in": len(frames),
        "detections_out": len(results),
        "boxes_out": sum(len(r["detections"]) for r in results),
        "dead_lettered": len(dead),
        "dead_letter_reasons": dict(sorted(reasons.items())),
        "corrupt_injected": len(bad),
        "wall_seconds": round(wall, 3),
        "frames_per_second": round(produced / wall, 2),
        "accuracy": score.as_dict(),
        "models": {
            "detector": models[0].version,
            "recognizer": models[1].version,
            "package": files.manifest["package"],
        },
        "topics": {
            "frames": topics.frames,
            "detections": topics.detections,
            "dead_letters": topics.dead_letters,
        },
        "accounted_for": produced == len(results) + len(dead),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    acc = score
    print()
    print("summary")
    print(f"  frames in        {produced:>8,}")
    print(
        f"  detections out   {len(results):>8,}   -> topic {topics.detections!r}"
        f"  ({summary['boxes_out']:,} text boxes)"
    )
    print(
        f"  dead-lettered    {len(dead):>8,}   -> topic {topics.dead_letters!r}"
        f"  {summary['dead_letter_reasons']}"
    )
    print(f"  wall time        {wall:>8.2f} s")
    print(f"  throughput       {summary['frames_per_second']:>8,.1f} frames/s")
    print(f"  in = out + dead  {'yes' if summary['accounted_for'] else 'NO'}")
    print(
        f"  text found       {acc.found:,} of {acc.truths:,} lines"
        f"  (recall {acc.recall:.1%}, precision {acc.precision:.1%}, IoU >= 0.5)"
    )
    print(
        f"  read right       {acc.read:,} of {acc.truths:,} lines ({acc.read_accuracy:.1%}); "
        f"plates {acc.plate_read_accuracy:.1%}; characters {acc.char_accuracy:.1%}"
    )
    print(f"  false alarms     {acc.false_alarm_frames} of {acc.empty_frames} empty frames")
    print(f"  results          {args.out / 'summary.json'}, {args.out / 'detections.jsonl'}")
    print(f"  picture          {sheet}  (green: truth, red: detections)")
    return 0 if summary["accounted_for"] else 1


if __name__ == "__main__":
    sys.exit(main())
