"""What a model declares about itself: its version label, input specs and output names.

Every runtime of :mod:`streamml.models` answers the
:class:`~streamml.models.Model` protocol's three descriptive members the same
way, from three attributes it sets when built; they are spelled here once.
"""

from __future__ import annotations

from streamml.models.protocol import TensorSpec

__all__ = ["Declared"]


class Declared:
    """The ``version``, ``inputs`` and ``outputs`` of a model, read from ``_version``, ``_inputs``, ``_outputs``.

    A subclass sets the three attributes when it is built (or loaded); the
    properties hand them out read-only (``inputs`` as a fresh dict, so a
    caller cannot change the model's own).

    Examples:
        >>> import numpy as np
        >>> class Fixed(Declared):
        ...     def __init__(self):
        ...         self._version = "v3"
        ...         self._inputs = {"x": TensorSpec(np.dtype("float32"), (4,))}
        ...         self._outputs = ("y",)
        >>> m = Fixed()
        >>> m.version, m.inputs["x"].shape, m.outputs
        ('v3', (4,), ('y',))
        >>> m.inputs.clear(); len(m.inputs)  # a copy: the model's own specs stay
        1
    """

    _version: str
    _inputs: dict[str, TensorSpec]
    _outputs: tuple[str, ...]

    @property
    def version(self) -> str:
        """The label attached to this model's predictions."""
        return self._version

    @property
    def inputs(self) -> dict[str, TensorSpec]:
        """Input specs by name (the mapped names, for a model built with ``input_names``)."""
        return dict(self._inputs)

    @property
    def outputs(self) -> tuple[str, ...]:
        """Output names (after ``output_names`` mapping, for a model built with one)."""
        return self._outputs
