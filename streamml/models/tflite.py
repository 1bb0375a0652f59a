"""TensorFlow Lite models run by LiteRT, behind the :class:`~streamml.models.Model` protocol.

LiteRT (``ai-edge-litert``) is Google's runtime for ``.tflite`` files, the
successor of ``tflite-runtime``: one wheel, no TensorFlow. It is the runtime
for models made for phones and devices, so the same file can score at the edge
(``streamml ingest``) and in the stream. Install it with
``pip install 'streamml[tflite]'``; :mod:`streamml.models` imports without it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from streamml.models._file import FileModel
from streamml.models.protocol import TensorSpec, as_feeds

__all__ = ["TfliteModel"]

logger = logging.getLogger(__name__)


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise ImportError(
            "TfliteModel needs LiteRT: pip install 'streamml[tflite]' (the ai-edge-litert wheel)"
        ) from exc
    return Interpreter


class TfliteModel(FileModel):
    """A TensorFlow Lite model (``.tflite``) run by the LiteRT interpreter.

    Use it for a model converted for devices — by the TensorFlow Lite / LiteRT
    converter, ``litert-torch`` or ``onnx2tf`` — to score batches in the stream
    with the same file that runs at the edge. A ``.tflite`` file fixes its
    tensor shapes, usually with a batch of 1; the model resizes its inputs'
    first dimension to each batch (reallocating only when the batch size
    changes), so ``infer`` calls it once per batch, like an ONNX model. Inputs
    are the model's input tensors by name, outputs its output tensors by name;
    both can be renamed.

    Args:
        source: A path to a ``.tflite`` file or the model's bytes.
        version: The label attached to predictions; defaults to the file stem
            (when loaded from a path) plus the first 8 hex digits of the
            SHA-256 of the bytes, e.g. ``"detector@1a2b3c4d"``.
        num_threads: Threads the interpreter uses (``None``: LiteRT's default).
            Use 1 when several Bytewax workers share a machine.
        input_names: Names you want to use for inputs, mapped to the model's
            input tensor names (``{"features": "serving_default_x:0"}``).
        output_names: The model's output tensor names mapped to the names
            :meth:`predict` returns (``{"StatefulPartitionedCall:0": "score"}``);
            outputs not listed keep their own names.
        warmup: Run one zero batch at load time.

    Raises:
        ImportError: LiteRT is not installed (``pip install 'streamml[tflite]'``).
        ValueError: the bytes are not a loadable model, a name mapping refers
            to a name the model does not have, or the warm-up run fails.

    Examples:
        >>> TfliteModel(b"not a flatbuffer")
        Traceback (most recent call last):
        ...
        ValueError: cannot load TF Lite model '...': ...

        ``docs/models.md`` and ``tests/models/test_tflite.py`` score a real one.
    """

    _kind = "TF Lite"

    def __init__(
        self,
        source: str | os.PathLike[str] | bytes,
        *,
        version: str | None = None,
        num_threads: int | None = None,
        input_names: Mapping[str, str] | None = None,
        output_names: Mapping[str, str] | None = None,
        warmup: bool = True,
    ) -> None:
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None; got {num_threads}")
        config = {
            "num_threads": num_threads,
            "input_names": dict(input_names or {}),
            "output_names": dict(output_names or {}),
            "warmup": warmup,
        }
        self._read(source, version=version, config=config)

    def _load(self) -> None:
        cfg = self._config
        # One interpreter runs one call at a time; infer's shards may share this model.
        self._lock = threading.Lock()
        interpreter_class = _interpreter_class()
        try:
            self._interpreter = interpreter_class(
                model_content=self._bytes, num_threads=cfg["num_threads"]
            )
            self._interpreter.allocate_tensors()
        except Exception as exc:  # LiteRT raises ValueError and RuntimeError
            raise ValueError(f"cannot load TF Lite model {self._version!r}: {exc}") from exc
        declared = {d["name"]: d for d in self._interpreter.get_input_details()}
        our_name = self._our_input_names(list(declared))
        self._input_index: dict[str, int] = {}
        specs = {}
        for name, detail in declared.items():
            ours = our_name[name]
            self._input_index[ours] = detail["index"]
            signature = detail.get("shape_signature")
            if signature is None or len(signature) == 0:
                signature = detail["shape"]
            row = tuple(int(d) if d > 0 else None for d in signature[1:])
            specs[ours] = TensorSpec(np.dtype(detail["dtype"]), row)
        self._inputs = specs
        out_details = self._interpreter.get_output_details()
        self._output_index = [d["index"] for d in out_details]
        self._outputs = self._mapped_outputs([d["name"] for d in out_details])
        self._shapes = {
            name: tuple(int(d) for d in detail["shape"])
            for name, detail in zip(specs, declared.values(), strict=True)
        }
        if cfg["warmup"]:
            self._warm_up()
        logger.info("loaded TF Lite model %s", self._version)

    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, Any]:
        """Run one batch; returns every output by name.

        Raises :class:`~streamml.models.ModelInputError` when the batch does not
        match the declared inputs.
        """
        feeds = as_feeds(self._inputs, inputs)
        with self._lock:
            return self._run(feeds)

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        interp = self._interpreter
        resized = False
        for name, arr in feeds.items():
            if arr.shape != self._shapes[name]:
                interp.resize_tensor_input(self._input_index[name], list(arr.shape))
                self._shapes[name] = arr.shape
                resized = True
        if resized:
            interp.allocate_tensors()
        for name, arr in feeds.items():
            interp.set_tensor(self._input_index[name], np.ascontiguousarray(arr))
        interp.invoke()
        return {
            name: interp.get_tensor(index)
            for name, index in zip(self._outputs, self._output_index, strict=True)
        }
