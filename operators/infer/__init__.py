"""Batched model inference on frames and events: dynamic batching, failure isolation, live swaps.

Calling a model once per row wastes most of the machine; :func:`infer`
gathers the rows a worker receives — ``polars.DataFrame`` batches, or
``(key, event)`` pairs — into batches bounded by size (``max_batch``) and by
latency (``max_wait``), runs the model once per batch, and hands each row
back with its prediction and the version of the model that made it.

One module per concept:

- :mod:`.operator`: the :func:`infer` operator (its checks and wiring);
- :mod:`.shard`: a shard's logic (batching, the model call and splitting
  a batch it raised on);
- :mod:`.routing`: frames and events to shards by key, control items to
  every shard;
- :mod:`.recovery`: a shard's snapshot as a versioned plain record;
- :mod:`.inputs`: input tensors — rows and frames to checked model inputs;
- :mod:`.outputs`: attaching outputs — model outputs onto events or as
  frame columns;
- :mod:`.models`: model loading and live swap;
- :mod:`.overlap`: the thread a shard's model calls run in;
- :mod:`.copies`: ``copies=N`` of :func:`infer` and :func:`infer_by_key` — copies of a
  model, each in one call at a time;
- :mod:`.stats`: the step's counters (:class:`InferStats`);
- :mod:`.adaptive`: the adaptive batch size of ``target_latency``;
- :mod:`.shadowing`: :func:`shadow` — a candidate model beside the live one,
  on a stable share of keys, compared online;
- :mod:`.keyed`: :func:`infer_by_key` — a model per key group, an LRU of
  loaded models.
"""

from .keyed import ByKeyOut, ModelCache, infer_by_key
from .operator import InferOut, infer

# Recovery stores written before versioned snapshot records pickled this class here.
from .recovery import _Snapshot as _Snapshot
from .shadowing import ShadowOut, ShadowStats, shadow
from .stats import InferStats

__all__ = [
    "ByKeyOut",
    "InferOut",
    "InferStats",
    "ModelCache",
    "ShadowOut",
    "ShadowStats",
    "infer",
    "infer_by_key",
    "shadow",
]
