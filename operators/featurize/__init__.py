"""Featurization operators: raw events in, model-ready features out, inside the stream.

- :func:`rolling`: per-key rolling aggregates as of each event, over
  event-time windows (``window=``) and over the last N events (``last=``);
  on frames (a stream of ``polars.DataFrame``, the batch unit) or on
  ``(key, event)`` rows (the legacy path, same implementation);
- :func:`window_agg`: one row of aggregates per key per closed tumbling,
  sliding or session window;
- transforms: :func:`standard_scale`, :func:`online_scale` (:mod:`.scaling`),
  :func:`one_hot` (:mod:`.encoding`), :func:`hash_features`, :func:`hash_text`
  (:mod:`.hashing`);
- :func:`assemble`: named features to a float32 vector in a declared
  :class:`FeatureSchema` order.

Every operator that can reject input returns its ``errs`` (and, for event
time, ``late``) streams of :class:`streamml.errors.Rejected`; bad data never
stops the dataflow. Outcomes for bad input to the numeric operators
(``rolling``, ``window_agg``, the scalers):

========================================  ==========================================
input                                     outcome (``error_type`` on ``errs``)
========================================  ==========================================
item not a ``(str key, mapping)`` pair    ``BadItem``
(rows), not a ``DataFrame`` (frames)
frame row: key column missing, null, or   ``BadKey`` (the rest of the frame goes on)
not text or an integer
numeric field missing (frames: or null)   ``MissingField``
``str``, ``None``, ``bool``, other        ``NotANumber`` (``"2.5"`` is not parsed)
non-real value
NaN, +Inf, -Inf                           ``NonFinite``
timestamp getter raised, returned a       ``BadTimestamp``
non-``datetime`` or a naive one (frames:
column missing, null, naive ``Datetime``,
neither ``Datetime`` nor integer ms)
timestamp beyond ``max_future`` of the    ``FutureTimestamp`` (protects the key's
wall clock (default 1 day)                watermark from being pushed to year 3000)
timestamp 0 (1970) or negative (before    a valid instant: accepted, or ``late``
1970)                                     if the key's watermark is past it
older than the key's watermark            ``late`` stream, ``error_type="Late"``
========================================  ==========================================

``hash_features`` and ``hash_text`` reject missing fields
(``MissingField``) and non-strings (``NotAString``); ``one_hot`` rejects a
missing field and puts any unknown value in ``{field}_other`` (or rejects it
as ``UnknownCategory``); ``assemble`` fills or rejects (``InvalidFeature``)
as configured.
"""

from streamml.operators.featurize.assembly import Feature, FeatureSchema, assemble
from streamml.operators.featurize.encoding import one_hot
from streamml.operators.featurize.hashing import hash_features, hash_text
from streamml.operators.featurize.outputs import FeaturesOut, TimedFeaturesOut
from streamml.operators.featurize.rolling_agg import AGGREGATES, rolling, window_label
from streamml.operators.featurize.scaling import ScalerParams, online_scale, standard_scale
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
