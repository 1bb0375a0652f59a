"""Featurization operators: raw events in, model-ready features out, inside the stream.

- :func:`rolling`: per-key rolling aggregates over event time, as of each event;
- :func:`window_agg`: one row of aggregates per key per closed tumbling,
  sliding or session window;
- transforms: :func:`standard_scale`, :func:`online_scale`,
  :func:`one_hot`, :func:`hash_features`, :func:`hash_text`;
- :func:`assemble`: named features to a float32 vector in a declared
  :class:`FeatureSchema` order.

Every operator that can reject input returns its ``errs`` (and, for event
time, ``late``) streams of :class:`streamml.errors.Rejected`.
"""

from streamml.operators.featurize.assembly import Feature, FeatureSchema, assemble
from streamml.operators.featurize.outputs import FeaturesOut, TimedFeaturesOut
from streamml.operators.featurize.rolling_agg import AGGREGATES, rolling, window_label
from streamml.operators.featurize.transforms import (
    ScalerParams,
    hash_features,
    hash_text,
    one_hot,
    online_scale,
    standard_scale,
)
from streamml.operators.featurize.windows import WINDOW_AGGREGATES, window_agg

__all__ = [
    "AGGREGATES",
    "Feature",
    "FeatureSchema",
    "FeaturesOut",
    "ScalerParams",
    "TimedFeaturesOut",
    "WINDOW_AGGREGATES",
    "assemble",
    "hash_features",
    "hash_text",
    "one_hot",
    "online_scale",
    "rolling",
    "standard_scale",
    "window_agg",
    "window_label",
]
