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

Frames and events share every step after routing — batching, the model
call, splitting a batch the model raised on, the overlap thread, swaps,
counters and snapshots. Only reading the inputs (:mod:`.inputs`) and
attaching the outputs (:mod:`.outputs`) differ, through a small adapter per
kind (:class:`_Rows`, :class:`_Frames`).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import repeat
from typing import Any, NamedTuple

import bytewax.operators as op
import numpy as np
import polars as pl
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from streamml.errors import Rejected
from streamml.models import Model

from .._batching import DynamicBatcher
from .inputs import frame_tensors, row_tensors
from .models import Loader, Served, Watcher, check_compatible, default_loader, file_signature, serve
from .outputs import attach_frame, attach_rows, version_column
from .overlap import COLLECT_EVERY_S, ModelThread
from .recovery import record, restore_record
from .routing import Chunk, Rejects, broadcast, router
from .stats import InferStats

__all__ = ["InferOut", "infer"]

logger = logging.getLogger(__name__)

Event = Mapping[str, Any]
Part = list | pl.DataFrame  # what a batch is: (key, event) pairs, or a frame


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


class _Result(NamedTuple):
    oks: list[Any]
    errs: list[Rejected]


@dataclass(frozen=True)
class _Config:
    step_id: str
    inputs: Any
    outputs: Any
    version_field: str | None
    wait_field: str | None
    max_batch: int
    max_wait_s: float
    overlap: bool
    watch: str | os.PathLike[str] | None
    watch_interval_s: float
    watch_initial: tuple[int, int] | None
    loader: Loader
    stats: InferStats


# -- the two kinds of batch -------------------------------------------------------------


class _Rows:
    """Adapter for a batch of ``(key, event)`` pairs."""

    tensors = staticmethod(row_tensors)

    @staticmethod
    def take(part: list, keep: np.ndarray) -> list:
        return [part[i] for i in keep.tolist()]

    @staticmethod
    def originals(part: list, rows: list[int]) -> list[Any]:
        return [part[i] for i in rows]

    @staticmethod
    def slice(part: list, lo: int, hi: int) -> list:
        return part[lo:hi]

    @staticmethod
    def attach(
        cfg: _Config, served: Served, part: list, outs: dict, waits: Any, errs: list
    ) -> list:
        extras: list[tuple[str, Iterable[Any]]] = []
        if cfg.version_field is not None:
            extras.append((cfg.version_field, repeat(served.model.version, len(part))))
        if waits is not None:
            extras.append((cfg.wait_field, waits.tolist()))
        return attach_rows(served.outputs, part, outs, extras, cfg.step_id, errs)


class _Frames:
    """Adapter for a batch that is one ``polars.DataFrame``."""

    tensors = staticmethod(frame_tensors)

    @staticmethod
    def take(part: pl.DataFrame, keep: np.ndarray) -> pl.DataFrame:
        return part[keep]

    @staticmethod
    def originals(part: pl.DataFrame, rows: list[int]) -> list[Any]:
        return part[rows].to_dicts()

    @staticmethod
    def slice(part: pl.DataFrame, lo: int, hi: int) -> pl.DataFrame:
        return part.slice(lo, hi - lo)

    @staticmethod
    def attach(
        cfg: _Config, served: Served, part: pl.DataFrame, outs: dict, waits: Any, errs: list
    ) -> list:
        extras: list[Any] = []
        if cfg.version_field is not None:
            extras.append(version_column(cfg.version_field, served.model.version, len(part)))
        if waits is not None:
            extras.append(pl.Series(cfg.wait_field, waits))
        out = attach_frame(served.outputs, part, outs, extras, cfg.step_id, errs)
        return [] if out is None or out.is_empty() else [out]


def _unit(part: Part) -> type[_Rows] | type[_Frames]:
    return _Frames if isinstance(part, pl.DataFrame) else _Rows


# -- the model call ---------------------------------------------------------------------------


def _call_model(served: Served, columns: dict[str, np.ndarray], n: int) -> dict[str, Any]:
    """Run the model on ``n`` rows; the outputs to attach, each with ``n`` rows."""
    outs = served.model.predict(columns)
    picked = {}
    for name in served.outputs.needed:
        values = outs[name]
        if len(values) != n:
            raise ValueError(f"the model returned {len(values)} rows for a batch of {n}")
        picked[name] = values
    return picked


def _timed_call(
    served: Served, columns: dict[str, np.ndarray], n: int
) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    outs = _call_model(served, columns, n)
    return outs, time.monotonic() - started


