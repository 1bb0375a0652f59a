"""Machine telemetry: temperature, vibration, pressure and speed, with a few machines running hot."""

from __future__ import annotations

import numpy as np
import orjson

FEATURES = ["temperature", "vibration", "pressure", "rpm"]
"""The model's input row, in order."""


def telemetry(n: int, *, machines: int = 200, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """``n`` JSON readings keyed by machine, one a second per machine, in a random order each second.

    About one machine in twenty runs hot and shakes: those readings are the
    ones the model should flag.

    Examples:
        >>> key, value = telemetry(3, machines=2)[0]
        >>> key, sorted(orjson.loads(value))
        (b'machine-001', ['machine_id', 'pressure', 'rpm', 'seq', 'temperature', 'ts', 'vibration'])
    """
    rng = np.random.default_rng(seed)
    hot = rng.random(machines) < 0.05
    out = []
    for i in range(n):
        second, slot = divmod(i, machines)
        if slot == 0:
            order = rng.permutation(machines)
        m = int(order[slot])
        strain = 1.0 if hot[m] and rng.random() < 0.5 else 0.0
        reading = {
            "machine_id": f"machine-{m:03d}",
            "seq": i,
            "ts": 1_767_225_600_000 + second * 1000,
            "temperature": round(float(rng.normal(70 + 12 * strain, 3)), 3),
            "vibration": round(float(rng.normal(2 + 1.5 * strain, 0.3)), 4),
            "pressure": round(float(rng.normal(5, 0.1)), 4),
            "rpm": round(float(rng.normal(1500 - 200 * strain, 40)), 1),
        }
        out.append((reading["machine_id"].encode(), orjson.dumps(reading)))
    return out
