"""Model copies: ``copies=N`` copies of every model an :func:`~streamml.operators.infer.infer` step serves in a process, each used by one thread at a time.

A model that is not thread-safe (a Python model with state, a runtime that
forbids concurrent calls) must not be entered by two threads at once, and a
model whose runtime holds one core per call can use more cores only through
more calls at once. With ``copies=N`` the step holds N copies of the model in
each process, shared by its shards there, and every model call — in the
overlap thread, inline, or while a failed batch is searched for its bad rows
— first takes a free copy and gives it back after. So at most N calls run at
once, never two on one copy.

Copies are made with :func:`copy.deepcopy` when a model starts serving (the
initial one, and each live swap): a :class:`~streamml.models._file.FileModel`
(ONNX, TFLite, PMML) loads its file again into a runtime session of its own;
a Python model gets copies of its attributes (its functions are shared; a
model defines ``__deepcopy__`` to choose what its copies share). Copy 0 is the
model itself.

:func:`~streamml.operators.infer.infer_by_key` takes ``copies=N`` with the same
meaning for each model it loads: each gets a pool of its own, made when the
model is loaded, and a batch's calls run in N threads of the step.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from streamml.models import Model

__all__ = ["CopyPool", "Copies"]

# Models whose copies a pool remembers, so every shard installing a swap shares one set.
_REMEMBERED = 2


class Copies:
    """The copies of one model, and the pool whose free slots say which copy a call may use.

    Examples:
        >>> import numpy as np
        >>> from streamml.models import CallableModel
        >>> pool = CopyPool(2)
        >>> copies = pool.copies(CallableModel(lambda x: x.sum(axis=1), shape=(2,)))
        >>> copies.predict(np.ones((1, 2), "float32"))["output"].tolist()
        [2.0]
    """

    __slots__ = ("models", "_pool")

    def __init__(self, models: tuple[Model, ...], pool: CopyPool) -> None:
        self.models = models
        self._pool = pool

    def predict(self, inputs: Mapping[str, Any] | Any) -> dict[str, Any]:
        """Run one batch on a free copy (waiting for one if all are busy)."""
        slot = self._pool._free.get()
        try:
            return self.models[slot].predict(inputs)
        finally:
            self._pool._free.put(slot)


class CopyPool:
    """N slots of one step in one process: slot ``i`` uses copy ``i`` of whichever model serves.

    A call takes a free slot and gives it back, so one copy is never in two
    calls at once. The copies of a model are made once for all the shards
    that install it (by the model's identity, for the last two models).

    Examples:
        >>> from streamml.models import CallableModel
        >>> pool = CopyPool(3)
        >>> model = CallableModel(lambda x: x[:, 0], shape=(1,))
        >>> copies = pool.copies(model)
        >>> len(copies.models), copies.models[0] is model, len({id(m) for m in copies.models})
        (3, True, 3)
        >>> pool.copies(model) is copies  # another shard installing the same model
        True
        >>> class Locked(CallableModel):  # a lock cannot be copied
        ...     lock = None
        >>> locked = Locked(abs, version="locked")
        >>> locked.lock = threading.Lock()
        >>> pool.copies(locked)
        Traceback (most recent call last):
        ...
        ValueError: copies=3: cannot copy the model CallableModel(...): TypeError: cannot pickle '_thread.lock' object; give a model copy.deepcopy can copy (or that defines __deepcopy__), or copies=1
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(n):
            self._free.put(slot)
        self._lock = threading.Lock()
        self._made: OrderedDict[int, tuple[Any, Copies]] = OrderedDict()

    def copies(self, model: Model) -> Copies:
        """The N copies of ``model``; ``ValueError`` if it cannot be copied."""
        with self._lock:
            found = self._made.get(id(model))
            if found is not None and found[0] is model:
                return found[1]
            try:
                made = (model, *(copy.deepcopy(model) for _ in range(self.n - 1)))
            except Exception as exc:
                raise ValueError(
                    f"copies={self.n}: cannot copy the model {model!r}: {type(exc).__name__}: "
                    f"{exc}; give a model copy.deepcopy can copy (or that defines __deepcopy__), "
                    "or copies=1"
                ) from exc
            copies = Copies(made, self)
            self._made[id(model)] = (model, copies)  # the model held: its id stays its own
            while len(self._made) > _REMEMBERED:
                self._made.popitem(last=False)
            return copies
