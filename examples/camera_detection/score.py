"""Score detections against the frames' ground truth: did we find the text, and read it right?

A detected box finds a true text line when their intersection over union is
at least 0.5 (the ICDAR convention); each true line and each detection is
matched at most once, best overlap first. A found line is read right when
the text matches ignoring spaces and case (plates are printed with a space
that readers drop). Character accuracy is ``1 - edit distance / length``
over the found lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from examples.camera_detection.scene import Frame

__all__ = ["Score", "edit_distance", "iou", "score_detections"]

IOU_MATCH = 0.5


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes.

    Examples:
        >>> iou((0, 0, 10, 10), (5, 0, 15, 10))
        0.3333333333333333
    """
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance.

    Examples:
        >>> edit_distance("KX21BHT", "KX2lBHT"), edit_distance("", "AB")
        (1, 2)
    """
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _norm(text: str) -> str:
    return "".join(text.split()).upper()


@dataclass(frozen=True)
class Score:
    """How well the detections match the ground truth.

    Attributes:
        frames: Frames scored (those with a detections message).
        truths: True text lines in them.
        detections: Boxes the pipeline reported.
        found: True lines matched by a box (IoU >= 0.5).
        read: Found lines whose text was read exactly.
        precision, recall: Of boxes, over all detections / all true lines.
        read_accuracy: Exact reads over all true lines (end to end).
        plate_read_accuracy: The same, for number plates only.
        char_accuracy: ``1 - edit distance / length`` summed over found lines.
        false_alarm_frames: Frames with no text that got a detection.
        empty_frames: Frames with no text.
    """

    frames: int
    truths: int
    detections: int
    found: int
    read: int
    precision: float
    recall: float
    read_accuracy: float
    plate_read_accuracy: float
    char_accuracy: float
    false_alarm_frames: int
    empty_frames: int

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


def _ratio(a: int, b: int) -> float:
    return a / b if b else 0.0


def score_detections(frames: Iterable[Frame], results: Iterable[Mapping[str, Any]]) -> Score:
    """Score detection messages (as :func:`~examples.camera_detection.flow.to_detection` writes them).

    Frames without a result (dead-lettered) are left out.

    Examples:
        >>> from datetime import datetime, timezone
        >>> from examples.camera_detection.scene import TextTruth
        >>> t = datetime(2026, 1, 1, tzinfo=timezone.utc)
        >>> frame = Frame("gate-1", 0, t, "image/png", b"",
        ...               (TextTruth("plate", "AB12 CDE", (10, 10, 90, 30)),))
        >>> result = {"camera_id": "gate-1", "frame_id": 0, "detections": [
        ...     {"box": [12, 9, 92, 31], "text": "AB12CDE"},
        ...     {"box": [200, 100, 240, 120], "text": "EXIT"}]}
        >>> s = score_detections([frame], [result])
        >>> s.recall, s.precision, s.plate_read_accuracy
        (1.0, 0.5, 1.0)
    """
    by_frame = {(r["camera_id"], r["frame_id"]): r["detections"] for r in results}
    n_frames = n_truths = n_dets = found = read = plates = plates_read = 0
    char_errors = char_total = false_alarms = empty = 0
    for frame in frames:
        dets = by_frame.get((frame.camera_id, frame.frame_id))
        if dets is None:
            continue
        n_frames += 1
        n_truths += len(frame.truths)
        n_dets += len(dets)
        plates += sum(t.kind == "plate" for t in frame.truths)
        if not frame.truths:
            empty += 1
            false_alarms += bool(dets)
        pairs = sorted(
            (
                (iou(t.box, d["box"]), ti, di)
                for ti, t in enumerate(frame.truths)
                for di, d in enumerate(dets)
            ),
            reverse=True,
        )
        used_t: set[int] = set()
        used_d: set[int] = set()
        for overlap, ti, di in pairs:
            if overlap < IOU_MATCH:
                break
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            found += 1
            truth, got = _norm(frame.truths[ti].text), _norm(dets[di]["text"] or "")
            char_errors += min(len(truth), edit_distance(truth, got))
            char_total += len(truth)
            if truth == got:
                read += 1
                plates_read += frame.truths[ti].kind == "plate"
    return Score(
        frames=n_frames,
        truths=n_truths,
        detections=n_dets,
        found=found,
        read=read,
        precision=_ratio(found, n_dets),
        recall=_ratio(found, n_truths),
        read_accuracy=_ratio(read, n_truths),
        plate_read_accuracy=_ratio(plates_read, plates),
        char_accuracy=1.0 - _ratio(char_errors, char_total) if char_total else 0.0,
        false_alarm_frames=false_alarms,
        empty_frames=empty,
    )
