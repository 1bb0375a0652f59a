"""The sensor features, computed by the same operators for training and for serving.

Per sensor, each field's rolling mean and standard deviation over the last
minute and the last ten minutes of event time
(``streamml.operators.featurize.rolling`` on frames), turned into the model's
input columns — three scale-free numbers per field, so one model fits every sensor:

- ``z``: the reading against the ten-minute baseline, in its sigmas (spikes);
- ``shift``: the one-minute mean against the ten-minute baseline, in its
  sigmas (level shifts and drifts);
- ``spread``: the one-minute spread over the ten-minute spread (variance bursts).

Because training (``model.py``) runs these same steps over generated normal
data, the model sees exactly the layout and semantics it is served with.
"""

from __future__ import annotations

from datetime import timedelta

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Stream
from streamml.operators import featurize
from streamml.operators.featurize import TimedFeaturesOut

__all__ = ["FEATURE_NAMES", "FIELDS", "MAX_DELAY", "MIN_BASELINE", "add_features"]

FIELDS = ("temperature", "vibration", "pressure")
SHORT = timedelta(seconds=60)
BASELINE = timedelta(minutes=10)
MIN_BASELINE = 120
"""Readings a sensor's ten-minute baseline needs before its features mean anything (``warm``)."""
MAX_DELAY = timedelta(seconds=2)
FEATURE_NAMES = tuple(f"{kind}_{f}" for kind in ("z", "shift", "spread") for f in FIELDS)
_MIN_STD = np.array(
    [0.05, 0.015, 0.005]
)  # a tenth of each field's usual noise: no division blow-ups


def _matrix(frame: pl.DataFrame, names: list[str]) -> np.ndarray:
    """``(rows, fields)`` float64 from Float64 columns, without a Python value per row."""
    return np.column_stack([frame.get_column(n).to_numpy() for n in names])


def _vectorize(frame: pl.DataFrame) -> pl.DataFrame:
    """Add the model's input columns (``FEATURE_NAMES``, float32) and the ``warm`` flag."""
    x = _matrix(frame, list(FIELDS))
    mean_1m = _matrix(frame, [f"{f}_mean_1m" for f in FIELDS])
    std_1m = _matrix(frame, [f"{f}_std_1m" for f in FIELDS])
    mean_10m = _matrix(frame, [f"{f}_mean_10m" for f in FIELDS])
    std_10m = _matrix(frame, [f"{f}_std_10m" for f in FIELDS])
    base_std = np.maximum(std_10m, _MIN_STD)
    features = np.hstack(
        [
            (x - mean_10m) / base_std,
            (mean_1m - mean_10m) / base_std,
            np.maximum(std_1m, _MIN_STD) / base_std,
        ]
    ).astype(np.float32)
    warm = frame.get_column("temperature_count_10m").to_numpy() >= MIN_BASELINE
    return frame.hstack(
        [pl.Series(name, features[:, i]) for i, name in enumerate(FEATURE_NAMES)]
        + [pl.Series("warm", warm)]
    )


def add_features(
    step_id: str, readings: Stream[pl.DataFrame], *, shards: int = 1
) -> TimedFeaturesOut:
    """One- and ten-minute rolling statistics per sensor (one step, both windows), then the
    model's input columns.

    ``readings`` are frames with ``sensor_id``, ``ts`` (UTC datetime) and the
    ``FIELDS``. Late and bad readings go to ``late`` and ``errs``; both
    windows see the same accepted readings. ``shards``: state shards (one
    per worker or two is right; features do not depend on it).
    """
    stats = featurize.rolling(
        f"{step_id}_rolling",
        readings,
        key="sensor_id",
        timestamp="ts",
        window=[SHORT, BASELINE],
        label=["1m", "10m"],
        fields={
            "temperature": ["mean", "std", "count"],  # the ten-minute count decides ``warm``
            "vibration": ["mean", "std"],
            "pressure": ["mean", "std"],
        },
        max_delay=MAX_DELAY,
        shards=shards,
    )
    vectors = op.map(f"{step_id}_vector", stats.oks, _vectorize)
    return TimedFeaturesOut(vectors, stats.errs, stats.late)
