"""Batched model inference with per-event semantics: dynamic batching, failure isolation, live swaps.

Calling a model once per event wastes most of the machine; :func:`infer`
gathers the events of a worker into batches bounded by size (``max_batch``)
and by latency (``max_wait``), runs the model once per batch, and hands each
event back with its prediction and the version of the model that made it.

How it is built: Bytewax's stateful steps are keyed, so each incoming chunk
of ``(key, event)`` pairs is routed whole to one of ``shards`` queue keys
(``"0"``, ``"1"``, ...) by a stable hash of the event key — a key always
lands in the same queue, which keeps its order — and each queue is a
``stateful_batch`` logic holding a :class:`~streamml.operators._batching.DynamicBatcher`
that asks Bytewax for a notification at its oldest event's deadline. Control
items (new models) are broadcast to every queue, ahead of events that
arrive with them (the Flink broadcast-state pattern).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import repeat
from pathlib import Path
from typing import Any, NamedTuple

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from streamml.errors import Rejected
from streamml.models import Model, OnnxModel, TensorSpec
from streamml.models.protocol import shape_matches

from ._batching import DynamicBatcher

__all__ = ["InferOut", "InferStats", "infer"]

logger = logging.getLogger(__name__)

Event = Mapping[str, Any]
InputGetter = str | Callable[[Event], Any]
OutputFn = Callable[[Event, dict[str, Any]], Event]

_ROUTE_CACHE_MAX = 100_000
# Model calls a shard lets run ahead of the dataflow, and how often it looks whether they are done.
_MAX_IN_FLIGHT = 8
# A model call shorter than this runs inline: handing it to the thread costs more than it saves.
_OVERLAP_MIN_S = 0.001
_COLLECT_EVERY_S = 0.0005


class InferStats:
    """Counters of one :func:`infer` step, shared by its shards in a process.

    Read them at any time (they are updated once per batch), e.g. log
    :meth:`as_dict` from a timer or after ``run_main``.

    Attributes:
        batches: Model calls that succeeded (retries after a split count too).
        scored: Events that got a prediction.
        rejected: Events sent to the error stream (bad input or model error).
        model_errors: Events the model raised on, found by splitting batches.
        swaps: Models installed while running.
        models_rejected: Models that failed to load or validate.
        model_seconds: Time spent inside the model.
        max_wait_seconds: Longest time an event waited for its batch.

    Examples:
        >>> s = InferStats()
        >>> s.scored, s.mean_batch_size
        (0, 0.0)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.batches = 0
        self.scored = 0
        self.rejected = 0
        self.model_errors = 0
        self.swaps = 0
        self.models_rejected = 0
        self.model_seconds = 0.0
        self.max_wait_seconds = 0.0
        self._first: float | None = None
        self._last: float | None = None

    @property
    def mean_batch_size(self) -> float:
        """Events scored per successful model call."""
        return self.scored / self.batches if self.batches else 0.0

    @property
    def events_per_second(self) -> float:
        """Events scored per second of wall time since the first batch arrived."""
        if self._first is None or self._last is None or self._last <= self._first:
            return 0.0
        return self.scored / (self._last - self._first)

    def as_dict(self) -> dict[str, float]:
        """Every counter and derived rate, for logging."""
        return {
            "batches": self.batches,
            "scored": self.scored,
            "rejected": self.rejected,
            "model_errors": self.model_errors,
            "swaps": self.swaps,
            "models_rejected": self.models_rejected,
            "model_seconds": self.model_seconds,
            "max_wait_seconds": self.max_wait_seconds,
            "mean_batch_size": self.mean_batch_size,
            "events_per_second": self.events_per_second,
        }

    def _record(
        self,
        *,
        started: float,
        ended: float,
        batches: int = 0,
        scored: int = 0,
        rejected: int = 0,
        model_errors: int = 0,
        model_seconds: float = 0.0,
        max_wait: float = 0.0,
    ) -> None:
        with self._lock:
            if self._first is None:
                self._first = started
            self._last = ended
            self.batches += batches
            self.scored += scored
            self.rejected += rejected
            self.model_errors += model_errors
            self.model_seconds += model_seconds
            self.max_wait_seconds = max(self.max_wait_seconds, max_wait)

    def _count_model(self, *, installed: bool) -> None:
        with self._lock:
            if installed:
                self.swaps += 1
            else:
                self.models_rejected += 1

    def __repr__(self) -> str:
        return f"InferStats({self.as_dict()})"


