"""Any Python function over a NumPy batch, behind the :class:`~streamml.models.Model` protocol."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from streamml.models._declared import Declared
from streamml.models.protocol import TensorSpec, as_feeds

__all__ = ["CallableModel"]


class CallableModel(Declared):
    """A Python function over a batch, served like any other model.

    Use it for models that are not ONNX: a scikit-learn ``predict_proba``, a
    River model's batch method, a NumPy formula. The function is called once
    per batch with a 2-D array (rows are events), or with a dict of arrays when
    ``inputs`` declares several inputs. It may return one array, a tuple of
    arrays (one per name in ``outputs``) or a dict of arrays.

    Args:
        fn: The batch function.
        version: The label attached to predictions.
        inputs: The input specs by name. Defaults to one input ``"input"`` of
            ``dtype`` and ``shape``.
        outputs: The output name, or names when ``fn`` returns a tuple.
        dtype: The dtype of the default single input.
        shape: The shape of one row of the default single input, e.g.
            ``(16,)``; ``None`` accepts any shape (then only rows whose shape
            differs from the rest of their batch are rejected).

    Examples:
        >>> model = CallableModel(lambda x: x.sum(axis=1), outputs="total", shape=(2,))
        >>> model.predict(np.array([[1.0, 2.0], [3.0, 4.0]]))
        {'total': array([3., 7.], dtype=float32)}
        >>> model.version, model.inputs["input"].shape
        ('v1', (2,))
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        version: str = "v1",
        inputs: Mapping[str, TensorSpec] | None = None,
        outputs: str | Sequence[str] = "output",
        dtype: Any = np.float32,
        shape: tuple[int | None, ...] | None = None,
    ) -> None:
        if not callable(fn):
            raise ValueError(f"fn must be callable; got {type(fn).__name__}")
        self._fn = fn
        self._version = version
        self._inputs = dict(inputs) if inputs else {"input": TensorSpec(np.dtype(dtype), shape)}
        self._single = len(self._inputs) == 1
        self._outputs = (outputs,) if isinstance(outputs, str) else tuple(outputs)
        if not self._outputs:
            raise ValueError("outputs must name at least one output")

    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, Any]:
        """Run ``fn`` on one batch and name its results."""
        feeds = as_feeds(self._inputs, inputs)
        result = self._fn(next(iter(feeds.values())) if self._single else feeds)
        if isinstance(result, Mapping):
            missing = [n for n in self._outputs if n not in result]
            if missing:
                raise ValueError(
                    f"fn returned {sorted(result)}; missing declared outputs {missing}"
                )
            return dict(result)
        if len(self._outputs) == 1:
            return {self._outputs[0]: result}
        if not isinstance(result, (tuple, list)) or len(result) != len(self._outputs):
            raise ValueError(
                f"fn must return {len(self._outputs)} arrays for outputs {self._outputs}; "
                f"got {type(result).__name__}"
            )
        return dict(zip(self._outputs, result, strict=True))

    def __repr__(self) -> str:
        return f"CallableModel({self._fn!r}, version={self._version!r}, outputs={self._outputs})"