class _Batch:
    """One model call's worth of rows, from assembly until its outputs are attached."""

    __slots__ = (
        "part",
        "unit",
        "columns",
        "bad",
        "waits",
        "arrivals",
        "wait_values",
        "served",
        "future",
    )

    def __init__(self, part, unit, columns, bad, waits, arrivals, wait_values, served) -> None:
        self.part: Part = part  # the rows the model scores
        self.unit: type[_Rows] | type[_Frames] = unit
        self.columns: dict[str, np.ndarray] = columns
        self.bad: int = bad  # rows rejected before the call
        self.waits: list[float] = waits
        self.arrivals: list[tuple[int, float]] = arrivals
        self.wait_values: np.ndarray | None = wait_values
        self.served: Served = served  # the model serving when the batch was cut
        self.future = None

    def __len__(self) -> int:
        return len(self.part)


class _InferLogic(StatefulBatchLogic[Any, _Result, dict]):
    """One shard: a dynamic batcher in front of the served model.

    State: the waiting rows (evicted within ``max_wait``, or at end of
    input), the batches in the model thread (at most ``MAX_IN_FLIGHT``,
    collected in order at every callback and all at end of input), and the
    control item that installed the current model.
    """

    def __init__(self, cfg: _Config, served: Served, pending: list[Part]) -> None:
        self._cfg = cfg
        self._served = served
        self._batcher: DynamicBatcher = DynamicBatcher(
            max_batch=cfg.max_batch, max_wait_s=cfg.max_wait_s
        )
        now = time.monotonic()
        for part in pending:
            self._batcher.push(part, now)
        self._thread = ModelThread(enabled=cfg.overlap, name=cfg.step_id)
        self._shard: int | None = None
        self._watcher = (
            Watcher(cfg.watch, interval_s=cfg.watch_interval_s, seen=cfg.watch_initial)
            if cfg.watch is not None
            else None
        )

    # -- Bytewax callbacks -------------------------------------------------
    def on_batch(self, values: list[Any]) -> tuple[Iterable[_Result], bool]:
        now = time.monotonic()
        result = _Result([], [])
        self._collect(result, wait=False)
        for v in values:
            kind = type(v)
            if kind is Chunk:
                self._shard = v.shard
                self._batcher.push(v.part, now)
            elif kind is Rejects:
                result.errs.extend(v.rejected)
                self._cfg.stats._record(started=now, ended=now, rejected=len(v.rejected))
            else:
                self._run_all(self._batcher.flush(), result)
                self._install(v.item, v.token, v.report, result)
        return self._step(now, result), self.RETAIN

    def on_notify(self) -> tuple[Iterable[_Result], bool]:
        result = _Result([], [])
        self._collect(result, wait=False)
        return self._step(time.monotonic(), result), self.RETAIN

    def on_eof(self) -> tuple[Iterable[_Result], bool]:
        result = _Result([], [])
        self._run_all(self._batcher.flush(), result)
        self._collect(result, wait=True)
        self._thread.shutdown()
        return ([result] if result.oks or result.errs else []), self.RETAIN

    def notify_at(self) -> datetime | None:
        times = [self._batcher.deadline()]
        if self._watcher is not None:
            times.append(self._watcher.next_poll)
        if len(self._thread):
            times.append(time.monotonic() + COLLECT_EVERY_S)
        times = [t for t in times if t is not None]
        if not times:
            return None
        return datetime.now(timezone.utc) + timedelta(
            seconds=max(0.0, min(times) - time.monotonic())
        )

    def snapshot(self) -> dict[str, Any]:
        source = self._served.source
        # Batches in the model thread have not been emitted: they resume as waiting rows.
        parts = [b.part for b in self._thread if len(b)] + self._batcher.pending()
        # A model object may not pickle (and an ONNX one is its whole file): keep references only.
        return record(parts, None if isinstance(source, Model) else source)

    # -- batching ------------------------------------------------------------
    def _step(self, now: float, result: _Result) -> list[_Result]:
        if self._watcher is not None:
            self._poll(now, result)
        self._run_all(self._batcher.due(now), result)
        self._collect(result, wait=False)
        return [result] if result.oks or result.errs else []

    def _run_all(self, batches: Iterable[tuple[Part, list]], result: _Result) -> None:
        for part, arrivals in batches:
            batch = self._prepare(part, arrivals, result)
            if self._thread.learning:
                self._collect(result, wait=True)  # learn the model's speed from its first call
            if not len(batch) or not self._thread.worth_it(len(batch)):
                self._collect(result, wait=True)  # calls in flight first: order is kept
                self._finish(batch, result)
                continue
            while self._thread.full:
                self._finish(self._thread.oldest(), result)
            self._thread.submit(batch, _timed_call, batch.served, batch.columns, len(batch))

    def _collect(self, result: _Result, *, wait: bool) -> None:
        """Attach the outputs of finished model calls, oldest first (all of them if ``wait``)."""
        for batch in self._thread.finished(wait=wait):
            self._finish(batch, result)

    def _prepare(self, part: Part, arrivals: list, result: _Result) -> _Batch:
        """Stack a batch's model inputs; rows that cannot be scored go to ``result.errs``."""
        cfg, served, unit = self._cfg, self._served, _unit(part)
        started = time.monotonic()
        waits = [started - arrived for _, arrived in arrivals]
        columns, bad = unit.tensors(part, served.inputs)
        wait_values = None
        if cfg.wait_field is not None:
            wait_values = np.repeat(np.array(waits), [count for count, _ in arrivals])
        if bad:
            rows = sorted(bad)
            mask = np.ones(len(part), dtype=bool)
            mask[rows] = False
            keep = np.flatnonzero(mask)
            for i, original in zip(rows, unit.originals(part, rows), strict=True):
                etype, reason = bad[i]
                result.errs.append(Rejected(cfg.step_id, etype, reason, original))
            part = unit.take(part, keep)
            columns = {n: a[keep] for n, a in columns.items()}
            if wait_values is not None:
                wait_values = wait_values[keep]
        return _Batch(part, unit, columns, len(bad), waits, arrivals, wait_values, served)

    def _finish(self, batch: _Batch, result: _Result) -> None:
        """Wait for the batch's model call (or make it) and emit its rows."""
        part, served, unit, n = batch.part, batch.served, batch.unit, len(batch)
        segments: list[tuple[int, int, dict[str, Any]]] = []
        failures: list[tuple[int, BaseException]] = []
        calls = [0]
        model_seconds = 0.0
        if batch.future is not None:
            try:
                outs, model_seconds = batch.future.result()
                calls[0] += 1
                segments.append((0, n, outs))
            except Exception as exc:  # find the bad rows by splitting, as a direct call would
                started = time.monotonic()
                self._split(served, batch.columns, 0, n, exc, segments, failures, calls)
                model_seconds = time.monotonic() - started
        elif n:
            started = time.monotonic()
            self._predict(served, batch.columns, 0, n, segments, failures, calls)
            model_seconds = time.monotonic() - started
        self._thread.learned(n, model_seconds)
        errs_before = len(result.errs)
        for lo, hi, outs in segments:
            waits = batch.wait_values[lo:hi] if batch.wait_values is not None else None
            rows = part if (lo, hi) == (0, n) else unit.slice(part, lo, hi)
            result.oks.extend(unit.attach(self._cfg, served, rows, outs, waits, result.errs))
        output_errors = len(result.errs) - errs_before
        if failures:
            originals = unit.originals(part, [i for i, _ in failures])
            for (_, exc), original in zip(failures, originals, strict=True):
                reason = f"model {served.model.version!r} raised {type(exc).__name__}: {exc}"
                result.errs.append(Rejected(self._cfg.step_id, "ModelError", reason, original))
        self._cfg.stats._record(
            started=min(arrived for _, arrived in batch.arrivals),
            ended=time.monotonic(),
            batches=calls[0],
            scored=sum(hi - lo for lo, hi, _ in segments) - output_errors,
            rejected=batch.bad + len(failures) + output_errors,
            model_errors=len(failures),
            model_seconds=model_seconds,
            max_wait=max(batch.waits),
        )

    def _predict(
        self,
        served: Served,
        columns: dict[str, np.ndarray],
        lo: int,
        hi: int,
        segments: list,
        failures: list,
        calls: list[int],
    ) -> None:
        """Score rows ``lo:hi``; when the model raises, split in halves to isolate bad rows."""
        part = {n: a[lo:hi] for n, a in columns.items()}
        try:
            outs = _call_model(served, part, hi - lo)
        except Exception as exc:
            self._split(served, columns, lo, hi, exc, segments, failures, calls)
            return
        calls[0] += 1
        segments.append((lo, hi, outs))

    def _split(
        self,
        served: Served,
        columns: dict[str, np.ndarray],
        lo: int,
        hi: int,
        exc: BaseException,
        segments: list,
        failures: list,
        calls: list[int],
    ) -> None:
        """Rows ``lo:hi`` raised ``exc`` together: one row is the failure, more are scored by halves."""
        if hi - lo == 1:
            failures.append((lo, exc))
            return
        mid = (lo + hi) // 2
        self._predict(served, columns, lo, mid, segments, failures, calls)
        self._predict(served, columns, mid, hi, segments, failures, calls)

    # -- model swaps ---------------------------------------------------------
    def _install(self, item: Any, cache_key: Any, report: bool, result: _Result) -> None:
        cfg = self._cfg
        try:
            model = cfg.loader.load(item, cache_key)
            served = serve(model, cfg.inputs, cfg.outputs, item)
            check_compatible(self._served, served)
        except Exception as exc:
            if report:  # one shard speaks for all
                logger.warning("%s: model rejected, keeping %s: %s", cfg.step_id, self.version, exc)
                cfg.stats._count_model(installed=False)
                result.errs.append(
                    Rejected(cfg.step_id, "ModelRejected", f"{type(exc).__name__}: {exc}", item)
                )
            return
        self._served = served
        if report:
            logger.info("%s: now serving model %s", cfg.step_id, model.version)
            cfg.stats._count_model(installed=True)

    @property
    def version(self) -> str:
        return self._served.model.version

    def _poll(self, now: float, result: _Result) -> None:
        seen = self._watcher.changed(now)
        if seen is None:
            return
        path = str(self._watcher.path)
        self._run_all(self._batcher.flush(), result)
        self._install(path, ("watch", path, seen), self._shard == 0, result)


