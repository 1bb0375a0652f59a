"""Joins for ML pipelines: enrichment, as-of, interval and delayed-label joins, and drift.

- :func:`enrich`: stream–table join against a changelog (e.g. a compacted
  topic read by :func:`kafka_table`), with misses defaulted or held.
- :func:`asof_join`: temporal join, the table version valid at each event's
  time (point-in-time correct features).
- :func:`interval_join`: Flink's interval join, inner or left-outer.
- :func:`label_join`: predictions joined with delayed ground truth, with
  per-window, per-model-version metrics (:mod:`.metrics`).
- :func:`drift`: population stability index per window against a reference,
  with alerts.

Every join shards its state by a CRC32 of the key (``shards=``) so one Python
call handles a batch, and results do not depend on the number of workers.
Bytewax's ``join``/``join_window`` keep one state object per key, which costs a
Python call per key per batch and a watermark per key that stalls on idle
keys; the shards avoid both.
"""

from streamml.operators.join._shards import MISSING
from streamml.operators.join.asof import asof_join
from streamml.operators.join.drift import DriftOut, drift, psi
from streamml.operators.join.enrich import EnrichOut, enrich, merge_fields
from streamml.operators.join.interval import JoinOut, interval_join
from streamml.operators.join.label import LabelJoinOut, label_join
from streamml.operators.join.metrics import (
    ClassificationStats,
    RegressionStats,
    classification_metrics,
    regression_metrics,
)
from streamml.operators.join.table import Table, TableReady, kafka_table

__all__ = [
    "MISSING",
    "ClassificationStats",
    "DriftOut",
    "LabelJoinOut",
    "RegressionStats",
    "EnrichOut",
    "JoinOut",
    "Table",
    "TableReady",
    "asof_join",
    "classification_metrics",
    "drift",
    "enrich",
    "interval_join",
    "kafka_table",
    "label_join",
    "merge_fields",
    "psi",
    "regression_metrics",
]
