"""PP-OCRv4 as two batch models: a text detector over whole frames, a reader over the boxes it found.

Both satisfy :class:`streamml.models.Model`, so the :func:`~streamml.operators.infer.infer`
operator batches frames for them dynamically. Each wraps an
:class:`~streamml.models.OnnxModel` and does the model's pre- and
post-processing on the whole batch in NumPy:

- :class:`TextDetector` takes frames of one fixed size (``uint8`` RGB), runs
  the DB detection network once per batch, and turns its probability maps
  into at most ``max_boxes`` boxes per frame (one labelling pass over the
  whole batch, then the DB "unclip" that grows each shrunk text kernel back
  to the text's extent).
- :class:`TextReader` takes the same frames and their boxes, cuts every box
  out, scales each to the recogniser's fixed 48 × 320 input (padding the
  right), reads all the crops of the batch in one call, and CTC-decodes them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from streamml.models import OnnxModel, TensorSpec, as_feeds

__all__ = ["TextDetector", "TextReader", "ctc_decode", "to_network_input"]

# Within a frame pixels touch in 4 directions; frames of a batch never touch.
_BATCH_CROSS = np.zeros((3, 3, 3), dtype=bool)
_BATCH_CROSS[1] = ndimage.generate_binary_structure(2, 1)


def to_network_input(images: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` RGB ``uint8`` to the ``(N, 3, H, W)`` BGR float input PP-OCR was trained on.

    Scaled to [-1, 1] (mean 0.5, std 0.5 of the 0–1 range).

    Examples:
        >>> x = to_network_input(np.array([[[[255, 0, 0]]]], dtype=np.uint8))
        >>> x.shape, x[0, :, 0, 0].tolist()
        ((1, 3, 1, 1), [-1.0, -1.0, 1.0])
    """
    x = images[..., ::-1].astype(np.float32)
    x *= 2.0 / 255.0
    x -= 1.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def ctc_decode(probs: np.ndarray, charset: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Greedy CTC decoding of ``(N, T, C)`` class probabilities: texts and mean confidences.

    Class 0 is the blank; repeated classes collapse; ``charset[c]`` is the
    character of class ``c``.

    Examples:
        >>> chars = np.array(["", "A", "B"], dtype=object)
        >>> p = np.eye(3, dtype=np.float32)[[[1, 1, 0, 1, 2, 0]]]
        >>> ctc_decode(p, chars)
        (['AAB'], array([1.], dtype=float32))
    """
    idx = probs.argmax(axis=2)
    best = probs.max(axis=2)
    keep = idx != 0
    keep[:, 1:] &= idx[:, 1:] != idx[:, :-1]
    texts = ["".join(charset[row[k]]) for row, k in zip(idx, keep)]
    counts = keep.sum(axis=1)
    scores = np.where(counts > 0, (best * keep).sum(axis=1) / np.maximum(counts, 1), 0.0)
    return texts, scores.astype(np.float32)


class TextDetector:
    """The PP-OCRv4 DB text detector as a batch model: frames in, text boxes out.

    Args:
        path: The detector ``.onnx`` (see :mod:`examples.camera_detection.build`).
        size: ``(width, height)`` of the frames; both multiples of 32.
        threshold: Probability above which a pixel is text.
        box_threshold: Mean probability a box needs to be kept.
        unclip_ratio: How far the shrunk text kernel is grown back (DB's ratio).
        max_boxes: Boxes kept per frame (the most confident).
        intra_op_threads: ONNX Runtime threads (``None``: one per core).

    The model's input ``"image"`` is one ``uint8`` RGB frame of ``size``; its
    output ``"boxes"`` is ``(max_boxes, 5)`` per frame: ``x0, y0, x1, y1,
    score``, with unused rows all zero.

    Examples:
        >>> import io
        >>> from examples.camera_detection.build import build_models
        >>> from examples.camera_detection.scene import render_frames
        >>> files = build_models()
        >>> detector = TextDetector(files.detector, intra_op_threads=1)
        >>> frame = render_frames(1)[0]
        >>> image = np.asarray(Image.open(io.BytesIO(frame.image)).convert("RGB"))
        >>> boxes = detector.predict(image[None])["boxes"]
        >>> boxes.shape, (boxes[0, :, 4] > 0).sum().item()
        ((1, 8, 5), 1)
        >>> frame.truths[0].box, boxes[0, 0, :4].round().astype(int).tolist()
        ((99, 65, 169, 81), [97, 61, 173, 85])
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        size: tuple[int, int] = (320, 192),
        threshold: float = 0.3,
        box_threshold: float = 0.5,
        unclip_ratio: float = 1.6,
        max_boxes: int = 8,
        intra_op_threads: int | None = None,
    ) -> None:
        width, height = size
        if width % 32 or height % 32 or width <= 0 or height <= 0:
            raise ValueError(f"size must be multiples of 32 (the detector's stride); got {size}")
        if max_boxes < 1:
            raise ValueError(f"max_boxes must be >= 1; got {max_boxes}")
        self._net = OnnxModel(path, intra_op_threads=intra_op_threads, warmup=False)
        self._threshold = threshold
        self._box_threshold = box_threshold
        self._unclip = unclip_ratio
        self._max_boxes = max_boxes
        self._inputs = {"image": TensorSpec(np.dtype(np.uint8), (height, width, 3))}
        self.predict(np.zeros((1, height, width, 3), dtype=np.uint8))  # warm up, fail early

    @property
    def version(self) -> str:
        """The network's file stem and hash, e.g. ``"ppocrv4_det@b0b20d25"``."""
        return self._net.version

    @property
    def inputs(self) -> dict[str, TensorSpec]:
        """What one event gives the model."""
        return dict(self._inputs)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The arrays :meth:`predict` returns."""
        return ("boxes",)

    @property
    def network(self) -> OnnxModel:
        """The underlying ONNX model (for measuring the network alone)."""
        return self._net

    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, Any]:
        images = as_feeds(self._inputs, inputs)["image"]
        (prob,) = self._net.predict(to_network_input(images)).values()
        return {"boxes": self.boxes(prob[:, 0])}

    def boxes(self, prob: np.ndarray) -> np.ndarray:
        """``(N, max_boxes, 5)`` boxes from ``(N, H, W)`` text probability maps."""
        n, height, width = prob.shape
        out = np.zeros((n, self._max_boxes, 5), dtype=np.float32)
        labels, _ = ndimage.label(prob > self._threshold, structure=_BATCH_CROSS)
        found: list[list[tuple[float, float, float, float, float]]] = [[] for _ in range(n)]
        for region in ndimage.find_objects(labels):
            if region is None:
                continue
            frame, rows, cols = region
            h, w = rows.stop - rows.start, cols.stop - cols.start
            if min(h, w) < 3:
                continue
            score = float(prob[region].mean())
            if score < self._box_threshold:
                continue
            grow = w * h * self._unclip / (2 * (w + h))
            found[frame.start].append(
                (
                    max(0.0, cols.start - grow),
                    max(0.0, rows.start - grow),
                    min(float(width), cols.stop + grow),
                    min(float(height), rows.stop + grow),
                    score,
                )
            )
        for i, boxes in enumerate(found):
            if boxes:
                best = sorted(boxes, key=lambda b: -b[4])[: self._max_boxes]
                best.sort(key=lambda b: (b[1], b[0]))  # reading order: top to bottom
                out[i, : len(best)] = best
        return out


class TextReader:
    """The PP-OCRv4 recogniser as a batch model: frames and their boxes in, texts out.

    Args:
        path: The recogniser ``.onnx``.
        charset: Its characters in class order, without the CTC blank (the
            file :mod:`examples.camera_detection.build` writes); a space is
            appended as the last class, as PP-OCR does.
        size: ``(width, height)`` of the frames.
        max_boxes: Boxes per frame, as in :class:`TextDetector`.
        chunk: Most crops per network call. 1 by default: on a CPU this
            network reads fastest one crop at a time (measured on a 2-core
            Xeon: 4 or 16 crops a call cost 15–35 % more per crop, their
            activations no longer fitting the 2 MiB L2 cache); raise it on a GPU.
        intra_op_threads: ONNX Runtime threads (``None``: one per core).

    Inputs ``"image"`` (a frame) and ``"boxes"`` (the detector's output for
    it); outputs ``"texts"`` and ``"text_scores"``, ``max_boxes`` per frame
    (``""`` and 0 where there is no box).

    Examples:
        >>> import io
        >>> from examples.camera_detection.build import build_models
        >>> from examples.camera_detection.scene import render_frames
        >>> files = build_models()
        >>> reader = TextReader(files.recognizer, files.charset, intra_op_threads=1)
        >>> frame = render_frames(1)[0]
        >>> image = np.asarray(Image.open(io.BytesIO(frame.image)).convert("RGB"))
        >>> boxes = np.zeros((1, 8, 5), np.float32)
        >>> boxes[0, 0] = (*frame.truths[0].box, 1.0)
        >>> out = reader.predict({"image": image[None], "boxes": boxes})
        >>> frame.truths[0].text, out["texts"][0, 0], bool(out["text_scores"][0, 0] > 0.9)
        ('BAY 12', 'BAY12', True)
    """

    height = 48
    width = 320

    def __init__(
        self,
        path: str | os.PathLike[str],
        charset: str | os.PathLike[str],
        *,
        size: tuple[int, int] = (320, 192),
        max_boxes: int = 8,
        chunk: int = 1,
        intra_op_threads: int | None = None,
    ) -> None:
        self._net = OnnxModel(path, intra_op_threads=intra_op_threads, warmup=False)
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1; got {chunk}")
        chars = Path(charset).read_text(encoding="utf-8").split("\n")
        self._charset = np.array(["", *chars, " "], dtype=object)
        self._chunk = chunk
        width, height = size
        self._inputs = {
            "image": TensorSpec(np.dtype(np.uint8), (height, width, 3)),
            "boxes": TensorSpec(np.dtype(np.float32), (max_boxes, 5)),
        }
        self._max_boxes = max_boxes
        boxes = np.zeros((1, max_boxes, 5), dtype=np.float32)
        boxes[0, 0] = (0, 0, 64, 32, 1.0)
        self.predict({"image": np.zeros((1, height, width, 3), np.uint8), "boxes": boxes})

    @property
    def version(self) -> str:
        """The network's file stem and hash, e.g. ``"ppocrv4_det@b0b20d25"``."""
        return self._net.version

    @property
    def inputs(self) -> dict[str, TensorSpec]:
        """What one event gives the model."""
        return dict(self._inputs)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The arrays :meth:`predict` returns."""
        return ("texts", "text_scores")

    @property
    def network(self) -> OnnxModel:
        """The underlying ONNX model (for measuring the network alone)."""
        return self._net

    def crops(
        self, images: np.ndarray, boxes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every box with a score, cut out and scaled to the recogniser's height.

        Returns ``(x, widths, where)``: the crops as network input ``(M, 3,
        48, 320)`` (zero right of each crop's scaled width, as in training),
        each crop's scaled width, and where it came from (its flat index
        ``frame * max_boxes + box``).
        """
        where = np.flatnonzero(boxes[:, :, 4].reshape(-1) > 0)
        batch = np.zeros((len(where), self.height, self.width, 3), dtype=np.uint8)
        widths = np.zeros(len(where), dtype=np.int64)
        for j, flat in enumerate(where.tolist()):
            frame, k = divmod(flat, self._max_boxes)
            x0, y0, x1, y1 = (int(round(v)) for v in boxes[frame, k, :4])
            crop = images[frame, y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)]
            h, w = crop.shape[:2]
            scaled_w = max(1, min(self.width, math.ceil(self.height * w / h)))
            resized = Image.fromarray(crop).resize((scaled_w, self.height), Image.BILINEAR)
            batch[j, :, :scaled_w] = np.asarray(resized)
            widths[j] = scaled_w
        x = to_network_input(batch)
        for j, scaled_w in enumerate(widths.tolist()):
            x[j, :, :, scaled_w:] = 0.0
        return x, widths, where

    def chunks(self, x: np.ndarray, widths: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """The network calls for a batch of crops: ``(crop indices, input)`` for each.

        Each crop is padded to its own width rounded up to 32 pixels, and
        crops of one padded width are read together, up to ``chunk`` a call:
        a batch of short plates does not pay for 320 pixels of padding, and
        what a crop reads does not depend on the other crops in its batch.
        """
        padded = np.minimum(-(-widths // 32) * 32, self.width)
        calls = []
        for width in np.unique(padded).tolist():
            same = np.flatnonzero(padded == width)
            for lo in range(0, len(same), self._chunk):
                idx = same[lo : lo + self._chunk]
                calls.append((idx, np.ascontiguousarray(x[idx, :, :, :width])))
        return calls

    def predict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        feeds = as_feeds(self._inputs, inputs)
        images, boxes = feeds["image"], feeds["boxes"]
        n = len(images)
        texts = np.full(n * self._max_boxes, "", dtype=object)
        scores = np.zeros(n * self._max_boxes, dtype=np.float32)
        x, widths, where = self.crops(images, boxes)
        for idx, batch in self.chunks(x, widths):
            (probs,) = self._net.predict(batch).values()
            texts[where[idx]], scores[where[idx]] = ctc_decode(probs, self._charset)
        shape = (n, self._max_boxes)
        return {"texts": texts.reshape(shape), "text_scores": scores.reshape(shape)}
