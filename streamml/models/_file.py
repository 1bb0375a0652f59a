"""What every model built from a model file shares: bytes, version label, specs, warm-up, pickling.

:class:`~streamml.models.OnnxModel`, :class:`~streamml.models.TfliteModel`
and :class:`~streamml.models.PmmlModel` differ only in the runtime they
load; the rest lives here once.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from streamml.models._declared import Declared

__all__ = ["FileModel"]


class FileModel(Declared):
    """Base of the models built from a file: a subclass loads its runtime in ``_load``.

    ``_load`` builds the runtime from ``self._bytes`` and ``self._config`` and
    sets ``self._inputs`` (specs by name) and ``self._outputs`` (names).
    Pickling carries the bytes, the version and the config, and unpickling
    loads again, so each Bytewax worker gets its own runtime.

    Examples:
        >>> from streamml.models import TensorSpec
        >>> class Twice(FileModel):
        ...     _kind = "doubling"
        ...     def __init__(self, source, version=None):
        ...         self._read(source, version=version, config={})
        ...     def _load(self):
        ...         self._inputs = {"x": TensorSpec("float32", (1,))}
        ...         self._outputs = ("y",)
        ...     def predict(self, inputs):
        ...         return {"y": 2 * inputs["x"]}
        >>> m = Twice(b"any bytes")
        >>> m.version, m.outputs
        ('23914a83', ('y',))
        >>> clone = Twice.__new__(Twice)  # what unpickling does
        >>> clone.__setstate__(m.__getstate__())
        >>> clone.version, clone.predict({"x": np.ones((2, 1), "float32")})["y"].tolist()
        ('23914a83', [[2.0], [2.0]])
    """

    _kind = "model"
    """What the file holds, for error messages ("cannot read ONNX model ...")."""

    _bytes: bytes
    _config: dict[str, Any]

    def _read(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        version: str | None,
        config: dict[str, Any],
    ) -> None:
        """Read ``source``, label the model (``stem@sha256[:8]`` unless ``version``), load it."""
        if isinstance(source, bytes):
            data, stem = source, None
        else:
            try:
                data, stem = Path(source).read_bytes(), Path(source).stem
            except OSError as exc:
                raise ValueError(f"cannot read {self._kind} model {str(source)!r}: {exc}") from exc
        digest = hashlib.sha256(data).hexdigest()[:8]
        self._version = version if version is not None else (f"{stem}@{digest}" if stem else digest)
        self._config = config
        self._bytes = data
        self._load()

    def _load(self) -> None:
        raise NotImplementedError

    def _our_input_names(self, declared: list[str]) -> dict[str, str]:
        """The step's names of the model's inputs ``declared``, reversing ``input_names``.

        An input the mapping leaves out keeps its own name; ``ValueError``
        for a mapping to an input the model does not have.
        """
        to_model = self._config["input_names"]
        unknown = [m for m in to_model.values() if m not in declared]
        if unknown:
            raise ValueError(
                f"input_names maps to {unknown}, which the model does not have; "
                f"its inputs are {list(declared)}"
            )
        from_model = {m: ours for ours, m in to_model.items()}
        return {name: from_model.get(name, name) for name in declared}

    def _mapped_outputs(self, names: list[str]) -> tuple[str, ...]:
        """The model's outputs ``names`` renamed by ``output_names``; ``ValueError`` for one it lacks."""
        to_ours = self._config["output_names"]
        unknown = [m for m in to_ours if m not in names]
        if unknown:
            raise ValueError(
                f"output_names refers to {unknown}, which the model does not output; "
                f"its outputs are {names}"
            )
        return tuple(to_ours.get(n, n) for n in names)

    def _warm_up(self) -> None:
        """Run one batch of zeros, so a model that cannot run fails when it is built."""
        zeros = {
            name: np.zeros((1, *(d or 1 for d in spec.shape or ())), dtype=spec.dtype)
            for name, spec in self._inputs.items()
        }
        try:
            self.predict(zeros)  # type: ignore[attr-defined]
        except Exception as exc:
            raise ValueError(f"warm-up run of model {self._version!r} failed: {exc}") from exc

    def __getstate__(self) -> dict[str, Any]:
        return {"bytes": self._bytes, "version": self._version, "config": self._config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._bytes, self._version, self._config = state["bytes"], state["version"], state["config"]
        self._load()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(version={self._version!r}, inputs={self._inputs}, "
            f"outputs={self._outputs})"
        )
