"""A model per key or per segment: each event scored by the model of its key group, at most N loaded.

:func:`infer_by_key` is for a fleet of models — one per customer, region or
machine type — too many to hold at once. A function names each key's model;
models are loaded by a loader function when first needed and kept in a
least-recently-used cache of ``max_models`` per process (:class:`ModelCache`,
like Beam's ``KeyedModelHandler`` with a bounded model count). Each Bytewax
batch is split per model, and each model is called once per batch (in
pieces of at most ``max_batch`` rows). With ``copies=N`` each loaded model
has N copies in the process (:mod:`.copies`), and a batch's model calls run
up to N at once in the step's threads, each on a free copy of its model.

State: none in the dataflow. The step holds no rows between batches (each
Bytewax batch is scored as it comes), so a crash and resume scores every
row as one uninterrupted run would (the contract suite checks it). The
cache of loaded models, evicted least recently used beyond ``max_models``,
is a cache, not state: it is not snapshotted; after a resume the models are
loaded again by ``load`` when first needed (a model file changed in between
serves its new version, as after an eviction), and the cache's counters
start from zero.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from streamml.operators import _validate

from streamml.errors import Rejected
from streamml.metrics import instrumented
from streamml.models import Model
from streamml.models.protocol import ModelUnavailable, RowErrors

from .copies import CopyPool
from .inputs import row_tensors
from .models import Served, serve
from .outputs import attach_rows
from .shard import _answered_runs, _call_model

__all__ = ["ByKeyOut", "ModelCache", "infer_by_key"]


class ModelCache:
    """Loaded models by name, at most ``capacity``, the least recently used evicted first.

    Thread-safe (a process's workers share one). A model that fails to load
    is not kept: the next batch that needs it tries again.

    Examples:
        >>> from streamml.models import CallableModel
        >>> cache = ModelCache(lambda name: CallableModel(abs, version=name), capacity=2)
        >>> [cache.get(n).version for n in ["a", "b", "a", "c", "b"]]
        ['a', 'b', 'a', 'c', 'b']
        >>> cache.names(), cache.loads, cache.evictions  # b was evicted by c, then loaded again
        (['c', 'b'], 4, 2)
    """

    def __init__(
        self, load: Callable[[str], Model], capacity: int, bind: Callable[[Model], Any] = None
    ) -> None:
        self._load = load
        self._bind = bind
        self.capacity = capacity
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0
        self.evictions = 0

    def names(self) -> list[str]:
        """The loaded models, least recently used first."""
        with self._lock:
            return list(self._models)

    def get(self, name: str) -> Any:
        """The model ``name`` (bound by ``bind``, if given), loading it if it is not held."""
        with self._lock:
            found = self._models.get(name)
            if found is not None:
                self._models.move_to_end(name)
                return found
            model = self._load(name)
            if not isinstance(model, Model):
                raise TypeError(f"the loader returned a {type(model).__name__}, not a Model")
            found = model if self._bind is None else self._bind(model)
            self.loads += 1
            self._models[name] = found
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
                self.evictions += 1
            return found


@dataclass(frozen=True)
class ByKeyOut:
    """The streams of an :func:`infer_by_key` step, and its model cache (for its counters)."""

    oks: Stream[Any]
    errs: Stream[Rejected]
    models: ModelCache


class _Scorer:
    """Scores each Bytewax batch: split per model, each model's rows in pieces of ``max_batch``.

    With ``copies > 1`` the pieces run in a pool of ``copies`` threads (one
    per process: the workers there share this scorer, its cache and the
    models' copies), and their outputs are put back in the pieces' order.
    """

    def __init__(
        self, step_id: str, cache: ModelCache, model_for: Callable, cfg: dict, copies: int
    ) -> None:
        self.step_id, self.cache, self.model_for, self.cfg = step_id, cache, model_for, cfg
        self._threads = (
            None
            if copies == 1
            else ThreadPoolExecutor(copies, thread_name_prefix=f"{step_id}-copies")
        )

    def __call__(self, items: list[Any]) -> list[Any]:
        out: list[Any] = []
        groups: dict[str, list] = {}
        for item in items:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Mapping)):
                reason = f"expected (key, event) pairs; got a {type(item).__name__}"
                out.append(Rejected(self.step_id, "BadItem", reason, item))
                continue
            try:
                name = self.model_for(item[0])
            except Exception as exc:
                reason = f"model_for raised {type(exc).__name__}: {exc}"
                out.append(Rejected(self.step_id, "BadKey", reason, item))
                continue
            groups.setdefault(name, []).append(item)
        running: list[list[Any] | Future[list[Any]]] = []  # outputs in order (copies > 1)
        for name, rows in groups.items():
            try:
                served = self.cache.get(name)
            except Exception as exc:
                reason = f"cannot load model {name!r}: {type(exc).__name__}: {exc}"
                rejected = [Rejected(self.step_id, "ModelRejected", reason, r) for r in rows]
                if self._threads is None:
                    out.extend(rejected)
                else:
                    running.append(rejected)
                continue
            step = self.cfg["max_batch"]
            for lo in range(0, len(rows), step):
                if self._threads is None:
                    self._score(served, rows[lo : lo + step], out)
                else:
                    running.append(self._threads.submit(self._piece, served, rows[lo : lo + step]))
        for done in running:
            out.extend(done.result() if isinstance(done, Future) else done)
        return out

    def _piece(self, served: Served, part: list) -> list[Any]:
        """The outputs of one piece, scored in a thread of the pool."""
        out: list[Any] = []
        self._score(served, part, out)
        return out

    def _score(self, served: Served, part: list, out: list) -> None:
        columns, bad = row_tensors(part, served.inputs)
        for i in sorted(bad):
            out.append(Rejected(self.step_id, bad[i][0], bad[i][1], part[i]))
        if bad:
            keep = [i for i in range(len(part)) if i not in bad]
            part = [part[i] for i in keep]
            columns = {n: a[keep] for n, a in columns.items()}
        if part:
            self._call(served, part, columns, out)

    def _call(self, served: Served, part: list, columns: dict, out: list) -> None:
        version = served.model.version
        try:
            outs = _call_model(served, columns, len(part))
        except ModelUnavailable:
            raise
        except RowErrors as exc:
            try:
                runs = _answered_runs(served.outputs.needed, exc, len(part))
            except ValueError:
                runs = None
            if runs is not None:
                for row, reason in sorted(exc.errors.items()):
                    why = f"model {version!r} failed on the row: {reason}"
                    out.append(Rejected(self.step_id, "ModelError", why, part[row]))
                for a, b, o in runs:
                    self._attach(served, part[a:b], o, out)
                return
            self._halves(served, part, columns, exc, out)
            return
        except Exception as exc:
            self._halves(served, part, columns, exc, out)
            return
        self._attach(served, part, outs, out)

    def _halves(self, served: Served, part: list, columns: dict, exc: Exception, out: list) -> None:
        if len(part) == 1:
            why = f"model {served.model.version!r} raised {type(exc).__name__}: {exc}"
            out.append(Rejected(self.step_id, "ModelError", why, part[0]))
            return
        mid = len(part) // 2
        for lo, hi in ((0, mid), (mid, len(part))):
            self._call(served, part[lo:hi], {n: a[lo:hi] for n, a in columns.items()}, out)

    def _attach(self, served: Served, part: list, outs: dict, out: list) -> None:
        field = self.cfg["version_field"]
        extras = [] if field is None else [(field, [served.model.version] * len(part))]
        errs: list[Rejected] = []
        out.extend(attach_rows(served.outputs, part, outs, extras, self.step_id, errs))
        out.extend(errs)


@operator
@instrumented
def infer_by_key(
    step_id: str,
    up: Stream[tuple[Any, Any]],
    *,
    model_for: Callable[[Any], str],
    load: Callable[[str], Model],
    max_models: int = 8,
    inputs: Any = "features",
    outputs: Any = None,
    version_field: str | None = "model_version",
    max_batch: int = 1024,
    copies: int = 1,
) -> ByKeyOut:
    """Score each ``(key, event)`` with the model of its key group, holding at most ``max_models``.

    Use it when each customer, region or machine type has its own model.
    ``model_for(key)`` names a key's model and ``load(name)`` loads it; the
    ``max_models`` most recently used stay loaded in each process. Each batch
    is split per model and each model called once per batch, so a key's
    events keep their order (a batch's output is grouped by model). Inputs
    and outputs are read and attached as in :func:`infer`; bad inputs, a
    ``model_for`` that raises (``BadKey``), a model that fails to load
    (``ModelRejected``) and rows a model raised on (``ModelError``, found
    from its :class:`~streamml.models.RowErrors` or by halves) go to
    ``errs``. Every model must take the step's ``inputs``.

    Args:
        step_id: Unique ID.
        up: ``(key, event)`` pairs.
        model_for: The model name of a key.
        load: Loads a model by name.
        max_models: Most models loaded at once per process.
        inputs: As for :func:`infer`.
        outputs: As for :func:`infer`.
        version_field: As for :func:`infer`.
        max_batch: Most rows per model call.
        copies: How many copies of each loaded model the process holds, as
            for :func:`infer` (:mod:`streamml.operators.infer.copies`):
            every model call takes a free copy of its model, so no copy is
            ever in two calls at once — for models that are not thread-safe,
            which the workers of a process would otherwise share — and a
            batch's calls (its models, and each model's pieces of
            ``max_batch`` rows) run up to ``copies`` at once in a pool of
            threads, their outputs in the order ``copies=1`` gives. A model
            is copied with ``copy.deepcopy`` when it is loaded; since models
            are loaded when first needed, not when the dataflow is built,
            one that cannot be copied is not refused at build but rejected
            then, its rows going to ``errs`` as ``ModelRejected`` (as a
            model that fails to load). ``1``: each model itself, called in
            the step (no copy, no thread).

    Returns:
        :class:`ByKeyOut`.

    Examples:
        >>> import bytewax.operators as op
        >>> from bytewax.dataflow import Dataflow
        >>> from bytewax.testing import TestingSink, TestingSource, run_main
        >>> from streamml.models import CallableModel
        >>> def load(region):
        ...     weight = {"eu": 1.0, "us": 10.0}[region]
        ...     return CallableModel(lambda x: weight * x.sum(axis=1), outputs="score",
        ...                          shape=(2,), version=region)
        >>> events = [("eu-1", {"features": [1.0, 2.0]}), ("us-7", {"features": [1.0, 2.0]}),
        ...           ("eu-2", {"features": [0.5, 0.5]})]
        >>> flow = Dataflow("by_key_eg")
        >>> up = op.input("in", flow, TestingSource(events, batch_size=3))
        >>> out = infer_by_key("s", up,
        ...                    model_for=lambda key: key.split("-")[0], load=load, max_models=1)
        >>> oks = []
        >>> op.output("oks", out.oks, TestingSink(oks))
        >>> run_main(flow)
        >>> [(k, e["score"], e["model_version"]) for k, e in oks]
        [('eu-1', 3.0, 'eu'), ('eu-2', 1.0, 'eu'), ('us-7', 30.0, 'us')]
        >>> out.models.loads, out.models.names()
        (2, ['us'])
    """
    for arg, fn in (("model_for", model_for), ("load", load)):
        if not callable(fn):
            raise ValueError(f"{arg} must be a function; got {fn!r}")
    for arg, value in (("max_models", max_models), ("max_batch", max_batch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{arg} must be an int >= 1; got {value!r}")
    _validate.count("copies", copies)

    def bind(model: Model) -> Served:  # each loaded model with its own copies (copies > 1)
        return serve(model, inputs, outputs, None, CopyPool(copies) if copies > 1 else None)

    cache = ModelCache(load, max_models, bind=bind)
    cfg = {"max_batch": max_batch, "version_field": version_field}
    scored = op.flat_map_batch("score", up, _Scorer(step_id, cache, model_for, cfg, copies))
    split = op.branch("split", scored, lambda x: not isinstance(x, Rejected))
    return ByKeyOut(split.trues, split.falses, cache)
