"""The one small interface every model runtime satisfies.

A model takes a batch — one NumPy array, or a dict of named arrays for models
with several inputs — and returns a dict of named output arrays whose first
dimension is the batch size. It says what it expects (:attr:`Model.inputs`),
what it returns (:attr:`Model.outputs`) and which version it is
(:attr:`Model.version`), so the inference operator can validate events before
calling it and label every prediction with the version that made it.

To add a runtime (a TorchScript module, a remote server), write a class with
these four members; it does not need to inherit from anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "Model",
    "ModelInputError",
    "ModelUnavailable",
    "RowErrors",
    "TensorSpec",
    "as_feeds",
    "shape_matches",
]


class ModelInputError(ValueError):
    """A batch does not match what the model declares (names, dtype or shape)."""


class RowErrors(Exception):  # noqa: N818 - reads as what it carries, like a result
    """Some rows of a batch failed and the model answered the others: raised by ``predict``.

    A model that knows which rows it could not score (a service that refused
    one request of several, a runtime that checks each row) raises this
    instead of failing the whole batch, so the inference operator attaches
    ``outputs`` to the answered rows and sends each row in ``errors`` to
    ``errs`` (``ModelError``, with its reason) without searching for the bad
    rows by calling the model again. Any other exception from ``predict``
    fails the whole call, and the operator splits the batch in halves to find
    the rows at fault.

    Attributes:
        outputs: The answered rows' outputs by name, in batch order, each with
            one row per answered row (may be empty when no row was answered).
        errors: The failed rows by their position in the batch, with the reason.

    Examples:
        >>> exc = RowErrors({"y": np.array([1.0, 3.0])}, {1: "row 1 is negative"})
        >>> exc.errors, exc.outputs["y"].tolist()
        ({1: 'row 1 is negative'}, [1.0, 3.0])
        >>> str(exc)
        '1 row(s) failed; row 1: row 1 is negative'
    """

    def __init__(self, outputs: Mapping[str, Any], errors: Mapping[int, str]) -> None:
        first = min(errors) if errors else None
        detail = "" if first is None else f"; row {first}: {errors[first]}"
        super().__init__(f"{len(errors)} row(s) failed{detail}")
        self.outputs = dict(outputs)
        self.errors = dict(errors)


class ModelUnavailable(Exception):  # noqa: N818 - reads as what happened, like TimeoutError
    """The model cannot answer at all (a service down past its retries): no row is at fault.

    The inference operator does not route a batch's rows to ``errs`` when
    ``predict`` raises this — an outage would turn into data loss — but
    raises it again, so the dataflow stops with its message and Bytewax
    recovery resumes from the last snapshot once the model is back.

    Examples:
        >>> issubclass(ModelUnavailable, Exception)
        True
    """


class TensorSpec(NamedTuple):
    """What one model input expects for one row (the batch dimension left out).

    Attributes:
        dtype: The NumPy dtype the model computes in (``float32`` for most models).
        shape: The shape of one row, e.g. ``(16,)``; ``None`` in a position
            means any size, and ``shape=None`` means any shape.

    Examples:
        >>> TensorSpec(np.dtype("float32"), (16,))
        TensorSpec(dtype=dtype('float32'), shape=(16,))
    """

    dtype: np.dtype
    shape: tuple[int | None, ...] | None


@runtime_checkable
class Model(Protocol):
    """A batch model: named NumPy inputs in, named NumPy outputs out.

    Both :class:`streamml.models.OnnxModel` and
    :class:`streamml.models.CallableModel` satisfy it; so does any class with
    these members.

    Examples:
        >>> from streamml.models import CallableModel
        >>> isinstance(CallableModel(lambda x: x.sum(axis=1)), Model)
        True
    """

    @property
    def version(self) -> str:
        """A label for this model, attached to every prediction it makes."""
        ...

    @property
    def inputs(self) -> Mapping[str, TensorSpec]:
        """The model's inputs by name, in the order the model declares them."""
        ...

    @property
    def outputs(self) -> tuple[str, ...]:
        """The names of the arrays :meth:`predict` returns."""
        ...

    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, Any]:
        """Run one batch; every output's first dimension is the batch size."""
        ...


def shape_matches(expected: tuple[int | None, ...] | None, got: tuple[int, ...]) -> bool:
    """Whether a row shape fits a declared one (``None`` matches any size, or any shape).

    Examples:
        >>> shape_matches((None, 3), (7, 3)), shape_matches((3,), (4,)), shape_matches(None, ())
        (True, False, True)
    """
    if expected is None:
        return True
    return len(expected) == len(got) and all(
        e is None or e == g for e, g in zip(expected, got, strict=True)
    )


def as_feeds(
    specs: Mapping[str, TensorSpec], inputs: Mapping[str, Any] | np.ndarray
) -> dict[str, np.ndarray]:
    """Check a batch against a model's declared inputs and cast it to their dtypes.

    One array is bound to the model's only input. Values are cast when NumPy
    calls the cast ``same_kind`` (``float64`` to ``float32``, ints to floats);
    anything else — a missing input, ``float`` data for an ``int64`` input,
    strings, a wrong row shape — raises :class:`ModelInputError` saying what
    the model wanted.

    Examples:
        >>> specs = {"x": TensorSpec(np.dtype("float32"), (2,))}
        >>> as_feeds(specs, np.array([[1.0, 2.0]]))["x"].dtype
        dtype('float32')
        >>> as_feeds(specs, np.zeros((1, 3)))
        Traceback (most recent call last):
        ...
        streamml.models.protocol.ModelInputError: input 'x': each row must have shape (2,); got (3,)
    """
    if not isinstance(inputs, Mapping):
        if len(specs) != 1:
            raise ModelInputError(
                f"the model has {len(specs)} inputs {sorted(specs)}; pass a dict of named arrays"
            )
        inputs = {next(iter(specs)): inputs}
    missing = [name for name in specs if name not in inputs]
    if missing:
        raise ModelInputError(f"missing model input(s) {missing}; the model takes {list(specs)}")
    feeds = {}
    for name, spec in specs.items():
        arr = np.asarray(inputs[name])
        if arr.dtype != spec.dtype:
            if arr.dtype.kind not in "biuf" or not np.can_cast(arr.dtype, spec.dtype, "same_kind"):
                raise ModelInputError(
                    f"input {name!r}: expected {spec.dtype} values; got {arr.dtype}"
                )
            arr = arr.astype(spec.dtype)
        if arr.ndim < 1 or not shape_matches(spec.shape, arr.shape[1:]):
            raise ModelInputError(
                f"input {name!r}: each row must have shape {spec.shape}; got {arr.shape[1:]}"
            )
        feeds[name] = arr
    return feeds
