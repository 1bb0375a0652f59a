"""Camera frames rendered with known ground truth: cars with number plates, street signs, empty scenes.

Every frame is drawn with Pillow from a seeded random generator, encoded as a
camera would (mostly JPEG at varying quality, some PNG), and keeps the true
text lines in it (their text and a box around them), so the pipeline's
detections can be scored. Fonts are the DejaVu faces that matplotlib ships,
so rendering needs nothing from the system.
"""

from __future__ import annotations

import io
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "CORRUPTIONS",
    "FRAME_SIZE",
    "Frame",
    "TextTruth",
    "corrupt_payloads",
    "render_frames",
]

FRAME_SIZE = (320, 192)
"""(width, height) of the rendered frames."""

CORRUPTIONS = ("NotAvro", "TruncatedImage", "NotAnImage")
"""The kinds of bad messages :func:`corrupt_payloads` makes, in turn."""

# UK-style plates leave out letters that read like digits.
_PLATE_LETTERS = "".join(c for c in string.ascii_uppercase if c not in "IOQZ")
_SIGN_WORDS = (
    "EXIT",
    "NO PARKING",
    "SLOW",
    "GATE 4",
    "BAY 12",
    "STOP",
    "VISITORS",
    "LOADING",
    "KEEP CLEAR",
    "ENTRANCE",
)
_START = datetime(2026, 1, 1, 8, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class TextTruth:
    """One line of text drawn in a frame.

    Attributes:
        kind: ``"plate"`` or ``"sign"``.
        text: What is written.
        box: ``(x0, y0, x1, y1)`` in frame pixels, the text with a small margin
            (as a person would draw the box).
    """

    kind: str
    text: str
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class Frame:
    """One encoded camera frame and what is really in it."""

    camera_id: str
    frame_id: int
    ts: datetime
    content_type: str
    image: bytes
    truths: tuple[TextTruth, ...]

    def as_record(self) -> dict[str, Any]:
        """The frame as the Avro record the camera publishes (see ``frame.avsc``)."""
        return {
            "camera_id": self.camera_id,
            "frame_id": self.frame_id,
            "ts": self.ts,
            "content_type": self.content_type,
            "image": self.image,
        }


@lru_cache(maxsize=32)
def _font(face: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / face
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:  # matplotlib without its fonts: Pillow's own scalable font
        return ImageFont.load_default(size)


def plate_text(rng: random.Random) -> str:
    """A UK-style number plate, e.g. ``"KX21 BHT"``.

    Examples:
        >>> plate_text(random.Random(3))
        'FM00 JPP'
    """
    letters = rng.choices(_PLATE_LETTERS, k=5)
    digits = rng.choices(string.digits, k=2)
    return f"{letters[0]}{letters[1]}{digits[0]}{digits[1]} {''.join(letters[2:])}"


def _background(rng: random.Random, nrng: np.random.Generator) -> np.ndarray:
    w, h = FRAME_SIZE
    horizon = rng.randint(int(h * 0.45), int(h * 0.6))
    top = np.array([rng.randint(90, 200), rng.randint(100, 200), rng.randint(110, 220)], float)
    wall = top * rng.uniform(0.5, 0.9)
    road = np.full(3, rng.randint(50, 110), float)
    t = np.linspace(0.0, 1.0, horizon)[:, None]
    img = np.empty((h, w, 3), float)
    img[:horizon] = (top * (1 - t) + wall * t)[:, None, :]
    img[horizon:] = road
    img += nrng.normal(0.0, rng.uniform(2.0, 7.0), img.shape)
    return img


def _draw_text_box(
    draw: ImageDraw.ImageDraw,
    xy: tuple[int, int],
    text: str,
    font: Any,
    *,
    fill: tuple[int, int, int],
    ink: tuple[int, int, int],
    pad: tuple[int, int],
    border: tuple[int, int, int] | None,
) -> tuple[int, int, int, int]:
    """Draw a panel with text on it; returns the text's box with a margin."""
    x0, y0, x1, y1 = draw.textbbox(xy, text, font=font)
    px, py = pad
    draw.rectangle(
        (x0 - px, y0 - py, x1 + px, y1 + py),
        fill=fill,
        outline=border,
        width=2 if border else 0,
    )
    draw.text(xy, text, font=font, fill=ink)
    m = max(2, round(0.2 * (y1 - y0)))
    return (x0 - m, y0 - m, x1 + m, y1 + m)


def _draw_car(
    draw: ImageDraw.ImageDraw, rng: random.Random, horizon_y: int
) -> tuple[TextTruth, int]:
    w, h = FRAME_SIZE
    car_w = rng.randint(150, 230)
    car_h = rng.randint(70, 95)
    x0 = rng.randint(5, w - car_w - 5)
    y1 = rng.randint(h - 25, h - 4)
    y0 = y1 - car_h
    body = tuple(rng.randint(20, 230) for _ in range(3))
    draw.rounded_rectangle((x0, y0 + car_h // 3, x0 + car_w, y1), radius=10, fill=body)
    draw.rounded_rectangle(
        (x0 + car_w // 6, y0, x0 + car_w - car_w // 6, y0 + car_h // 3 + 6), radius=8, fill=body
    )
    glass = tuple(max(0, c - 90) for c in body)
    draw.rectangle((x0 + car_w // 5, y0 + 6, x0 + car_w - car_w // 5, y0 + car_h // 3), fill=glass)
    for wx in (x0 + car_w // 6, x0 + car_w - car_w // 6):
        draw.ellipse((wx - 14, y1 - 12, wx + 14, y1 + 12), fill=(15, 15, 15))
    text = plate_text(rng)
    face = rng.choice(("DejaVuSans-Bold.ttf", "DejaVuSansMono-Bold.ttf"))
    font = _font(face, rng.randint(15, 22))
    tw = draw.textlength(text, font=font)
    tx = int(x0 + (car_w - tw) / 2 + rng.randint(-10, 10))
    ty = int(y0 + car_h * 0.55)
    yellow = rng.random() < 0.4
    box = _draw_text_box(
        draw,
        (tx, ty),
        text,
        font,
        fill=(245, 200, 40) if yellow else (238, 238, 232),
        ink=(12, 12, 12),
        pad=(5, 3),
        border=(30, 30, 30),
    )
    return TextTruth("plate", text, box), y0


def _draw_sign(draw: ImageDraw.ImageDraw, rng: random.Random, bottom: int) -> TextTruth | None:
    w, _ = FRAME_SIZE
    text = rng.choice(_SIGN_WORDS)
    font = _font("DejaVuSans-Bold.ttf", rng.randint(14, 20))
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    tw, th = x1 - x0, y1 - y0
    if bottom - th - 20 < 8:
        return None
    tx = rng.randint(10, max(11, w - tw - 12))
    ty = rng.randint(8, bottom - th - 20)
    draw.rectangle((tx + tw // 2 - 2, ty + th, tx + tw // 2 + 2, bottom), fill=(90, 90, 90))
    fill = rng.choice(((20, 60, 160), (20, 110, 60), (150, 25, 25)))
    box = _draw_text_box(
        draw, (tx, ty), text, font, fill=fill, ink=(250, 250, 250), pad=(7, 5), border=None
    )
    return TextTruth("sign", text, box)


def _render(rng: random.Random, nrng: np.random.Generator) -> tuple[Image.Image, list[TextTruth]]:
    w, h = FRAME_SIZE
    base = _background(rng, nrng)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    truths: list[TextTruth] = []
    scene = rng.random()
    top_free = h
    if scene < 0.8:  # a car at the gate
        plate, top_free = _draw_car(draw, rng, h // 2)
        truths.append(plate)
    if scene < 0.3 or scene >= 0.9:  # a sign above (or in an otherwise empty scene)
        sign = _draw_sign(draw, rng, top_free - 4)
        if sign is not None:
            truths.append(sign)
    light = rng.uniform(0.65, 1.1)
    arr = np.asarray(img, dtype=np.float32) * light + nrng.normal(0.0, 3.0, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)), truths


def _encode(img: Image.Image, rng: random.Random) -> tuple[str, bytes]:
    buf = io.BytesIO()
    if rng.random() < 0.1:
        img.save(buf, "PNG")
        return "image/png", buf.getvalue()
    img.save(buf, "JPEG", quality=rng.randint(60, 92))
    return "image/jpeg", buf.getvalue()


def render_frames(n: int, *, cameras: int = 4, seed: int = 0) -> list[Frame]:
    """``n`` frames from ``cameras`` gate cameras, 5 frames a second each, with ground truth.

    About 80 % of frames show a car with its plate (some also a sign), 10 %
    a sign alone and 10 % nothing to read. The same seed gives the same frames.

    Examples:
        >>> frames = render_frames(3, cameras=2, seed=1)
        >>> [(f.camera_id, f.frame_id, f.content_type) for f in frames]
        [('gate-1', 0, 'image/jpeg'), ('gate-2', 0, 'image/jpeg'), ('gate-1', 1, 'image/jpeg')]
        >>> [(t.kind, t.text) for t in frames[0].truths]
        [('plate', 'KT29 AKS')]
    """
    if n < 0 or cameras < 1:
        raise ValueError(f"need n >= 0 and cameras >= 1; got n={n}, cameras={cameras}")
    return list(_iter_frames(n, cameras, seed))


def _iter_frames(n: int, cameras: int, seed: int) -> Iterator[Frame]:
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    for i in range(n):
        img, truths = _render(rng, nrng)
        content_type, data = _encode(img, rng)
        frame_id, cam = divmod(i, cameras)
        yield Frame(
            camera_id=f"gate-{cam + 1}",
            frame_id=frame_id,
            ts=_START + timedelta(milliseconds=200 * frame_id),
            content_type=content_type,
            image=data,
            truths=tuple(truths),
        )


def corrupt_payloads(encode: Any, frame: Frame, n: int) -> list[tuple[str, bytes]]:
    """``n`` bad messages, cycling through :data:`CORRUPTIONS`: ``(kind, payload)``.

    ``encode`` turns a frame record into message bytes (the Avro serde's
    ``encode_batch`` for one item), so the image faults arrive well framed
    and are caught by the image decoder, not the Avro one.

    Examples:
        >>> frame = render_frames(1)[0]
        >>> bad = corrupt_payloads(lambda r: repr(r).encode(), frame, 4)
        >>> [kind for kind, _ in bad]
        ['NotAvro', 'TruncatedImage', 'NotAnImage', 'NotAvro']
    """
    out = []
    for i in range(n):
        kind = CORRUPTIONS[i % len(CORRUPTIONS)]
        record = {**frame.as_record(), "frame_id": -1 - i}
        if kind == "NotAvro":
            payload = b"\x89PNG not a frame record " + bytes([i % 256])
        elif kind == "TruncatedImage":
            payload = encode({**record, "image": frame.image[: len(frame.image) // 3]})
        else:
            payload = encode({**record, "image": b"camera offline"})
        out.append((kind, payload))
    return out
