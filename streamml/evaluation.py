"""A generated anomaly benchmark set, in the spirit of the Numenta Anomaly Benchmark, and its scoring.

:func:`sensor_set` generates several keys of realistic sensor signals (a slow
trend, daily seasonality, Gaussian noise) with injected anomalies of known
kinds — spikes, level shifts, variance bursts and drifts — and the true
window of each. :func:`score_windows` scores detected anomaly windows against
those true windows: windows found, precision and recall of windows (a detected
window is a hit when it overlaps a true window of the same key) and detection
delay (from a true window's start to the first "opened" alert of a window
overlapping it).

Everything is generated from a seed: nothing is downloaded, and the same seed
gives the same set on every machine.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from operator import attrgetter
from typing import Any

import numpy as np

__all__ = ["KINDS", "SensorSet", "TrueWindow", "WindowScore", "score_windows", "sensor_set"]

KINDS = ("spike", "level_shift", "variance_burst", "drift")
"""The kinds of injected anomaly, in the order :func:`sensor_set` cycles through them."""

_START = datetime(2026, 1, 5, tzinfo=timezone.utc)


@dataclass(frozen=True)
class TrueWindow:
    """An injected anomaly: the key, its kind, its first changed sample and its first sample back to normal.

    The return to normal is part of the window: a change back is as much a
    sign of the anomaly as the change away (a detector comparing with a
    recent baseline sees both).
    """

    key: str
    kind: str
    start: datetime
    end: datetime

    @property
    def length(self) -> timedelta:
        return self.end - self.start


@dataclass(frozen=True)
class SensorSet:
    """Generated events (time-ordered dicts ``{"sensor", "time", "value"}``) and their true windows."""

    events: list[dict[str, Any]]
    truths: list[TrueWindow]
    step: timedelta


def _anomaly_lengths(kind: str, rng: np.random.Generator) -> int:
    """Length in samples of an anomaly of ``kind`` (samples are one ``step`` apart)."""
    lo, hi = {
        "spike": (1, 5),
        "level_shift": (30, 180),
        "variance_burst": (20, 120),
        "drift": (60, 240),
    }[kind]
    return int(rng.integers(lo, hi + 1))


def sensor_set(
    *,
    keys: int = 8,
    days: float = 7.0,
    step: timedelta = timedelta(minutes=1),
    anomalies_per_key: int = 4,
    warmup: timedelta = timedelta(days=1),
    seed: int = 0,
) -> SensorSet:
    """Generate a labelled anomaly benchmark: sensor signals with injected anomalies.

    Each key is a signal ``base + trend + daily seasonality + noise`` with its
    own level, amplitude, phase and noise; anomalies (cycling through
    :data:`KINDS`, in sizes of 6 to 12 noise sigmas) are placed at random
    after ``warmup``, one per slot of 600 samples and at least 120 samples
    apart, so a detector has a normal history to learn from. Lengths are in
    samples: spikes 1-5, level shifts 30-180, variance bursts 20-120, drifts
    60-240 (minutes, at the default one-minute step). The true window of an
    anomaly runs from its first changed sample to the first sample back to
    normal.

    Args:
        keys: Number of sensors (keys ``"sensor-00"``, ...).
        days: Length of each signal.
        step: Sampling interval.
        anomalies_per_key: Injected anomalies per key.
        warmup: Initial anomaly-free stretch of every key.
        seed: Random seed; the same seed gives the same set.

    Returns:
        A :class:`SensorSet`; events are sorted by time, then key.

    Examples:
        >>> s = sensor_set(keys=2, days=3, seed=1)
        >>> len(s.events), len(s.truths), s.events[0]["sensor"]
        (8640, 8, 'sensor-00')
        >>> sorted({t.kind for t in s.truths})
        ['drift', 'level_shift', 'spike', 'variance_burst']
    """
    n = int(timedelta(days=days) / step)
    first = int(warmup / step)
    spacing = 600  # samples per slot: the longest anomaly (240) twice, plus 120
    if keys < 1 or anomalies_per_key < 0:
        raise ValueError(
            f"need keys >= 1 and anomalies_per_key >= 0; got {keys}, {anomalies_per_key}"
        )
    if (n - first - 240) // spacing < anomalies_per_key:
        raise ValueError(
            f"{days} days after a {warmup} warm-up cannot hold {anomalies_per_key} anomalies "
            "in slots of 600 samples; give more days or fewer anomalies"
        )
    rng = np.random.default_rng(seed)
    minutes = np.arange(n) * (step / timedelta(minutes=1))
    columns: list[np.ndarray] = []
    truths: list[TrueWindow] = []
    for k in range(keys):
        key = f"sensor-{k:02d}"
        sigma = float(rng.uniform(0.5, 2.0))
        x = (
            rng.uniform(20, 80)
            + rng.uniform(-1, 1) * sigma * minutes / (60 * 24)  # up to a sigma a day
            + rng.uniform(2, 6)
            * sigma
            * np.sin(2 * math.pi * minutes / (60 * 24) + rng.uniform(0, 2 * math.pi))
            + rng.normal(0, sigma, n)
        )
        # anomalies: one in each of some slots, after the warm-up
        slots = (n - first - 240) // spacing
        chosen = np.sort(rng.choice(slots, size=anomalies_per_key, replace=False))
        for i, slot in enumerate(chosen):
            kind = KINDS[(k + i) % len(KINDS)]
            length = _anomaly_lengths(kind, rng)
            a = (
                first + int(slot) * spacing + int(rng.integers(0, spacing - 360))
            )  # ends >= 120 apart
            b = a + length
            size = float(rng.uniform(6, 12)) * sigma * (1 if rng.random() < 0.5 else -1)
            if kind in ("spike", "level_shift"):
                x[a:b] += size
            elif kind == "variance_burst":
                x[a:b] += rng.normal(0, abs(size) / 2, length)
            else:  # drift: a ramp away from normal, then back
                x[a:b] += size * np.linspace(1 / length, 1, length)
            truths.append(TrueWindow(key, kind, _START + a * step, _START + b * step))
        columns.append(x)
    values = np.stack(columns, axis=1).round(4).tolist()
    events = [
        {"sensor": f"sensor-{k:02d}", "time": _START + i * step, "value": v}
        for i, row in enumerate(values)
        for k, v in enumerate(row)
    ]
    truths.sort(key=lambda t: (t.start, t.key))
    return SensorSet(events, truths, step)


@dataclass(frozen=True)
class WindowScore:
    """How detected windows compare with the true windows.

    ``median_delay`` is None when no true window was detected. The
    ``*_by_kind`` maps break recall and delay down by the true windows'
    ``kind`` (when they have one).
    """

    found: int
    hits: int
    true_windows: int
    detected_true: int
    precision: float
    recall: float
    median_delay: timedelta | None
    mean_length: timedelta
    recall_by_kind: dict[str, float] = field(default_factory=dict)
    median_delay_by_kind: dict[str, timedelta | None] = field(default_factory=dict)

    @property
    def delay_ratio(self) -> float | None:
        """Median delay as a fraction of the mean true-window length."""
        if self.median_delay is None or not self.mean_length:
            return None
        return self.median_delay / self.mean_length

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: durations in seconds."""

        def secs(d: timedelta | None) -> float | None:
            return None if d is None else d.total_seconds()

        return {
            "found": self.found,
            "hits": self.hits,
            "true_windows": self.true_windows,
            "detected_true": self.detected_true,
            "precision": self.precision,
            "recall": self.recall,
            "median_delay_s": secs(self.median_delay),
            "mean_length_s": self.mean_length.total_seconds(),
            "delay_ratio": self.delay_ratio,
            "recall_by_kind": dict(self.recall_by_kind),
            "median_delay_s_by_kind": {k: secs(d) for k, d in self.median_delay_by_kind.items()},
        }


