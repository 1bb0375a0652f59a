"""A generated fleet of IoT sensors with injected anomalies and their true windows.

Each sensor reports temperature, vibration and pressure once per ``period``:
a slow trend, a daily cycle and noise, with anomalies of four kinds injected
at random times — spikes, level shifts, variance bursts and drifts — whose
true windows are returned alongside, so detections can be scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np

__all__ = ["FIELDS", "ANOMALY_KINDS", "TrueWindow", "Fleet", "generate_fleet"]

FIELDS = ("temperature", "vibration", "pressure")
ANOMALY_KINDS = ("spike", "level_shift", "variance_burst", "drift")
START = datetime(2026, 1, 1, tzinfo=timezone.utc)

_BASE = {
    "temperature": (60.0, 4.0, 0.5),
    "vibration": (2.0, 0.3, 0.15),
    "pressure": (5.0, 0.2, 0.05),
}
"""Per field: level, amplitude of the daily cycle, noise sigma."""


@dataclass(frozen=True)
class TrueWindow:
    """An injected anomaly: which sensor, which field, what kind, from when to when."""

    sensor_id: str
    field: str
    kind: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Fleet:
    """Generated readings (in event-time order) and the anomalies injected into them."""

    events: list[dict]
    truth: list[TrueWindow]


def generate_fleet(
    n_events: int,
    *,
    n_sensors: int = 20,
    period: timedelta = timedelta(seconds=1),
    anomalies_per_sensor: float = 2.0,
    seed: int = 7,
) -> Fleet:
    """Generate ``n_events`` readings over ``n_sensors`` sensors with injected anomalies.

    Examples:
        >>> fleet = generate_fleet(1000, n_sensors=4, seed=1)
        >>> len(fleet.events), sorted(fleet.events[0])
        (1000, ['pressure', 'sensor_id', 'temperature', 'ts', 'vibration'])
        >>> all(w.start < w.end for w in fleet.truth)
        True
    """
    if n_events < 1 or n_sensors < 1:
        raise ValueError(f"need n_events >= 1 and n_sensors >= 1; got {n_events}, {n_sensors}")
    rng = np.random.default_rng(seed)
    steps = -(-n_events // n_sensors)
    t = np.arange(steps) * period.total_seconds()
    day = 86_400.0
    series: dict[str, np.ndarray] = {}
    for field, (level, amplitude, sigma) in _BASE.items():
        phase = rng.uniform(0, 2 * np.pi, size=(n_sensors, 1))
        offset = rng.normal(0, amplitude / 4, size=(n_sensors, 1))
        trend = rng.normal(0, sigma / 2000, size=(n_sensors, 1)) * np.arange(steps)
        cycle = amplitude * np.sin(2 * np.pi * t / day + phase)
        noise = rng.normal(0, sigma, size=(n_sensors, steps))
        series[field] = level + offset + cycle + trend + noise
    truth = _inject(series, rng, steps, period, anomalies_per_sensor)
    events = []
    for step in range(steps):
        ts = START + step * period
        for s in range(n_sensors):
            if len(events) == n_events:
                break
            events.append(
                {
                    "sensor_id": f"sensor-{s:03d}",
                    "ts": ts,
                    "temperature": float(series["temperature"][s, step]),
                    "vibration": float(series["vibration"][s, step]),
                    "pressure": float(series["pressure"][s, step]),
                }
            )
    last = events[-1]["ts"]
    truth = [w for w in truth if w.start <= last]
    return Fleet(events, truth)


def _inject(
    series: dict[str, np.ndarray],
    rng: np.random.Generator,
    steps: int,
    period: timedelta,
    per_sensor: float,
) -> list[TrueWindow]:
    """Add anomalies in place, non-overlapping per sensor, and return their windows."""
    n_sensors = next(iter(series.values())).shape[0]
    truth: list[TrueWindow] = []
    min_gap = 120
    for s in range(n_sensors):
        count = rng.poisson(per_sensor)
        if steps < 400 or count == 0:
            continue
        starts = np.sort(rng.choice(np.arange(100, steps - 150), size=count, replace=False))
        busy_until = -1
        for start in starts:
            if start <= busy_until + min_gap:
                continue
            kind = ANOMALY_KINDS[rng.integers(len(ANOMALY_KINDS))]
            field = FIELDS[rng.integers(len(FIELDS))]
            length = {"spike": 5, "level_shift": 60, "variance_burst": 40, "drift": 90}[kind]
            end = min(start + length, steps)
            sigma = _BASE[field][2]
            row = series[field][s]
            if kind == "spike":
                row[start:end] += rng.choice([-1, 1]) * rng.uniform(10, 15) * sigma
            elif kind == "level_shift":
                row[start:end] += rng.choice([-1, 1]) * rng.uniform(6, 9) * sigma
            elif kind == "variance_burst":
                row[start:end] += rng.normal(0, 6 * sigma, size=end - start)
            else:
                row[start:end] += np.linspace(0, rng.choice([-1, 1]) * 12 * sigma, end - start)
            busy_until = end
            truth.append(
                TrueWindow(
                    f"sensor-{s:03d}",
                    field,
                    kind,
                    START + int(start) * period,
                    START + int(end - 1) * period,
                )
            )
    return truth
