"""Model loading and live swap: what a control item or a watched file turns into, and when it may serve.

A swap installs a :class:`Served`: the model with its inputs and outputs
bound to the step's configuration (and its copies, with ``copies=N``:
:mod:`.copies`). A new model is loaded, and copied, once per process for all
shards (:class:`Loader`), must take the same inputs (dtype and row shape)
and attach the same fields as the one serving (:func:`check_compatible`),
or it is rejected and the old one keeps serving.
A watched file is polled by its modification time and size
(:class:`Watcher`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from streamml.models import Model, OnnxModel

from .copies import Copies, CopyPool
from .inputs import BoundInputs, bind_inputs
from .outputs import BoundOutputs, bind_outputs

__all__ = ["Loader", "Served", "Watcher", "check_compatible", "default_loader", "serve"]


def default_loader(item: Any) -> Model:
    """An :class:`~streamml.models.OnnxModel` from a path or ONNX bytes.

    Examples:
        >>> default_loader(3)
        Traceback (most recent call last):
        ...
        TypeError: cannot load a model from a int; control items must be a Model, an ONNX path or ONNX bytes, or pass loader= to infer
    """
    if isinstance(item, (str, bytes, os.PathLike)):
        return OnnxModel(item)
    raise TypeError(
        f"cannot load a model from a {type(item).__name__}; control items must be a Model, "
        "an ONNX path or ONNX bytes, or pass loader= to infer"
    )


class Loader:
    """Loads control items into models, once per item for all shards of a process.

    Every shard receives its own copy of a control item with the same
    ``cache_key``; the first shard loads it, the others get the same model
    (or the same exception).

    Examples:
        >>> from streamml.models import CallableModel
        >>> calls = []
        >>> loader = Loader(lambda item: calls.append(item) or CallableModel(abs, version=item))
        >>> [loader.load("v2", "token-1").version for _ in range(3)], calls
        (['v2', 'v2', 'v2'], ['v2'])
    """

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


class Served(NamedTuple):
    """A model bound to the step's inputs and outputs, and what installed it.

    ``source`` is the control item or watched path (``None`` for the initial
    model); a recovery snapshot keeps it, so a resumed step loads it again.
    ``copies`` are the model's copies when the step holds several
    (``copies=N``): every call then runs on a free one.
    """

    model: Model
    inputs: BoundInputs
    outputs: BoundOutputs
    source: Any
    copies: Copies | None = None

    def predict(self, columns: Mapping[str, Any]) -> dict[str, Any]:
        """Run one batch on the model (on a free copy of it, if the step holds copies)."""
        if self.copies is None:
            return self.model.predict(columns)
        return self.copies.predict(columns)


def serve(
    model: Model, inputs: Any, outputs: Any, source: Any, copies: CopyPool | None = None
) -> Served:
    """Bind ``model`` to the step's ``inputs`` and ``outputs``; ``ValueError`` if they do not fit.

    With a :class:`~.copies.CopyPool`, the model's copies are made (or found,
    when another shard made them); ``ValueError`` too if it cannot be copied.
    """
    bound = Served(model, bind_inputs(model, inputs), bind_outputs(model, outputs), source)
    return bound if copies is None else bound._replace(copies=copies.copies(model))


def check_compatible(old: Served, new: Served) -> None:
    """A swapped-in model must take the same inputs and give the same fields as the old one."""
    for name, spec in new.inputs.specs.items():
        before = old.inputs.specs.get(name)
        if before is None and len(old.inputs.specs) == 1 == len(new.inputs.specs):
            [before] = old.inputs.specs.values()  # one input: its name does not matter
        if before != spec:
            was = "nothing" if before is None else f"{before.dtype} {before.shape}"
            raise ValueError(
                f"input {name!r} takes {spec.dtype} rows of shape {spec.shape}, but the "
                f"serving model's takes {was}; changing the inputs needs a new dataflow"
            )
    before, after = old.outputs.fields(), new.outputs.fields()
    if before is not None and after is not None and sorted(before) != sorted(after):
        raise ValueError(
            f"the model would attach fields {sorted(after)} instead of {sorted(before)}; name "
            "the outputs to keep (outputs={...}) so every version attaches the same fields"
        )


def file_signature(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """What tells a replaced file apart: its modification time and size (``None``: no file)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class Watcher:
    """Polls a model file every ``interval_s`` and says when it was replaced.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "model.onnx"
        >>> w = Watcher(path, interval_s=1.0, seen=file_signature(path))
        >>> path.write_bytes(b"v1") and w.changed(now=0.0) is not None
        True
        >>> w.changed(now=0.5), w.changed(now=1.5)  # too early; then unchanged
        (None, None)
    """

    def __init__(
        self, path: str | os.PathLike[str], *, interval_s: float, seen: tuple[int, int] | None
    ) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self._seen = seen  # the file when the dataflow was built: the initial model's
        self.next_poll = 0.0

    def changed(self, now: float) -> tuple[int, int] | None:
        """The file's new signature if it is due for a look and was replaced, else ``None``."""
        if now < self.next_poll:
            return None
        self.next_poll = now + self.interval_s
        seen = file_signature(self.path)
        if seen is None or seen == self._seen:  # missing (mid-replace?) or unchanged
            return None
        self._seen = seen
        return seen
