"""Deliberately bad messages, one kind at a time, to prove nothing is lost."""

from __future__ import annotations

import math
import struct
from datetime import datetime, timezone

import numpy as np

from streamml.serde import ConfluentAvroSerde

__all__ = ["CORRUPTION_KINDS", "corrupt_payloads"]

CORRUPTION_KINDS = (
    "garbage_bytes",
    "wrong_magic_byte",
    "unknown_schema_id",
    "truncated_body",
    "nan_reading",
    "absurd_timestamp",
)


def corrupt_payloads(
    serde: ConfluentAvroSerde, template: dict, count: int, seed: int = 3
) -> list[tuple[str, bytes]]:
    """``count`` bad payloads cycling through :data:`CORRUPTION_KINDS`, with their kind."""
    rng = np.random.default_rng(seed)
    [good] = serde.encode_batch([template])
    assert isinstance(good, bytes)
    out = []
    for i in range(count):
        kind = CORRUPTION_KINDS[i % len(CORRUPTION_KINDS)]
        if kind == "garbage_bytes":
            payload = rng.bytes(int(rng.integers(1, 64)))
        elif kind == "wrong_magic_byte":
            payload = b"\x07" + good[1:]
        elif kind == "unknown_schema_id":
            payload = struct.pack(">bI", 0, 999_999) + good[5:]
        elif kind == "truncated_body":
            payload = good[: len(good) - 9]
        elif kind == "nan_reading":
            [payload] = serde.encode_batch([{**template, "temperature": math.nan}])
        else:
            future = datetime(2200, 1, 1, tzinfo=timezone.utc)
            [payload] = serde.encode_batch([{**template, "ts": future}])
        out.append((kind, payload))
    return out