@dataclass(frozen=True)
class InferOut:
    """The streams (and counters) of an :func:`infer` step.

    Attributes:
        oks: ``(key, event)`` with the model's outputs and version attached,
            each key's events in their original order.
        errs: :class:`~streamml.errors.Rejected` records: invalid inputs,
            events the model raised on, and models that failed to load.
        stats: The step's :class:`InferStats`.
    """

    oks: KeyedStream[Event]
    errs: Stream[Rejected]
    stats: InferStats


class _Swap(NamedTuple):
    """A control item broadcast to one shard.

    ``report`` is set on exactly one copy (so a rejection is reported once);
    ``token`` is the same on every copy (so a process loads the model once).
    """

    item: Any
    report: bool
    token: str


class _Chunk(NamedTuple):
    """Events that arrived together, routed to one shard."""

    shard: int
    items: list[tuple[str, Event]]


class _Result(NamedTuple):
    oks: list[tuple[str, Event]]
    errs: list[Rejected]


class _Snapshot(NamedTuple):
    """Recovery state of one shard: waiting events and what installed its model."""

    pending: tuple[tuple[str, Event], ...]
    source: Any


class _InvalidInputError(Exception):
    def __init__(self, error_type: str, reason: str) -> None:
        super().__init__(reason)
        self.error_type = error_type


class _BoundInput(NamedTuple):
    name: str
    spec: TensorSpec
    getter: InputGetter


def _default_loader(item: Any) -> Model:
    if isinstance(item, (str, bytes, os.PathLike)):
        return OnnxModel(item)
    raise TypeError(
        f"cannot load a model from a {type(item).__name__}; control items must be a Model, "
        "an ONNX path or ONNX bytes, or pass loader= to infer"
    )


def _bind_inputs(
    model: Model, inputs: InputGetter | Mapping[str, InputGetter]
) -> list[_BoundInput]:
    specs = dict(model.inputs)
    if isinstance(inputs, Mapping):
        missing = [n for n in specs if n not in inputs]
        extra = [n for n in inputs if n not in specs]
        if missing or extra:
            raise ValueError(
                f"inputs must map every model input {list(specs)} to a field or function; "
                f"missing {missing}, unknown {extra}"
            )
        return [_BoundInput(n, specs[n], inputs[n]) for n in specs]
    if len(specs) != 1:
        raise ValueError(
            f"model {model.version!r} has {len(specs)} inputs {list(specs)}; "
            "pass inputs={model input name: field or function, ...}"
        )
    name, spec = next(iter(specs.items()))
    return [_BoundInput(name, spec, inputs)]


def _bind_outputs(
    model: Model, outputs: Mapping[str, str] | OutputFn | None
) -> list[tuple[str, str]] | OutputFn:
    if callable(outputs):
        return outputs
    if outputs is None:
        return [(n, n) for n in model.outputs]
    unknown = [n for n in outputs if n not in model.outputs]
    if unknown:
        raise ValueError(
            f"outputs names {unknown}, which model {model.version!r} does not return; "
            f"it returns {list(model.outputs)}"
        )
    return list(outputs.items())


def _check_row(value: Any, spec: TensorSpec) -> np.ndarray:
    if value is None:
        raise _InvalidInputError("MissingInput", "no model input (the field is missing or None)")
    try:
        arr = np.asarray(value)
    except ValueError as exc:
        raise _InvalidInputError("BadShape", f"input is not a rectangular array: {exc}") from exc
    if arr.dtype != spec.dtype:
        if arr.dtype.kind not in "biuf" or not np.can_cast(arr.dtype, spec.dtype, "same_kind"):
            raise _InvalidInputError(
                "BadDtype", f"input has dtype {arr.dtype}; the model takes {spec.dtype}"
            )
        arr = arr.astype(spec.dtype)
    if not shape_matches(spec.shape, arr.shape):
        raise _InvalidInputError(
            "BadShape", f"input has shape {arr.shape}; the model takes {spec.shape}"
        )
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise _InvalidInputError("NonFinite", "input has NaN or infinite values")
    return arr


def _get_all(items: list[tuple[str, Event]], getter: InputGetter) -> list[Any] | None:
    try:
        if isinstance(getter, str):
            return [e.get(getter) for _, e in items]
        return [getter(e) for _, e in items]
    except Exception:  # one bad event: the per-event path finds which
        return None


