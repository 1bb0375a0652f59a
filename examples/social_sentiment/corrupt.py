"""Bad messages mixed into the post stream, one kind at a time, to show none is lost."""

from __future__ import annotations

import struct
from datetime import datetime, timezone
from typing import Any

import numpy as np

from streamml.serde import ConfluentAvroSerde

__all__ = ["CORRUPTION_KINDS", "EXPECTED_ERROR_TYPES", "corrupt_posts"]

CORRUPTION_KINDS = (
    "garbage_bytes",
    "unknown_schema_id",
    "truncated_body",
    "empty_text",
    "future_timestamp",
)
EXPECTED_ERROR_TYPES = {
    "garbage_bytes": "DecodeError",
    "unknown_schema_id": "UnknownSchema",
    "truncated_body": "DecodeError",
    "empty_text": "InvalidPost",
    "future_timestamp": "InvalidPost",
}
"""The dead-letter ``error_type`` each kind must end with."""


def corrupt_posts(
    serde: ConfluentAvroSerde, template: dict[str, Any], count: int, seed: int = 5
) -> list[tuple[str, bytes]]:
    """``count`` bad payloads cycling through :data:`CORRUPTION_KINDS`, each with its kind."""
    rng = np.random.default_rng(seed)
    [good] = serde.encode_batch([template])
    if not isinstance(good, bytes):
        raise ValueError(f"the template post does not encode: {good}")
    out = []
    for i in range(count):
        kind = CORRUPTION_KINDS[i % len(CORRUPTION_KINDS)]
        if kind == "garbage_bytes":
            payload = rng.bytes(int(rng.integers(1, 48)))
        elif kind == "unknown_schema_id":
            payload = struct.pack(">bI", 0, 424_242) + good[5:]
        elif kind == "truncated_body":
            payload = good[: 5 + 3]
        elif kind == "empty_text":
            [payload] = serde.encode_batch([{**template, "text": " "}])
        else:
            [payload] = serde.encode_batch(
                [{**template, "ts": datetime(2199, 1, 1, tzinfo=timezone.utc)}]
            )
        out.append((kind, payload))
    return out
