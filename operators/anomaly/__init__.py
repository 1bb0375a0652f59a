"""Anomaly windows: streaming anomaly scores, and anomalies reported as windows.

An operator watching a fleet of sensors does not want ten thousand red points;
they want "pump 17 was anomalous from 10:02:13 to 10:04:50, peak score 9.3, on
vibration". This package turns a keyed stream of events into exactly that.

Two operators, both per key and in event time:

- :func:`score` adds an anomaly score to every event with one of the scorers
  :class:`ZScore` (rolling mean and standard deviation over a time window),
  :class:`RobustZScore` (rolling median and MAD) or :class:`Ewma` (an EWMA
  control chart with a half-life).
- :func:`anomaly_windows` groups consecutive anomalous points of a key into
  windows with hysteresis (``open_above`` / ``close_below``, ``min_points``,
  ``cooldown``, ``gap``, ``max_duration``) and emits one record per window,
  plus an optional "opened" alert. Its ``score`` is either the name of a field
  already on the events (a model's score from the inference operator, or the
  output of :func:`score`) or a scorer, which then runs inside the same step.

Speed: results are per key, but state is kept per shard. Each batch is
grouped by key once, keys are spread over ``shards`` states by a stable hash
of the key (CRC-32, the same on every worker), and each shard's state runs
the per-key logic of all its keys, so Bytewax routes one item per shard per
batch instead of every event by key.

Thresholds are a :class:`FixedThreshold` or a per-key adaptive
:class:`QuantileThreshold` with a warm-up period.

Event time: each key has a watermark, the largest timestamp seen minus
``lateness``; events are released to the scorer and the windows in timestamp
order once the watermark passes them, so results do not depend on the arrival
order within the lateness bound. Events older than the watermark go to the
``late`` stream. When a key receives nothing, its watermark advances with the
system clock (as Bytewax's ``EventClock`` does), so a quiet key's window
closes and the key's state is evicted (a key that comes back later starts
afresh: new history, new watermark); at the end of input every open window is
closed with ``closed_by="eof"``.

Every state has an eviction rule next to it: scorer history is bounded by its
time window (or half-lives) and a point cap, thresholds by their window, an
open window by ``cooldown``, ``gap`` and ``max_duration``.

Modules: :mod:`~streamml.operators.anomaly.scorers`,
:mod:`~streamml.operators.anomaly.thresholds`,
:mod:`~streamml.operators.anomaly.scoring` (:func:`score`),
:mod:`~streamml.operators.anomaly.windows` (:func:`anomaly_windows`); the
event-time gate shared by both operators is private.
"""

from __future__ import annotations

from streamml.operators.anomaly.scorers import Ewma, RobustZScore, ZScore
from streamml.operators.anomaly.scoring import ScoreOut, score
from streamml.operators.anomaly.thresholds import FixedThreshold, QuantileThreshold
from streamml.operators.anomaly.windows import AnomalyWindowsOut, anomaly_windows

__all__ = [
    "AnomalyWindowsOut",
    "Ewma",
    "FixedThreshold",
    "QuantileThreshold",
    "RobustZScore",
    "ScoreOut",
    "ZScore",
    "anomaly_windows",
    "score",
]
