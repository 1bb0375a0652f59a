"""Anomaly windows: streaming anomaly scores, and anomalies reported as windows.

An operator watching a fleet of sensors does not want ten thousand red points;
they want "pump 17 was anomalous from 10:02:13 to 10:04:50, peak score 9.3, on
vibration". This package turns a keyed stream of events into exactly that.

Two operators, both per key and in event time:

- :func:`score` adds an anomaly score to every event with one of the scorers
  :class:`ZScore` (rolling mean and standard deviation over a time window),
  :class:`RobustZScore` (rolling median and MAD) or :class:`Ewma` (an EWMA
  control chart with a half-life), or several of them at once,
  :class:`Combined`, voting (k of n) or pooling (max, mean) their scores.
- :func:`anomaly_windows` groups consecutive anomalous points of a key into
  windows with hysteresis (``open_above`` / ``close_below``, ``min_points``,
  ``cooldown``, ``gap``, ``max_duration``) and emits one record per window,
  plus an optional "opened" alert. Its ``score`` is either the name of a field
  already on the events (a model's score from the inference operator, or the
  output of :func:`score`) or a scorer, which then runs inside the same step.

Frames are the unit: both operators take a stream of ``polars.DataFrame``
batches with ``key=`` (the key column) and ``timestamp=`` (an event-time
column); :func:`score` gives back frames with its score columns added,
:func:`anomaly_windows` one dict per window and per alert (they are few).
``(key, event)`` rows (``key=None``) go through the same implementation,
read into columns and written back into dicts.

Speed: results are per key, but state is kept per shard. Keys are spread
over ``shards`` states by the one key router
(:func:`~streamml.operators._core.keys.route`, CRC-32 of the key, the same on
every worker and process); each shard state judges the time of all its keys
at once and runs the per-key logic of the keys with released rows, so
Bytewax routes one item per shard per batch instead of every event by key.

:func:`inactivity` reports the other kind of anomaly, a key that stops
sending: "no row for T", in event time (the key's own, or the flow's
progress) and by the wall clock while the key is quiet; on frames or on
``(key, event)`` rows alike, with one state for both.

Thresholds are a :class:`FixedThreshold` or a per-key adaptive
:class:`QuantileThreshold` with a warm-up period.

Event time is the one model of every streamml operator,
:class:`~streamml.operators._core.event_time.KeyedEventTime`: each key has a
watermark, its newest timestamp minus ``lateness``; rows are released to the
scorer and the windows in timestamp order once the watermark passes them, so
results do not depend on the arrival order within the lateness bound, on
``shards``, on workers or on batch boundaries. Rows older than the watermark
go to the ``late`` stream. While a key is quiet its watermark moves on with
the wall clock (as Bytewax's ``EventClock`` does; the clock alone never
makes a row late), so a quiet key's window closes and the key's state is
evicted (a key that comes back later starts a new history); at the end of
input every open window is closed with ``closed_by="eof"``.

Every state has an eviction rule next to it: scorer history is bounded by its
time window (or half-lives) and a point cap, thresholds by their window, an
open window by ``cooldown``, ``gap`` and ``max_duration``; a key's event time
is forgotten after ``ttl`` without rows. Snapshots are versioned records
(:mod:`streamml.operators._core.state`); stores of the release before them
are upgraded on resume (:mod:`._legacy`).

Modules: :mod:`~streamml.operators.anomaly.scorers`,
:mod:`~streamml.operators.anomaly.thresholds`,
:mod:`~streamml.operators.anomaly.scoring` (:func:`score`),
:mod:`~streamml.operators.anomaly.windows` (:func:`anomaly_windows`); the shard
state both operators run on is private (:mod:`._engine`).
"""

from __future__ import annotations

from streamml.operators.anomaly.combine import Combined
from streamml.operators.anomaly.scorers import Ewma, RobustZScore, ZScore
from streamml.operators.anomaly.scoring import ScoreOut, score
from streamml.operators.anomaly.silence import InactivityOut, inactivity
from streamml.operators.anomaly.thresholds import FixedThreshold, QuantileThreshold
from streamml.operators.anomaly.windows import AnomalyWindowsOut, anomaly_windows

__all__ = [
    "AnomalyWindowsOut",
    "Combined",
    "Ewma",
    "FixedThreshold",
    "InactivityOut",
    "QuantileThreshold",
    "RobustZScore",
    "ScoreOut",
    "ZScore",
    "anomaly_windows",
    "inactivity",
    "score",
]
