"""The sensor features, computed by the same operators for training and for serving.

Per sensor, each field's rolling mean and standard deviation over the last
minute and the last ten minutes of event time
(``streamml.operators.featurize.rolling``), turned into the model's input
vector — three scale-free numbers per field, so one model fits every sensor:

- ``z``: the reading against the ten-minute baseline, in its sigmas (spikes);
- ``shift``: the one-minute mean against the ten-minute baseline, in its
  sigmas (level shifts and drifts);
- ``spread``: the one-minute spread over the ten-minute spread (variance bursts).

Because training (``model.py``) runs these same steps over generated normal
data, the model sees exactly the layout and semantics it is served with.
"""

from __future__ import annotations

from datetime import timedelta
from itertools import chain
from operator import itemgetter
from typing import Any

import bytewax.operators as op
import numpy as np
from bytewax.operators import KeyedStream
from streamml.operators import featurize
from streamml.operators.featurize import TimedFeaturesOut

__all__ = ["FEATURE_NAMES", "FIELDS", "MAX_DELAY", "MIN_BASELINE", "add_features", "reading_time"]

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


_STATISTICS = itemgetter(
    *(
        name
        for f in FIELDS
        for name in (f, f"{f}_mean_1m", f"{f}_std_1m", f"{f}_mean_10m", f"{f}_std_10m")
    ),
    "temperature_count_10m",
)
"""Each reading's value and rolling statistics, field by field, in ``_vectorize``'s layout,
then its ten-minute count."""
_N_STATISTICS = len(FIELDS) * 5 + 1


reading_time = itemgetter("ts")
"""Event time of a reading: its ``ts``, a UTC datetime (a C getter: three steps call it per reading)."""


def _vectorize(batch: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Add the float32 ``features`` vector and the ``warm`` flag to each event, one NumPy pass per batch."""
    if not batch:
        return batch
    events = [e for _, e in batch]
    flat = chain.from_iterable(map(_STATISTICS, events))
    cols = np.fromiter(flat, np.float64, len(events) * _N_STATISTICS).reshape(len(events), -1)
    stats = cols[:, :-1].reshape(len(events), len(FIELDS), 5)
    x, mean_1m, std_1m, mean_10m, std_10m = np.moveaxis(stats, 2, 0)
    base_std = np.maximum(std_10m, _MIN_STD)
    z = (x - mean_10m) / base_std
    shift = (mean_1m - mean_10m) / base_std
    spread = np.maximum(std_1m, _MIN_STD) / base_std
    vectors = np.hstack([z, shift, spread]).astype(np.float32)
    warm = (cols[:, -1] >= MIN_BASELINE).tolist()
    # In place: each event is a new dict made by the rolling step (as `rolling` documents)
    # and this step is its only reader, so copying every reading again would buy nothing.
    for event, vector, is_warm in zip(events, vectors, warm):
        event["features"] = vector
        event["warm"] = is_warm
    return batch


def add_features(step_id: str, readings: KeyedStream[dict[str, Any]]) -> TimedFeaturesOut:
    """One- and ten-minute rolling statistics per sensor (one step, both windows), then the
    model's input vector.

    Late and bad readings go to ``late`` and ``errs``; both windows see the
    same accepted readings.
    """
    stats = featurize.rolling(
        f"{step_id}_rolling",
        readings,
        timestamp=reading_time,
        window=[SHORT, BASELINE],
        label=["1m", "10m"],
        fields={
            "temperature": ["mean", "std", "count"],  # the ten-minute count decides ``warm``
            "vibration": ["mean", "std"],
            "pressure": ["mean", "std"],
        },
        max_delay=MAX_DELAY,
    )
    vectors = op.flat_map_batch(f"{step_id}_vector", stats.oks, _vectorize)
    return TimedFeaturesOut(vectors, stats.errs, stats.late)