def _fast_column(
    values: list[Any], spec: TensorSpec
) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Stack a whole column at once; ``None`` when some row needs a closer look."""
    try:
        arr = np.array(values)
    except (ValueError, TypeError):
        return None
    if arr.dtype != spec.dtype:
        if arr.dtype.kind not in "biuf" or not np.can_cast(arr.dtype, spec.dtype, "same_kind"):
            return None
        arr = arr.astype(spec.dtype)
    if spec.shape is not None and not shape_matches(spec.shape, arr.shape[1:]):
        return None
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr.reshape(len(arr), -1)).all(axis=1)
        if not finite.all():
            return arr, finite
    return arr, None


def _slow_column(
    items: list[tuple[str, Event]], bound: _BoundInput, bad: dict[int, tuple[str, str]]
) -> np.ndarray:
    rows: list[np.ndarray | None] = []
    for i, (_, e) in enumerate(items):
        try:
            value = e.get(bound.getter) if isinstance(bound.getter, str) else bound.getter(e)
            rows.append(_check_row(value, bound.spec))
        except _InvalidInputError as exc:
            bad.setdefault(i, (exc.error_type, f"input {bound.name!r}: {exc}"))
            rows.append(None)
        except Exception as exc:  # the getter failed on this event
            etype = "MissingInput" if isinstance(exc, (KeyError, AttributeError)) else "InputError"
            bad.setdefault(i, (etype, f"input {bound.name!r}: {type(exc).__name__}: {exc}"))
            rows.append(None)
    good = [r for r in rows if r is not None]
    if not good:
        return np.zeros((len(items), 0), dtype=bound.spec.dtype)
    shape = good[0].shape  # with no declared shape, the batch's first good row decides
    filler = np.zeros(shape, dtype=bound.spec.dtype)
    for i, r in enumerate(rows):
        if r is not None and r.shape != shape:
            bad.setdefault(
                i, ("BadShape", f"input {bound.name!r}: shape {r.shape} differs from {shape}")
            )
            rows[i] = None
    return np.stack([filler if r is None else r for r in rows])


def _assemble(
    items: list[tuple[str, Event]], bound: list[_BoundInput]
) -> tuple[dict[str, np.ndarray], dict[int, tuple[str, str]]]:
    """Model inputs for a batch, and the events that cannot be scored, by index."""
    bad: dict[int, tuple[str, str]] = {}
    columns = {}
    for b in bound:
        values = _get_all(items, b.getter)
        fast = _fast_column(values, b.spec) if values is not None else None
        if fast is None:
            columns[b.name] = _slow_column(items, b, bad)
            continue
        arr, finite = fast
        if finite is not None:
            for i in np.flatnonzero(~finite).tolist():
                bad.setdefault(i, ("NonFinite", f"input {b.name!r} has NaN or infinite values"))
        columns[b.name] = arr
    return columns, bad


def _column_values(values: Any, n: int) -> list[Any]:
    if isinstance(values, np.ndarray):
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        out = values.tolist()
    else:
        out = list(values)
    if len(out) != n:
        raise ValueError(f"the model returned {len(out)} rows for a batch of {n}")
    return out


def _attach_fields(
    items: list[tuple[str, Event]],
    names: list[str],
    cols: list[Iterable[Any]],
    out: list[tuple[str, Event]],
    fresh: bool = False,
) -> None:
    """Append ``(key, {**event, names[j]: cols[j][i]})`` for every event ``i``.

    ``fresh``: the events were just made by an outputs function; with no
    fields to attach they are passed on as they are, not copied again.

    This is the per-event hot loop of the operator: explicit assignments for
    the usual one to four fields run about three times faster than
    ``dict.update(zip(...))``.
    """
    app = out.append
    if not names:
        out.extend(items if fresh else [(k, {**e}) for k, e in items])
    elif len(names) == 1:
        (n0,), (c0,) = names, cols
        for (k, e), v0 in zip(items, c0, strict=False):
            new = {**e}
            new[n0] = v0
            app((k, new))
    elif len(names) == 2:
        (n0, n1), (c0, c1) = names, cols
        for (k, e), v0, v1 in zip(items, c0, c1, strict=False):
            new = {**e}
            new[n0] = v0
            new[n1] = v1
            app((k, new))
    elif len(names) == 3:
        (n0, n1, n2), (c0, c1, c2) = names, cols
        for (k, e), v0, v1, v2 in zip(items, c0, c1, c2, strict=False):
            new = {**e}
            new[n0] = v0
            new[n1] = v1
            new[n2] = v2
            app((k, new))
    elif len(names) == 4:
        (n0, n1, n2, n3), (c0, c1, c2, c3) = names, cols
        for (k, e), v0, v1, v2, v3 in zip(items, c0, c1, c2, c3, strict=False):
            new = {**e}
            new[n0] = v0
            new[n1] = v1
            new[n2] = v2
            new[n3] = v3
            app((k, new))
    else:
        for (k, e), row in zip(items, zip(*cols, strict=False), strict=False):
            new = {**e}
            new.update(zip(names, row, strict=False))
            app((k, new))


class _Loader:
    """Loads control items into models, once per item for all shards of a process."""

    def __init__(self, loader: Callable[[Any], Model]) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._last: tuple[Any, Model | Exception] | None = None

    def load(self, item: Any, cache_key: Any) -> Model:
        with self._lock:
            if self._last is not None and self._last[0] == cache_key:
                found = self._last[1]
            else:
                try:
                    found = item if isinstance(item, Model) else self._loader(item)
                    if not isinstance(found, Model):
                        raise TypeError(
                            f"the loader returned a {type(found).__name__}, not a Model"
                        )
                except Exception as exc:
                    found = exc
                self._last = (cache_key, found)
        if isinstance(found, Exception):
            raise found
        return found


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
    watch: Path | None
    watch_interval_s: float
    watch_initial: tuple[int, int] | None
    loader: _Loader
    stats: InferStats


class _Served(NamedTuple):
    model: Model
    inputs: list[_BoundInput]
    outputs: list[tuple[str, str]] | OutputFn
    source: Any


def _serve(cfg: _Config, model: Model, source: Any) -> _Served:
    return _Served(
        model, _bind_inputs(model, cfg.inputs), _bind_outputs(model, cfg.outputs), source
    )


def _check_compatible(old: _Served, new: _Served) -> None:
    """A swapped-in model must take the same inputs and give the same fields as the old one."""
    for a, b in zip(old.inputs, new.inputs, strict=True):
        if a.spec != b.spec:  # names were matched when binding (or do not matter for one input)
            raise ValueError(
                f"input {b.name!r} takes {b.spec.dtype} rows of shape {b.spec.shape}, but the "
                f"serving model's {a.name!r} takes {a.spec.dtype} {a.spec.shape}; changing the "
                "inputs needs a new dataflow"
            )
    if isinstance(old.outputs, list) and isinstance(new.outputs, list):
        before, after = sorted(f for _, f in old.outputs), sorted(f for _, f in new.outputs)
        if before != after:
            raise ValueError(
                f"the model would attach fields {after} instead of {before}; name the outputs "
                "to keep (outputs={...}) so every version attaches the same fields"
            )


class _Batch:
    """One model call's worth of events, from assembly until its outputs are attached."""

    __slots__ = ("items", "columns", "bad", "waits", "arrivals", "wait_values", "served", "future")

    def __init__(self, items, columns, bad, waits, arrivals, wait_values, served) -> None:
        self.items: list[tuple[str, Event]] = items  # the events the model scores
        self.columns: dict[str, np.ndarray] = columns
        self.bad: int = bad  # events rejected before the call
        self.waits: list[float] = waits
        self.arrivals: list[tuple[int, float]] = arrivals
        self.wait_values: list[float] | None = wait_values
        self.served: _Served = served  # the model serving when the batch was cut
        self.future: Future | None = None