def _median(delays: list[timedelta]) -> timedelta | None:
    return statistics.median(delays) if delays else None


def score_windows(
    detected: Iterable[Mapping[str, Any]],
    truths: Iterable[Any],
    opened: Iterable[Mapping[str, Any]] = (),
    *,
    truth_key: Callable[[Any], str] = attrgetter("key"),
) -> WindowScore:
    """Score detected anomaly windows against the true ones.

    A detected window (a mapping with ``key``, ``start`` and ``end``, as
    emitted by :func:`streamml.operators.anomaly.anomaly_windows`) is a hit
    when it overlaps a true window of the same key; precision is hits over
    windows found, recall is the share of true windows overlapped by at least
    one detected window. The delay of a detected true window is the time from
    its start to the earliest ``opened_at`` among the alerts (mappings with
    ``window_id`` and ``opened_at``) of the windows overlapping it, or their
    ``start`` if that window has no alert; a detection that opened before the
    true start counts as zero delay.

    True windows are :class:`TrueWindow` or any objects with ``start`` and
    ``end`` (and optionally ``kind``); ``truth_key`` gives their key (for
    example ``attrgetter("sensor_id")``).

    Examples:
        >>> t = datetime(2026, 1, 1, tzinfo=timezone.utc)
        >>> m = timedelta(minutes=1)
        >>> truths = [TrueWindow("a", "spike", t, t + 10 * m), TrueWindow("b", "drift", t, t + 30 * m)]
        >>> found = [{"window_id": "a1", "key": "a", "start": t + 2 * m, "end": t + 5 * m},
        ...          {"window_id": "a2", "key": "a", "start": t + 60 * m, "end": t + 61 * m}]
        >>> alerts = [{"window_id": "a1", "opened_at": t + 3 * m}]
        >>> s = score_windows(found, truths, alerts)
        >>> s.precision, s.recall, s.median_delay, s.mean_length
        (0.5, 0.5, datetime.timedelta(seconds=180), datetime.timedelta(seconds=1200))
        >>> s.recall_by_kind
        {'drift': 0.0, 'spike': 1.0}
    """
    truths = list(truths)
    alert_at: dict[str, datetime] = {}
    for a in opened:
        wid = a["window_id"]
        if wid not in alert_at or a["opened_at"] < alert_at[wid]:
            alert_at[wid] = a["opened_at"]
    by_key: dict[str, list[int]] = {}
    for i, t in enumerate(truths):
        by_key.setdefault(truth_key(t), []).append(i)
    first_alert: dict[int, datetime] = {}
    found = hits = 0
    for w in detected:
        found += 1
        hit = False
        at = alert_at.get(w.get("window_id", ""), w["start"])
        for i in by_key.get(w["key"], ()):
            t = truths[i]
            if w["start"] <= t.end and w["end"] >= t.start:
                hit = True
                if i not in first_alert or at < first_alert[i]:
                    first_alert[i] = at
        hits += hit
    delay = {i: max(at - truths[i].start, timedelta(0)) for i, at in first_alert.items()}
    kinds: dict[str, list[int]] = {}
    for i, t in enumerate(truths):
        kinds.setdefault(getattr(t, "kind", None) or "", []).append(i)
    kinds.pop("", None)
    lengths = [t.end - t.start for t in truths]
    return WindowScore(
        found=found,
        hits=hits,
        true_windows=len(truths),
        detected_true=len(first_alert),
        precision=hits / found if found else 0.0,
        recall=len(first_alert) / len(truths) if truths else 0.0,
        median_delay=_median(list(delay.values())),
        mean_length=sum(lengths, timedelta(0)) / len(lengths) if lengths else timedelta(0),
        recall_by_kind={
            k: sum(i in delay for i in ix) / len(ix) for k, ix in sorted(kinds.items())
        },
        median_delay_by_kind={
            k: _median([delay[i] for i in ix if i in delay]) for k, ix in sorted(kinds.items())
        },
    )