@operator
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
    shards: int = 1,
    overlap: bool = True,
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
        :class:`InferOut` with ``oks``, ``errs`` and ``stats``.

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
    if not isinstance(model, Model):
        raise ValueError(
            f"model must be a streamml.models.Model (OnnxModel, CallableModel, ...); "
            f"got {type(model).__name__}"
        )
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be an int >= 1; got {max_batch!r}")
    if not isinstance(max_wait, timedelta) or max_wait < timedelta(0):
        raise ValueError(f"max_wait must be a timedelta >= 0; got {max_wait!r}")
    if not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be an int >= 1; got {shards!r}")
    if key is not None and not isinstance(key, str):
        raise ValueError(f"key must be the name of a frame's key column; got {key!r}")
    if not isinstance(watch_interval, timedelta) or watch_interval <= timedelta(0):
        raise ValueError(f"watch_interval must be a timedelta > 0; got {watch_interval!r}")
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
    if not callable(loader):
        raise ValueError(f"loader must be a function item -> Model; got {loader!r}")
    cfg = _Config(
        step_id=step_id,
        inputs=inputs,
        outputs=outputs,
        version_field=version_field,
        wait_field=wait_field,
        max_batch=max_batch,
        max_wait_s=max_wait.total_seconds(),
        overlap=bool(overlap),
        watch=watch,
        watch_interval_s=watch_interval.total_seconds(),
        watch_initial=file_signature(watch) if watch is not None else None,
        loader=Loader(loader),
        stats=InferStats(),
    )
    initial = serve(model, inputs, outputs, None)  # raises ValueError now if they do not fit

    def build(resume: Any) -> _InferLogic:
        if resume is None:
            return _InferLogic(cfg, initial, [])
        pending, source = restore_record(resume)
        served = initial
        if source is not None:
            try:
                served = serve(cfg.loader.load(source, uuid.uuid4().hex), inputs, outputs, source)
            except Exception as exc:
                logger.warning(
                    "%s: cannot reload the model after resume, using the initial one: %s",
                    step_id,
                    exc,
                )
        return _InferLogic(cfg, served, pending)

    routed = op.flat_map_batch("route", up, router(step_id, shards, key))
    if control is not None:
        swaps = op.flat_map("broadcast", control, broadcast(shards))
        # Control first: a swap that arrives together with events applies to those events.
        routed = op.merge("with_control", swaps, routed)
    results = op.stateful_batch("batch", routed, build)
    oks = op.flat_map_batch("oks", results, lambda rs: [x for _, r in rs for x in r.oks])
    errs = op.flat_map_batch("errs", results, lambda rs: [x for _, r in rs for x in r.errs])
    return InferOut(oks, errs, cfg.stats)