def _call_model(served: _Served, columns: dict[str, np.ndarray], n: int) -> dict[str, list[Any]]:
    """Run the model on ``n`` rows and turn the outputs it attaches into per-row lists."""
    outs = served.model.predict(columns)
    if not isinstance(served.outputs, list):
        return {name: _column_values(v, n) for name, v in outs.items()}
    return {name: _column_values(outs[name], n) for name, _ in served.outputs}


def _timed_call(
    served: _Served, columns: dict[str, np.ndarray], n: int
) -> tuple[dict[str, list[Any]], float]:
    started = time.monotonic()
    outs = _call_model(served, columns, n)
    return outs, time.monotonic() - started


class _InferLogic(StatefulBatchLogic[Any, _Result, _Snapshot]):
    """One shard: a dynamic batcher in front of the served model.

    State: the waiting events (evicted within ``max_wait``, or at end of
    input), the batches in the model thread (at most ``_MAX_IN_FLIGHT``,
    collected in order at every callback and all at end of input), and the
    control item that installed the current model.
    """

    def __init__(self, cfg: _Config, served: _Served, pending: Iterable[tuple[str, Event]]) -> None:
        self._cfg = cfg
        self._served = served
        self._batcher: DynamicBatcher[tuple[str, Event]] = DynamicBatcher(
            max_batch=cfg.max_batch, max_wait_s=cfg.max_wait_s
        )
        self._batcher.push(list(pending), time.monotonic())
        self._in_flight: deque[_Batch] = deque()
        self._thread: ThreadPoolExecutor | None = None
        self._row_seconds: float | None = None  # the model's recent time per row
        self._shard: int | None = None
        self._watch_seen = cfg.watch_initial
        self._next_poll = 0.0

    # -- Bytewax callbacks -------------------------------------------------
    def on_batch(self, values: list[Any]) -> tuple[Iterable[_Result], bool]:
        now = time.monotonic()
        result = _Result([], [])
        self._collect(result, wait=False)
        for v in values:
            if type(v) is _Chunk:
                self._shard = v.shard
                self._batcher.push(v.items, now)
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
        if self._thread is not None:
            self._thread.shutdown(wait=False)
            self._thread = None
        return ([result] if result.oks or result.errs else []), self.RETAIN

    def notify_at(self) -> datetime | None:
        times = [t for t in (self._batcher.deadline(), self._poll_at()) if t is not None]
        if self._in_flight:
            times.append(time.monotonic() + _COLLECT_EVERY_S)
        if not times:
            return None
        return datetime.now(timezone.utc) + timedelta(
            seconds=max(0.0, min(times) - time.monotonic())
        )

    def snapshot(self) -> _Snapshot:
        source = self._served.source
        # Batches in the model thread have not been emitted: they resume as waiting events.
        in_flight = [x for b in self._in_flight for x in b.items]
        # A model object may not pickle (and an ONNX one is its whole file): keep references only.
        return _Snapshot(
            tuple(in_flight + self._batcher.pending()),
            None if isinstance(source, Model) else source,
        )

    # -- batching ------------------------------------------------------------
    def _step(self, now: float, result: _Result) -> list[_Result]:
        if self._cfg.watch is not None and now >= self._next_poll:
            self._poll(now, result)
        self._run_all(self._batcher.due(now), result)
        self._collect(result, wait=False)
        return [result] if result.oks or result.errs else []

    def _run_all(self, batches: Iterable[tuple[list, list]], result: _Result) -> None:
        for items, arrivals in batches:
            batch = self._prepare(items, arrivals, result)
            if self._cfg.overlap and self._row_seconds is None and self._in_flight:
                self._collect(result, wait=True)  # learn the model's speed from its first call
            if not batch.items or not self._worth_a_thread(len(batch.items)):
                self._collect(result, wait=True)  # calls in flight first: order is kept
                self._finish(batch, result)
                continue
            while len(self._in_flight) >= _MAX_IN_FLIGHT:
                self._finish(self._in_flight.popleft(), result)
            if self._thread is None:
                self._thread = ThreadPoolExecutor(1, thread_name_prefix=self._cfg.step_id)
            batch.future = self._thread.submit(
                _timed_call, batch.served, batch.columns, len(batch.items)
            )
            self._in_flight.append(batch)

    def _worth_a_thread(self, rows: int) -> bool:
        """Overlap a call expected to take at least ``_OVERLAP_MIN_S`` (the first one: to learn)."""
        if not self._cfg.overlap:
            return False
        return self._row_seconds is None or rows * self._row_seconds >= _OVERLAP_MIN_S

    def _collect(self, result: _Result, *, wait: bool) -> None:
        """Attach the outputs of finished model calls, oldest first (all of them if ``wait``)."""
        while self._in_flight and (wait or self._in_flight[0].future.done()):
            self._finish(self._in_flight.popleft(), result)

    def _prepare(self, items: list[tuple[str, Event]], arrivals: list, result: _Result) -> _Batch:
        """Stack a batch's model inputs; events that cannot be scored go to ``result.errs``."""
        cfg, served = self._cfg, self._served
        started = time.monotonic()
        waits = [started - arrived for _, arrived in arrivals]
        columns, bad = _assemble(items, served.inputs)
        ok_items = items
        if bad:
            keep = [i for i in range(len(items)) if i not in bad]
            ok_items = [items[i] for i in keep]
            columns = {n: a[keep] for n, a in columns.items()}
            for i, (etype, reason) in sorted(bad.items()):
                result.errs.append(Rejected(cfg.step_id, etype, reason, items[i]))
        wait_values = None
        if cfg.wait_field is not None:
            per_event = [
                w
                for (count, _), wait in zip(arrivals, waits, strict=False)
                for w in repeat(wait, count)
            ]
            wait_values = [per_event[i] for i in range(len(items)) if i not in bad]
        return _Batch(ok_items, columns, len(bad), waits, arrivals, wait_values, served)

    def _finish(self, batch: _Batch, result: _Result) -> None:
        """Wait for the batch's model call (or make it) and emit its events."""
        ok_items, served = batch.items, batch.served
        segments: list[tuple[int, int, dict[str, Any]]] = []
        failures: list[tuple[int, BaseException]] = []
        calls = [0]
        model_seconds = 0.0
        if batch.future is not None:
            try:
                outs, model_seconds = batch.future.result()
                calls[0] += 1
                segments.append((0, len(ok_items), outs))
            except Exception as exc:  # find the bad rows by splitting, as a direct call would
                started = time.monotonic()
                self._split(served, batch.columns, 0, len(ok_items), exc, segments, failures, calls)
                model_seconds = time.monotonic() - started
        elif ok_items:
            started = time.monotonic()
            self._predict(served, batch.columns, 0, len(ok_items), segments, failures, calls)
            model_seconds = time.monotonic() - started
        if ok_items and model_seconds > 0:
            self._row_seconds = model_seconds / len(ok_items)
        for lo, hi, outs in segments:
            self._attach(served, ok_items[lo:hi], outs, hi - lo, batch.wait_values, lo, result)
        for i, exc in failures:
            result.errs.append(
                Rejected(
                    self._cfg.step_id,
                    "ModelError",
                    f"model {served.model.version!r} raised {type(exc).__name__}: {exc}",
                    ok_items[i],
                )
            )
        self._cfg.stats._record(
            started=min(arrived for _, arrived in batch.arrivals),
            ended=time.monotonic(),
            batches=calls[0],
            scored=sum(hi - lo for lo, hi, _ in segments),
            rejected=batch.bad + len(failures),
            model_errors=len(failures),
            model_seconds=model_seconds,
            max_wait=max(batch.waits),
        )

    def _predict(
        self,
        served: _Served,
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
        served: _Served,
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

    def _attach(
        self,
        served: _Served,
        items: list[tuple[str, Event]],
        outs: dict[str, list[Any]],
        n: int,
        wait_values: list[float] | None,
        offset: int,
        result: _Result,
    ) -> None:
        cfg = self._cfg
        extra_names: list[str] = []
        extra_cols: list[Iterable[Any]] = []
        if cfg.version_field is not None:
            extra_names.append(cfg.version_field)
            extra_cols.append(repeat(served.model.version, n))
        if wait_values is not None:
            extra_names.append(cfg.wait_field)
            extra_cols.append(wait_values[offset : offset + n])
        if isinstance(served.outputs, list):
            names = [field for _, field in served.outputs] + extra_names
            cols = [outs[name] for name, _ in served.outputs] + extra_cols
        else:
            items = self._apply_output_fn(served.outputs, items, outs, extra_cols, result)
            names, cols = extra_names, extra_cols
        _attach_fields(items, names, cols, result.oks, fresh=not isinstance(served.outputs, list))

    def _apply_output_fn(
        self,
        fn: OutputFn,
        items: list[tuple[str, Event]],
        outs: dict[str, list[Any]],
        extra_cols: list[Iterable[Any]],
        result: _Result,
    ) -> list[tuple[str, Event]]:
        """``(key, fn(event, outputs))`` per event; an event ``fn`` raises on goes to errs.

        ``extra_cols`` are narrowed in place to the events that remain.
        """
        if len(outs) == 1:
            [(name, values)] = outs.items()
            try:  # the common case in one pass: no list of per-row dicts first
                return [(k, fn(e, {name: v})) for (k, e), v in zip(items, values, strict=True)]
            except Exception:  # find which events, keep the others
                pass
            rows = [{name: v} for v in values]
        else:
            names = list(outs)
            rows = [dict(zip(names, r, strict=True)) for r in zip(*outs.values(), strict=True)]
            try:
                return [(k, fn(e, row)) for (k, e), row in zip(items, rows, strict=True)]
            except Exception:  # find which events, keep the others
                pass
        kept, keep = [], []
        for i, ((k, e), row) in enumerate(zip(items, rows, strict=True)):
            try:
                kept.append((k, fn(e, row)))
                keep.append(i)
            except Exception as exc:
                reason = f"outputs function raised {type(exc).__name__}: {exc}"
                result.errs.append(Rejected(self._cfg.step_id, "OutputError", reason, (k, e)))
        for j, col in enumerate(extra_cols):
            values = list(col)
            extra_cols[j] = [values[i] for i in keep]
        return kept

    # -- model swaps ---------------------------------------------------------
    def _install(self, item: Any, cache_key: Any, report: bool, result: _Result) -> None:
        cfg = self._cfg
        try:
            model = cfg.loader.load(item, cache_key)
            served = _serve(cfg, model, item)
            _check_compatible(self._served, served)
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

    def _poll_at(self) -> float | None:
        return self._next_poll if self._cfg.watch is not None else None

    def _poll(self, now: float, result: _Result) -> None:
        cfg = self._cfg
        self._next_poll = now + cfg.watch_interval_s
        seen = _file_signature(cfg.watch)
        if seen is None or seen == self._watch_seen:  # missing (mid-replace?) or unchanged
            return
        self._watch_seen = seen
        self._run_all(self._batcher.flush(), result)
        self._install(str(cfg.watch), ("watch", str(cfg.watch), seen), self._shard == 0, result)


def _file_signature(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """What tells a replaced file apart: its modification time and size."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _router(shards: int) -> Callable[[list[tuple[str, Event]]], list[tuple[str, _Chunk]]]:
    if shards == 1:
        return lambda items: [("0", _Chunk(0, items))]
    cache: dict[str, int] = {}

    def route(items: list[tuple[str, Event]]) -> list[tuple[str, _Chunk]]:
        if len(cache) > _ROUTE_CACHE_MAX:
            cache.clear()
        groups: dict[int, list[tuple[str, Event]]] = {}
        for item in items:
            key = item[0]
            shard = cache.get(key)
            if shard is None:
                shard = cache[key] = zlib.crc32(key.encode()) % shards
            groups.setdefault(shard, []).append(item)
        return [(str(s), _Chunk(s, group)) for s, group in groups.items()]

    return route


@operator
def infer(
    step_id: str,
    up: KeyedStream[Event],
    model: Model,
    *,
    inputs: InputGetter | Mapping[str, InputGetter] = "features",
    outputs: Mapping[str, str] | OutputFn | None = None,
    version_field: str | None = "model_version",
    max_batch: int = 1024,
    max_wait: timedelta = timedelta(milliseconds=10),
    shards: int = 1,
    overlap: bool = True,
    control: Stream[Any] | None = None,
    watch: str | os.PathLike[str] | None = None,
    watch_interval: timedelta = timedelta(seconds=1),
    loader: Callable[[Any], Model] = _default_loader,
    wait_field: str | None = None,
) -> InferOut:
    """Score every event with a model, called once per dynamic batch.

    Use it after featurization, wherever a model must score each event as
    it arrives: it gives batch speed with per-event semantics. Events of all
    keys are gathered into batches (like Triton's dynamic batcher): a batch
    runs when ``max_batch`` events wait or when its oldest event has waited
    ``max_wait``; with ``max_wait=timedelta(0)`` it runs whatever arrived
    together. Each key's events keep their order.

    Events whose input is missing, of the wrong dtype or shape, or not finite
    go to ``errs`` before the model is called (``error_type`` ``MissingInput``,
    ``InputError``, ``BadDtype``, ``BadShape``, ``NonFinite``). When the model
    raises on a batch, the batch is split in halves until the offending
    events are found; the others are still scored, and those go to ``errs``
    as ``ModelError`` (an ``outputs`` function raising gives ``OutputError``).
    Counters (batches, mean batch size, events per second, errors) are in
    the returned ``stats``.

    The model can be swapped while running, between batches: send a new
    model (or a path, or what ``loader`` understands) on ``control``, or
    replace the file at ``watch``. Events already waiting are scored by the
    old model first, and a swap arriving together with events applies to
    them; every output says which version scored it. A model that fails to
    load, does not fit the configured inputs and outputs, takes inputs of
    another dtype or shape than the serving one, or would attach other
    fields, is reported on ``errs`` (``error_type="ModelRejected"``) and the
    old one keeps serving.

    Args:
        step_id: Unique ID.
        up: ``(key, event)`` pairs; events are mappings.
        model: The model to start with (see :class:`streamml.models.Model`).
        inputs: Where each event's model input is: a field name (holding a
            vector, e.g. the ``float32`` array from the featurization
            operators), a function of the event, or, for a model with several
            inputs, a dict from model input name to field or function.
        outputs: Which model outputs to attach, as ``{output: field}``; or a
            function ``(event, {output: value}) -> new event``. Default: all
            outputs under their own names. Outputs with one value per row
            (shape ``(n,)`` or ``(n, 1)``) are attached as Python scalars,
            wider rows as lists.
        version_field: The field holding the model version (``None``: none).
        max_batch: Most events per model call.
        max_wait: Longest time an event waits for its batch to fill.
        shards: Number of batch queues. Events are spread over them by key
            and Bytewax spreads the queues over workers; use 1 for a single
            worker, and a few per worker otherwise.
        overlap: Run each shard's model calls in a thread of their own, so
            the dataflow goes on with the next events while the model
            works (ONNX Runtime releases the GIL while it computes; a
            Python model gains nothing). A shard lets up to eight calls run
            ahead, and their events are emitted, in order, as soon as the
            calls are done; recovery snapshots count them as waiting. Calls
            the model's recent speed says take under a millisecond run
            inline, since handing them over would cost more than it saves.
            ``False``: the model always runs inside the step, as a plain call.
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
        wait_field: If set, each output gets this field with the seconds it
            waited for its batch.

    Returns:
        :class:`InferOut` with ``oks``, ``errs`` and ``stats``.

    Examples:
        >>> import numpy as np
        >>> import bytewax.operators as op
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSink, TestingSource, run_main
        >>> from streamml.models import CallableModel
        >>> double_sum = CallableModel(
        ...     lambda x: 2 * x.sum(axis=1), outputs="score", shape=(2,), version="v1"
        ... )
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
    if not isinstance(watch_interval, timedelta) or watch_interval <= timedelta(0):
        raise ValueError(f"watch_interval must be a timedelta > 0; got {watch_interval!r}")
    if not (isinstance(inputs, (str, Mapping)) or callable(inputs)):
        raise ValueError(
            f"inputs must be a field name, a function of the event, or a dict of them; got {inputs!r}"
        )
    if outputs is not None and not (isinstance(outputs, Mapping) or callable(outputs)):
        raise ValueError(f"outputs must be a dict {{output: field}} or a function; got {outputs!r}")
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
        watch=Path(watch) if watch is not None else None,
        watch_interval_s=watch_interval.total_seconds(),
        watch_initial=_file_signature(watch) if watch is not None else None,
        loader=_Loader(loader),
        stats=InferStats(),
    )
    initial = _serve(cfg, model, None)  # raises ValueError now if inputs/outputs do not fit

    def build(resume: _Snapshot | None) -> _InferLogic:
        if resume is None:
            return _InferLogic(cfg, initial, ())
        served = initial
        if resume.source is not None:
            try:
                served = _serve(
                    cfg, cfg.loader.load(resume.source, uuid.uuid4().hex), resume.source
                )
            except Exception as exc:
                logger.warning(
                    "%s: cannot reload the model after resume, using the initial one: %s",
                    step_id,
                    exc,
                )
        return _InferLogic(cfg, served, resume.pending)

    routed = op.flat_map_batch("route", up, _router(shards))
    if control is not None:

        def to_every_shard(item: Any) -> list[tuple[str, _Swap]]:
            token = uuid.uuid4().hex
            return [(str(s), _Swap(item, s == 0, token)) for s in range(shards)]

        broadcast = op.flat_map("broadcast", control, to_every_shard)
        # Control first: a swap that arrives together with events applies to those events.
        routed = op.merge("with_control", broadcast, routed)
    results = op.stateful_batch("batch", routed, build)
    oks = op.flat_map_batch("oks", results, lambda rs: [x for _, r in rs for x in r.oks])
    errs = op.flat_map_batch("errs", results, lambda rs: [x for _, r in rs for x in r.errs])
    return InferOut(oks, errs, cfg.stats)
