"""The frame path both event-time featurizers share: check, shard, keep state, split.

``window_agg`` and ``rolling`` take polars frames the same way: the key and
timestamp name columns; each frame is checked and cut into per-shard frames
by the core's router (rows it cannot take become ``Rejected``); a stateful
step per shard computes the features; and the router's rejections join the
state's own errors. Only the state logic differs, so it is the argument.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import StatefulBatchLogic
from streamml.operators._core.columns import check_frame
from streamml.operators._core.keys import frame_sharder
from streamml.operators.featurize.outputs import TimedFeaturesOut, split_chunks

from streamml.errors import Rejected

__all__ = ["frame_features"]


def frame_features(
    step_id: str,
    up: Stream[Any],
    *,
    key: object,
    timestamp: object,
    shards: int,
    fields: Sequence[str],
    logic: Callable[[Any], StatefulBatchLogic],
) -> TimedFeaturesOut:
    """Featurize a stream of frames with ``logic(resume)`` as each shard's state.

    Call it inside an operator: its steps are ``shard``, ``split``, ``state``,
    ``oks``/``errs``/``late`` and ``all_errs``. ``key`` and ``timestamp`` must
    name columns (a ``ValueError`` at build time says so otherwise).
    """
    if not isinstance(key, str) or not isinstance(timestamp, str):
        raise ValueError(
            "for frames, key and timestamp name columns (e.g. key='sensor_id', "
            f"timestamp='ts'); got key={key!r}, timestamp={timestamp!r}"
        )
    check = partial(check_frame, step_id=step_id, timestamp=timestamp, fields=fields)
    mixed = op.flat_map_batch(
        "shard", up, frame_sharder(step_id, key=key, shards=shards, check=check)
    )
    split = op.branch("split", mixed, lambda item: isinstance(item, Rejected))
    chunks = op.stateful_batch("state", split.falses, logic)
    out = split_chunks(chunks)
    return TimedFeaturesOut(out.oks, op.merge("all_errs", split.trues, out.errs), out.late)
