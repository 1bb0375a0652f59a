"""The :func:`infer` operator: dynamic batches of frames or events, one model call per batch.

How it is built: Bytewax's stateful steps are keyed, so each incoming frame
(or chunk of ``(key, event)`` pairs) is cut by the one key router
(:mod:`streamml.operators._core.keys`, through :mod:`.routing`) into parts
for ``shards`` queue keys (``"0"``, ``"1"``, ...) — a key always lands in the
same queue, which keeps its order — and each queue is a ``stateful_batch`` logic holding a
:class:`~streamml.operators._batching.DynamicBatcher` that asks Bytewax for a
notification at its oldest row's deadline. Control items (new models) are
broadcast to every queue, ahead of rows that arrive with them (the Flink
broadcast-state pattern).

The shard logic — batching, the model call, splitting a batch the model
raised on, swaps and snapshots, for frames and events alike — is in
:mod:`.shard`.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from streamml.operators import _validate

from streamml.errors import Rejected
from streamml.metrics import instrumented
from streamml.models import Model

from .copies import CopyPool
from .models import Loader, Served, default_loader, file_signature, serve
from .recovery import restore_record
from .routing import broadcast, router
from .shard import _Config, _InferLogic
from .stats import InferStats

__all__ = ["InferOut", "infer"]

logger = logging.getLogger(__name__)

Event = Mapping[str, Any]


@dataclass(frozen=True)
class InferOut:
    """The streams (and counters) of an :func:`infer` step.

    Attributes:
        oks: What was scored, in order per key: frames with the output
            columns (and the model version) added — one frame per model call,
            so small input frames come out joined and big ones sliced — or
            ``(key, event)`` pairs with the outputs as fields.
        errs: :class:`~streamml.errors.Rejected` records: invalid inputs, bad
            keys, rows the model raised on, and models that failed to load.
            A rejected frame row's ``original`` is the row as a dict.
        stats: The step's :class:`InferStats`.
    """

    oks: Stream[Any]
    errs: Stream[Rejected]
    stats: InferStats


def _shard(cfg: _Config, initial: Served, resume: Any) -> _InferLogic:
    """A shard's logic: new, or resumed from its snapshot (the model that served is loaded again).

    A model that came as a path, bytes or message is loaded again with the
    step's loader (and copied, with ``copies``); if that fails, or it came as
    a model object, the initial model serves.
    """
    if resume is None:
        return _InferLogic(cfg, initial, [])
    pending, source = restore_record(resume)
    served = initial
    if source is not None:
        try:
            loaded = cfg.loader.load(source, uuid.uuid4().hex)
            served = serve(loaded, cfg.inputs, cfg.outputs, source, cfg.copies)
            cfg.stats._serving(served.model.version, initial.model.version)
        except Exception as exc:
            logger.warning(
                "%s: cannot reload the model after resume, using the initial one: %s",
                cfg.step_id,
                exc,
            )
    return _InferLogic(cfg, served, pending)


@operator
@instrumented
def infer(
    step_id: str,
    up: Stream[Any],
    model: Model,
    *,
    inputs: Any = "features",
    outputs: Any = None,
    key: str | None = None,
    version_field: str | None = "model_version",
    max_batch: int = 1024,
    max_wait: timedelta = timedelta(milliseconds=10),
    target_latency: timedelta | None = None,
    shards: int = 1,
    overlap: bool = True,
    copies: int = 1,
    control: Stream[Any] | None = None,
    watch: str | os.PathLike[str] | None = None,
    watch_interval: timedelta = timedelta(seconds=1),
    loader: Callable[[Any], Model] = default_loader,
    wait_field: str | None = None,
) -> InferOut:
    """Score every row — of a frame, or an event — with a model called once per dynamic batch.

    Use it after featurization, wherever a model must score each row as it
    arrives: it gives batch speed with per-row results. Rows of all keys are
    gathered into batches (like Triton's dynamic batcher): a batch runs when
    ``max_batch`` rows wait or when its oldest row has waited ``max_wait``;
    with ``max_wait=timedelta(0)`` it runs whatever arrived together. Small
    frames are joined and big ones sliced, so every model call sees up to
    ``max_batch`` rows; each key's rows keep their order.

    The stream may carry ``polars.DataFrame`` batches (the unit between
    streamml steps; the fast path, nothing is done per row) or
    ``(key, event)`` pairs (for a user's own rows). A frame is scored into a
    frame with the outputs as new columns; an event into a copy with the
    outputs as fields.

    Rows whose input is missing or null, of the wrong dtype or shape, or not
    finite go to ``errs`` before the model is called (``error_type``
    ``MissingInput``, ``InputError``, ``BadDtype``, ``BadShape``,
    ``NonFinite``; see :mod:`streamml.operators.infer.inputs`); the rest of
    the batch is scored. When the model raises on a batch, the batch is split
    in halves until the offending rows are found; the others are still
    scored, and those go to ``errs`` as ``ModelError`` (an ``outputs``
    function raising gives ``OutputError``). A row whose key is null or not
    text or an integer, and an item that is neither a frame nor a
    ``(key, event)`` pair, go to ``errs`` as ``BadKey`` or ``BadItem``.
    Counters are in the returned ``stats``.

    The model can be swapped while running, between batches: send a new
    model (or a path, or what ``loader`` understands) on ``control``, or
    replace the file at ``watch``. Rows already waiting are scored by the
    old model first, and a swap arriving together with rows applies to
    them; every output says which version scored it. A model that fails to
    load, does not fit the configured inputs and outputs, takes inputs of
    another dtype or shape than the serving one, or would attach other
    fields, is reported on ``errs`` (``error_type="ModelRejected"``) and the
    old one keeps serving.

    Args:
        step_id: Unique ID.
        up: ``polars.DataFrame`` batches, or ``(key, event)`` pairs whose
            events are mappings.
        model: The model to start with (see :class:`streamml.models.Model`).
        inputs: Where each row's model input is. For frames: a column
            name (a numeric column, or an ``Array`` column of vectors), a
            list of numeric columns (stacked into one matrix in that order,
            for a model with one input), a dict from model input name to
            column(s), or a function ``frame -> array`` (or ``-> {input
            name: array}``) for anything else — images, token ids. For
            events: a field name (holding a vector, e.g. a ``float32``
            array), a list of scalar fields, a function of the event, or a
            dict of them by model input name.
        outputs: Which model outputs to attach: ``{output: name}``;
            ``{name: (output, index)}`` for one column of a 2-D output; or a
            function ``(frame, {output: array}) -> frame`` (for events:
            ``(event, {output: value}) -> event``). Default: every output
            under its own name. An output with one value per row becomes a
            plain column (a Python scalar on an event), a wider one an
            ``Array`` column (a list on an event); see
            :mod:`streamml.operators.infer.outputs`.
        key: The key column of frames: rows are routed to ``shards`` by it,
            and a row with a null or unusable key goes to ``errs``
            (``BadKey``). Needed for frames with ``shards > 1``; events
            carry their key in the pair.
        version_field: The column or field holding the model version
            (``None``: none).
        max_batch: Most rows per model call.
        max_wait: Longest time a row waits for its batch to fill.
        target_latency: If set, the batch size adapts (up to
            ``max_batch``) to hold this model latency per call: each shard
            fits ``latency = a + b * rows`` to its recent calls and cuts the
            largest batch predicted to finish within it, like Beam's
            ``BatchElements`` (see :mod:`streamml.operators.infer.adaptive`).
            For a model whose cost per row changes with load. It starts at
            one row and learns again after a restart.
        shards: Number of batch queues. Rows are spread over them by key
            and Bytewax spreads the queues over workers; use 1 for a single
            worker, and a few per worker otherwise.
        overlap: Run each shard's model calls in a thread of their own, so
            the dataflow goes on with the next rows while the model works
            (ONNX Runtime releases the GIL while it computes; a Python model
            gains nothing). A shard lets up to eight calls run ahead, and
            their rows are emitted, in order, as soon as the calls are done;
            recovery snapshots count them as waiting. Calls the model's
            recent speed says take under a millisecond run inline, since
            handing them over would cost more than it saves. ``False``: the
            model always runs inside the step, as a plain call.
        copies: How many copies of the model each process holds (see
            :mod:`streamml.operators.infer.copies`). Every model call takes
            a free copy, so no copy is ever in two calls at once — for a
            model that is not thread-safe — and with ``overlap`` a shard
            runs up to ``copies`` calls at once, in a thread per copy, its
            rows still leaving in order. That uses more cores only where
            the model's runtime releases the GIL (ONNX Runtime does) with
            one thread per call (``intra_op_threads=1``) and cores are
            spare: a runtime that already uses every core, or a Python
            model, gains nothing but memory (see the model guide's
            measurements). Copies are made with ``copy.deepcopy`` when a
            model starts serving — an ONNX model loads a session of its
            own — and every swap is copied the same way; a model that
            cannot be copied is refused at build (a swap: ``ModelRejected``).
            The shards of a process share the copies. ``1``: the model
            itself, as a plain object (no copy, no extra thread).
        control: Models (or items for ``loader``) to switch to, in order.
            After a restart from a recovery snapshot, a model that came as
            a path, bytes or message is loaded again; one sent as a model
            object is not (the initial model serves until the next swap).
        watch: A model file to poll; when it changes it is loaded with
            ``loader`` (default: :class:`~streamml.models.OnnxModel`).
        watch_interval: How often to look at ``watch``.
        loader: Turns a control item or the watched path into a model. The
            default takes a model, a path or ONNX bytes and builds an
            :class:`~streamml.models.OnnxModel` with ONNX Runtime's default
            threads; pass e.g. ``functools.partial(OnnxModel,
            intra_op_threads=1)`` to choose, or a function of a Kafka message.
        wait_field: If set, each output row gets this column or field with
            the seconds it waited for its batch.

    Returns:
        :class:`InferOut` with ``oks``, ``errs`` and ``stats``. The step's
        Prometheus metrics (:mod:`streamml.metrics`): events in and out,
        batch sizes, queue wait and model latency per call, model version.

    Examples:
        A frame in, the same frame with the score and model version out; the
        row with a null feature is rejected, the others are scored:

        >>> import bytewax.operators as op
        >>> import numpy as np
        >>> import polars as pl
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSink, TestingSource, run_main
        >>> from streamml.models import CallableModel
        >>> double_sum = CallableModel(
        ...     lambda x: 2 * x.sum(axis=1), outputs="score", shape=(2,), version="v1"
        ... )
        >>> frame = pl.DataFrame(
        ...     {"sensor": ["a", "b", "a"], "t": [20.0, 0.5, 21.0], "h": [1.0, 0.5, None]}
        ... )
        >>> flow = Dataflow("infer_frames_eg")
        >>> up = op.input("in", flow, TestingSource([frame]))
        >>> out = infer("score", up, double_sum, inputs=["t", "h"])
        >>> oks, errs = [], []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> op.output("errs", out.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> oks[0]
        shape: (2, 5)
        ┌────────┬──────┬─────┬───────┬───────────────┐
        │ sensor ┆ t    ┆ h   ┆ score ┆ model_version │
        │ ---    ┆ ---  ┆ --- ┆ ---   ┆ ---           │
        │ str    ┆ f64  ┆ f64 ┆ f32   ┆ str           │
        ╞════════╪══════╪═════╪═══════╪═══════════════╡
        │ a      ┆ 20.0 ┆ 1.0 ┆ 42.0  ┆ v1            │
        │ b      ┆ 0.5  ┆ 0.5 ┆ 2.0   ┆ v1            │
        └────────┴──────┴─────┴───────┴───────────────┘
        >>> [(r.error_type, r.original["sensor"]) for r in errs]
        [('MissingInput', 'a')]

        Events work the same way, one copy of each event per output:

        >>> events = [
        ...     ("a", {"features": np.array([1.0, 2.0], dtype=np.float32)}),
        ...     ("b", {"features": [0.5, 0.5]}),
        ...     ("a", {"features": [1.0, float("nan")]}),
        ... ]
        >>> flow = Dataflow("infer_eg")
        >>> up = op.input("in", flow, TestingSource(events))
        >>> out = infer("score", up, double_sum, max_batch=8)
        >>> oks, errs = [], []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> op.output("errs", out.errs, TestingSink(errs))
        >>> run_main(flow)
        >>> [(k, e["score"], e["model_version"]) for k, e in oks]
        [('a', 6.0, 'v1'), ('b', 2.0, 'v1')]
        >>> [(r.error_type, r.original[0]) for r in errs]
        [('NonFinite', 'a')]
        >>> out.stats.scored, out.stats.rejected
        (2, 1)
    """
    _validate.one_of("model", model, (Model,), "OnnxModel('model.onnx')")
    _validate.count("max_batch", max_batch)
    _validate.duration("max_wait", max_wait)
    if target_latency is not None:
        _validate.duration("target_latency", target_latency, minimum="positive")
    _validate.count("shards", shards)
    _validate.count("copies", copies)
    if key is not None:
        _validate.name("key", key, example="'sensor_id'")
    for arg, field in (("version_field", version_field), ("wait_field", wait_field)):
        if field is not None:
            _validate.name(arg, field, example="'model_version'")
    _validate.duration("watch_interval", watch_interval, minimum="positive")
    if not (isinstance(inputs, (str, list, tuple, Mapping)) or callable(inputs)):
        raise ValueError(
            "inputs must be a field or column name, a list of columns, a function, or a dict "
            f"of them by model input; got {inputs!r}"
        )
    if outputs is not None and not (isinstance(outputs, Mapping) or callable(outputs)):
        raise ValueError(
            f"outputs must be a dict ({{output: field}} or {{field: (output, index)}}) or a "
            f"function; got {outputs!r}"
        )
    _validate.function("loader", loader, "functools.partial(OnnxModel, intra_op_threads=1)")
    cfg = _Config(
        step_id=step_id,
        inputs=inputs,
        outputs=outputs,
        version_field=version_field,
        wait_field=wait_field,
        max_batch=max_batch,
        max_wait_s=max_wait.total_seconds(),
        target_s=None if target_latency is None else target_latency.total_seconds(),
        overlap=bool(overlap),
        watch=watch,
        watch_interval_s=watch_interval.total_seconds(),
        watch_initial=file_signature(watch) if watch is not None else None,
        loader=Loader(loader),
        stats=InferStats(),
        copies=CopyPool(copies) if copies > 1 else None,
    )
    # Raises ValueError now if they do not fit, or the model cannot be copied.
    initial = serve(model, inputs, outputs, None, cfg.copies)

    routed = op.flat_map_batch("route", up, router(step_id, shards, key))
    if control is not None:
        swaps = op.flat_map("broadcast", control, broadcast(shards))
        # Control first: a swap that arrives together with events applies to those events.
        routed = op.merge("with_control", swaps, routed)
    results = op.stateful_batch("batch", routed, functools.partial(_shard, cfg, initial))
    cfg.stats._bind(results.stream_id.rsplit(".", 2)[0], initial.model.version)
    oks = op.flat_map_batch("oks", results, lambda rs: [x for _, r in rs for x in r.oks])
    errs = op.flat_map_batch("errs", results, lambda rs: [x for _, r in rs for x in r.errs])
    return InferOut(oks, errs, cfg.stats)
