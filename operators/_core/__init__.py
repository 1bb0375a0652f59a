"""The one core under every operator family: key routing, event time, versioned state.

Each family (featurize, infer, anomaly, join) adds its own logic on top of
these modules and never re-implements them:

- :mod:`.keys`: the key → shard router and the one bad-key rule;
- :mod:`.event_time`: per-key watermarks, the lateness rule and the
  wall-clock idle rule (with :mod:`.admission`, the lateness verdict on a
  batch, and :mod:`.held`, the rows waiting for their watermark, in arrays
  that grow in place);
- :mod:`.arrays`: the small-array NumPy helpers of the batch paths;
- :mod:`.columns`: the checks of a frame's key, time and number columns;
- :mod:`.state`: snapshots as versioned plain records.
"""
