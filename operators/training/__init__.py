"""Training data from the online code: replay stored events through the same featurization.

- :func:`training_table`: replay a topic (from offset 0) or a Parquet/NDJSON
  file through ``features(step_id, frames)`` - the function the online flow
  uses - and join each row with the first label of its key within
  ``label_delay`` after it (point in time, like Chronon's label join);
- :func:`join_labels`: that label join on its own;
- :func:`replay`: the replay on its own;
- :func:`check_consistency`: replay events offline and list the rows whose
  features differ from what the online flow emitted.
"""

from streamml.operators.training.consistency import Consistency, check_consistency
from streamml.operators.training.labels import TrainingTable, join_labels, training_table
from streamml.operators.training.replay import (
    Features,
    KafkaTopic,
    Replayed,
    Source,
    read_events,
    replay,
)

__all__ = [
    "Consistency",
    "Features",
    "KafkaTopic",
    "Replayed",
    "Source",
    "TrainingTable",
    "check_consistency",
    "join_labels",
    "read_events",
    "replay",
    "training_table",
]
