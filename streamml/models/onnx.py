"""ONNX models run by ONNX Runtime, behind the :class:`~streamml.models.Model` protocol."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from streamml.models._file import FileModel
from streamml.models.protocol import TensorSpec, as_feeds

__all__ = ["OnnxModel", "default_providers"]

logger = logging.getLogger(__name__)

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def default_providers() -> list[str]:
    """CUDA when this onnxruntime build offers it, then CPU.

    Examples:
        >>> default_providers()[-1]
        'CPUExecutionProvider'
    """
    available = ort.get_available_providers()
    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in wanted if p in available] or ["CPUExecutionProvider"]


def _row_shape(shape: Sequence[Any]) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape[1:])


class OnnxModel(FileModel):
    """An ONNX model served by an ONNX Runtime ``InferenceSession``.

    Use it for any model exported to ONNX — scikit-learn through skl2onnx,
    PyTorch through ``torch.onnx`` — to score batches at native speed. The
    session is built once, checked against the model's declared inputs (only
    tensor inputs are supported) and warmed up with one run, so a broken file
    fails here, not on the first event.

    Args:
        source: A path to a ``.onnx`` file or the model's bytes.
        version: The label attached to predictions; defaults to the file
            stem (when loaded from a path) plus the first 8 hex digits of the
            SHA-256 of the bytes, e.g. ``"mlp@1a2b3c4d"``.
        providers: Execution providers in order of preference; defaults to
            :func:`default_providers` (CUDA if installed, else CPU).
        intra_op_threads: Threads used inside one operator (``None``: ONNX
            Runtime's default, one per core). Use 1 when several Bytewax
            workers share a machine.
        inter_op_threads: Threads running independent operators in parallel.
        graph_optimization: ``"disable"``, ``"basic"``, ``"extended"`` or ``"all"``.
        input_names: Names you want to use for inputs, mapped to the model's
            input names (``{"features": "float_input"}``).
        output_names: The model's output names mapped to the names
            :meth:`predict` returns (``{"variable": "score"}``); outputs not
            listed keep their own names.
        warmup: Run one zero batch at load time.

    Raises:
        ValueError: the bytes are not a loadable model, a name mapping refers
            to a name the model does not have, an input is not a tensor, or
            the warm-up run fails.

    Examples:
        >>> from skl2onnx import to_onnx
        >>> from sklearn.linear_model import LinearRegression
        >>> X = np.arange(8, dtype=np.float32).reshape(4, 2)
        >>> onx = to_onnx(LinearRegression().fit(X, X.sum(axis=1)), X[:1])
        >>> model = OnnxModel(onx.SerializeToString(), version="lr-1", intra_op_threads=1)
        >>> model.inputs
        {'X': TensorSpec(dtype=dtype('float32'), shape=(2,))}
        >>> model.predict(np.array([[1.0, 2.0]], dtype=np.float32))["variable"].round(3)
        array([[3.]], dtype=float32)
    """

    _kind = "ONNX"

    def __init__(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        version: str | None = None,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        graph_optimization: str = "all",
        input_names: Mapping[str, str] | None = None,
        output_names: Mapping[str, str] | None = None,
        warmup: bool = True,
    ) -> None:
        if graph_optimization not in _OPT_LEVELS:
            raise ValueError(
                f"graph_optimization must be one of {sorted(_OPT_LEVELS)}; got {graph_optimization!r}"
            )
        config = {
            "providers": list(providers) if providers is not None else default_providers(),
            "intra_op_threads": intra_op_threads,
            "inter_op_threads": inter_op_threads,
            "graph_optimization": graph_optimization,
            "input_names": dict(input_names or {}),
            "output_names": dict(output_names or {}),
            "warmup": warmup,
        }
        self._read(source, version=version, config=config)

    def _load(self) -> None:
        cfg = self._config
        opts = ort.SessionOptions()
        if cfg["intra_op_threads"] is not None:
            opts.intra_op_num_threads = cfg["intra_op_threads"]
        if cfg["inter_op_threads"] is not None:
            opts.inter_op_num_threads = cfg["inter_op_threads"]
        opts.graph_optimization_level = _OPT_LEVELS[cfg["graph_optimization"]]
        try:
            self._session = ort.InferenceSession(self._bytes, opts, providers=cfg["providers"])
        except Exception as exc:  # ORT raises its own exception types
            raise ValueError(f"cannot load ONNX model {self._version!r}: {exc}") from exc
        declared = {i.name: i for i in self._session.get_inputs()}
        our_name = self._our_input_names(list(declared))
        self._model_input = {}
        specs = {}
        for name, arg in declared.items():
            if arg.type not in _ORT_DTYPES:
                raise ValueError(
                    f"input {name!r} has type {arg.type}; only tensor inputs are supported"
                )
            ours = our_name[name]
            self._model_input[ours] = name
            specs[ours] = TensorSpec(np.dtype(_ORT_DTYPES[arg.type]), _row_shape(arg.shape))
        self._inputs = specs
        out_names = [o.name for o in self._session.get_outputs()]
        self._run_names = out_names
        self._outputs = self._mapped_outputs(out_names)
        if cfg["warmup"]:
            self._warm_up()
        logger.info("loaded ONNX model %s on %s", self._version, self._session.get_providers())

    @property
    def session(self) -> ort.InferenceSession:
        """The underlying ONNX Runtime session."""
        return self._session

    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, Any]:
        """Run one batch; returns every output by name.

        Raises :class:`~streamml.models.ModelInputError` when the batch does not
        match the declared inputs.
        """
        feeds = as_feeds(self._inputs, inputs)
        results = self._session.run(
            self._run_names, {self._model_input[n]: a for n, a in feeds.items()}
        )
        return dict(zip(self._outputs, results, strict=True))
